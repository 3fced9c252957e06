"""export_checkpoint writes the averaged weights x (never y or z), atomically; load_head validates."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
import torch

from fusion_infer import CHECKPOINT_FORMAT_VERSION, CheckpointError, load_head, read_metadata
from fusion_infer.checkpoint import METADATA_KEY, TargetScaling
from fusion_train import export_checkpoint, make_optimizer

from .setups import TINY, WIDE, random_head, trained_steps


def _sf_run(config=WIDE, steps=3):
    head = random_head(config)
    opt = make_optimizer("sf-normuon", head, lr=1e-2)
    trained_steps(head, opt, steps)
    return head, opt


def _file_tensors(path):
    return safetensors.torch.load_file(str(path))


def test_export_in_train_mode_equals_export_after_eval(tmp_path):
    head, opt = _sf_run()
    assert any(g["group_type"] == "spectral" for g in opt.param_groups)  # NS path covered
    export_checkpoint(head, opt, tmp_path / "train_mode.safetensors")
    assert opt.training  # export does not toggle the optimizer
    opt.eval()
    export_checkpoint(head, opt, tmp_path / "eval_mode.safetensors")
    a, b = _file_tensors(tmp_path / "train_mode.safetensors"), _file_tensors(tmp_path / "eval_mode.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and both are what the parameters hold in eval mode: x
    for name, p in head.named_parameters():
        assert torch.equal(a[name], p.detach())


def test_neither_y_nor_z_reaches_the_file(tmp_path):
    head, opt = _sf_run()
    path = export_checkpoint(head, opt, tmp_path / "head.safetensors")
    saved = _file_tensors(path)
    checked = 0
    for name, p in head.named_parameters():
        z = opt.state[p]["z"]
        if torch.equal(p.detach(), z):
            continue  # parameters the loss never touched
        checked += 1
        assert torch.equal(saved[name], opt.averaged(p))
        assert not torch.equal(saved[name], p.detach()), f"{name}: y reached the file"
        assert not torch.equal(saved[name], z), f"{name}: z reached the file"
    assert checked >= 5
    meta = read_metadata(path)
    assert meta["weights"] == "averaged" and meta["recipe"] == "sf-normuon" and meta["step"] == 3


def test_non_schedule_free_exports_parameters(tmp_path):
    head = random_head(TINY)
    opt = make_optimizer("adamw", head, lr=1e-2)
    trained_steps(head, opt, 2)
    path = export_checkpoint(head, opt, tmp_path / "adamw.safetensors", loss="l1", noise_schedule="vp_cosine")
    saved = _file_tensors(path)
    for name, p in head.named_parameters():
        assert torch.equal(saved[name], p.detach())
    meta = read_metadata(path)
    assert (meta["weights"], meta["recipe"], meta["step"], meta["loss"], meta["noise_schedule"]) == (
        "raw", "adamw", 2, "l1", "vp_cosine")


def test_load_head_round_trip(tmp_path):
    head, opt = _sf_run()
    scaling = TargetScaling(("a", "b", "c", "d", "e"), (1.0, 2.0, 3.0, 4.0, 5.0), (1.0, 1.0, 2.0, 2.0, 3.0))
    path = export_checkpoint(head, opt, tmp_path / "h.safetensors", targets=scaling, note="hello")
    loaded = load_head(path)
    model, meta = loaded  # unpacks like a tuple
    assert meta["format_version"] == CHECKPOINT_FORMAT_VERSION and meta["extra"] == {"note": "hello"}
    assert loaded.noise_schedule == "rectified_flow" and loaded.loss == "huber"
    assert loaded.targets == scaling and not model.training
    opt.eval()
    head.eval()
    x, t = torch.randn(2, 64, 8), torch.tensor([0.1, 0.7])
    assert torch.equal(model(x, t), head(x, t))
    y = torch.randn(2, 5, 8)
    torch.testing.assert_close(scaling.standardize(scaling.destandardize(y)), y)


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    head, opt = _sf_run(TINY)
    path = export_checkpoint(head, opt, tmp_path / "h.safetensors")
    before = path.read_bytes()
    trained_steps(head, opt, 1, seed=1)  # new weights to write

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")  # half a file, then the disk "fails"
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(head, opt, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["h.safetensors"]  # temp file cleaned up
    load_head(path)  # still a valid checkpoint


def test_bad_metadata_is_refused_before_writing(tmp_path):
    head, opt = _sf_run(TINY)
    with pytest.raises(ValueError, match="loss must be one of"):
        export_checkpoint(head, opt, tmp_path / "x.safetensors", loss="hinge")
    with pytest.raises(ValueError, match="noise_schedule must be one of"):
        export_checkpoint(head, opt, tmp_path / "x.safetensors", noise_schedule="ddpm")
    with pytest.raises(ValueError, match="not registered"):
        export_checkpoint(torch.nn.Linear(2, 2), None, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# ----------------------------------------------------------------------- load validation
def _rewrite(path, out, edit_meta=None, edit_tensors=None):
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    safetensors.torch.save_file(tensors, str(out), metadata={METADATA_KEY: json.dumps(meta)})
    return out


@pytest.fixture
def good(tmp_path):
    head = random_head(TINY)
    return export_checkpoint(head, None, tmp_path / "good.safetensors", recipe="adamw")


def test_load_missing_metadata_key(good, tmp_path):
    bad = _rewrite(good, tmp_path / "b.safetensors", edit_meta=lambda m: m.pop("loss"))
    with pytest.raises(CheckpointError, match=r"missing required key\(s\) \['loss'\]"):
        load_head(bad)


def test_load_wrong_format_version(good, tmp_path):
    bad = _rewrite(good, tmp_path / "b.safetensors", edit_meta=lambda m: m.update(format_version=99))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        load_head(bad)


def test_load_corrupt_file(good, tmp_path):
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_head(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_head(garbage)


def test_load_shape_mismatch_and_missing_tensors(good, tmp_path):
    def grow(m):
        m["model_config"]["out_channels"] = 7

    bad = _rewrite(good, tmp_path / "shape.safetensors", edit_meta=grow)
    with pytest.raises(CheckpointError, match="shape mismatches final.linear.weight"):
        load_head(bad)
    missing = _rewrite(good, tmp_path / "missing.safetensors", edit_tensors=lambda t: t.pop("latent_proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['latent_proj.bias'\]"):
        load_head(missing)


def test_load_other_errors(good, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_head(tmp_path / "nope.safetensors")
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not written by fusion_train.export_checkpoint"):
        load_head(plain)
    bad = _rewrite(good, tmp_path / "cls.safetensors", edit_meta=lambda m: m.update(model_class="Unet"))
    with pytest.raises(CheckpointError, match="model_class must be one of"):
        load_head(bad)
    bad = _rewrite(good, tmp_path / "cfg.safetensors", edit_meta=lambda m: m["model_config"].update(bogus=1))
    with pytest.raises(CheckpointError, match="model_config is invalid"):
        load_head(bad)
    assert issubclass(CheckpointError, ValueError)

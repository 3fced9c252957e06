"""Training state: safetensors + strict JSON, bit-identical resume for every recipe, never a pickle."""

from __future__ import annotations

import json
import math
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fusion_infer import CheckpointError
from fusion_train import (
    RECIPES,
    TRAIN_RECIPES,
    FusionOpt,
    build_param_groups,
    load_training_state,
    make_optimizer,
    save_training_state,
)
from fusion_train.cli import main
from fusion_train.training.export import TRAINING_STATE_KEY
from fusion_train.training.state_codec import decode_tree, encode_tree

from .setups import TINY, WIDE, random_head, trained_steps

ALL_RECIPES = ["adamw", *RECIPES]


def _run(recipe: str, config=WIDE):
    head = random_head(config)
    try:
        if recipe in TRAIN_RECIPES:
            opt = make_optimizer(recipe, head, lr=1e-2)
        else:  # FusionOpt recipes the head trainer does not offer (e.g. sf-adamw)
            opt = FusionOpt(build_param_groups(head), lr=1e-2, recipe=recipe)
    except (NotImplementedError, ImportError) as exc:  # a recipe whose optional dependency is absent
        pytest.skip(f"{recipe}: {exc}")
    return head, opt


def _continue(head, opt, steps: int, seed: int) -> list[torch.Tensor]:
    """More training steps that also draw from the global RNGs (so a wrong RNG restore shows)."""
    trained_steps(head, opt, steps, seed=seed)
    return [torch.rand(3), torch.tensor(random.random()), torch.tensor(np.random.rand())]


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_resume_is_bit_identical_for_every_recipe(tmp_path, recipe):
    head, opt = _run(recipe)
    trained_steps(head, opt, 3, seed=1)
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    gen = torch.Generator().manual_seed(9)
    torch.randn(4, generator=gen)
    path = save_training_state(tmp_path / "state.safetensors", head, opt, step=3,
                               loader_state={"epoch": 1, "position": 4}, generators={"noise": gen},
                               extra={"best_score": math.inf, "best_step": -1, "history": (1.5, float("nan"))})
    draws_straight = _continue(head, opt, 3, seed=2)
    gen_straight = torch.randn(4, generator=gen)
    straight = {k: v.clone() for k, v in head.state_dict().items()}
    opt_straight = opt.state_dict()

    head2, opt2 = _run(recipe)  # fresh objects, different weights until the state is loaded
    torch.manual_seed(1234), random.seed(1234), np.random.seed(1234)
    gen2 = torch.Generator().manual_seed(0)
    info = load_training_state(path, head2, opt2, generators={"noise": gen2})
    assert info["step"] == 3 and info["loader"] == {"epoch": 1, "position": 4}
    assert info["extra"]["best_score"] == math.inf and info["extra"]["best_step"] == -1
    assert info["extra"]["history"][0] == 1.5 and math.isnan(info["extra"]["history"][1])
    draws_resumed = _continue(head2, opt2, 3, seed=2)
    assert torch.equal(torch.randn(4, generator=gen2), gen_straight)
    for a, b in zip(draws_straight, draws_resumed):
        assert torch.equal(a, b)
    for name, v in head2.state_dict().items():
        assert torch.equal(v, straight[name]), name
    resumed_state = opt2.state_dict()
    for pid, entry in opt_straight["state"].items():
        for key, v in entry.items():
            w = resumed_state["state"][pid][key]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (pid, key)
    for g1, g2 in zip(opt_straight["param_groups"], resumed_state["param_groups"]):
        assert g1 == g2


def test_file_is_safetensors_with_json_and_no_pickle(tmp_path):
    head, opt = _run("sf-normuon")
    trained_steps(head, opt, 2)
    path = save_training_state(tmp_path / "s.safetensors", head, opt, step=2)
    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()[TRAINING_STATE_KEY])  # strict JSON: no NaN/Infinity tokens
        names = set(f.keys())
    assert doc["format"] == "fusion-training-state" and doc["version"] == 2 and doc["step"] == 2
    assert {f"model/{k}" for k in head.state_dict()} <= names and "rng/torch" in names
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:16] and not raw.startswith(b"PK")
    assert (path.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Pwn:
    """Unpickling this creates the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("legacy", [True, False])
def test_pickles_are_refused_without_running_their_code(tmp_path, legacy):
    head, opt = _run("adamw", TINY)
    path = tmp_path / ("training_state.pt" if legacy else "state.safetensors")
    marker = tmp_path / "pwned"
    payload = {"version": 1, "model": head.state_dict(), "optimizer": opt.state_dict(),
               "optimizer_class": "AdamW", "rng": _Pwn(str(marker)), "step": 0}
    torch.save(payload, str(path), _use_new_zipfile_serialization=legacy)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(CheckpointError, match="is a pickle .* not loaded because unpickling can run arbitrary code"):
        load_training_state(path, head, opt)
    assert not marker.exists()
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())


def test_no_weights_only_false_anywhere():
    root = Path(__file__).resolve().parents[2]
    needle = "weights_only" + "=False"  # spelled apart so this file does not match itself
    # A test may unpickle a buffer it wrote itself one line earlier (pickling a whole cached
    # model is a documented use); such a line says so with "# trusted:".
    hits = [
        f"{p.relative_to(root)}:{i}" for folder in ("fusion_infer", "fusion_train", "integrations", "benchmarks",
                                                     "examples", "tests")
        for p in (root / folder).rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if needle in line and not (folder == "tests" and "# trusted:" in line)
    ]
    assert not hits


# ---------------------------------------------------------------- crafted training-state files
def _saved(tmp_path):
    head, opt = _run("sf-normuon")
    trained_steps(head, opt, 2)
    path = save_training_state(tmp_path / "s.safetensors", head, opt, step=2, generators={"noise": torch.Generator()})
    return path, head, opt


def _rewrite(path: Path, edit_doc=None, edit_tensors=None, raw_text=None) -> Path:
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        text = f.metadata()[TRAINING_STATE_KEY]
    doc = json.loads(text)
    if edit_doc:
        edit_doc(doc)
    if edit_tensors:
        edit_tensors(tensors)
    out = path.with_name("crafted.safetensors")
    save_file(tensors, str(out), metadata={TRAINING_STATE_KEY: raw_text(text) if raw_text else json.dumps(doc)})
    return out


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


STATE_CASES = [
    ("version-1", dict(edit_doc=_set("version", 1)), "version 1 is not supported"),
    ("not-ours", dict(edit_doc=_set("format", "other")), "is not a 'fusion-training-state' document"),
    ("step-negative", dict(edit_doc=_set("step", -3)), "step must be an int >= 0"),
    ("missing-rng", dict(edit_doc=lambda d: d.pop("rng")), r"metadata is missing \['rng'\]"),
    ("deep-json", dict(raw_text=lambda t: t[:-1] + ',"junk":' + "[" * 50_000 + "]" * 50_000 + "}"),
     r"nests \d+ levels deep"),
    ("nan-token", dict(raw_text=lambda t: t.replace('"step":2', '"step":NaN')), "JSON contains NaN"),
    ("optimizer-class", dict(edit_doc=_set("optimizer_class", "SGD")), "saved with optimizer SGD"),
    ("model-shape", dict(edit_tensors=lambda t: t.update({"model/final.linear.bias": torch.zeros(7)})),
     "model tensors do not match the model"),
    ("model-dtype", dict(edit_tensors=lambda t: t.update({"model/final.linear.bias": torch.zeros(5, dtype=torch.float64)})),
     "model tensors do not match the model"),
    ("model-missing", dict(edit_tensors=lambda t: t.pop("model/final.linear.bias"),
                           edit_doc=lambda d: d["model"].remove("final.linear.bias")), "missing \\['final.linear.bias'\\]"),
    ("stray-tensor", dict(edit_tensors=lambda t: t.update({"optimizer/999": torch.zeros(1)})), "not referenced"),
    ("unknown-kind", dict(edit_tensors=lambda t: t.update({"evil/0": torch.zeros(1)})), "unknown kind"),
    ("dangling-ref", dict(edit_tensors=lambda t: t.pop("optimizer/0")), "which the file does not hold"),
    ("bad-float-tag", dict(edit_doc=lambda d: d["extra"].update(x={"__float__": "1e400"})), "__float__ must be one of"),
    ("float-tag-not-nan", dict(edit_doc=lambda d: d["extra"].update(x={"__float__": "nan:3ff0000000000000"})),
     "__float__ must be one of"),
    ("bad-dtype-tag", dict(edit_doc=lambda d: d["extra"].update(x={"__dtype__": "object"})), "__dtype__ must be one of"),
    ("two-tags", dict(edit_doc=lambda d: d["extra"].update(x={"__tuple__": [], "__float__": "nan"})),
     "must be the object's only key"),
    ("groups-count", dict(edit_doc=lambda d: d["optimizer"]["param_groups"].append(d["optimizer"]["param_groups"][0])),
     "parameter groups do not match"),
    ("python-rng", dict(edit_doc=lambda d: d["rng"]["python"][1].pop()), "rng.python is not a Python random state"),
    ("numpy-rng", dict(edit_doc=lambda d: d["rng"]["numpy"].update(key=[2**33] * 624)), "rng.numpy is not"),
    ("torch-rng-dtype", dict(edit_tensors=lambda t: t.update({"rng/torch": torch.zeros(3)})), "'rng/torch' must be a 1-D uint8"),
    ("generator-missing", dict(edit_doc=_set("generators", []),
                               edit_tensors=lambda t: t.pop("generator/noise")), "has no generator 'noise'"),
]


@pytest.mark.parametrize("case_id,edits,pattern", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_crafted_training_state_is_refused_before_anything_changes(tmp_path, case_id, edits, pattern):
    path, _, _ = _saved(tmp_path)
    crafted = _rewrite(path, **edits)
    head, opt = _run("sf-normuon")
    before = {k: v.clone() for k, v in head.state_dict().items()}
    opt_before = opt.state_dict()
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_training_state(crafted, head, opt, generators={"noise": torch.Generator()})
    assert str(crafted) in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    assert opt.state_dict()["param_groups"] == opt_before["param_groups"]


def test_unknown_dunder_key_is_plain_data(tmp_path):
    """A key that is not one of the codec's tags is an ordinary dict key (it cannot name code)."""
    doc, tensors = encode_tree({"__pickle__": 1, "a": (1, 2)})
    assert decode_tree(doc, tensors) == {"__pickle__": 1, "a": (1, 2)}


@pytest.mark.parametrize("make", [
    lambda p: p.mkdir(),
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(os.urandom(1000)),
])
def test_unreadable_files(tmp_path, make):
    head, opt = _run("adamw", TINY)
    p = tmp_path / "state.safetensors"
    make(p)
    with pytest.raises(CheckpointError, match=r"is a directory|corrupt or truncated"):
        load_training_state(p, head, opt)
    with pytest.raises(CheckpointError, match="no such file"):
        load_training_state(tmp_path / "missing.safetensors", head, opt)


def test_unsupported_values_are_refused_at_save_time(tmp_path):
    head, opt = _run("adamw", TINY)
    with pytest.raises(TypeError, match=r"state.bad: cannot store a builtins.set"):
        save_training_state(tmp_path / "s.safetensors", head, opt, step=0, extra={"bad": {1, 2}})
    assert not (tmp_path / "s.safetensors").exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the codec, property-based
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
)
_keys = st.one_of(st.text(max_size=6), st.integers(-5, 5), st.sampled_from(["__tuple__", "__tensor__"]))
_tensors = st.builds(
    lambda shape, dtype, seed: (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 1e3).to(dtype),
    st.lists(st.integers(0, 3), max_size=3), st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]),
    st.integers(0, 100),
)
_trees = st.recursive(
    st.one_of(_scalars, _tensors),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_keys, children, max_size=4),
    ),
    max_leaves=20,
)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float):  # the same 64 bits: sign of zero, NaN sign and payload included
        return isinstance(b, float) and struct.pack("<d", a) == struct.pack("<d", b)
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=150, deadline=None)
@given(_trees)
def test_codec_round_trips_exactly_through_strict_json(tree):
    doc, tensors = encode_tree(tree)
    text = json.dumps(doc, allow_nan=False)  # strict JSON, as written to the file
    assert _same(decode_tree(json.loads(text), tensors), tree)


def test_codec_keeps_tensor_identity_and_snapshots_values():
    t = torch.ones(3)
    doc, tensors = encode_tree({"a": t, "b": [t]})
    t.add_(1)  # a later in-place update does not change what was encoded
    back = decode_tree(doc, tensors)
    assert back["a"] is back["b"][0] and torch.equal(back["a"], torch.ones(3))


# ---------------------------------------------------------------- the CLI
def test_cli_resume_from_a_pickle_is_one_error_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "training_state.pt"
    torch.save({"rng": _Pwn(str(tmp_path / "pwned"))}, str(bad))
    argv = ["head", "--synthetic", "12", "--frames", "16", "--dim", "32", "--depth", "1", "--heads", "2",
            "--steps", "2", "--batch-size", "4", "--no-progress", "--val-every", "1", "--val-seeds", "1",
            "--val-t-buckets", "2", "--recipe", "adamw", "--resume", str(bad), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]  # besides the "writing to DIR/" line
    assert len(errors) == 1 and errors[0] == lines[-1]
    assert "is a pickle" in errors[0] and str(bad) in errors[0]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("make,pattern", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"\x00" * 100), "corrupt or truncated"),
])
def test_cli_eval_bad_checkpoint_is_one_error_line_and_exit_2(tmp_path, capsys, make, pattern):
    p = tmp_path / "best.safetensors"
    make(p)
    assert main(["eval", str(p), "--synthetic", "12", "--frames", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fusion-train eval: error: ") and pattern in err


def test_cli_full_disk_is_one_error_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import errno

    import safetensors.torch

    def enospc(*args, **kwargs):  # the checkpoint writer hits a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", enospc)
    argv = ["head", "--synthetic", "12", "--frames", "16", "--dim", "32", "--depth", "1", "--heads", "2",
            "--steps", "2", "--batch-size", "4", "--no-progress", "--val-every", "1", "--val-seeds", "1",
            "--val-t-buckets", "2", "--recipe", "adamw", "--out", str(tmp_path / "run")]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error: " in line]  # besides "writing to DIR/"
    assert len(errors) == 1 and "could not write" in errors[0] and "full" in errors[0]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".fusion-tmp")]


def test_codec_docstring_example():
    import doctest

    from fusion_train.training import state_codec

    result = doctest.testmod(state_codec)
    assert result.attempted > 0 and result.failed == 0


def test_codec_keeps_nan_sign_and_payload_and_negative_zero():
    neg_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0]
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000123))[0]
    tree = [neg_nan, payload_nan, -0.0, math.nan, -math.inf]
    doc, tensors = encode_tree(tree)
    back = decode_tree(json.loads(json.dumps(doc, allow_nan=False)), tensors)
    assert [struct.pack("<d", x) for x in back] == [struct.pack("<d", x) for x in tree]

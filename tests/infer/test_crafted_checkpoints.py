"""Crafted checkpoint files: every bad one is a CheckpointError naming the file and the field.

Each case writes one file (bad metadata, mismatched or hostile tensors, a corrupt container,
a pickle carrying code, …) and asserts that ``load_head`` — and ``read_metadata`` where the
problem is in the header — raises :class:`CheckpointError` whose message contains the file's path
and matches the field, without building a real model for anything the header already rules out.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fusion_infer import CheckpointError, ControlHead, ControlHeadConfig, load_head, read_metadata
from fusion_infer import checkpoint as ckpt
from fusion_infer.checkpoint import METADATA_KEY, make_metadata

CFG = dict(in_channels=8, out_channels=2, dim=32, depth=1, heads=2, freq_dim=32, modulator_rows=4)
TARGETS = {"names": ["rms", "flux"], "mean": [0.0, -3.5], "std": [1.0, 2.0], "units": "dB"}


def _good() -> tuple[dict[str, torch.Tensor], dict]:
    torch.manual_seed(0)
    head = ControlHead(ControlHeadConfig(**CFG))
    for p in head.parameters():  # non-zero weights, so a wrong load would be visible
        torch.nn.init.normal_(p, std=0.02)
    tensors = {k: v.detach().contiguous().clone() for k, v in head.state_dict().items()}
    meta = make_metadata("ControlHead", head.config.to_dict(), noise_schedule="rectified_flow", loss="huber",
                         recipe="adamw", step=7, weights="raw", targets=TARGETS)
    return tensors, meta


def _write(path: Path, tensors: dict[str, torch.Tensor], meta) -> Path:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors, str(path), metadata={METADATA_KEY: text})
    return path


def _meta_case(**changes):
    def build(path: Path) -> Path:
        tensors, meta = _good()
        for key, value in changes.items():
            if value is _DELETE:
                del meta[key]
            else:
                meta[key] = value
        return _write(path, tensors, meta)

    return build


def _config_case(**changes):
    def build(path: Path) -> Path:
        tensors, meta = _good()
        meta["model_config"].update(changes)
        return _write(path, tensors, meta)

    return build


def _targets_case(**changes):
    def build(path: Path) -> Path:
        tensors, meta = _good()
        for key, value in changes.items():
            if value is _DELETE:
                del meta["targets"][key]
            else:
                meta["targets"][key] = value
        return _write(path, tensors, meta)

    return build


def _raw_text_case(transform):
    """Edit the metadata JSON text itself (NaN/Infinity tokens, nesting, syntax)."""

    def build(path: Path) -> Path:
        tensors, meta = _good()
        return _write(path, tensors, transform(json.dumps(meta)))

    return build


def _tensor_case(edit):
    def build(path: Path) -> Path:
        tensors, meta = _good()
        edit(tensors)
        return _write(path, tensors, meta)

    return build


def _bytes_case(make_bytes):
    def build(path: Path) -> Path:
        path.write_bytes(make_bytes())
        return path

    return build


def _good_bytes() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = _write(Path(d) / "g.safetensors", *_good())
        return p.read_bytes()


def _raw_header(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


class _Pwn:
    """Unpickling this runs code: it creates the file named in ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pickle_case(path: Path) -> Path:
    torch.save({"weights": torch.zeros(2), "payload": _Pwn(str(path) + ".pwned")}, str(path))
    return path


def _raw_pickle_case(path: Path) -> Path:
    path.write_bytes(pickle.dumps(_Pwn(str(path) + ".pwned"), protocol=4))
    return path


_DELETE = object()
_DEEP = 100_000  # nesting that would blow Python's recursion limit in json.loads

# (case id, builder, regex the message must match). Every builder writes one crafted file.
CASES = [
    # ---- metadata: schema
    ("meta-not-object", _raw_text_case(lambda t: "[1, 2, 3]"), "metadata must be a JSON object"),
    ("meta-bad-json", _raw_text_case(lambda t: t[:-5]), "metadata is not valid JSON"),
    ("meta-deep-extra", _raw_text_case(lambda t: t[:-1] + ', "extra": ' + "[" * _DEEP + "]" * _DEEP + "}"),
     r"nests \d+ levels deep; at most 32 are allowed"),
    ("meta-deep-config", _raw_text_case(lambda t: t.replace('"dim": 32', '"dim": ' + "{\"a\":" * 5000 + "1" + "}" * 5000)),
     r"nests \d+ levels deep"),
    ("meta-missing-key", _meta_case(loss=_DELETE), r"missing required key\(s\) \['loss'\]"),
    ("meta-unknown-key", _meta_case(evil="x"), r"unknown key\(s\) \['evil'\]"),
    ("format-version-2", _meta_case(format_version=2), "format_version 2 is not supported"),
    ("format-version-bool", _meta_case(format_version=True), "format_version True is not supported"),
    ("model-class-unknown", _meta_case(model_class="os.system"), "model_class must be one of"),
    ("model-class-list", _meta_case(model_class=["ControlHead"]), "model_class must be one of"),
    ("schedule-dict", _meta_case(noise_schedule={"a": 1}), "noise_schedule must be one of"),
    ("loss-unknown", _meta_case(loss="hinge"), "loss must be one of"),
    ("recipe-empty", _meta_case(recipe=""), "recipe must be a non-empty string"),
    ("step-negative", _meta_case(step=-1), "step must be an int >= 0"),
    ("step-float", _meta_case(step=1.5), "step must be an int >= 0"),
    ("step-bool", _meta_case(step=True), "step must be an int >= 0"),
    ("weights-unknown", _meta_case(weights="ema"), "weights must be one of"),
    ("extra-not-object", _meta_case(extra=[1]), "extra must be a JSON object"),
    ("config-not-object", _meta_case(model_config="dim=32"), "model_config must be a JSON object"),
    # ---- metadata: targets
    ("targets-not-object", _meta_case(targets=[1, 2]), "targets must be a JSON object"),
    ("targets-missing-std", _targets_case(std=_DELETE), r"targets is missing \['std'\]"),
    ("targets-unknown-key", _targets_case(scale=[1, 1]), r"targets has unknown key\(s\) \['scale'\]"),
    ("targets-std-zero", _targets_case(std=[1.0, 0.0]), "targets.std values must be finite and > 0"),
    ("targets-std-nan", _raw_text_case(lambda t: t.replace('"std": [1.0, 2.0]', '"std": [NaN, 2.0]')),
     "targets.std values must be finite and > 0"),
    ("targets-mean-inf", _raw_text_case(lambda t: t.replace('"mean": [0.0, -3.5]', '"mean": [Infinity, 0]')),
     "targets.mean values must be finite"),
    ("targets-mean-str", _targets_case(mean=["0", 1.0]), "targets.mean values must be finite"),
    ("targets-names-int", _targets_case(names=[1, 2]), "targets.names must be non-empty strings"),
    ("targets-names-dup", _targets_case(names=["a", "a"]), "targets.names has duplicates"),
    ("targets-length", _targets_case(mean=[0.0]), "targets.names/mean/std must have the same length"),
    ("targets-units-int", _targets_case(units=3), "targets.units must be a string"),
    ("targets-vs-out-channels", _targets_case(names=["a", "b", "c"], mean=[0, 0, 0], std=[1, 1, 1]),
     r"targets lists 3 channel\(s\) but model_config.out_channels is 2"),
    # ---- metadata: model_config
    ("config-time-scale-inf", _raw_text_case(lambda t: t.replace('"time_scale": 1000.0', '"time_scale": Infinity')),
     "model_config.time_scale must be a finite number"),
    ("config-time-scale-nan", _raw_text_case(lambda t: t.replace('"time_scale": 1000.0', '"time_scale": NaN')),
     "model_config.time_scale must be a finite number"),
    ("config-unknown-field", _config_case(evil=1), "model_config is invalid for ControlHead.*evil"),
    ("config-heads-indivisible", _config_case(heads=3), "model_config is invalid for ControlHead.*divisible"),
    ("config-dim-string", _config_case(dim="32"), "model_config is invalid for ControlHead"),
    # ---- metadata against the header's tensor shapes (before any model is built)
    ("huge-dim", _config_case(dim=16384), r"model_config.dim=16384 exceeds every tensor dimension"),
    ("huge-depth", _config_case(depth=10**6), r"model_config.depth=1000000 exceeds the number of tensors"),
    ("huge-freq-dim", _config_case(freq_dim=2**20), r"model_config.freq_dim=1048576 exceeds"),
    ("huge-mlp-hidden", _config_case(mlp_hidden_dim=10**9), r"model_config.mlp_hidden_dim=1000000000 exceeds"),
    ("huge-mlp-ratio", _config_case(mlp_ratio=1e6), "shape mismatches.*blocks.0.mlp.0.weight"),
    ("smaller-dim", _config_case(dim=16), "shape mismatches"),
    ("deeper-than-file", _config_case(depth=2), r"missing tensors \['blocks.1"),
    ("zero-size-tensor-cannot-lift-bound",
     lambda p: _write(p, {**_good()[0], "junk": torch.zeros(0, 10**6)}, {**_good()[1], "model_config": {**_good()[1]["model_config"], "dim": 16384}}),
     r"model_config.dim=16384 exceeds"),
    # ---- tensors
    ("tensor-missing", _tensor_case(lambda t: t.pop("final.linear.bias")), r"missing tensors \['final.linear.bias'\]"),
    ("tensor-unexpected", _tensor_case(lambda t: t.update(extra=torch.zeros(3))), r"unexpected tensors \['extra'\]"),
    ("tensor-shape", _tensor_case(lambda t: t.update({"final.linear.bias": torch.zeros(3)})),
     r"final.linear.bias: file \(3,\) vs model \(2,\)"),
    ("tensor-int64", _tensor_case(lambda t: t.update({"latent_proj.weight": torch.zeros(32, 8, dtype=torch.int64)})),
     "dtype mismatches latent_proj.weight: file I64 vs model float32"),
    ("tensor-bool", _tensor_case(lambda t: t.update({"latent_proj.bias": torch.zeros(32, dtype=torch.bool)})),
     "dtype mismatches latent_proj.bias: file BOOL"),
    ("tensor-nan", _tensor_case(lambda t: t["blocks.0.qkv.weight"].view(-1).__setitem__(5, float("nan"))),
     "tensor 'blocks.0.qkv.weight' holds NaN or inf"),
    ("tensor-inf", _tensor_case(lambda t: t["final.linear.bias"].__setitem__(0, float("-inf"))),
     "tensor 'final.linear.bias' holds NaN or inf"),
    # ---- the container
    ("empty-file", _bytes_case(lambda: b""), "corrupt or truncated"),
    ("random-bytes", _bytes_case(lambda: os.urandom(4096)), "corrupt or truncated"),
    ("truncated", _bytes_case(lambda: _good_bytes()[:-100]), "corrupt or truncated"),
    ("trailing-garbage", _bytes_case(lambda: _good_bytes() + b"\0" * 7), "corrupt or truncated"),
    ("header-length-huge", _bytes_case(lambda: struct.pack("<Q", 2**62) + _good_bytes()[8:]), "corrupt or truncated"),
    ("header-shape-lies", _bytes_case(lambda: _raw_header(
        {"__metadata__": {METADATA_KEY: json.dumps(_good()[1])},
         "w": {"dtype": "F32", "shape": [16384, 16384], "data_offsets": [0, 64]}}, b"\0" * 64)),
     "corrupt or truncated"),
    ("header-metadata-not-string", _bytes_case(lambda: _raw_header(
        {"__metadata__": {METADATA_KEY: 3}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)),
     "corrupt or truncated"),
    ("no-fusion-metadata", lambda p: (save_file({"w": torch.zeros(2)}, str(p)), p)[1],
     "no 'fusion' metadata"),
    ("torch-save-pickle-with-code", _pickle_case, "corrupt or truncated, or not a safetensors file"),
    ("raw-pickle-with-code", _raw_pickle_case, "corrupt or truncated, or not a safetensors file"),
]

_HEADER_LEVEL = {
    "meta-not-object", "meta-bad-json", "meta-deep-extra", "meta-deep-config", "meta-missing-key",
    "meta-unknown-key", "format-version-2", "format-version-bool", "model-class-unknown", "model-class-list",
    "schedule-dict", "loss-unknown", "recipe-empty", "step-negative", "step-float", "step-bool",
    "weights-unknown", "extra-not-object", "config-not-object", "targets-not-object", "targets-missing-std",
    "targets-unknown-key", "targets-std-zero", "targets-std-nan", "targets-mean-inf", "targets-mean-str",
    "targets-names-int", "targets-names-dup", "targets-length", "targets-units-int", "config-time-scale-inf",
    "config-time-scale-nan", "empty-file", "random-bytes", "truncated", "trailing-garbage",
    "header-length-huge", "header-shape-lies", "header-metadata-not-string", "no-fusion-metadata",
    "torch-save-pickle-with-code", "raw-pickle-with-code",
}


def test_there_are_at_least_thirty_crafted_files():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)
    assert _HEADER_LEVEL <= {c[0] for c in CASES}


class _Recorder:
    """Stands in for ControlHead in the registry and records on which device it was built."""

    built: list[str] = []

    def __new__(cls, config):
        cls.built.append(torch.empty(0).device.type)  # "meta" inside torch.device("meta")
        return ControlHead(config)


@pytest.fixture
def recorded(monkeypatch):
    _Recorder.built = []
    monkeypatch.setitem(ckpt.MODEL_CLASSES, "ControlHead", (_Recorder, ControlHeadConfig))
    return _Recorder.built


@pytest.mark.parametrize("case_id,build,pattern", CASES, ids=[c[0] for c in CASES])
def test_crafted_file_is_a_checkpoint_error_naming_file_and_field(tmp_path, recorded, case_id, build, pattern):
    path = build(tmp_path / f"{case_id}.safetensors")
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_head(path)
    assert str(path) in str(info.value)
    # Nothing the header rules out ever reaches a real model: at most a meta-device skeleton.
    assert all(device == "meta" for device in recorded), recorded
    if case_id in _HEADER_LEVEL:
        with pytest.raises(CheckpointError, match=pattern):
            read_metadata(path)
    assert not Path(str(path) + ".pwned").exists()  # no pickle was ever loaded


@pytest.mark.parametrize("case_id", ["huge-dim", "huge-depth", "huge-freq-dim", "huge-mlp-hidden",
                                     "zero-size-tensor-cannot-lift-bound", "targets-length", "meta-deep-config",
                                     "targets-vs-out-channels"])
def test_hostile_sizes_fail_before_any_model_is_built(tmp_path, recorded, case_id):
    build = {c[0]: c[1] for c in CASES}[case_id]
    path = build(tmp_path / "f.safetensors")
    assert path.stat().st_size < 200_000  # a small file …
    with pytest.raises(CheckpointError):
        load_head(path)
    assert recorded == []  # … asking for a huge model: not even a meta skeleton was built


def test_nonfinite_weights_load_with_allow_nonfinite(tmp_path):
    path = {c[0]: c[1] for c in CASES}["tensor-nan"](tmp_path / "nan.safetensors")
    loaded = load_head(path, allow_nonfinite=True)
    assert torch.isnan(loaded.model.blocks[0].qkv.weight).sum() == 1


def test_half_precision_weights_are_accepted_and_cast_exactly(tmp_path):
    tensors, meta = _good()
    half = {k: v.to(torch.float16) for k, v in tensors.items()}
    loaded = load_head(_write(tmp_path / "half.safetensors", half, meta))
    for name, t in loaded.model.state_dict().items():
        assert torch.equal(t, half[name].float()), name


def test_the_good_file_loads_exactly(tmp_path):
    tensors, meta = _good()
    loaded = load_head(_write(tmp_path / "good.safetensors", tensors, meta))
    for name, t in loaded.model.state_dict().items():
        assert torch.equal(t, tensors[name]), name
    assert loaded.targets.names == ("rms", "flux")


def test_directory_is_reported_as_a_directory(tmp_path):
    folder = tmp_path / "run.safetensors"
    folder.mkdir()
    for fn in (load_head, read_metadata):
        with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file") as info:
            fn(folder)
        assert str(folder) in str(info.value)


def test_missing_file_and_missing_parent(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_head(tmp_path / "nope.safetensors")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no such file"):
        load_head(tmp_path / "file" / "child.safetensors")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_head(fifo)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = _write(tmp_path / "locked.safetensors", *_good())
    path.chmod(0)
    try:
        with pytest.raises(CheckpointError, match="permission denied"):
            load_head(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_make_metadata_refuses_what_the_reader_refuses():
    with pytest.raises(CheckpointError, match="model_config.time_scale must be a finite number"):
        make_metadata("ControlHead", {**CFG, "time_scale": float("inf")}, noise_schedule="rectified_flow",
                      loss="huber", recipe="adamw", step=0, weights="raw")
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(CheckpointError, match="extra nests more than"):
        make_metadata("ControlHead", CFG, noise_schedule="rectified_flow", loss="huber", recipe="adamw",
                      step=0, weights="raw", extra=deep)


def test_nan_metrics_in_extra_still_load(tmp_path):
    """A diverged run's checkpoint (NaN validation metric) stays loadable: only extra may hold NaN."""
    tensors, meta = _good()
    meta["extra"] = {"metrics": {"val/median_mae": float("nan")}}
    loaded = load_head(_write(tmp_path / "diverged.safetensors", tensors, meta))
    assert loaded.metadata["extra"]["metrics"]["val/median_mae"] != loaded.metadata["extra"]["metrics"]["val/median_mae"]

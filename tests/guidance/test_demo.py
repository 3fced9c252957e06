"""The `make demo` pieces, on the synthetic twin with tiny training runs (the full demo is slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import demo  # noqa: E402
import demo_models  # noqa: E402


def tiny_settings() -> demo.DemoSettings:
    return demo.DemoSettings(
        pieces=8,
        synthetic=True,
        synthetic_frames=32,
        base=demo_models.TrainSettings(steps=2, batch=2),
        head=demo_models.TrainSettings(steps=2, batch=2),
        pool=2,
        steps=3,
        seeds=2,
        rho=0.5,
        repeats=3,
    )


def test_demo_end_to_end_on_tiny_settings(tmp_path):
    lines: list[str] = []
    s = tiny_settings()
    summary = demo.run_demo(s, tmp_path / "out", tmp_path / "cache", log=lines.append, progress=False)
    assert summary["models"] == "trained"
    speedup = summary["cache_speedup"]  # median of interleaved pairs, with its spread
    assert speedup["pairs"] == 3 and len(speedup["uncached_seconds"]) == len(speedup["cached_seconds"]) == 3
    assert speedup["min"] <= speedup["median"] <= speedup["max"]
    assert summary["control_error_db"]["metric"].startswith("mean absolute error")
    assert summary["bit_identical"] == {"guided": True, "unguided": True}
    assert len(summary["control_error_db"]["guided"]) == 2
    assert Path(summary["files"]["plot"]).stat().st_size > 1000
    saved = json.loads(Path(summary["files"]["json"]).read_text())
    assert saved["bit_identical"]["guided"] is True
    text = "\n".join(lines)
    assert "loudness mean absolute error, guided" in text and "bit for bit" in text and str(tmp_path / "out") in text
    assert "median of 3 interleaved pairs" in text and "range" in text
    # second run loads the cached checkpoints and reproduces the same renders
    again = demo.run_demo(s, tmp_path / "out", tmp_path / "cache", log=lambda _: None, progress=False)
    assert again["models"] == "cache"
    assert again["control_error_db"]["guided"] == summary["control_error_db"]["guided"]


def test_gain_curves_are_bounded_and_smooth():
    g = demo_models.random_gain_curves(3, 64, 12.0, torch.Generator().manual_seed(0))
    assert g.shape == (3, 64) and g.abs().max() <= 12.0
    assert g.diff(dim=1).abs().max() < 24.0 / 9 + 1e-4  # linear between 8 knots over 64 frames


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = demo_models.BaseDiT(demo_models.BASE_CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path / "m.safetensors"
    demo_models.save_checkpoint(path, model, {"note": 1})
    loaded, meta = demo_models.load_checkpoint(path)
    assert type(loaded) is demo_models.BaseDiT and meta == {"note": 1}
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        demo_models.load_checkpoint(bad)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_short_training_lowers_the_losses():
    data = demo.load_data(tiny_settings(), None)
    latents, loud, stats = demo.loudness_stats(data)
    _, base_losses = demo_models.train_base_rectified_flow(
        latents, demo_models.TrainSettings(steps=12, batch=4, lr=5e-3), log=None
    )
    ext = demo.loudness_extractor(data.spec, data.latent_mean, data.latent_std)
    _, head_losses = demo_models.train_loudness_head(
        latents,
        lambda x: (ext(x)[:, :1] - stats["mean"]) / stats["std"],
        data.latent_std,
        demo_models.TrainSettings(steps=12, batch=4, lr=5e-3),
        log=None,
    )
    assert sum(base_losses[-4:]) < sum(base_losses[:4])
    assert sum(head_losses[-4:]) < sum(head_losses[:4])


@pytest.mark.slow
def test_make_demo_script_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--out-dir", str(tmp_path), "--seeds", "2"],
        capture_output=True, text=True, timeout=1800, check=True,
    )
    assert "bit for bit (guided / unguided) | True / True" in out.stdout


def test_make_demo_installs_only_the_demo_extra(tmp_path):
    """`make demo` installs the `demo` extra (music21, matplotlib), never the test extras."""
    import shutil

    tomllib = pytest.importorskip("tomllib")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), "demo", f"VENV={tmp_path / 'venv'}"],
                          capture_output=True, text=True, check=True).stdout
    assert 'pip install -e ".[demo]"' in plan and "[test]" not in plan
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["demo"] == ["fusion-dit[data,viz]"]
    assert not any(name.startswith(("pytest", "hypothesis", "ruff")) for name in extras["data"] + extras["viz"])

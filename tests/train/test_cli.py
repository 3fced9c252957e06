"""The fusion-train command line, in-process through main(argv)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fusion_train import RECIPES
from fusion_train.cli import main

SMALL = ["--synthetic", "12", "--frames", "16"]
HEAD = ["--dim", "32", "--depth", "1", "--heads", "2", "--steps", "2", "--batch-size", "4", "--no-progress",
        "--val-every", "1", "--val-seeds", "1", "--val-t-buckets", "2"]


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["head", "--help"], ["eval", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: fusion-train" in out
    if argv == ["head", "--help"]:
        assert "--recipe" in out and "sf-normuon" in out and "--diversity-reference" in out


def test_data_json(capsys):
    assert main(["data", *SMALL, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "synthetic" and info["shape"] == [12, 64, 16] and len(info["controls"]) == 5


def test_head_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["head", *SMALL, *HEAD, "--recipe", "adamw", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best val median MAE" in printed and (out / "best.safetensors").is_file()
    assert main(["eval", str(out / "best.safetensors"), *SMALL, "--val-seeds", "1", "--val-t-buckets", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    from fusion_infer import read_metadata

    stored = read_metadata(out / "best.safetensors")["extra"]["metrics"]
    assert metrics["val/median_mae"] == pytest.approx(stored["val/median_mae"], rel=1e-6)
    assert main(["eval", str(out / "best.safetensors"), *SMALL, "--val-seeds", "1"]) == 0
    assert "recipe=adamw" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["head", "--recipe", "lion"], "invalid choice: 'lion'"),
        (["head", "--steps", "0"], "expected a positive integer, got '0'"),
        (["head", "--loss", "hinge"], "invalid choice: 'hinge'"),
        (["head", "--noise-schedule", "ddpm"], "invalid choice: 'ddpm'"),
        (["head", "--lr", "abc"], "expected a positive number"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required"),
    ],
)
def test_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_library_errors_are_clear(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.safetensors"), *SMALL]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["head", *SMALL, *HEAD, "--warm-start"]) == 2
    assert "--warm-start and --diversity-warmup need --diversity-reference" in capsys.readouterr().err
    assert main(["head", *SMALL, *HEAD, "--recipe", "adamw", "--hot-dtype", "bf16"]) == 2
    assert "--hot-dtype applies to FusionOpt recipes" in capsys.readouterr().err
    if "muon+mona" not in RECIPES:
        assert main(["head", *SMALL, *HEAD, "--recipe", "muon+mona"]) == 2
        assert "issue-4" in capsys.readouterr().err


# One fresh interpreter (torch imports once) checks two things: fusion_infer's checkpoint reader
# and noise schedules never import fusion_train, and `python -m fusion_train --help` works.
FRESH = """
import runpy, sys
import fusion_infer, fusion_infer.checkpoint, fusion_infer.noise_schedules
bad = [m for m in sys.modules if m.startswith("fusion_train")]
assert not bad, f"fusion_infer imported {bad}"
sys.argv = ["fusion_train", "--help"]
runpy.run_module("fusion_train", run_name="__main__")
"""


def test_import_boundary_and_python_m_entry_point():
    proc = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "{data,head,eval}" in proc.stdout

"""The fusion-train command line, in-process through main(argv)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion_train import RECIPES
from fusion_train.cli import main, name_flags

SMALL = ["--synthetic", "12", "--frames", "16"]
HEAD = ["--dim", "32", "--depth", "1", "--heads", "2", "--steps", "2", "--batch-size", "4", "--no-progress",
        "--val-every", "1", "--val-seeds", "1", "--val-t-buckets", "2"]


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["head", "--help"], ["eval", "--help"],
                                  ["plot", "--help"]])
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
    assert "{data,head,eval,plot}" in proc.stdout


# --------------------------------------------------------------------------- first-hour behaviour
def _subparsers():
    from fusion_train.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_choices_match_the_library():
    """The CLI spells its choices out (no torch import for --help); they must equal the library's."""
    from fusion_infer.noise_schedules import NOISE_SCHEDULES
    from fusion_train import cli
    from fusion_train.training.loop import TRAIN_RECIPES
    from fusion_train.training.losses import LOSSES

    assert cli.TRAIN_RECIPES == TRAIN_RECIPES
    assert cli.LOSSES == tuple(LOSSES)
    assert cli.NOISE_SCHEDULES == tuple(sorted(NOISE_SCHEDULES))


def test_every_option_states_its_default_and_meaning():
    from fusion_train.cli import _HelpFormatter

    parser, subs = _subparsers()
    formatter = _HelpFormatter("fusion-train")
    missing = []
    for name, p in subs.items():
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = formatter._get_help_string(action)
            if "default" not in text or len(text.split()) < 3:
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)


def test_help_imports_no_torch():
    code = ("import sys\nfrom fusion_train.cli import main, name_flags\n"
            "try:\n    main(['head', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'fusion_infer') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--recipe" in proc.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert re.match(r"fusion-train \d+\.\d+", capsys.readouterr().out)


def test_errors_name_the_flag_not_the_field(capsys):
    assert main(["head", *SMALL, *HEAD, "--dim", "30", "--heads", "8"]) == 2
    err = capsys.readouterr().err
    assert "error: --dim (30) must be divisible by --heads (8)" in err and "ControlHeadConfig" not in err
    assert name_flags("HeadTrainConfig.batch_size must be an int >= 1") == "--batch-size must be an int >= 1"
    assert name_flags("n_pieces must be a positive int, got 0") == "--pieces must be a positive int, got 0"
    assert name_flags("(100 steps, 3 s)") == "(100 steps, 3 s)"  # prose is left alone


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["head", *SMALL, *HEAD], ["eval", "x.safetensors"]])
def test_device_cuda_without_cuda_is_a_usage_error(command, tmp_path, capsys):
    if command[0] == "eval":
        command = ["eval", str(_trained(tmp_path))]
        capsys.readouterr()
    assert main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fusion-train {command[0]}: error: --device cuda: CUDA is not available")
    assert main([*command, "--device", "tpu"]) == 2
    assert "--device 'tpu' is not a torch device" in capsys.readouterr().err


def _trained(tmp_path, *extra):
    out = tmp_path / "run"
    assert main(["head", *SMALL, "--data-seed", "1", *HEAD, "--recipe", "adamw", "--no-plot",
                 "--out", str(out), *extra]) == 0
    return out / "best.safetensors"


def test_default_out_folder_is_created_and_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["head", *SMALL, *HEAD, "--recipe", "adamw", "--no-plot"]) == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("head-adamw-")
    assert (runs[0] / "best.safetensors").is_file() and (runs[0] / "last.safetensors").is_file()
    captured = capsys.readouterr()
    assert f"writing to {Path('runs') / runs[0].name}/" in captured.err


def test_ctrl_c_ends_with_one_line_and_keeps_finished_work(tmp_path, monkeypatch, capsys):
    from fusion_train.training import loop

    real_fit = loop.fit

    def fit_then_interrupt(*args, **kwargs):
        real_fit(*args, **{**kwargs, "steps": 2})  # two finished steps, best.safetensors written
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "fit", fit_then_interrupt)
    out = tmp_path / "run"
    assert main(["head", *SMALL, *HEAD, "--recipe", "adamw", "--steps", "50", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"fusion-train head: interrupted; kept in {out}/: best.safetensors, telemetry.jsonl"
    assert "Traceback" not in "\n".join(err)
    from fusion_infer import load_head

    assert load_head(out / "best.safetensors").metadata["step"] == 2


def test_checkpoint_records_data_validation_and_lr(tmp_path):
    from fusion_infer import read_metadata

    path = _trained(tmp_path, "--val-seeds", "1", "--val-t-buckets", "2")
    extra = read_metadata(path)["extra"]
    assert extra["data"]["source"] == "synthetic"
    assert (extra["data"]["n"], extra["data"]["frames"], extra["data"]["seed"]) == (12, 16, 1)
    assert extra["validation"]["seeds"] == [0] and extra["validation"]["t_buckets"] == 2
    assert extra["effective_lr"] == 1e-3  # --lr not given: the adamw recipe's default


def test_eval_defaults_to_the_training_data_and_validation(tmp_path, capsys):
    from fusion_infer import read_metadata

    path = _trained(tmp_path, "--val-seeds", "1", "--val-t-buckets", "3")
    capsys.readouterr()
    assert main(["eval", str(path), "--json"]) == 0  # no data options at all
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    stored = read_metadata(path)["extra"]["metrics"]
    assert metrics["val/median_mae"] == stored["val/median_mae"]  # same data, seeds and t-grid
    assert sorted(k for k in metrics if "@t=" in k) == sorted(k for k in stored if "@t=" in k)
    assert "warning" not in captured.err
    # overriding warns, naming both
    assert main(["eval", str(path), "--synthetic", "16", "--val-seeds", "2", "--json"]) == 0
    err = capsys.readouterr().err
    assert "warning: evaluating on synthetic (16 excerpts × 16 frames, seed 1), but the head was trained " \
           "on synthetic (12 excerpts × 16 frames, seed 1)" in err
    assert "--val-seeds 2 uses seeds [0, 1]; training validated with [0]" in err


def test_eval_of_a_checkpoint_without_recorded_data_warns():
    from fusion_train.cli import _eval_data

    args = argparse.Namespace(checkpoint="old.safetensors", synthetic=None, pieces=None, excerpts_per_piece=None,
                              frames=None, data_seed=None, cache_dir=None)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        desc = _eval_data(args, None)
    assert desc["source"] == "music21" and desc["config"]["n_pieces"] == 200
    assert "old.safetensors records no training data; evaluating on the default data, music21 (200" in err.getvalue()


def test_plot_command_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = _trained(tmp_path)
    capsys.readouterr()
    assert main(["plot", str(path.parent)]) == 0
    png = Path(capsys.readouterr().out.strip())
    assert png == path.parent / "training.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "telemetry.jsonl does not exist" in capsys.readouterr().err


def test_data_prints_where_the_cache_lives(tmp_path, capsys):
    pytest.importorskip("music21")
    argv = ["data", "--pieces", "2", "--excerpts-per-piece", "1", "--frames", "48", "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"data cache: {tmp_path / 'reference_data'}" in captured.err
    assert str(tmp_path / "reference_data") in captured.out  # the summary names the data's folder


def test_data_ctrl_c_keeps_rendered_pieces_and_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("music21")
    from fusion_train.data import reference

    original, calls = reference._render_piece, []

    def interrupt_second(piece_id, config_dict):
        calls.append(piece_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(piece_id, config_dict)

    monkeypatch.setattr(reference, "_render_piece", interrupt_second)
    argv = ["data", "--pieces", "2", "--excerpts-per-piece", "1", "--frames", "48", "--cache-dir", str(tmp_path),
            "--json"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"fusion-train data: interrupted; rendered pieces are kept in "
                       f"{tmp_path / 'reference_data' / 'pieces'}; run the same command again to resume")
    monkeypatch.setattr(reference, "_render_piece", original)
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["excerpts"] == 2 and info["cache"] == "built"

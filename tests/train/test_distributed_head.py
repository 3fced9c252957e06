"""Head training under torchrun (fusion_train/training/parallel.py): DDP and FSDP2 (``--fsdp``)
against one process with the same global batch, one writer; argument errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fusion_train import HeadTrainConfig
from fusion_train.cli import main
from fusion_train.training.parallel import model_class, rank_slice, resolve_parallel

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["head", "--synthetic", "48", "--frames", "16", "--steps", "30", "--dim", "32", "--depth", "1",
        "--heads", "2", "--no-progress", "--batch-size", "8", "--val-every", "10", "--hot-dtype", "fp32"]


def test_rank_slice_partitions_the_global_batch():
    assert [rank_slice(12, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert rank_slice(5, 0, 1) == slice(0, 5)
    with pytest.raises(ValueError, match="batch_size 10 must be divisible by the number of processes \\(4\\)"):
        rank_slice(10, 0, 4)


def test_parallel_modes_are_checked():
    with pytest.raises(ValueError, match="parallel must be one of"):
        HeadTrainConfig(parallel="tp")
    if not torch.distributed.is_initialized():
        assert resolve_parallel("auto") == "none"
        with pytest.raises(ValueError, match="parallel='fsdp' needs torch.distributed"):
            resolve_parallel("fsdp")


def test_model_class_of_a_plain_model():
    assert model_class(nn.Linear(2, 2)) is nn.Linear


def test_fsdp_flag_without_torchrun_is_a_clear_error(capsys):
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # pragma: no cover
        pytest.skip("running under torchrun")
    assert main(["head", "--synthetic", "12", "--frames", "16", "--steps", "1", "--fsdp"]) == 2
    assert "--fsdp needs several processes" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, nproc: int, *extra: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / ".shim"), os.environ.get("PYTHONPATH", "")])}
    if nproc == 1:
        cmd = [sys.executable, "-m", "fusion_train.cli", *ARGS, "--out", str(out), *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), "-m", "fusion_train.cli", *ARGS, "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("best val median MAE")]
    assert len(lines) == 1, proc.stdout  # one writer prints
    return float(lines[0].split()[4])


@pytest.mark.slow
def test_torchrun_ddp_and_fsdp_match_one_process(tmp_path):
    """Same global batch: the 2-process runs (DDP, FSDP2) reach the single-process validation MAE
    (each rank computes its slice of the same global batch, so only rounding differs)."""
    one = _run(tmp_path / "one", 1)
    ddp = _run(tmp_path / "ddp", 2)
    fsdp = _run(tmp_path / "fsdp", 2, "--fsdp")
    assert abs(ddp - one) <= 0.02 * one and abs(fsdp - one) <= 0.02 * one, (one, ddp, fsdp)
    for name in ("ddp", "fsdp"):
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == ["best.safetensors", "last.safetensors", "telemetry.jsonl", "training.png"]  # rank 0 alone
        ref = (tmp_path / "one" / "telemetry.jsonl").read_text().splitlines()
        got = (tmp_path / name / "telemetry.jsonl").read_text().splitlines()
        assert len(got) == len(ref)  # rank 0 alone logged
        assert [json.loads(x)["step"] for x in got] == [json.loads(x)["step"] for x in ref]

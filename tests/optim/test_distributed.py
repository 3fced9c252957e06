"""Distributed FusionOpt (fusion_train/optim/distributed.py) on CPU with gloo and spawned processes.

Every rank runs a single-process FusionOpt on the same global gradients next to the distributed one
and compares (tests/optim/dist_workers.py). The default run spawns one 2-rank group that runs
several checks; 3 ranks, resharded resumes and end-to-end FSDP2 training are ``slow``.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fusion_train import FusionOpt
from fusion_train.optim.distributed import row_ranges

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, checks: list[str], tmp: Path) -> None:
    """Run ``checks`` (functions of dist_workers) on ``world`` gloo ranks; fail with a rank's traceback."""
    from tests.optim import dist_workers

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    res = tmp / f"results_{world}_{checks[0]}"
    res.mkdir()
    try:
        mp.spawn(dist_workers.run_checks, args=(world, _free_port(), checks, str(tmp), str(res)), nprocs=world)
    except Exception as exc:  # show the failing rank's own traceback
        errs = sorted(res.glob("*.err"))
        raise AssertionError(errs[0].read_text() if errs else str(exc)) from None
    assert len(list(res.glob("*.ok"))) == world


@given(rows=st.integers(0, 200), world=st.integers(1, 9))
def test_row_ranges_are_torch_chunk(rows, world):
    ranges = row_ranges(rows, world)
    assert len(ranges) == world
    sizes = [hi - lo for lo, hi in ranges]
    chunks = [c.shape[0] for c in torch.arange(rows).chunk(world)] if rows else []
    assert sizes == chunks + [0] * (world - len(chunks))
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])) and sum(sizes) == rows


def test_set_auto_hot_dtype_checks_the_name():
    from fusion_train.optim.hot_dtype import set_auto_hot_dtype

    with pytest.raises(ValueError, match="name must be 'bf16' or 'fp32', got 'fp16'"):
        set_auto_hot_dtype("cpu", "fp16")


def test_process_group_needs_initialised_distributed():
    if torch.distributed.is_initialized():  # pragma: no cover
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(ValueError, match="process_group was given but torch.distributed is not initialised"):
        FusionOpt(nn.Linear(4, 4).parameters(), lr=0.1, process_group=object())


@pytest.mark.skipif(sys.platform == "win32", reason="gloo spawn tests run on Linux/macOS")
def test_two_ranks_fsdp2_ddp_dcp_errors(tmp_path):
    """FSDP2 (uneven/empty shards, a batch of 3 on 2 ranks) and DDP against one process;
    non-finite on one rank; DCP resume bit-identity; NS share and collective counts; FSDP2 export
    from rank 0; error cases."""
    spawn(2, ["check_errors", "check_sharded_parity", "check_sharded_parity_options", "check_hot_dtype_agreement",
              "check_replicated_parity",
              "check_nonfinite_one_rank", "check_dcp_resume", "check_ns_share", "check_export"], tmp_path)


@pytest.mark.slow
def test_three_ranks_uneven(tmp_path):
    spawn(3, ["check_sharded_parity", "check_sharded_parity_options", "check_nonfinite_one_rank", "check_dcp_resume", "check_ns_share"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("save_world,load_world", [(2, 1), (1, 2)])
def test_resharded_resume(tmp_path, save_world, load_world):
    spawn(save_world, ["check_reshard_save"], tmp_path)
    spawn(load_world, ["check_reshard_load"], tmp_path)


@pytest.mark.slow
def test_fsdp2_end_to_end_training(tmp_path):
    """Real FSDP2 forward/backward on a small DiT-shaped model, 2 ranks, vs one process."""
    spawn(2, ["check_end_to_end"], tmp_path)

"""Worker functions for the spawned-process tests of distributed FusionOpt (gloo, CPU).

Each worker runs on every rank, builds the same model from a seed, and compares against a
single-process FusionOpt that every rank also runs locally on the same global gradients.
"""

from __future__ import annotations

import os
import traceback

import torch
import torch.distributed as dist
from torch import nn

from fusion_train import FusionOpt

# (rows, cols): a same-shape batch of 3 (does not divide 2 ranks), a tall and a wide matrix, a
# one-row matrix (empty shard on every rank but the first) and a conv kernel
SPECTRAL_SHAPES = [(7, 12), (7, 12), (7, 12), (13, 5), (5, 13), (1, 9), (6, 2, 2, 2)]
SCALAR_SHAPES = [(7,), (3,), (1,), (4, 3)]


class Bag(nn.Module):
    """Parameters of the shapes above, nothing else (the gradients are injected)."""

    def __init__(self, seed: int = 0, dtype=torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.s = nn.ParameterList([nn.Parameter(torch.randn(*s, generator=g, dtype=dtype) * 0.3) for s in SPECTRAL_SHAPES])
        self.c = nn.ParameterList([nn.Parameter(torch.randn(*s, generator=g, dtype=dtype) * 0.1) for s in SCALAR_SHAPES])

    def groups(self):
        return [
            {"params": list(self.s), "group_type": "spectral", "param_names": [f"s{i}" for i in range(len(self.s))]},
            {"params": list(self.c), "group_type": "scalar", "param_names": [f"c{i}" for i in range(len(self.c))]},
        ]


def global_grads(step: int, shapes, bad: bool = False):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(*s, generator=g) for s in shapes]


def local_rows(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    from fusion_train.optim.distributed import row_ranges
    lo, hi = row_ranges(t.shape[0], world)[rank]
    return t[lo:hi]


def setup(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)


def run_checks(rank: int, world: int, port: int, checks: list[str], tmp: str, result_dir: str) -> None:
    """Run the named checks (functions of this module) on this rank; write OK/traceback files."""
    setup(rank, world, port)
    try:
        for name in checks:
            globals()[name](rank, world, tmp)
            dist.barrier()
        open(os.path.join(result_dir, f"rank{rank}.ok"), "w").write("ok")
    except BaseException:
        open(os.path.join(result_dir, f"rank{rank}.err"), "w").write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- helpers
def sharded_bag(seed: int = 0, dtype=torch.float32):
    from torch.distributed.fsdp import fully_shard
    bag = Bag(seed, dtype)
    fully_shard(bag)
    return bag


def inject(params, grads, sharded: bool) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor
    for p, g in zip(params, grads):
        g = g.to(p.dtype)
        p.grad = distribute_tensor(g, p.device_mesh, [Shard(0)], src_data_rank=None) if sharded else g.clone()


def params_of(bag: Bag) -> list:
    return list(bag.s) + list(bag.c)


def shapes() -> list:
    return SPECTRAL_SHAPES + SCALAR_SHAPES


def run_pair(rank, world, recipe, polyak, steps, *, opts=None, bad_rank=None, bad_step=None):
    """The same steps on the sharded bag and on a local single-process reference."""
    opts = dict(opts or {})
    ref, sh = Bag(), sharded_bag()
    o_ref = FusionOpt(ref.groups(), lr=0.02, recipe=recipe, polyak=polyak, **opts)
    o_sh = FusionOpt(sh.groups(), lr=0.02, recipe=recipe, polyak=polyak, **opts)
    assert o_sh._dist is not None and o_sh._dist.sharded
    for k in range(steps):
        grads = global_grads(k, shapes())
        losses = [torch.tensor(1.0 + 0.1 * r + 0.05 * k) for r in range(world)]
        ref_grads = grads
        if bad_step == k:
            ref_grads = [g.clone() for g in grads]
            ref_grads[0][0, 0] = float("nan")  # the reference sees the global NaN
            grads = [g.clone() for g in grads]
            if rank == bad_rank:
                # only this rank's shard of s0 holds the NaN (rows 0.. belong to rank 0)
                pass
        inject(params_of(ref), ref_grads, sharded=False)
        inject(params_of(sh), grads, sharded=True)
        if bad_step == k and rank == bad_rank:
            local = sh.s[0].grad.to_local()
            local.view(-1)[0] = float("nan")
        o_ref.step(loss=torch.stack(losses).mean())
        o_sh.step(loss=losses[rank])
    return ref, sh, o_ref, o_sh


def compare(ref: Bag, sh: Bag, rank: int, world: int, exact: bool, what: str) -> None:
    for i, (a, b) in enumerate(zip(params_of(ref), params_of(sh))):
        mine = local_rows(a.detach(), rank, world)
        got = b.to_local().detach()
        if exact:
            assert torch.equal(mine, got), f"{what}: param {i} differs (max {(mine - got).abs().max()})"
        else:
            if not mine.numel():
                assert got.shape == mine.shape
                continue
            scale = mine.abs().max().clamp_min(1e-12)
            rel = float((mine - got).abs().max() / scale)
            assert rel <= 1e-5, f"{what}: param {i} rel diff {rel}"


# --------------------------------------------------------------------------- checks
def check_sharded_parity(rank, world, tmp):
    """FSDP2 vs single process on the same global gradients: bit-equal without Polyak (the
    elementwise arithmetic is the same and whole matrices are orthogonalised), within 1e-5 with
    Polyak (its global sums are reduced in another order)."""
    cases = [("sf-normuon", "off", True), ("full", "off", True), ("muon", "off", True),
             ("sf-adamw", "off", True), ("sf-normuon", "relative", False), ("full", "relative", False),
             ("sf-adamw", "relative", False)]
    for recipe, polyak, exact in cases:
        opts = {"precondition_frequency": 2} if recipe == "full" else {}
        ref, sh, o_ref, o_sh = run_pair(rank, world, recipe, polyak, 4, opts=opts)
        compare(ref, sh, rank, world, exact, f"{recipe}/{polyak}")
        if o_ref.sf:
            o_ref.eval(), o_sh.eval()
            compare(ref, sh, rank, world, exact, f"{recipe}/{polyak} after eval()")
            o_ref.train(), o_sh.train()
            compare(ref, sh, rank, world, exact, f"{recipe}/{polyak} after train()")
        assert o_sh.param_groups[0]["k"] == 4


def check_ns_share(rank, world, tmp):
    """Each rank orthogonalises only its share of the spectral matrices."""
    _, _, _, o_sh = run_pair(rank, world, "muon", "off", 1)
    n = len(SPECTRAL_SHAPES)
    counts = [torch.zeros((), dtype=torch.int64) for _ in range(world)]
    dist.all_gather(counts, torch.tensor(o_sh._dist.ns_matrices))
    assert sum(int(c) for c in counts) == n, counts
    assert max(int(c) for c in counts) <= -(-n // world) + 1, counts


def check_nonfinite_one_rank(rank, world, tmp):
    """A NaN in one rank's shard only: the step is skipped on every rank (like the reference)."""
    ref, sh, o_ref, o_sh = run_pair(rank, world, "full", "relative", 3, bad_rank=0, bad_step=1)
    compare(ref, sh, rank, world, False, "nonfinite")
    assert float(o_sh.telemetry()["fusion/nonfinite_steps"]) == 1.0
    assert float(o_ref.telemetry()["fusion/nonfinite_steps"]) == 1.0

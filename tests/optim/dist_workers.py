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


def rank_losses(step: int, world: int) -> list[torch.Tensor]:
    """Per-rank losses whose mean (what FusionOpt's Polyak step sees) does not depend on ``world``."""
    return [torch.tensor(1.0 + 0.05 * step + 0.1 * (r - (world - 1) / 2)) for r in range(world)]


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


def run_pair(rank, world, recipe, polyak, steps, *, opts=None, bad_rank=None, bad_step=None,
             dtype=torch.float32, group_opts=None):
    """The same steps on the sharded bag and on a local single-process reference.

    ``group_opts``: per-group options, ``[spectral options, scalar options]``."""
    opts = dict(opts or {})
    ref, sh = Bag(dtype=dtype), sharded_bag(dtype=dtype)

    def groups(bag):
        gs = bag.groups()
        for g, extra in zip(gs, group_opts or []):
            g.update(extra)
        return gs

    o_ref = FusionOpt(groups(ref), lr=0.02, recipe=recipe, polyak=polyak, **opts)
    o_sh = FusionOpt(groups(sh), lr=0.02, recipe=recipe, polyak=polyak, **opts)
    assert o_sh._dist is not None and o_sh._dist.sharded
    for k in range(steps):
        grads = global_grads(k, shapes())
        losses = rank_losses(k, world)
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
        # the loss reaches the optimizer with Polyak off too (its EMA is telemetry)
        t_ref, t_sh = o_ref.telemetry(), o_sh.telemetry()
        for key in ("fusion/loss_ema", "fusion/gnorm_ema", "fusion/gamma_multiplier", "fusion/nonfinite_steps"):
            a, b = t_ref[key], t_sh[key]
            assert (a != a and b != b) or abs(a - b) <= 1e-5 * max(abs(a), 1e-12), (recipe, polyak, key, a, b)
        for p_ref, p_sh in zip(params_of(ref), params_of(sh)):
            assert torch.equal(o_ref.state[p_ref]["step"], o_sh.state[p_sh]["step"])


def check_sharded_parity_options(rank, world, tmp):
    """bf16 parameters (fp32 z and x), per-group options, AdamW bias correction from the
    per-parameter step counts, and a skipped *first* step (KL state left at its initial value):
    still bit-equal to one process without Polyak."""
    bf16 = run_pair(rank, world, "sf-normuon", "off", 3, dtype=torch.bfloat16, opts={"hot_dtype": "fp32"})
    compare(*bf16[:2], rank, world, True, "bf16")
    assert bf16[3].state[bf16[1].s[0]]["z"].dtype == torch.float32
    bf16[2].eval(), bf16[3].eval()
    compare(*bf16[:2], rank, world, True, "bf16 after eval()")
    per_group = [{"lr": 0.05, "ns_steps": 4, "normuon_scale": "preserve_norm", "lr_scale": "original",
                  "momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "mona_alpha": -0.5},
                 {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}]
    for recipe in ("full", "muon", "sf-normuon"):
        ref, sh, _, _ = run_pair(rank, world, recipe, "off", 3, group_opts=per_group,
                                 opts={"precondition_frequency": 2} if recipe == "full" else {})
        compare(ref, sh, rank, world, True, f"per-group options/{recipe}")
    ref, sh, _, _ = run_pair(rank, world, "sf-adamw", "off", 3, group_opts=per_group)
    compare(ref, sh, rank, world, True, "per-group options/sf-adamw")
    # a NaN on one rank at the first step, without Polyak: bit-equal, the KL seed step skipped
    ref, sh, o_ref, o_sh = run_pair(rank, world, "full", "off", 4, bad_rank=world - 1, bad_step=0,
                                    opts={"precondition_frequency": 2})
    compare(ref, sh, rank, world, True, "skipped first step")
    assert float(o_sh.telemetry()["fusion/nonfinite_steps"]) == 1.0
    # AdamW (no sf) scalar path and its first moment
    ref, sh, _, _ = run_pair(rank, world, "muon", "off", 3, opts={"weight_decay": 0.1})
    compare(ref, sh, rank, world, True, "muon + AdamW scalars")


def check_ns_share(rank, world, tmp):
    """Each rank orthogonalises only its share of the spectral matrices, and a step makes exactly
    one all-reduce (the global scalars) and two all-to-alls (out to the owners and back)."""
    calls = {"all_reduce": 0, "all_to_all_single": 0}
    originals = {name: getattr(dist, name) for name in calls}

    def counting(name):
        def fn(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return fn

    for name in calls:
        setattr(dist, name, counting(name))
    try:
        _, _, _, o_sh = run_pair(rank, world, "full", "relative", 3, opts={"precondition_frequency": 2})
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    assert calls == {"all_reduce": 3, "all_to_all_single": 6}, calls
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
    # nonfinite="raise": every rank raises, not only the one holding the NaN
    sh = sharded_bag()
    opt = FusionOpt(sh.groups(), lr=0.02, nonfinite="raise")
    grads = global_grads(0, shapes())
    inject(params_of(sh), grads, sharded=True)
    if rank == world - 1:
        sh.c[0].grad.to_local().fill_(float("inf"))
    try:
        opt.step()
    except FloatingPointError:
        pass
    else:
        raise AssertionError("nonfinite='raise' did not raise on this rank")


def check_replicated_parity(rank, world, tmp):
    """DDP-style: plain parameters and process_group=WORLD split the NS batches and all-gather."""
    for recipe, polyak, exact in [("sf-normuon", "off", True), ("full", "off", True), ("muon", "off", True),
                                  ("sf-adamw", "off", True), ("sf-normuon", "relative", False)]:
        ref, rep = Bag(), Bag()
        o_ref = FusionOpt(ref.groups(), lr=0.02, recipe=recipe, polyak=polyak)
        o_rep = FusionOpt(rep.groups(), lr=0.02, recipe=recipe, polyak=polyak, process_group=dist.group.WORLD)
        assert o_rep._dist is not None and not o_rep._dist.sharded
        for k in range(3):
            grads = global_grads(k, shapes())
            losses = rank_losses(k, world)
            inject(params_of(ref), grads, sharded=False)
            inject(params_of(rep), grads, sharded=False)
            o_ref.step(loss=torch.stack(losses).mean())
            o_rep.step(loss=losses[rank])
        for when in ("", " after eval()"):
            if when and o_ref.sf:
                o_ref.eval(), o_rep.eval()
            for i, (a, b) in enumerate(zip(params_of(ref), params_of(rep))):
                if exact:
                    assert torch.equal(a, b), f"replicated {recipe}/{polyak}{when}: param {i}"
                else:
                    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        if "ns5" in o_rep.components:
            assert 0 < o_rep._dist.ns_matrices < 3 * len(SPECTRAL_SHAPES)
    # plain parameters without a process group: untouched single-process behaviour
    assert FusionOpt(Bag().groups(), lr=0.02)._dist is None


def _dcp_save(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)


def _dcp_load(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    msd, osd = get_state_dict(model, opt)
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def _steps(bag, opt, ks, rank, world, sharded=True):
    for k in ks:
        grads = global_grads(k, shapes())
        losses = rank_losses(k, world)
        inject(params_of(bag), grads, sharded=sharded)
        opt.step(loss=losses[rank] if sharded else torch.stack(losses).mean())


# fp32 Newton–Schulz: a resharded resume runs in other processes, whose hot_dtype="auto" timing
# may decide differently from the saving run's (bf16 vs fp32 is a 1e-4 difference, not resharding)
OPTS = dict(lr=0.02, recipe="full", polyak="relative", precondition_frequency=2, hot_dtype="fp32")


def check_dcp_resume(rank, world, tmp):
    """DCP round trip at the same world size: the resumed run is bit-identical."""
    path = os.path.join(tmp, "dcp_same")
    a = sharded_bag()
    oa = FusionOpt(a.groups(), **OPTS)
    _ = _dcp_state_is_inert(a, oa)
    _steps(a, oa, range(3), rank, world)
    _dcp_save(a, oa, path)
    _steps(a, oa, range(3, 6), rank, world)
    b = sharded_bag(seed=7)  # different weights: the load must replace them
    ob = FusionOpt(b.groups(), **OPTS)
    _dcp_load(b, ob, path)
    assert ob.param_groups[0]["k"] == 3
    _steps(b, ob, range(3, 6), rank, world)
    for i, (x, y) in enumerate(zip(params_of(a), params_of(b))):
        assert torch.equal(x.to_local(), y.to_local()), f"param {i} differs after resume"
    for key in ("loss_ema", "gnorm_ema", "p_ema", "ratio"):
        assert torch.equal(getattr(oa._polyak, key), getattr(ob._polyak, key)), key
    oa.eval(), ob.eval()
    for i, (x, y) in enumerate(zip(params_of(a), params_of(b))):
        assert torch.equal(x.to_local(), y.to_local()), f"param {i} differs after eval()"


def _dcp_state_is_inert(model, opt):
    """get_optimizer_state_dict on a fresh optimizer must not take a step (state is prepopulated)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    before = [p.to_local().clone() for p in params_of(model)]
    osd = get_optimizer_state_dict(model, opt)
    assert opt.param_groups[0]["k"] == 0
    assert all(torch.equal(b, p.to_local()) for b, p in zip(before, params_of(model)))
    assert "fusion_extra" in osd["param_groups"][0]
    return osd


def check_reshard_save(rank, world, tmp):
    a = sharded_bag()
    oa = FusionOpt(a.groups(), **OPTS)
    _steps(a, oa, range(3), rank, world)
    _dcp_save(a, oa, os.path.join(tmp, "reshard"))


def check_reshard_load(rank, world, tmp):
    """Continue a checkpoint written at another world size; compare with one process doing all 6."""
    b = sharded_bag(seed=7)
    ob = FusionOpt(b.groups(), **OPTS)
    _dcp_load(b, ob, os.path.join(tmp, "reshard"))
    _steps(b, ob, range(3, 6), rank, world)
    ref = Bag()
    oref = FusionOpt(ref.groups(), **OPTS)
    _steps(ref, oref, range(6), 0, 1, sharded=False)
    compare(ref, b, rank, world, False, "resharded resume")


def check_export(rank, world, tmp):
    """export_checkpoint under FSDP2: every rank gathers, rank 0 alone writes the averaged weights,
    which equal a single-process export of the same training bit for bit (no Polyak)."""
    from safetensors.torch import load_file
    from torch.distributed.fsdp import fully_shard

    from fusion_infer.models.control_head import ControlHead, ControlHeadConfig
    from fusion_train import build_param_groups, export_checkpoint

    def head():
        torch.manual_seed(0)
        return ControlHead(ControlHeadConfig(in_channels=8, out_channels=3, dim=32, depth=1, heads=2))

    ref, sh = head(), head()
    fully_shard(sh)
    o_ref = FusionOpt(build_param_groups(ref), lr=0.01)
    o_sh = FusionOpt(build_param_groups(sh), lr=0.01)
    for k in range(2):
        grads = global_grads(k, [tuple(p.shape) for p in ref.parameters()])
        inject(list(ref.parameters()), grads, sharded=False)
        inject(list(sh.parameters()), grads, sharded=True)
        o_ref.step(), o_sh.step()
    out = os.path.join(tmp, "export")
    os.makedirs(out, exist_ok=True)
    path = export_checkpoint(sh, o_sh, os.path.join(out, "head.safetensors"))
    dist.barrier()
    assert sorted(os.listdir(out)) == ["head.safetensors"]  # one file, no temporaries
    got = load_file(str(path))
    o_ref.eval()
    want = {k: v.detach() for k, v in ref.state_dict().items()}
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert o_sh.training  # export does not switch the optimizer's mode


def check_errors(rank, world, tmp):
    import pytest
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    sh = sharded_bag()
    plain = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="mix of DTensor"):
        FusionOpt([{"params": [sh.s[0], plain], "group_type": "spectral"}], lr=0.1)
    mesh = sh.s[0].device_mesh
    col = nn.Parameter(distribute_tensor(torch.randn(8, 8), mesh, [Shard(1)]))
    with pytest.raises(ValueError, match=r"placements .*Shard\(dim=1\)"):
        FusionOpt([{"params": [col], "group_type": "spectral"}], lr=0.1)
    mesh2 = init_device_mesh("cpu", (1, world))
    two = nn.Parameter(distribute_tensor(torch.randn(8, 8), mesh2, [Replicate(), Shard(0)]))
    with pytest.raises(ValueError, match="2-D device mesh"):
        FusionOpt([{"params": [two], "group_type": "spectral"}], lr=0.1)
    with pytest.raises(ValueError, match="process_group is for replicated"):
        FusionOpt(sh.groups(), lr=0.1, process_group=dist.new_group(list(range(world))))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(),
                         nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 6))


def check_end_to_end(rank, world, tmp):
    """Real FSDP2 forward/backward (each rank 1/world of every global batch) vs one process on the
    whole batch; fp32 Newton–Schulz. Within 1e-5 relative: the gradients themselves differ in
    rounding (FSDP2's reduce-scatter averages per-rank means). An MLP rather than a DiT block:
    attention key biases have an exactly-zero true gradient, and Adam's g/√v turns the rounding
    noise there into O(lr) differences, which is no statement about the optimizer."""
    from torch.distributed.fsdp import fully_shard

    from fusion_train import build_param_groups

    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 24, generator=g), torch.randn(8, 6, generator=g)) for _ in range(3)]
    for recipe, polyak in [("sf-normuon", "relative"), ("full", "relative"), ("muon", "off"), ("sf-adamw", "relative")]:
        ref, sh = _mlp(), _mlp()
        fully_shard(sh)
        kw = dict(lr=3e-3, recipe=recipe, polyak=polyak, hot_dtype="fp32")
        o_ref = FusionOpt(build_param_groups(ref), **kw)
        o_sh = FusionOpt(build_param_groups(sh), **kw)
        n = batches[0][0].shape[0] // world
        for x, target in batches:
            loss = (ref(x) - target).square().mean()
            loss.backward()
            o_ref.step(loss=loss)
            o_ref.zero_grad()
            sl = slice(rank * n, (rank + 1) * n)
            loss_l = (sh(x[sl]) - target[sl]).square().mean()
            loss_l.backward()
            o_sh.step(loss=loss_l)
            o_sh.zero_grad()
        if o_ref.sf:
            o_ref.eval(), o_sh.eval()
        for (name, a), b in zip(ref.named_parameters(), sh.parameters()):
            full = b.full_tensor().detach()
            torch.testing.assert_close(full, a.detach(), rtol=1e-5, atol=1e-5 * float(a.detach().abs().max()),
                                       msg=lambda m, where=f"{recipe}: {name}": f"{where}: {m}")


def check_hot_dtype_agreement(rank, world, tmp):
    """hot_dtype="auto" is a per-process CPU timing: ranks that measured differently take rank 0's
    decision when the distributed optimizer is built (else owners and references would differ)."""
    from fusion_train.optim.hot_dtype import auto_hot_dtype, set_auto_hot_dtype

    before = auto_hot_dtype("cpu")
    try:
        for mine in (("fp32", "bf16"), ("bf16", "fp32")):
            set_auto_hot_dtype("cpu", mine[rank % 2])
            FusionOpt(sharded_bag().groups(), lr=0.02)
            assert auto_hot_dtype("cpu") == mine[0], (rank, mine)
            FusionOpt(Bag().groups(), lr=0.02, process_group=dist.group.WORLD)  # DDP too
            assert auto_hot_dtype("cpu") == mine[0], (rank, mine)
    finally:
        set_auto_hot_dtype("cpu", before)
        FusionOpt(sharded_bag().groups(), lr=0.02)  # agree again for the checks that follow

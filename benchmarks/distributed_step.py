"""Distributed FusionOpt step on 2 CPU ranks (gloo): FSDP2 + FusionOpt vs FSDP2 + AdamW.

On the reference control-head shapes (``ControlHead`` with the ``fusion-train head`` defaults:
dim 256, depth 4, 64 latent channels, 5 controls), each rank builds two FSDP2-sharded copies and
times, A/B interleaved after warm-up (median of repeats, measured on rank 0 with a barrier before
every call so both ranks start together):

* the optimizer step alone (same injected gradients for both optimizers), and
* a whole training step (forward, backward with FSDP2's all-gather / reduce-scatter, step).

It also reports the Newton–Schulz work per rank (matrices and ``m²n`` flop share from the owner
assignment, against one process doing all of it), and the bytes FusionOpt sends per step beyond
FSDP2's own traffic: measured by the optimizer's counter, next to the analytic volume of FSDP2
itself and of the all-gather-everything alternative (every rank gathers every spectral matrix).

Run: ``PYTHONPATH=. python benchmarks/distributed_step.py [--repeats 15]``; writes
``docs/benchmarks/distributed_step.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import environment, md_table, write_report  # noqa: E402

WORLD = 2


def _head():
    from fusion_infer.models.control_head import ControlHead, ControlHeadConfig

    torch.manual_seed(0)
    return ControlHead(ControlHeadConfig(in_channels=64, out_channels=5))


def _worker(rank: int, port: int, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    from fusion_train import FusionOpt, build_param_groups

    models, opts = {}, {}
    for name in ("fusion", "adamw"):
        m = _head()
        fully_shard(m)
        models[name] = m
        opts[name] = (FusionOpt(build_param_groups(m), lr=4e-3, recipe="sf-normuon", hot_dtype="fp32")
                      if name == "fusion" else torch.optim.AdamW(m.parameters(), lr=1e-3))
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in models["fusion"].parameters()]
    single = _head()  # one process doing all the work (rank 0; rank 1 waits at the barrier)
    single_opt = FusionOpt(build_param_groups(single), lr=4e-3, recipe="sf-normuon", hot_dtype="fp32")

    def single_step():
        dist.barrier()
        if rank == 0:
            for p, gr in zip(single.parameters(), grads):
                p.grad = gr.clone()
            single_opt.step()
    x = torch.randn(8 // WORLD, 64, 64, generator=g)
    t = torch.rand(8 // WORLD, generator=g)

    def opt_step(name):
        def run():
            for p, gr in zip(models[name].parameters(), grads):
                p.grad = distribute_tensor(gr, p.device_mesh, [Shard(0)], src_data_rank=None)
            dist.barrier()
            opts[name].step()
        return run

    def train_step(name):
        def run():
            opts[name].zero_grad(set_to_none=True)
            dist.barrier()
            models[name](x, t).square().mean().backward()
            opts[name].step()
        return run

    results = {}
    for kind, make in (("optimizer step", opt_step), ("train step", train_step)):
        fns = {n: make(n) for n in ("fusion", "adamw")}
        if kind == "optimizer step":
            fns["single"] = single_step
        for _ in range(2):
            for fn in fns.values():
                fn()
        times = {n: [] for n in fns}
        for _ in range(repeats):
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[n].append(time.perf_counter() - t0)
        results[kind] = {n: statistics.median(v) for n, v in times.items()}

    ctx = opts["fusion"]._dist
    before = ctx.bytes_communicated
    opt_step("fusion")()
    fusion_bytes = ctx.bytes_communicated - before
    # Newton–Schulz share from the owner assignment: matrices and m²n flops
    params = [p for grp in opts["fusion"].param_groups for p in grp["params"]]
    flops = [0.0] * WORLD
    mats = [0] * WORLD
    for spec in ctx._specs.values():
        a, b = spec.rows, spec.cols
        flops[spec.owner] += min(a, b) ** 2 * max(a, b)
        mats[spec.owner] += 1
    spectral_bytes_local = sum(p.to_local().numel() * 4 for i, p in enumerate(params) if i in ctx._specs)
    all_params_bytes = sum(p.numel() * 4 for p in params)
    sizes = torch.tensor([float(fusion_bytes), float(spectral_bytes_local)])
    gathered = [torch.zeros(2) for _ in range(WORLD)]
    dist.all_gather(gathered, sizes)
    if rank == 0:
        import json

        json.dump({
            "times": results,
            "ns_matrices_per_rank": mats,
            "ns_flop_share_per_rank": [f / sum(flops) for f in flops],
            "ns_matrices_single_process": len(ctx._specs),
            "fusion_bytes_sent_per_rank": [float(s[0]) for s in gathered],
            "allgather_everything_bytes_sent_per_rank": [float(s[1]) * (WORLD - 1) for s in gathered],
            "fsdp2_bytes_sent_per_rank": all_params_bytes * (WORLD - 1) / WORLD * 3,
            "param_bytes": all_params_bytes,
            "spectral_params": len(ctx._specs),
        }, open(out, "w"))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mktemp(suffix=".json")
    load_before = os.getloadavg()
    mp.spawn(_worker, args=(port, args.repeats, out), nprocs=WORLD)
    load_after = os.getloadavg()
    import json

    r = json.load(open(out))
    os.unlink(out)
    t = r["times"]
    mb = 1 / 2**20
    rows = [
        [kind, f"{1e3 * v['fusion']:.1f}", f"{1e3 * v['adamw']:.1f}", f"{v['fusion'] / v['adamw']:.2f}×",
         f"{1e3 * v['single']:.1f}" if "single" in v else "—",
         f"{v['single'] / v['fusion']:.2f}×" if "single" in v else "—"]
        for kind, v in t.items()
    ]
    comm = [
        ["FusionOpt (2 all-to-alls + 1 scalar all-reduce), measured",
         " / ".join(f"{b * mb:.2f}" for b in r["fusion_bytes_sent_per_rank"])],
        ["all-gather every spectral matrix (analytic)",
         " / ".join(f"{b * mb:.2f}" for b in r["allgather_everything_bytes_sent_per_rank"])],
        ["FSDP2 itself: 2 all-gathers + 1 reduce-scatter of all parameters (analytic)",
         f"{r['fsdp2_bytes_sent_per_rank'] * mb:.2f} per rank"],
    ]
    ns = [[f"rank {i}", m, f"{100 * s:.1f} %"] for i, (m, s) in
          enumerate(zip(r["ns_matrices_per_rank"], r["ns_flop_share_per_rank"]))]
    ns.append(["single process", r["ns_matrices_single_process"], "100 %"])
    md = f"""# Distributed FusionOpt step (2 CPU ranks, gloo)

`python benchmarks/distributed_step.py --repeats {args.repeats}` — ControlHead (dim 256, depth 4,
64 → 5 channels, {r['spectral_params']} spectral matrices, {r['param_bytes'] * mb:.1f} MiB of fp32
parameters), FSDP2 `fully_shard` on 2 gloo ranks with one thread each, FusionOpt `sf-normuon`
(fp32 Newton–Schulz) vs `torch.optim.AdamW`, A/B interleaved after 2 warm-up rounds, medians of
{args.repeats} on rank 0. Load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}
(a shared 2-core machine: other jobs ran at the same time, so absolute times are noisy; the
ratios were measured side by side).

## Per-step time (ms)

{md_table(["", "FSDP2 + FusionOpt", "FSDP2 + AdamW", "FusionOpt / AdamW",
           "FusionOpt, one process (1 thread)", "one process / FSDP2"], rows)}

The optimizer-step rows use the same injected gradients; the train step adds the forward and
backward (batch 8, 64 frames) with FSDP2's all-gathers and reduce-scatter. "One process" is a
plain FusionOpt on rank 0 alone doing every matrix: the FSDP2 step's speed-up over it is what
splitting the Newton–Schulz work buys, minus the communication.

## Newton–Schulz work per rank

{md_table(["", "matrices", "m²n flop share"], ns)}

Owners are assigned round-robin within each same-shape batch, the count running on across
batches; a batch that the world size does not divide leaves one rank one matrix more.

## Bytes sent per step beyond FSDP2 (MiB, rank 0 / rank 1)

{md_table(["", "MiB"], comm)}

FusionOpt moves each spectral row shard to the matrix's owner and the update rows back (plus the
NorMuon row statistics and a 3-float all-reduce); all-gathering every matrix to every rank would
send each rank's shard to all other ranks. With 2 ranks the two volumes are close (each moves
about one shard's worth per direction); the all-to-all's advantage grows with the world size
(all-gather sends (W−1)× a rank's shard, the all-to-all sends at most its shard twice).

## GPU (NCCL)

Unmeasured: no multi-GPU machine was available for this benchmark. The code path is the same
(`all_to_all_single`, `all_reduce`, NCCL backend under torchrun).
"""
    write_report("distributed_step", {"environment": environment(), "world_size": WORLD,
                                      "loadavg_before": load_before, "loadavg_after": load_after,
                                      "repeats": args.repeats, **r}, md)


if __name__ == "__main__":
    main()

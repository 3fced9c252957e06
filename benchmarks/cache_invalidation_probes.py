"""Which weight changes does each invalidation signal see?

For every kind of weight change a control head goes through in practice, records on the live
parameters: whether ``data_ptr`` changed (the earlier design's only signal: the pointer of the
first trainable 2-D parameter), whether ``_version`` changed, whether the outputs changed, and
which :class:`~fusion_infer.TimeConditioningCache` mechanism caught it — and, decisively,
whether the cached output then equals a fresh uncached evaluation bit for bit.

Run:  .venv/bin/python benchmarks/cache_invalidation_probes.py
Writes docs/benchmarks/cache_invalidation_probes.{json,md} (atomically). Behaviour only: no timings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import schedulefree
import torch
from _report import atomic_write  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from diffusers.training_utils import EMAModel

from fusion_infer import ControlHead, ControlHeadConfig, TimeConditioningCache

ROOT = Path(__file__).resolve().parents[1]
CFG = ControlHeadConfig(in_channels=8, out_channels=2, dim=32, depth=2, heads=4, freq_dim=32)
TS = torch.tensor([0.8, 0.0])


def make_head(seed: int = 0) -> ControlHead:
    torch.manual_seed(seed)
    head = ControlHead(CFG)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.2)
    return head


def uncached(head, x):
    return head(x, mods=head.compute_modulators(TS))


def train_steps(head, opt, n=2):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        opt.zero_grad()
        head(torch.randn(2, 8, 12, generator=g), torch.rand(2, generator=g)).square().mean().backward()
        opt.step()


def case_optimizer_step(head):
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    return lambda: train_steps(head, opt, 1)


def case_load_state_dict(head):
    other = make_head(7).state_dict()
    return lambda: head.load_state_dict(other)


def case_load_state_dict_assign(head):
    other = make_head(8).state_dict()
    return lambda: head.load_state_dict(other, assign=True)


def case_ema_data_copy(head):
    shadow = [p.detach().clone() * 0.9 for p in head.parameters()]

    def swap():
        with torch.no_grad():
            for p, s in zip(head.parameters(), shadow):
                p.data.copy_(s)  # ema_pytorch-style swap

    return swap


def case_diffusers_ema_copy_to(head):
    ema = EMAModel(head.parameters(), decay=0.5, foreach=True)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    train_steps(head, opt, 2)
    ema.step(head.parameters())

    def swap():
        ema.store(head.parameters())
        ema.copy_to(head.parameters())  # torch._foreach_copy_ on .data

    return swap


def case_schedule_free_eval(head):
    opt = schedulefree.AdamWScheduleFree(head.parameters(), lr=1e-2, warmup_steps=0)
    opt.train()
    train_steps(head, opt, 3)
    return opt.eval  # p.lerp_ in place under no_grad


def case_to_float64(head):
    return lambda: head.to(torch.float64)


def case_peft_style_merge(head):
    lin = head.blocks[0].adaLN_mod[1]
    delta = torch.randn(lin.weight.shape[0], 2) @ torch.randn(2, lin.weight.shape[1]) * 0.05

    def merge():
        lin.weight.data += delta  # PEFT merge: base_layer.weight.data += delta_weight

    return merge


def case_sparse_data_edit(head):
    w = head.final.adaLN_mod[1].weight

    def edit():
        w.data.view(-1)[1] += 0.5  # one element the tripwire does not sample

    return edit


def case_requires_grad(head):
    return lambda: head.requires_grad_(False)


CASES: dict[str, Callable] = {
    "optimizer.step() (AdamW)": case_optimizer_step,
    "load_state_dict (in place)": case_load_state_dict,
    "load_state_dict(assign=True)": case_load_state_dict_assign,
    "EMA swap via p.data.copy_ (ema_pytorch style)": case_ema_data_copy,
    "diffusers EMAModel.store + copy_to": case_diffusers_ema_copy_to,
    "Schedule-Free optimizer.eval()": case_schedule_free_eval,
    "model.to(torch.float64)": case_to_float64,
    "PEFT-style merge: weight.data += delta": case_peft_style_merge,
    "sparse .data edit of 1 unsampled element": case_sparse_data_edit,
    "requires_grad_(False) (no value change)": case_requires_grad,
}


def run_case(name: str, factory: Callable) -> dict:
    head = make_head(0)
    change = factory(head)  # may train first; the cache is filled after that
    cache = TimeConditioningCache(head, probe_every=None).attach()
    x = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = head(x, TS)
        head(x, TS)  # hit
    def first2d():  # the earlier design watched only this tensor's data_ptr
        return next(p for p in head.parameters() if p.requires_grad and p.dim() == 2)

    ptr0 = first2d().data_ptr()
    ptrs0 = [p.data_ptr() for p in head.modulator_parameters()]
    ver0 = [p._version for p in head.modulator_parameters()]
    change()
    watched = head.modulator_parameters()  # re-read: assign=True replaces the objects
    dtype = next(head.parameters()).dtype
    xx = x.to(dtype)
    reasons0 = dict(cache.stats.invalidations_by_reason)
    with torch.no_grad():
        hit = head(xx, TS)  # all rows cached: only per-lookup checks can react
        fresh = uncached(head, xx)
    reasons1 = dict(cache.stats.invalidations_by_reason)
    caught_on_hit = {k: reasons1.get(k, 0) - reasons0.get(k, 0) for k in reasons1 if reasons1.get(k, 0) != reasons0.get(k, 0)}
    row = {
        "change": name,
        "outputs_changed": not torch.equal(fresh.to(before.dtype), before),
        "old_design_ptr_changed": next(
            (p.data_ptr() for p in head.parameters() if p.dim() == 2), None
        ) != ptr0,
        "any_watched_ptr_changed": any(p.data_ptr() != q for p, q in zip(watched, ptrs0)),
        "any_watched_version_changed": any(p._version != v for p, v in zip(watched, ver0)),
        "caught_on_next_lookup_by": ",".join(sorted(caught_on_hit)) or "-",
        "cached_equals_fresh_on_next_lookup": torch.equal(hit, fresh),
    }
    if not row["cached_equals_fresh_on_next_lookup"]:
        with torch.no_grad(), cache.render():
            again = head(xx, TS)
        row["caught_at_render_boundary_by"] = "probe" if cache.stats.invalidations_by_reason["probe"] else "-"
        row["cached_equals_fresh_after_render_probe"] = torch.equal(again, fresh)
    cache.detach()
    return row


def main() -> list[dict]:
    torch.set_num_threads(1)
    rows = [run_case(n, f) for n, f in CASES.items()]
    yes = {True: "yes", False: "no"}
    md = [
        "# Cache invalidation probes (`benchmarks/cache_invalidation_probes.py`)",
        "",
        f"torch {torch.__version__}. Cache attached and filled, then the change, then a lookup "
        "whose rows are all cached (only per-lookup checks can react); `probe_every=None`.",
        "",
        "| change | outputs change | old design (1st 2-D param `data_ptr`) sees it | any watched `data_ptr` changes | any watched `_version` changes | caught on next lookup by | cached == fresh on next lookup | after `render()` probe |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        after = ""
        if "cached_equals_fresh_after_render_probe" in r:
            after = f"{r['caught_at_render_boundary_by']}: {yes[r['cached_equals_fresh_after_render_probe']]}"
        md.append(
            f"| {r['change']} | {yes[r['outputs_changed']]} | {yes[r['old_design_ptr_changed']]} | "
            f"{yes[r['any_watched_ptr_changed']]} | {yes[r['any_watched_version_changed']]} | "
            f"{r['caught_on_next_lookup_by']} | {yes[r['cached_equals_fresh_on_next_lookup']]} | {after} |"
        )
    md += ["", f"Command: `python {' '.join(sys.argv)}`", ""]
    out = ROOT / "docs" / "benchmarks"
    atomic_write(out / "cache_invalidation_probes.json", json.dumps(rows, indent=2) + "\n")
    atomic_write(out / "cache_invalidation_probes.md", "\n".join(md))
    print("\n".join(md))
    return rows


if __name__ == "__main__":
    main()

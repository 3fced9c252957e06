"""Benchmark: control-head quality per optimizer recipe on the music21 reference data.

The table of an earlier unpublished case study: AdamW, Muon, Muon+MONA, SF-NorMuon,
Full — each with a small learning-rate sweep, 3 seeds — compared

1. **at equal steps**: validation median per-frame MAE in dB (mean ± std over seeds, at each
   recipe's best swept lr), Δ vs AdamW, and the it/s ratio vs AdamW (training steps only:
   forward, backward and optimizer step, without validation);
2. **at equal wall clock**: every recipe gets AdamW's median wall time for the step budget
   (validation time included for all) and its best lr;
3. **diversity training** (``fusion_train.training.diversity``) against the SF-NorMuon seed-0 head as the
   frozen reference: AdamW + diversity (fresh and warm), SF-NorMuon + diversity (fresh), Full +
   diversity (warm); validation MAE, derivative correlation with the target and the reference.

Also an ``SF-NorMuon + Polyak`` row (``polyak="relative"``) so the γ telemetry is not a constant,
and a PNG with the training loss and ``fusion/gamma_curr`` of each recipe's seed-0 run.

Protocol: one process; a short warm-up run per recipe first; runs are interleaved across recipes
(seed-major order) so machine load hits all recipes alike; the sweep is done on seed 0 and the
best lr is then run on the other seeds. Recipes FusionOpt does not offer are reported as unavailable, not faked.

That study reported SF-NorMuon −7.4 % and Full −8.4 % vs AdamW. Report what this measures.

Run:  .venv/bin/python benchmarks/head_quality.py --reduced   (CPU, about 15 min on 2 busy cores)
      .venv/bin/python benchmarks/head_quality.py --cpu       (reference head, 1000 steps, 3 seeds; ~90 min, 1 thread)
      .venv/bin/python benchmarks/head_quality.py --cpu --threads 2 --recipes adamw full muon+mona
          --centre adamw=2.5e-4 full=2e-3 muon+mona=5e-4 --no-diversity   (the recipes --cpu leaves out; ~110 min)
      .venv/bin/python benchmarks/head_quality.py             (full design; hours on CPU)
Writes docs/benchmarks/head_quality.json/.md and docs/benchmarks/head_quality_loss_gamma.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import OUT_DIR, environment, md_table, write_report  # noqa: E402
from _sweep import add_centre_argument, parse_centres, positive_int  # noqa: E402

from fusion_infer import ControlHeadConfig  # noqa: E402
from fusion_infer.files import atomic_write  # noqa: E402
from fusion_train import DiversityConfig, HeadTrainConfig, train_head  # noqa: E402
from fusion_train.data import ReferenceData, ReferenceDataConfig, build_reference_data  # noqa: E402
from fusion_train.training.loop import DEFAULT_LR, make_optimizer  # noqa: E402

RECIPES = ("adamw", "muon", "muon+mona", "sf-normuon", "full")

FULL = dict(pieces=200, crop=256, dim=256, depth=4, heads=8, steps=3000, batch=16, val_every=300,
            lr_mults=(0.5, 1.0, 2.0), max_widen=3, seeds=3, val_seeds=2, val_t_buckets=10, val_max=None, threads=0)
# The issue-sized protocol that fits ~90 min of one core of a 2-core CPU next to digits_quality.py
# (--cpu): the reference head (dim 256, depth 4), 1000 steps, 3 seeds, a widened sweep; shorter
# crops and a lighter validation than FULL, and without "muon+mona" (see --mona-audit), "full"
# (its KL-Shampoo step measured 1.06 s on one thread, 7x AdamW: six 1000-step runs alone take
# 106 min), the Polyak row and diversity.
CPU = dict(pieces=48, crop=64, dim=256, depth=4, heads=8, steps=1000, batch=8, val_every=250,
           lr_mults=(0.5, 1.0, 2.0), max_widen=2, seeds=3, val_seeds=1, val_t_buckets=5, val_max=None, threads=1,
           recipes=("adamw", "muon", "sf-normuon"), polyak=False)
REDUCED = dict(pieces=48, crop=64, dim=128, depth=1, heads=4, steps=120, batch=8, val_every=40,
               lr_mults=(0.5, 1.0, 2.0), max_widen=1, seeds=3, val_seeds=2, val_t_buckets=5, val_max=None, threads=1)
# MONA audit (--mona-audit): the muon+mona recipe with both signs of α and α = 0, β_a = 0.975.
MONA_BETA = 0.975
MONA_ALPHAS = {"α=-20": -1 / (2 * (1 - MONA_BETA)), "α=0": 0.0, "α=+20": 1 / (2 * (1 - MONA_BETA))}


def crop_frames(data: ReferenceData, frames: int) -> ReferenceData:
    """Cut every excerpt into ``T // frames`` consecutive crops (same piece, same split, same stats).

    A cheaper frame length for CPU runs: the latents and targets are the real ones, just shorter.
    """
    n, c, t = data.latents.shape
    if frames == t:
        return data
    if t % frames:
        raise ValueError(f"crop {frames} must divide the excerpt length {t}")
    k = t // frames

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(n, x.shape[1], k, frames).permute(0, 2, 1, 3).reshape(n * k, x.shape[1], frames)

    def remap(index: torch.Tensor) -> torch.Tensor:
        return (index[:, None] * k + torch.arange(k)).reshape(-1)

    return dataclasses.replace(
        data, latents=split(data.latents), controls=split(data.controls),
        piece_ids=tuple(p for p in data.piece_ids for _ in range(k)),
        train_index=remap(data.train_index), val_index=remap(data.val_index), extras={},
    )


def available(recipe: str) -> bool:
    try:
        make_optimizer(recipe, torch.nn.Linear(4, 4))
    except NotImplementedError:
        return False
    return True


def head_config(cfg: dict, data: ReferenceData) -> ControlHeadConfig:
    return ControlHeadConfig(in_channels=int(data.latents.shape[1]), out_channels=int(data.controls.shape[1]),
                             dim=cfg["dim"], depth=cfg["depth"], heads=cfg["heads"], freq_dim=128)


def run(cfg: dict, data, recipe: str, lr: float, seed: int, *, steps=None, max_seconds=None,
        out_dir=None, diversity=None, options=None) -> dict:
    hc = HeadTrainConfig(
        recipe=recipe, lr=lr, head=head_config(cfg, data), steps=steps or cfg["steps"],
        batch_size=cfg["batch"], val_every=cfg["val_every"], val_seeds=tuple(range(cfg["val_seeds"])),
        val_t_buckets=cfg["val_t_buckets"], val_max_excerpts=cfg["val_max"], seed=seed,
        progress=False, tensorboard=False, out_dir=out_dir, max_seconds=max_seconds,
        diversity=diversity, optimizer_options=options or {}, log_every=5,
    )
    t0 = time.perf_counter()
    res = train_head(hc, data)
    wall = time.perf_counter() - t0
    loss = [r["train/loss"] for r in res.records if "train/loss" in r]
    finite = all(isinstance(v, float) and math.isfinite(v) for v in loss)
    rec = {
        "recipe": recipe, "lr": lr, "seed": seed, "steps": res.steps, "seconds": res.seconds, "wall": wall,
        "it_per_s": res.steps / res.train_seconds, "train_seconds": res.train_seconds, "best_val_mae": res.best_score, "best_step": res.best_step,
        "diverged": not finite or not math.isfinite(res.best_score),
        "best_metrics": {k: v for k, v in res.best_metrics.items() if not k.startswith("val/median_mae@")},
        "curve": [(r["step"], r["train/loss"], r.get("fusion/gamma_curr")) for r in res.records if "train/loss" in r],
        "best_path": str(res.best_path) if res.best_path else None,
    }
    print(f"  {recipe:<11} lr={lr:.2e} seed={seed} steps={res.steps:4d} {rec['it_per_s']:6.2f} it/s "
          f"best val MAE {res.best_score:.3f} dB @ {res.best_step}", flush=True)
    return rec


def widen_sweep(sweep: dict, run_at, base_lr: dict, cfg: dict) -> dict[str, str]:
    """Add one ×2 step at the edge where a recipe's best lr sits, until it is interior or
    ``cfg["max_widen"]`` extra points were added; return the recipes still at an edge."""
    def best(rows):
        return min(rows, key=lambda x: x["best_val_mae"] if not x["diverged"] else math.inf)["lr"]

    edge: dict[str, str] = {}
    for _ in range(cfg.get("max_widen", 0) + 1):
        edge = {}
        for r, rows in sweep.items():
            lrs = sorted(x["lr"] for x in rows)
            b = best(rows)
            if b == lrs[0]:
                edge[r] = "low"
            elif b == lrs[-1]:
                edge[r] = "high"
        if not edge or _ == cfg.get("max_widen", 0):
            break
        for r, side in edge.items():  # interleaved across recipes
            lrs = sorted(x["lr"] for x in sweep[r])
            sweep[r].append(run_at(r, lrs[0] / 2 if side == "low" else lrs[-1] * 2))
    return edge


def mona_audit(cfg: dict, data) -> None:
    """MONA sign/scale audit on the head task: α ∈ {−20, 0, +20}, lr sweep (widened), all seeds."""
    t0 = time.perf_counter()
    base = DEFAULT_LR["muon+mona"]
    opts = {k: {"mona_alpha": a, "mona_beta": MONA_BETA} for k, a in MONA_ALPHAS.items()}
    sweep = {k: [] for k in opts}
    for mult in cfg["lr_mults"]:
        for k, o in opts.items():
            sweep[k].append(run(cfg, data, "muon+mona", base * mult, 0, options=o))
    edge = widen_sweep(sweep, lambda k, lr: run(cfg, data, "muon+mona", lr, 0, options=opts[k]), base, cfg)
    best_lr = {k: min(v, key=lambda x: x["best_val_mae"] if not x["diverged"] else math.inf)["lr"] for k, v in sweep.items()}
    seeds = {k: [next(x for x in sweep[k] if x["lr"] == best_lr[k])] for k in opts}
    for seed in range(1, cfg["seeds"]):
        for k, o in opts.items():
            seeds[k].append(run(cfg, data, "muon+mona", best_lr[k], seed, options=o))
    rows = []
    for k in opts:
        m, sd = mean_std([x["best_val_mae"] for x in seeds[k]])
        rows.append([k, f"{best_lr[k]:.1e}" + (f" ({edge[k]} edge)" if k in edge else ""), f"{m:.3f} ± {sd:.3f}",
                     ", ".join(f"{x['lr']:.1e}: {x['best_val_mae']:.3f}" for x in sorted(sweep[k], key=lambda x: x["lr"]))])
    md = "\n".join([
        "# MONA audit on the control-head task (muon+mona, β_a = 0.975)", "",
        f"Config: {cfg}; {len(range(cfg['seeds']))} seeds at each α's best lr; {time.perf_counter() - t0:.0f} s; "
        f"loadavg {os.getloadavg()}.", "",
        "Command: `python benchmarks/head_quality.py --mona-audit" + (" --reduced" if cfg is not FULL else "") + "`", "",
        md_table(["α", "best lr", "val MAE dB (mean ± std)", "sweep (seed 0)"], rows),
    ])
    write_report("head_mona_audit", {"config": cfg, "environment": environment(), "sweep": sweep,
                                     "best_lr": best_lr, "edge": edge, "seeds": seeds}, md)
    print(md)


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true", help="a quick small-head configuration (see REDUCED)")
    ap.add_argument("--cpu", action="store_true", help="the reference head at 1000 steps on one CPU thread (see CPU)")
    ap.add_argument("--steps", type=int, help="override the step budget")
    ap.add_argument("--pieces", type=int, help="override the number of music21 pieces")
    ap.add_argument("--seeds", type=int, help="override the number of seeds")
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, help="override the recipes (report: head_quality_<recipes>)")
    add_centre_argument(ap)
    ap.add_argument("--threads", type=positive_int, help="override the number of torch threads")
    ap.add_argument("--no-diversity", action="store_true")
    ap.add_argument("--mona-audit", action="store_true", help="only the MONA α sign/scale audit")
    args = ap.parse_args(argv)
    cfg = dict(REDUCED if args.reduced else CPU if args.cpu else FULL)
    if args.recipes:
        cfg["recipes"] = tuple(args.recipes)
    for key in ("steps", "pieces", "seeds", "threads"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    centre = parse_centres(ap, args.centre, {r: DEFAULT_LR[r] for r in RECIPES})
    cfg["centre"] = {r: centre[r] for r in RECIPES if centre[r] != DEFAULT_LR[r]}
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])  # a loaded 2-core box: threads mostly wait on each other
    t_start = time.perf_counter()
    data = crop_frames(build_reference_data(ReferenceDataConfig(n_pieces=cfg["pieces"]), progress=True), cfg["crop"])
    print(data.summary().splitlines()[0], flush=True)
    if args.mona_audit:
        mona_audit(cfg, data)
        return
    wanted = cfg.get("recipes", RECIPES)
    recipes = [r for r in wanted if available(r)]
    unavailable = [r for r in wanted if r not in recipes]
    load_start = os.getloadavg()
    print(f"recipes: {recipes}; unavailable: {unavailable}", flush=True)
    seeds = list(range(cfg["seeds"]))
    tmp = Path(tempfile.mkdtemp(prefix="head_quality_"))

    # warm-up: a few steps of every recipe (allocator, thread pools, first-call overheads)
    for r in recipes:
        run(cfg, data, r, centre[r], 99, steps=3)

    # 1) lr sweep on seed 0, interleaved across recipes
    sweep: dict[str, list[dict]] = {r: [] for r in recipes}
    for mult in cfg["lr_mults"]:
        for r in recipes:
            sweep[r].append(run(cfg, data, r, centre[r] * mult, 0,
                                out_dir=str(tmp / f"{r}_lr{mult}") if r == "sf-normuon" else None))
    # widen at an edge until every recipe's best lr is interior (or max_widen extra points)
    edges = widen_sweep(sweep, lambda r, lr: run(cfg, data, r, lr, 0), centre, cfg)
    if edges:
        print(f"best lr still at an edge after widening: {edges}", flush=True)
    best_lr = {r: min(sweep[r], key=lambda x: x["best_val_mae"] if not x["diverged"] else math.inf)["lr"]
               for r in recipes}
    equal_steps: dict[str, list[dict]] = {r: [next(x for x in sweep[r] if x["lr"] == best_lr[r])] for r in recipes}
    polyak = "sf-normuon" in recipes and cfg.get("polyak", True)
    if polyak:
        equal_steps["sf-normuon+polyak"] = []
    for seed in seeds[1:] + ([0] if polyak else []):
        for r in recipes:
            if seed != 0:
                equal_steps[r].append(run(cfg, data, r, best_lr[r], seed))
        if polyak:
            equal_steps["sf-normuon+polyak"].append(
                run(cfg, data, "sf-normuon", best_lr["sf-normuon"], seed, options={"polyak": "relative"}))
    if polyak:  # seed order 1, 2, 0 above: keep rows sorted by seed
        equal_steps["sf-normuon+polyak"].sort(key=lambda x: x["seed"])

    # 2) equal wall clock: AdamW's median time for the step budget
    budget = statistics.median(x["seconds"] for x in equal_steps["adamw"])
    equal_time: dict[str, list[dict]] = {"adamw": equal_steps["adamw"]}
    for seed in seeds:
        for r in recipes:
            if r != "adamw":
                equal_time.setdefault(r, []).append(
                    run(cfg, data, r, best_lr[r], seed, steps=cfg["steps"] * 20, max_seconds=budget))

    # 3) diversity against the SF-NorMuon seed-0 head
    diversity_rows = []
    if not args.no_diversity and "sf-normuon" in recipes:
        ref = next(x for x in sweep["sf-normuon"] if x["lr"] == best_lr["sf-normuon"])["best_path"]
        cells = [("adamw", False), ("adamw", True), ("sf-normuon", False), ("full", True)]
        for r, warm in cells:
            if r not in recipes:
                diversity_rows.append({"recipe": r, "warm": warm, "unavailable": True})
                continue
            div = DiversityConfig(ref, lam=0.3, bound=1.0, warmup_steps=0 if warm else cfg["steps"] // 2,
                                  warm_start=warm)
            rec = run(cfg, data, r, best_lr[r], 0, diversity=div)
            rec["warm"] = warm
            diversity_rows.append(rec)
        reference_mae = next(x for x in sweep["sf-normuon"] if x["lr"] == best_lr["sf-normuon"])["best_val_mae"]
    else:
        reference_mae = math.nan

    total = time.perf_counter() - t_start
    report(cfg, data, recipes, unavailable, sweep, best_lr, equal_steps, equal_time, budget,
           diversity_rows, reference_mae, total, args, (load_start, os.getloadavg()))


def report(cfg, data, recipes, unavailable, sweep, best_lr, equal_steps, equal_time, budget,
           diversity_rows, reference_mae, total, args, loads) -> None:
    adam_mae = mean_std([x["best_val_mae"] for x in equal_steps["adamw"]])[0]
    adam_its = statistics.median(x["it_per_s"] for x in equal_steps["adamw"])
    rows_steps = []
    for name, runs in equal_steps.items():
        m, s = mean_std([x["best_val_mae"] for x in runs])
        its = statistics.median(x["it_per_s"] for x in runs)
        rows_steps.append([name, f"{runs[0]['lr']:.1e}", f"{m:.3f} ± {s:.3f}", f"{100 * (m / adam_mae - 1):+.1f} %",
                           f"{its / adam_its:.2f}", len(runs)])
    rows_steps += [[r, "–", "not available", "–", "–", 0] for r in unavailable]
    rows_time = []
    for name, runs in equal_time.items():
        m, s = mean_std([x["best_val_mae"] for x in runs])
        rows_time.append([name, f"{statistics.fmean(x['steps'] for x in runs):.0f}", f"{m:.3f} ± {s:.3f}",
                          f"{100 * (m / adam_mae - 1):+.1f} %"])
    rows_time += [[r, "–", "not available", "–"] for r in unavailable]
    rows_sweep = [[r, f"{x['lr']:.1e}", f"{x['best_val_mae']:.3f}", "yes" if x["diverged"] else "no"]
                  for r in recipes for x in sweep[r]]
    rows_div = []
    for x in diversity_rows:
        label = f"{x['recipe']} + diversity ({'warm' if x['warm'] else 'fresh'})"
        if x.get("unavailable"):
            rows_div.append([label, "not available", "–", "–", "–"])
            continue
        bm = x["best_metrics"]
        rows_div.append([label, "NaN (diverged)" if x["diverged"] else f"{x['best_val_mae']:.3f}",
                         f"{bm.get('val/deriv_corr_target', math.nan):.3f}",
                         f"{bm.get('val/deriv_corr_reference', math.nan):.3f}",
                         f"{bm.get('val/mae_to_reference', math.nan):.3f}"])
    stem = "head_quality" + ("_" + "_".join(r.replace("+", "_") for r in args.recipes) if args.recipes else "")
    plot_path = plot(equal_steps, sweep, best_lr, recipes, stem)
    n_train, n_val = int(data.train_index.numel()), int(data.val_index.numel())
    name = "reduced" if args.reduced else "cpu" if args.cpu else "full"
    setup = (f"{name} configuration (`--{name}`): {cfg['pieces']} music21 pieces × 4 excerpts, "
             f"cropped to {cfg['crop']} frames → {n_train} train / {n_val} val crops (split by piece); head dim "
             f"{cfg['dim']}, depth {cfg['depth']}, heads {cfg['heads']}; {cfg['steps']} steps × batch {cfg['batch']}; "
             f"Huber on standardised targets, rectified flow, t ~ U[0,1]; lr sweep × {list(cfg['lr_mults'])} of the "
             f"recipe default{' (centred at ' + str(cfg['centre']) + ')' if cfg.get('centre') else ''} on seed 0, best lr on {cfg['seeds']} seeds; validation every {cfg['val_every']} steps "
             f"on {cfg['val_max'] or 'all'} val crops × {cfg['val_seeds']} noise seeds × {cfg['val_t_buckets']} "
             f"t-buckets, best kept; {cfg['threads'] or 'default'} torch thread(s); total {total / 60:.1f} min."
             + (f" Recipes left out of this configuration: {[r for r in RECIPES if r not in recipes + unavailable]}"
                " (see the CPU configuration's comment in the script)." if "recipes" in cfg else ""))
    md = [
        "# Control-head quality per optimizer recipe (`benchmarks/head_quality.py`)",
        "",
        f"Environment: {environment()}. Load average at start {tuple(round(v, 2) for v in loads[0])}, at end "
        f"{tuple(round(v, 2) for v in loads[1])}; it/s ratios come from runs interleaved across recipes in one "
        "process, so load changes hit all recipes alike.",
        "",
        setup,
        "",
        "Score: validation median per-frame MAE in dB (lower is better), mean ± std over seeds at the best "
        "swept lr. Seed material for comparison: SF-NorMuon −7.4 %, Full −8.4 % vs AdamW (full-size heads, "
        "GPU, much longer training).",
        "",
        "## Equal steps",
        "",
        md_table(["recipe", "lr", "val median MAE (dB)", "Δ vs AdamW", "it/s ratio vs AdamW", "seeds"], rows_steps),
        "",
        f"## Equal wall clock (AdamW's median {budget:.1f} s for {cfg['steps']} steps, validation included)",
        "",
        md_table(["recipe", "steps reached (mean)", "val median MAE (dB)", "Δ vs AdamW"], rows_time),
        "",
        "## Learning-rate sweep (seed 0)",
        "",
        md_table(["recipe", "lr", "best val MAE (dB)", "diverged"], rows_sweep),
        "",
        "## Diversity training (λ = 0.3, bound = 1 std², λ warm-up over half the steps when fresh)",
        "",
        f"Reference: the SF-NorMuon seed-0 head at its best lr, val median MAE {reference_mae:.3f} dB."
        if rows_div else "Not run (`--no-diversity`, or no sf-normuon recipe).",
        "",
        md_table(["cell", "val median MAE (dB)", "deriv-corr target", "deriv-corr reference", "MAE to reference (dB)"],
                 rows_div) if rows_div else "",
        "",
        f"![training loss and γ]({plot_path.name})" if plot_path else "",
    ]
    data_out = {
        "environment": environment(), "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "reduced": args.reduced, "configuration": name, "loadavg": loads, "unavailable": unavailable, "best_lr": best_lr, "budget_seconds": budget,
        "sweep": sweep, "equal_steps": equal_steps, "equal_time": equal_time, "diversity": diversity_rows,
        "reference_mae": reference_mae, "total_seconds": total,
    }
    write_report(stem, data_out, "\n".join(md))


def plot(equal_steps, sweep, best_lr, recipes, stem: str = "head_quality") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_loss, ax_gamma) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in equal_steps.items():
        curve = next((x["curve"] for x in runs if x["seed"] == 0), None)
        if not curve:
            continue
        steps = [c[0] for c in curve]
        ax_loss.plot(steps, [c[1] for c in curve], label=name)
        gamma = [c[2] for c in curve]
        if name != "adamw" and all(g is not None for g in gamma):
            ax_gamma.plot(steps, gamma, label=name)
    ax_loss.set(xlabel="step", ylabel="train loss (Huber, std units)", title="training loss (seed 0, best lr)")
    ax_loss.set_yscale("log")
    ax_gamma.set(xlabel="step", ylabel="fusion/gamma_curr", title="γ = scheduled lr × Polyak multiplier")
    ax_loss.legend()
    ax_gamma.legend()
    fig.tight_layout()
    path = OUT_DIR / f"{stem}_loss_gamma.png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


if __name__ == "__main__":
    main()

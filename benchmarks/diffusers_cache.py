"""Per-step latency of diffusers DiTs with and without the lossless modulator cache.

Method (docs/design.md §2): for each model, one process builds the model with random weights, runs one
warm-up render uncached and one cached (which fills the table), then alternates uncached (A) and
cached (B) renders in ABBA order. A render is ``--steps`` denoising forwards at distinct
timesteps with fixed inputs; the cached renders replay every modulator and pay the render-start
bitwise probe (one recomputation per render), exactly as in a pipeline. Per-step latency =
render time / steps; the report gives medians and the A/B ratio. Outputs of A and B are also
checked bit-equal.

Models: DiT-S/2 and DiT-B/2 (``DiTTransformer2DModel``) at 256² (32×32 latents, 256 tokens) with
batch 2 (CFG rows: class, null class), and PixArt-, SD3- and FLUX.1-shaped models at full width
and reduced depth. ``--gpu-xl`` runs DiT-XL/2 at 256² in bf16 on CUDA when one is present.

Families: every family registered in ``fusion_diffusers.families.FAMILIES`` (so families added
later are covered without editing this file) as a row ``family:<name>``: the class's default
config at full width with every layer count cut to 2 and 16×16 latent patches
(:func:`fusion_diffusers.tiny.depth_config`), random weights, inputs from
:data:`fusion_diffusers.tiny.SPECS` or synthesised from the forward signature, batch 2 with
different conditioning per row. A family whose depth-reduced model exceeds ``--max-params`` or
whose inputs cannot be synthesised gets a row saying so instead of a timing.

Usage::

    python benchmarks/diffusers_cache.py                 # all CPU models
    python benchmarks/diffusers_cache.py --models DiT-S/2 --steps 4 --repeats 3
    python benchmarks/diffusers_cache.py --gpu-xl --device cuda
    python benchmarks/diffusers_cache.py --models --families --steps 4 --repeats 3 --merge  # families only

Writes ``docs/benchmarks/diffusers_cache.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
)
from fusion_diffusers import apply_modulator_cache, remove_modulator_cache
from fusion_diffusers.families import FAMILIES, site_paths
from fusion_diffusers.support import modulator_parameter_share
from fusion_diffusers.tiny import SPECS, TinyInstanceError, depth_config, randomize, synth_inputs

from fusion_infer.files import atomic_write

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def _dit(heads: int, layers: int):
    def build():
        return DiTTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=64 if heads != 16 else 72, num_layers=layers,
            in_channels=4, out_channels=8, sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
        )

    def inputs(batch: int, t: float, device, dtype):
        g = torch.Generator().manual_seed(0)
        return {
            "hidden_states": torch.randn(batch, 4, 32, 32, generator=g).to(device, dtype),
            "timestep": torch.full((batch,), int(t), dtype=torch.long, device=device),
            "class_labels": torch.tensor([207, 1000] * (batch // 2) + [207] * (batch % 2), device=device),
        }

    return build, inputs


def _pixart():
    def build():
        return PixArtTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, num_layers=4, in_channels=4, out_channels=8,
            sample_size=32, cross_attention_dim=1152, caption_channels=4096, use_additional_conditions=True,
        )

    def inputs(batch: int, t: float, device, dtype):
        g = torch.Generator().manual_seed(0)
        return {
            "hidden_states": torch.randn(batch, 4, 32, 32, generator=g).to(device, dtype),
            "encoder_hidden_states": torch.randn(batch, 16, 4096, generator=g).to(device, dtype),
            "timestep": torch.full((batch,), int(t), dtype=torch.long, device=device),
            "added_cond_kwargs": {
                "resolution": torch.tensor([[256.0, 256.0]] * batch, device=device, dtype=dtype),
                "aspect_ratio": torch.tensor([[1.0]] * batch, device=device, dtype=dtype),
            },
        }

    return build, inputs


def _sd3():
    def build():
        return SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, pos_embed_max_size=64,
        )

    def inputs(batch: int, t: float, device, dtype):
        g = torch.Generator().manual_seed(0)
        return {
            "hidden_states": torch.randn(batch, 16, 32, 32, generator=g).to(device, dtype),
            "encoder_hidden_states": torch.randn(batch, 16, 4096, generator=g).to(device, dtype),
            "pooled_projections": torch.randn(batch, 2048, generator=g).to(device, dtype),
            "timestep": torch.full((batch,), float(t), device=device, dtype=dtype),
        }

    return build, inputs


def _flux():
    def build():
        return FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
            guidance_embeds=True, axes_dims_rope=(16, 56, 56),
        )

    def inputs(batch: int, t: float, device, dtype):
        g = torch.Generator().manual_seed(0)
        return {
            "hidden_states": torch.randn(batch, 256, 64, generator=g).to(device, dtype),
            "encoder_hidden_states": torch.randn(batch, 16, 4096, generator=g).to(device, dtype),
            "pooled_projections": torch.randn(batch, 768, generator=g).to(device, dtype),
            "timestep": torch.full((batch,), t / 1000.0, device=device, dtype=dtype),
            "guidance": torch.full((batch,), 3.5, device=device, dtype=dtype),
            "img_ids": torch.randn(256, 3, generator=g).to(device),
            "txt_ids": torch.zeros(16, 3, device=device),
        }

    return build, inputs


# name -> (builder pair, batch, description)
MODELS: dict[str, tuple[tuple[Callable, Callable], int, str]] = {
    "DiT-S/2": (_dit(6, 12), 2, "DiTTransformer2DModel, 12 layers, D=384, 256² (256 tokens), batch 2 (CFG)"),
    "DiT-B/2": (_dit(12, 12), 2, "DiTTransformer2DModel, 12 layers, D=768, 256² (256 tokens), batch 2 (CFG)"),
    "PixArt-α-shaped": (_pixart(), 2, "PixArtTransformer2DModel, D=1152, 4 of 28 layers, 256 tokens, batch 2"),
    "SD3-shaped": (_sd3(), 2, "SD3Transformer2DModel, D=1536, 4 of 24 layers, 256 tokens, batch 2"),
    "FLUX.1-shaped": (_flux(), 1, "FluxTransformer2DModel, D=3072, 1+2 of 19+38 blocks, 256 tokens, batch 1"),
}
GPU_XL = (_dit(16, 28), 2, "DiT-XL/2: DiTTransformer2DModel, 28 layers, D=1152, 256², batch 2 (CFG), bf16")


def family_spec(family, *, grid: int = 16, batch: int = 2):
    """A ``MODELS``-style spec for a registered family: default config, 2 layers, full width."""
    cls = family.model_class
    cfg = depth_config(cls, layers=2, grid=grid)
    built: dict = {}

    def build():
        torch.manual_seed(0)
        built["model"] = randomize(cls(**cfg), 0)
        return built["model"]

    def inputs(b: int, t: float, device, dtype):
        model = built["model"]
        spec = SPECS.get(cls.__name__)
        if spec is not None and spec.inputs is not None:
            x = spec.inputs(model, b, dtype, 0)
        else:
            x = synth_inputs(model, b, dtype, 0, grid=grid)
        for name in ("timestep", "timesteps", "t"):
            if name in x:  # rows keep their own values, scaled to this step
                ref = x[name]
                x[name] = (ref.double() * (t / 999.0)).to(ref.dtype)
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in x.items()}

    desc = (f"{cls.__name__}, default config, 2 layers per block list, {grid}x{grid} latent patches, "
            f"batch {batch}")
    return (build, inputs), batch, desc, cfg


def family_params(family, cfg: dict) -> tuple[int, float]:
    """Parameters of the depth-reduced model and the share of its family's sites (meta device)."""
    with torch.device("meta"):
        model = family.model_class(**cfg)
    total = sum(p.numel() for p in model.parameters())
    seen, sites = set(), 0
    for path in site_paths(model, family):
        for p in model.get_submodule(path).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                sites += p.numel()
    return total, sites / total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name, spec, *, steps, repeats, device, dtype) -> dict:
    (build, make_inputs), batch, desc = spec
    torch.manual_seed(0)
    model = build().to(device, dtype).eval()
    share = modulator_parameter_share(model)
    ts = torch.linspace(999, 20, steps).tolist()
    schedule = [make_inputs(batch, t, device, dtype) for t in ts]

    def step(x: dict) -> tuple[float, float, torch.Tensor]:
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = model(**x).sample
        _sync(device)
        return time.perf_counter() - wall, time.process_time() - cpu, out

    cache = apply_modulator_cache(model)
    refs = []
    with cache.disabled():
        for x in schedule:  # warm-up A
            refs.append(step(x)[2])
    bit_equal = all(torch.equal(step(x)[2], ref) for x, ref in zip(schedule, refs))  # warm-up B: fills
    a_wall, b_wall, a_cpu, b_cpu, paired = [], [], [], [], []
    for r in range(repeats):
        cache.new_render()  # what the pipeline's end-of-call reset does: B pays one probe per render
        for i, x in enumerate(schedule):
            # Lock-step A/B per denoising step, order alternating, so slow drifts of a shared
            # machine hit both sides alike; the paired ratio cancels them.
            times = {}
            for which in (("A", "B") if (r + i) % 2 == 0 else ("B", "A")):
                if which == "A":
                    with cache.disabled():
                        times["A"] = step(x)
                else:
                    times["B"] = step(x)
                bit_equal = bit_equal and torch.equal(times[which][2], refs[i])
            a_wall.append(times["A"][0])
            b_wall.append(times["B"][0])
            a_cpu.append(times["A"][1])
            b_cpu.append(times["B"][1])
            paired.append(times["A"][0] / times["B"][0])
    s = cache.stats
    entry_bytes = s.bytes // max(s.entries, 1)
    remove_modulator_cache(model)
    a, b = statistics.median(a_wall), statistics.median(b_wall)
    return {
        "model": name,
        "description": desc,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "steps_per_render": steps,
        "repeats": repeats,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "modulator_param_share": round(share, 4),
        "uncached_step_ms": round(a * 1e3, 2),
        "cached_step_ms": round(b * 1e3, 2),
        "speedup": round(statistics.median(paired), 4),
        "speedup_of_medians": round(a / b, 4),
        "speedup_cpu_time": round(statistics.median(a_cpu) / statistics.median(b_cpu), 4),
        "uncached_step_ms_all": [round(x * 1e3, 2) for x in a_wall],
        "cached_step_ms_all": [round(x * 1e3, 2) for x in b_wall],
        "bit_equal": bool(bit_equal),
        "hits": s.hits,
        "misses": s.misses,
        "probes": s.probes,
        "cache_entry_bytes": int(entry_bytes),
    }


def _skipped(name: str, desc: str, device: torch.device, why: str) -> dict:
    return {"model": name, "description": desc, "device": str(device), "skipped": why}


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text)


def _markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# Modulator cache: per-step latency (diffusers transformers)",
        "",
        f"Machine: {meta['machine']} ({meta['threads']} intra-op threads), torch {meta['torch']}, "
        f"diffusers {meta['diffusers']}. Each row lists the command that measured it.",
        "",
        "A = uncached, B = cached (table warm; each render pays one bitwise probe). After one warm-up",
        "render each, A and B run in lock-step per denoising step (order alternating) in one process.",
        "speedup = median of the paired per-step ratios A/B; also shown: ratio of the medians and the",
        "ratio of median process CPU times. The 2-core machine was shared with other jobs (load 5–15),",
        "so absolute times are inflated and noisy; the paired ratio is the robust number. Repeated",
        "runs on this machine moved ratios by more than ±0.05 (DiT-S/2: 1.16× and 0.93× in two earlier",
        "render-level runs with 2 threads, not kept), so differences of a few percent are not resolved here.",
        "",
        "| model | setting | params (M) | modulator param share | uncached ms/step | cached ms/step | speedup (paired) | ratio of medians | CPU-time ratio | bit-equal | steps × repeats | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['description']} | – | – | – | – | not measured: {r['skipped']} "
                         f"| – | – | – | – | `{r.get('command', '')}` |")
            continue
        setting = f"{r['description']}; {r['device']} {r['dtype']}, {r['threads']} thread(s)"
        if "load_avg" in r:
            setting += f"; load avg {r['load_avg']}"
        lines.append(
            f"| {r['model']} | {setting} | "
            f"{r['params_M']} | "
            f"{100 * r['modulator_param_share']:.1f} % | {r['uncached_step_ms']} | {r['cached_step_ms']} | "
            f"**{r['speedup']:.3f}×** | {r['speedup_of_medians']:.3f}× | {r['speedup_cpu_time']:.3f}× | "
            f"{r['bit_equal']} | {r['steps_per_render']} × {r['repeats']} | "
            f"`{r.get('command', '')}` |"
        )
    lines += ["", "Targets: DiT-B/2 on CPU ≥ 1.05× per step; DiT-XL/2 on an H100 ≥ 1.10×.",
              "`family:<name>` rows: every registered family at its default width, 2 layers per block list; "
              "the modulator share column is the name-rule share of the reduced model, "
              "`site_param_share` in the JSON is the share of the family's own sites.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), help=f"subset of {list(MODELS)}")
    parser.add_argument("--families", nargs="*", default=None,
                        help="registered family names to bench at reduced depth (flag alone: all; default: all)")
    parser.add_argument("--max-params", type=float, default=1.2e9,
                        help="skip a family whose depth-reduced model has more parameters")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--gpu-xl", action="store_true", help="DiT-XL/2 256² bf16 (needs --device cuda)")
    parser.add_argument("--out", default=str(OUT_DIR / "diffusers_cache"))
    parser.add_argument("--merge", action="store_true", help="keep rows of other models already in --out")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON in --out")
    args = parser.parse_args()
    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise ValueError(f"--models: unknown {sorted(unknown)}; allowed: {list(MODELS)}")
    by_name = {f.name: f for f in FAMILIES.values()}
    families = list(by_name) if not args.families else args.families
    unknown = set(families) - set(by_name)
    if unknown:
        raise ValueError(f"--families: unknown {sorted(unknown)}; allowed: {sorted(by_name)}")
    if args.render_only:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        _atomic_write(Path(args.out).with_suffix(".md"), _markdown(saved["results"], saved["meta"]))
        return
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    import diffusers

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "command": "python benchmarks/diffusers_cache.py " + " ".join(os.sys.argv[1:]),
    }
    results: list[dict] = []
    if args.merge and out.with_suffix(".json").exists():
        # Keep earlier measurements of models not re-measured now (each row carries its own command).
        results = json.loads(out.with_suffix(".json").read_text())["results"]

    def record(row: dict) -> None:
        row["load_avg"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        row["command"] = meta["command"]
        row["date"] = meta["date"]
        results[:] = [r for r in results if (r["model"], r["device"]) != (row["model"], row["device"])] + [row]
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}), flush=True)
        _atomic_write(out.with_suffix(".json"), json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        _atomic_write(out.with_suffix(".md"), _markdown(results, meta))

    if args.gpu_xl:
        record(bench_model("DiT-XL/2", GPU_XL, steps=args.steps, repeats=args.repeats, device=device,
                           dtype=torch.bfloat16))
    for name in args.models if not args.gpu_xl else []:
        record(bench_model(name, MODELS[name], steps=args.steps, repeats=args.repeats, device=device,
                           dtype=torch.float32))
    for fname in families if not args.gpu_xl else []:
        family = by_name[fname]
        name = f"family:{fname}"
        try:
            (builders, batch, desc, cfg) = family_spec(family)
            total, share = family_params(family, cfg)
        except (TinyInstanceError, RuntimeError, TypeError, ValueError) as exc:  # not buildable here
            record(_skipped(name, family.model_class.__name__, device, f"{type(exc).__name__}: {str(exc)[:120]}"))
            continue
        if total > args.max_params:
            record(_skipped(name, desc, device, f"{total / 1e9:.2f} B parameters at 2 layers exceed --max-params"))
            continue
        try:
            row = bench_model(name, (builders, batch, desc), steps=args.steps, repeats=args.repeats,
                              device=device, dtype=torch.float32)
        except (TinyInstanceError, RuntimeError, TypeError, ValueError) as exc:
            record(_skipped(name, desc, device, f"{type(exc).__name__}: {str(exc)[:120]}"))
            continue
        row["site_param_share"] = round(share, 4)
        record(row)
    print(_markdown(results, meta))

if __name__ == "__main__":
    main()

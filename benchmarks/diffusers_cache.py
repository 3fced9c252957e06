"""Per-step latency of diffusers DiTs with and without the lossless modulator cache.

Method (DESIGN §2): for each model, one process builds the model with random weights, runs one
warm-up render uncached and one cached (which fills the table), then alternates uncached (A) and
cached (B) renders in ABBA order. A render is ``--steps`` denoising forwards at distinct
timesteps with fixed inputs; the cached renders replay every modulator and pay the render-start
bitwise probe (one recomputation per render), exactly as in a pipeline. Per-step latency =
render time / steps; the report gives medians and the A/B ratio. Outputs of A and B are also
checked bit-equal.

Models: DiT-S/2 and DiT-B/2 (``DiTTransformer2DModel``) at 256² (32×32 latents, 256 tokens) with
batch 2 (CFG rows: class, null class), and PixArt-, SD3- and FLUX.1-shaped models at full width
and reduced depth. ``--gpu-xl`` runs DiT-XL/2 at 256² in bf16 on CUDA when one is present.

Usage::

    python benchmarks/diffusers_cache.py                 # all CPU models
    python benchmarks/diffusers_cache.py --models DiT-S/2 --steps 4 --repeats 3
    python benchmarks/diffusers_cache.py --gpu-xl --device cuda

Writes ``docs/benchmarks/diffusers_cache.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
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
from fusion_diffusers.support import modulator_parameter_share

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

    def render() -> tuple[float, torch.Tensor]:
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            for x in schedule:
                out = model(**x).sample
        _sync(device)
        return time.perf_counter() - start, out

    cache = apply_modulator_cache(model)
    with cache.disabled():
        _, ref = render()  # warm-up A
    _, got = render()  # warm-up B: fills the table
    bit_equal = torch.equal(ref, got)
    a_times, b_times = [], []
    for r in range(repeats):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for which in order:
            if which == "A":
                with cache.disabled():
                    dt, out = render()
                a_times.append(dt / steps)
            else:
                dt, out = render()
                b_times.append(dt / steps)
            bit_equal = bit_equal and torch.equal(out, ref)
    s = cache.stats
    entry_bytes = s.bytes // max(s.entries, 1)
    remove_modulator_cache(model)
    a, b = statistics.median(a_times), statistics.median(b_times)
    return {
        "model": name,
        "description": desc,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "steps_per_render": steps,
        "repeats": repeats,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "modulator_param_share": round(share, 4),
        "uncached_step_ms": round(a * 1e3, 2),
        "cached_step_ms": round(b * 1e3, 2),
        "speedup": round(a / b, 4),
        "uncached_step_ms_all": [round(x * 1e3, 2) for x in a_times],
        "cached_step_ms_all": [round(x * 1e3, 2) for x in b_times],
        "bit_equal": bool(bit_equal),
        "hits": s.hits,
        "misses": s.misses,
        "probes": s.probes,
        "cache_entry_bytes": int(entry_bytes),
    }


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# Modulator cache: per-step latency (diffusers transformers)",
        "",
        f"Measured {meta['date']} on {meta['machine']} ({meta['threads']} intra-op threads), torch "
        f"{meta['torch']}, diffusers {meta['diffusers']}. Command: `{meta['command']}`.",
        "",
        "A = uncached, B = cached (table warm; each render pays one bitwise probe). A and B renders",
        "alternate (ABBA) in one process after one warm-up render each; medians of per-step times.",
        "The machine was shared with other jobs, so absolute times are noisy; the ratio is what counts.",
        "",
        "| model | setting | params (M) | modulator param share | uncached ms/step | cached ms/step | speedup | bit-equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['description']}; {r['device']} {r['dtype']} | {r['params_M']} | "
            f"{100 * r['modulator_param_share']:.1f} % | {r['uncached_step_ms']} | {r['cached_step_ms']} | "
            f"**{r['speedup']:.3f}×** | {r['bit_equal']} |"
        )
    lines += ["", "Targets from the issue: DiT-B/2 on CPU ≥ 1.05× per step; DiT-XL/2 on an H100 ≥ 1.10×.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), help=f"subset of {list(MODELS)}")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpu-xl", action="store_true", help="DiT-XL/2 256² bf16 (needs --device cuda)")
    parser.add_argument("--out", default=str(OUT_DIR / "diffusers_cache"))
    args = parser.parse_args()
    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise ValueError(f"--models: unknown {sorted(unknown)}; allowed: {list(MODELS)}")
    device = torch.device(args.device)
    results = []
    if args.gpu_xl:
        results.append(bench_model("DiT-XL/2", GPU_XL, steps=args.steps, repeats=args.repeats, device=device,
                                   dtype=torch.bfloat16))
        print(json.dumps(results[-1]))
    for name in args.models if not args.gpu_xl else []:
        steps, repeats = args.steps, args.repeats
        if name in ("SD3-shaped", "FLUX.1-shaped"):  # ~0.5 B params on a 2-core CPU
            steps, repeats = max(2, steps // 2), max(2, repeats // 2)
        results.append(bench_model(name, MODELS[name], steps=steps, repeats=repeats, device=device,
                                   dtype=torch.float32))
        print(json.dumps({k: v for k, v in results[-1].items() if not k.endswith("_all")}))
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
    out = Path(args.out)
    _atomic_write(out.with_suffix(".json"), json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    _atomic_write(out.with_suffix(".md"), _markdown(results, meta))
    print(_markdown(results, meta))


if __name__ == "__main__":
    main()

"""Modulator weight offload: resident parameter bytes and the streamed-precompute overhead.

Two parts (docs/design.md §2 method: warm-up first, A/B interleaved in one process, medians):

1. **Resident bytes** at *real* size, instantiated on the meta device (no memory, no download):
   DiT-XL/2, SD3-medium and FLUX.1-dev, plus Qwen-Image, Wan 2.2 T2V-A14B (one of its two
   experts), HunyuanVideo 1.5, FLUX.2-dev, LTX-2, MiniMax-H3 and Z-Image (``REAL``: the size
   values of each checkpoint's ``transformer/config.json``, written out below; they equal the
   class defaults of diffusers 0.42.1): all parameter bytes, the modulator modules' bytes and
   what stays on the execution device with offload. bf16 storage (2 bytes per value). Which
   modules count (column *accounting*): the slot sites of the registered family when there is
   one (exactly what ``offload_weights=True`` moves); otherwise the sites the provenance trace of
   a tiny instance proposes (``python -m fusion_diffusers.discover``), mapped onto the full-size
   model by block class; otherwise adaLN ``Linear``s found by module-name rules
   (:func:`fusion_diffusers.support.modulator_parameter_share`). The last two are estimates of
   what a family would offload, labelled as such.
2. **Precompute overhead per render** on the CPU at full width, reduced depth: A = an uncached
   render (``steps`` forwards), B = :func:`fusion_diffusers.precompute` of the same schedule
   (table dropped first, so every step is computed), interleaved A/B/B/A, median of repeats,
   ratio B/A, at 28 and 50 steps. A cached+offloaded render is also checked bit-equal to A. On a
   CPU-only machine the offload and execution devices coincide, so the weight transfer itself
   is not in B; the report adds a PCIe estimate (modulator bytes / 25 GB/s) for a GPU.

With ``--device cuda`` (a lent GPU) part 2 also runs the render with ``torch.cuda`` peak memory
(``max_memory_allocated``) with and without offload.

Usage::

    python benchmarks/offload_memory.py                      # CPU defaults
    python benchmarks/offload_memory.py --steps 28 --repeats 2 --models DiT-XL/2

Writes ``docs/benchmarks/offload_memory.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from _report import OUT_DIR, environment, md_table, write_report
from diffusers import (
    DiTTransformer2DModel,
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
    HunyuanVideo15Transformer3DModel,
    LTX2VideoTransformer3DModel,
    MiniMaxH3Transformer3DModel,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    WanTransformer3DModel,
    ZImageTransformer2DModel,
)
from fusion_diffusers import (
    ModulatorCacheConfig,
    apply_modulator_cache,
    precompute,
    remove_modulator_cache,
)
from fusion_diffusers.discover import propose_family
from fusion_diffusers.families import FAMILIES, resolve_family, site_paths
from fusion_diffusers.support import modulator_parameter_share, site_parameters

PCIE_BYTES_PER_S = 25e9  # PCIe 4.0 x16, achieved host->device (estimate, not measured here)


def dit_xl(layers: int) -> torch.nn.Module:
    return DiTTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, num_layers=layers, in_channels=4, out_channels=8,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
    )


def sd3_medium(layers: int) -> torch.nn.Module:
    return SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=layers, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
        pooled_projection_dim=2048, pos_embed_max_size=192,
    )


def flux_dev(double: int, single: int) -> torch.nn.Module:
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


def _inputs(name: str, batch: int, t: float, device, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    if name == "DiT-XL/2":
        return {
            "hidden_states": torch.randn(batch, 4, 32, 32, generator=g).to(device, dtype),
            "timestep": torch.full((batch,), int(t), dtype=torch.long, device=device),
            "class_labels": torch.tensor([207, 1000][:batch], device=device),
        }
    if name == "SD3-medium":
        return {
            "hidden_states": torch.randn(batch, 16, 32, 32, generator=g).to(device, dtype),
            "encoder_hidden_states": torch.randn(batch, 16, 4096, generator=g).to(device, dtype),
            "pooled_projections": torch.randn(batch, 2048, generator=g).to(device, dtype),
            "timestep": torch.full((batch,), float(t), device=device, dtype=dtype),
        }
    return {
        "hidden_states": torch.randn(batch, 256, 64, generator=g).to(device, dtype),
        "encoder_hidden_states": torch.randn(batch, 16, 4096, generator=g).to(device, dtype),
        "pooled_projections": torch.randn(batch, 768, generator=g).to(device, dtype),
        "timestep": torch.full((batch,), t / 1000.0, device=device, dtype=dtype),
        "guidance": torch.full((batch,), 3.5, device=device, dtype=dtype),
        "img_ids": torch.randn(256, 3, generator=g).to(device),
        "txt_ids": torch.zeros(16, 3, device=device),
    }


COND = {"DiT-XL/2": ("class_labels",), "SD3-medium": ("pooled_projections",),
        "FLUX.1-dev": ("pooled_projections", "guidance")}
# name -> (real-size builder, reduced-depth builder, batch, reduced description)
MODELS = {
    "DiT-XL/2": (lambda: dit_xl(28), lambda: dit_xl(2), 2, "D=1152, 2 of 28 layers, 256 tokens, batch 2 (CFG)"),
    "SD3-medium": (lambda: sd3_medium(24), lambda: sd3_medium(2), 2, "D=1536, 2 of 24 layers, 256 tokens, batch 2"),
    "FLUX.1-dev": (lambda: flux_dev(19, 38), lambda: flux_dev(1, 1), 1, "D=3072, 1+1 of 19+38 blocks, 256 tokens"),
}

DEFAULT_STEPS = {"DiT-XL/2": [28, 50], "SD3-medium": [28], "FLUX.1-dev": [28]}

# Published checkpoints: (class, size values of the checkpoint's transformer/config.json, repository).
REAL: dict[str, tuple[type, dict, str]] = {
    "Qwen-Image": (QwenImageTransformer2DModel, dict(
        patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56)),
        "Qwen/Qwen-Image"),
    "Wan 2.2 T2V-A14B (one expert)": (WanTransformer3DModel, dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6), "Wan-AI/Wan2.2-T2V-A14B-Diffusers"),
    "HunyuanVideo 1.5": (HunyuanVideo15Transformer3DModel, dict(
        in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
        num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, text_embed_dim=3584,
        text_embed_2_dim=1472, image_embed_dim=1152, rope_axes_dim=(16, 56, 56)),
        "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v"),
    "FLUX.2-dev": (Flux2Transformer2DModel, dict(
        patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
        num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0,
        axes_dims_rope=(32, 32, 32, 32), guidance_embeds=True), "black-forest-labs/FLUX.2-dev"),
    "LTX-2": (LTX2VideoTransformer3DModel, dict(
        in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=128,
        cross_attention_dim=4096, audio_in_channels=128, audio_num_attention_heads=32,
        audio_attention_head_dim=64, audio_cross_attention_dim=2048, num_layers=48, caption_channels=3840),
        "Lightricks/LTX-2"),
    "MiniMax-H3": (MiniMaxH3Transformer3DModel, dict(
        num_attention_heads=56, attention_head_dim=128, hidden_size=5376, num_layers=50, num_refiner_layers=2,
        ffn_dim=14336, in_channels=24, audio_in_channels=32, text_dim=5120, time_embed_hidden_dim=5376,
        time_embed_dim=2688), "MiniMaxAI/MiniMax-H3"),
    "Z-Image": (ZImageTransformer2DModel, dict(
        dim=3840, n_layers=30, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, in_channels=16,
        axes_dims=[32, 48, 48]), "Tongyi-MAI/Z-Image-Turbo"),
}


def _family_params(model, family) -> int:
    seen, total = set(), 0
    for path in site_paths(model, family):
        for p in model.get_submodule(path).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def real_size_bytes(name: str) -> dict:
    """Resident bytes at the published size (meta device, bf16 = 2 bytes per value)."""
    if name in REAL:
        cls, cfg, source = REAL[name]
        with torch.device("meta"):
            model = cls(**cfg)
    else:
        source = "model card sizes in MODELS"
        with torch.device("meta"):
            model = MODELS[name][0]()
        cls, cfg = type(model), None
    params = sum(p.numel() for p in model.parameters())
    name_rule_share = modulator_parameter_share(model)
    family = FAMILIES.get(cls)
    if family is not None:
        resolve_family(model)
        mod_params, how = _family_params(model, family), f"family `{family.name}` sites"
    else:
        proposal = propose_family(cls, cfg)
        if proposal.error is None and proposal.sites:
            mod_params = site_parameters(model, proposal)
            how = "trace-proposed sites (no family on this branch)"
        else:
            mod_params = round(name_rule_share * params)
            how = "module-name rules (no family on this branch; no tiny trace)"
    total, mod = params * 2, mod_params * 2
    return {
        "model": name, "class": cls.__name__, "source": source, "accounting": how,
        "params_B": params / 1e9, "total_bytes": total, "modulator_bytes": mod, "modulator_share": mod / total,
        "name_rule_share": name_rule_share,
        "resident_without_offload": total, "resident_with_offload": total - mod,
        "reduction_of_share": (total - (total - mod)) / mod if mod else 0.0,
        "pcie_stream_s_estimate": mod / PCIE_BYTES_PER_S,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precompute_overhead(name: str, steps: int, repeats: int, device: torch.device, dtype) -> dict:
    _, build, batch, desc = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device, dtype).eval()
    ts = torch.linspace(999, 20, steps).tolist()
    schedule = [_inputs(name, batch, t, device, dtype) for t in ts]
    cond = {k: schedule[0][k] for k in COND[name]}

    def render() -> list[torch.Tensor]:
        with torch.no_grad():
            return [model(**x).sample for x in schedule]

    refs = render()  # warm-up A (uncached)
    cache = apply_modulator_cache(model, ModulatorCacheConfig(offload_weights=True, offload_device="cpu"))

    def run_a() -> float:
        with cache.disabled():
            _sync(device)
            t0 = time.perf_counter()
            render()
            _sync(device)
        return time.perf_counter() - t0

    def run_b() -> float:
        cache.invalidate()
        _sync(device)
        t0 = time.perf_counter()
        precompute(model, [x["timestep"] for x in schedule], **cond)
        _sync(device)
        return time.perf_counter() - t0

    run_b()  # warm-up B
    outs = render()  # all hits, offloaded
    bit_equal = all(torch.equal(o, r) for o, r in zip(outs, refs)) and cache.stats.misses == 0 or False
    a_times, b_times = [], []
    for r in range(repeats):
        order = (run_a, run_b) if r % 2 == 0 else (run_b, run_a)
        for fn in order:
            (a_times if fn is run_a else b_times).append(fn())
    a, b = statistics.median(a_times), statistics.median(b_times)
    report = cache.resident_report()
    out = {
        "model": name, "description": desc, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "steps": steps, "repeats": repeats,
        "uncached_render_s": a, "precompute_s": b, "overhead_ratio": b / a,
        "modulator_bytes_reduced": report.modulator_bytes,
        "pcie_stream_s_estimate": report.modulator_bytes / PCIE_BYTES_PER_S,
        "offloaded_render_bit_equal": bool(bit_equal),
    }
    if device.type == "cuda":
        out.update(_cuda_peaks(model, cache, render, schedule, cond))
    remove_modulator_cache(model)
    return out


def _cuda_peaks(model, cache, render, schedule, cond) -> dict:
    cache.invalidate()
    with cache.disabled():
        torch.cuda.reset_peak_memory_stats()
        render()
        base_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    precompute(model, [x["timestep"] for x in schedule], **cond)
    render()
    off_peak = torch.cuda.max_memory_allocated()
    return {"cuda_peak_uncached": base_peak, "cuda_peak_offloaded": off_peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--steps", nargs="*", type=int, default=None,
                    help="steps per render (default: 28 and 50 for DiT-XL/2, 28 for the larger models: "
                         "the overhead ratio does not depend on the step count, both sides scale with it)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--render-only", action="store_true", help="re-render the markdown from the JSON")
    ap.add_argument("--sizes-only", action="store_true",
                    help="recompute the resident-bytes table for every model (MODELS and REAL); keep the "
                         "timing rows of the previous JSON")
    args = ap.parse_args()
    if args.sizes_only:
        previous = json.loads((OUT_DIR / "offload_memory.json").read_text())
        sizes = [real_size_bytes(m) for m in [*MODELS, *REAL]]
        for r in sizes:
            print({k: r[k] for k in ("model", "params_B", "modulator_share", "accounting")})
        previous.update(sizes=sizes, sizes_load_avg=list(os.getloadavg()),
                        sizes_command="python benchmarks/offload_memory.py --sizes-only")
        write_report("offload_memory", previous, markdown(previous))
        return
    if args.render_only:
        render_only()
        return
    for m in args.models:
        if m not in MODELS:
            raise ValueError(f"--models: unknown {m!r}; allowed: {list(MODELS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16

    sizes = [real_size_bytes(m) for m in [*args.models, *REAL]]
    timings = []
    for m in args.models:
        for s in args.steps or DEFAULT_STEPS[m]:
            row = precompute_overhead(m, s, args.repeats, device, dtype)
            print(row)
            timings.append(row)

    data = {"environment": environment(), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "threads": args.threads, "repeats": args.repeats, "sizes": sizes, "timings": timings}
    write_report("offload_memory", data, markdown(data))


def markdown(data: dict) -> str:
    """The markdown report of a run (also re-rendered from the JSON with ``--render-only``)."""
    gib = 1 << 30
    sizes, timings = data["sizes"], data["timings"]
    for k in ("device", "dtype", "threads", "repeats"):  # older JSON kept these per row only
        data.setdefault(k, timings[0][k] if timings else "?")
    md = ["# Modulator weight offload (`benchmarks/offload_memory.py`)", "",
          "Resident parameter bytes at published sizes (meta-device instantiation, bf16). "
          "\"With offload\" is what stays on the execution device while the steps run: every "
          "modulator module's weights (the slot sites) rest on the offload device.", "",
          md_table(["model", "all weights GiB", "modulator GiB", "share", "resident w/o offload GiB",
                    "resident with offload GiB", "saved GiB", "PCIe stream (est.)", "accounting",
                    "name-rule share"],
                   [[r["model"], f"{r['total_bytes'] / gib:.2f}", f"{r['modulator_bytes'] / gib:.2f}",
                     f"{r['modulator_share']:.1%}", f"{r['resident_without_offload'] / gib:.2f}",
                     f"{r['resident_with_offload'] / gib:.2f}",
                     f"{(r['resident_without_offload'] - r['resident_with_offload']) / gib:.2f}",
                     f"{r['pcie_stream_s_estimate'] * 1e3:.0f} ms", r.get("accounting", "family sites"),
                     f"{r['name_rule_share']:.1%}" if "name_rule_share" in r else "–"] for r in sizes]),
          "", "Sources of the sizes: " + "; ".join(
              f"{r['model']}: `{r['source']}`" for r in sizes if "source" in r and r["model"] in REAL)
          + " (transformer config values, as written in `REAL`; no download).",
          "", f"Precompute overhead per render ({data['device']}, {data['dtype']}, {data['threads']} thread(s), "
          f"median of {data['repeats']} A/B-interleaved repeats after warm-up):", "",
          md_table(["model (reduced depth)", "steps", "uncached render s", "precompute s", "overhead",
                    "offloaded render bit-equal"],
                   [[f"{r['model']}: {r['description']}", r["steps"], f"{r['uncached_render_s']:.2f}",
                     f"{r['precompute_s']:.3f}", f"{r['overhead_ratio']:.2%}", r["offloaded_render_bit_equal"]]
                    for r in timings]),
          "", "Notes:", "",
          "* *accounting*: `family` rows count exactly what `offload_weights=True` moves. On this branch "
          "Qwen-Image, Wan 2.2, HunyuanVideo 1.5, FLUX.2, LTX-2, MiniMax-H3 and Z-Image have no family "
          "module yet: their rows are estimates (trace-proposed sites where a tiny instance traces "
          "generically, module-name rules otherwise); rerun `python benchmarks/offload_memory.py "
          "--sizes-only` once their families are registered.",
          "* Offloaded = every slot site: the modulator Linears plus the embedders feeding them "
          "(DiT: its 28 per-block t+class embedders, 77.8 M params, hence 40.5 % vs 30.1 % for the "
          "Linears alone; SD3/Flux: `time_text_embed`).",
          "* Timings were taken on a shared 2-core CPU under heavy load from other jobs (load average "
          "~10); the ratio is A/B interleaved in one process, so drifts hit both sides.",
          "* On the CPU the offload and execution devices coincide: the precompute column is the "
          "modulator computation alone (every step's modules, one forward-shaped call per step); "
          "the weight transfer to a GPU is not in it. The PCIe column estimates it "
          f"(modulator bytes / {PCIE_BYTES_PER_S / 1e9:.0f} GB/s, bf16, real size; once per render).",
          "* The overhead ratio does not depend on the step count (both sides scale with it); at "
          "reduced depth the per-step embedder cost is a larger share than at full depth.",
          "* No GPU was lent to this task: `torch.cuda.max_memory_allocated` was not measured "
          "(`--device cuda` records it)."]
    return "\n".join(md)


def render_only() -> None:
    data = json.loads((OUT_DIR / "offload_memory.json").read_text())
    write_report("offload_memory", data, markdown(data))


if __name__ == "__main__":
    main()

"""Cost of the exact weight digests vs a 28-step render, at DiT-XL/2, SD3-medium and FLUX.1 sizes.

What is timed (``python benchmarks/fingerprint_cost.py``; GPU: ``--device cuda``):

* **digest** — :func:`fusion_infer.cache.fingerprint.digest_tensors` over every tensor the
  diffusers modulator cache watches at the *published* model size (the parameters and buffers of
  every modulator site, listed on the meta device). Digest work depends only on a tensor's shape
  and dtype, so one real tensor per distinct ``(shape, dtype)`` is allocated and digested; the
  medians (repeats interleaved) are summed over the model's tensor list. Then one host
  transfer of the digests (the sync a render start pays).
* **per-lookup checks** — storage identity of every watched tensor plus the content tripwire
  (16 samples per tensor, one ``cat``), over as many live tensor objects as the model has.
* **render** — one denoising step of the same architecture at the published width, reduced depth
  (DiT-XL/2: 2 of 28 layers; SD3-medium: 2 of 24; FLUX.1: 1+1 of 19+38 blocks) and 256 image
  tokens, timed uncached, then scaled to the published depth and token count by the ratio of
  FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (full model
  at 256² / 1024² resolution vs the reduced model as timed), times 28 steps.

Digest and reduced step are timed A/B interleaved (alternating order each repeat) after a
warm-up; medians.

Ratios: ``verify="render"`` = one digest + 28 per-lookup checks per render;
``verify="lookup"`` = 28 digests + 28 per-lookup checks. Target: ≤ 1 % for ``verify="render"``.
The load average is recorded: the machine these numbers come from is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import environment, md_table, write_report  # noqa: E402
from fusion_diffusers.families import resolve_family, site_paths  # noqa: E402
from offload_memory import MODELS, _inputs, dit_xl, flux_dev, sd3_medium  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fusion_infer.cache.fingerprint import digest_tensors, digests_to_host  # noqa: E402
from fusion_infer.cache.weight_watch import WeightWatcher  # noqa: E402

STEPS = 28
# name -> (full-size builder, tokens of the published render, batch of the published render)
FULL = {
    "DiT-XL/2": (lambda: dit_xl(28), "256x256: 256 image tokens, batch 2 (CFG)"),
    "SD3-medium": (lambda: sd3_medium(24), "1024x1024: 4096 image + 333 text tokens, batch 2 (CFG)"),
    "FLUX.1-dev": (lambda: flux_dev(19, 38), "1024x1024: 4096 image + 512 text tokens, batch 1 (guidance-distilled)"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def watched_on_meta(name: str) -> list[torch.Tensor]:
    with torch.device("meta"):
        model = FULL[name][0]()
    seen, out = set(), []
    for path in site_paths(model, resolve_family(model)):
        site = model.get_submodule(path)
        for t in (*site.parameters(), *site.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def full_inputs(name: str, dtype: torch.dtype) -> dict:
    dev = "meta"
    if name == "DiT-XL/2":
        return _inputs(name, 2, 500, "cpu", dtype)
    if name == "SD3-medium":
        return {
            "hidden_states": torch.empty(2, 16, 128, 128, device=dev, dtype=dtype),
            "encoder_hidden_states": torch.empty(2, 333, 4096, device=dev, dtype=dtype),
            "pooled_projections": torch.empty(2, 2048, device=dev, dtype=dtype),
            "timestep": torch.empty(2, device=dev, dtype=dtype),
        }
    return {
        "hidden_states": torch.empty(1, 4096, 64, device=dev, dtype=dtype),
        "encoder_hidden_states": torch.empty(1, 512, 4096, device=dev, dtype=dtype),
        "pooled_projections": torch.empty(1, 768, device=dev, dtype=dtype),
        "timestep": torch.empty(1, device=dev, dtype=dtype),
        "guidance": torch.empty(1, device=dev, dtype=dtype),
        "img_ids": torch.empty(4096, 3, device=dev),
        "txt_ids": torch.empty(512, 3, device=dev),
    }


def count_flops(model: torch.nn.Module, inputs: dict) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


def step_flops(name: str, dtype: torch.dtype) -> tuple[int, int]:
    """FLOPs of one full-size step at the published resolution and of the reduced step as timed."""
    with torch.device("meta"):
        full = FULL[name][0]().to(dtype).eval()
        reduced = MODELS[name][1]().to(dtype).eval()
    if name == "DiT-XL/2":
        x = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in _inputs(name, 2, 500, "cpu", dtype).items()}
        return count_flops(full, x), count_flops(reduced, x)
    small = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in _inputs(name, MODELS[name][2], 500, "cpu", dtype).items()}
    return count_flops(full, full_inputs(name, dtype)), count_flops(reduced, small)


def reduced_step(name: str, device: torch.device, dtype: torch.dtype):
    """A callable running one uncached reduced-depth step (warmed up)."""
    torch.manual_seed(0)
    model = MODELS[name][1]().to(device, dtype).eval()
    x = _inputs(name, MODELS[name][2], 500, device, dtype)

    def step() -> None:
        with torch.no_grad():
            model(**x)

    step()
    return step


def digest_setup(meta: list[torch.Tensor], device: torch.device, dtype: torch.dtype):
    """One real tensor per distinct (shape, dtype) of ``meta`` and how often each occurs."""
    shapes: dict[tuple, int] = {}
    for t in meta:
        key = (tuple(t.shape), dtype if t.is_floating_point() else t.dtype)
        shapes[key] = shapes.get(key, 0) + 1
    g = torch.Generator().manual_seed(0)
    reals = {
        k: (torch.randn(k[0], generator=g).to(device, k[1]) if k[1].is_floating_point else torch.zeros(k[0], dtype=k[1], device=device))
        for k in shapes
    }
    for t in reals.values():  # warm-up
        digests_to_host(digest_tensors([t]))
    return shapes, reals


def time_digest_once(shapes: dict, reals: dict, device: torch.device) -> float:
    """Seconds to digest every watched tensor once: Σ over shapes of count × time(shape)."""
    total = 0.0
    for k, t in reals.items():
        _sync(device)
        t0 = time.perf_counter()
        digest_tensors([t])
        _sync(device)
        total += (time.perf_counter() - t0) * shapes[k]
    return total


def time_step_once(step, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def measure(name: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Digest and reduced step timed A/B interleaved (alternating order), medians."""
    meta = watched_on_meta(name)
    shapes, reals = digest_setup(meta, device, dtype)
    step = reduced_step(name, device, dtype)
    dig, stp = [], []
    for r in range(repeats):
        if r % 2 == 0:
            dig.append(time_digest_once(shapes, reals, device))
            stp.append(time_step_once(step, device))
        else:
            stp.append(time_step_once(step, device))
            dig.append(time_digest_once(shapes, reals, device))
    nbytes = sum(reals[k].numel() * reals[k].element_size() * n for k, n in shapes.items())
    # Per-lookup checks over as many live tensor objects as the model watches (views of the
    # per-shape tensors: identity reads and sampled reads cost the same).
    live = [reals[(tuple(t.shape), dtype if t.is_floating_point() else t.dtype)].view(t.shape) for t in meta]
    watcher = WeightWatcher(live, samples_per_tensor=16)
    snap = watcher.snapshot(full=False)
    lk, sync_t = [], []
    digests = digest_tensors(list(reals.values()))
    for _ in range(repeats):
        t0 = time.perf_counter()
        assert watcher.changed(snap) is None
        lk.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        digests_to_host(digests)
        sync_t.append(time.perf_counter() - t0)
    digest_s = statistics.median(dig) + statistics.median(sync_t)
    return {
        "tensors": len(meta), "distinct_shapes": len(shapes), "bytes": nbytes,
        "digest_s": digest_s, "digest_gb_per_s": nbytes / statistics.median(dig) / 1e9,
        "per_lookup_check_s": statistics.median(lk), "reduced_step_s": statistics.median(stp),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=list(FULL))
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU intra-op threads for both digest and render (default 1: on the shared "
                         "2-core machine a second OpenMP thread made both ~20x slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    load_before = os.getloadavg()
    rows = []
    for name in args.models:
        dig = measure(name, device, dtype, args.repeats)
        full_f, red_f = step_flops(name, dtype)
        step_s = dig["reduced_step_s"]
        render_s = STEPS * step_s * full_f / red_f
        render_mode = dig["digest_s"] + STEPS * dig["per_lookup_check_s"]
        lookup_mode = STEPS * (dig["digest_s"] + dig["per_lookup_check_s"])
        row = {
            "model": name, "render": FULL[name][1], "reduced_step": MODELS[name][3],
            **dig, "full_step_flops": full_f, "reduced_step_flops": red_f,
            "render_s_estimate": render_s,
            "verify_render_share": render_mode / render_s, "verify_lookup_share": lookup_mode / render_s,
        }
        rows.append(row)
        print(f"{name}: digest {dig['digest_s']*1e3:.1f} ms over {dig['bytes']/1e9:.2f} GB "
              f"({dig['digest_gb_per_s']:.2f} GB/s), per-lookup {dig['per_lookup_check_s']*1e3:.2f} ms, "
              f"render ≈ {render_s:.1f} s → verify=render {row['verify_render_share']:.3%}, "
              f"verify=lookup {row['verify_lookup_share']:.2%}  (load {os.getloadavg()})")
    data = {"environment": environment() | {"device": str(device)}, "dtype": str(dtype).replace("torch.", ""),
            "steps": STEPS, "repeats": args.repeats, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "models": rows}
    name = "fingerprint_cost" if device.type == "cpu" else f"gpu/fingerprint_cost_{device.type}"
    write_report(name, data, markdown(data))


def markdown(data: dict) -> str:
    head = ["model", "watched tensors", "GB digested", "digest (ms)", "GB/s", "per-lookup checks (ms)",
            "render estimate (s)", "verify=render share", "verify=lookup share"]
    rows = [[r["model"], r["tensors"], f"{r['bytes']/1e9:.2f}", f"{r['digest_s']*1e3:.1f}",
             f"{r['digest_gb_per_s']:.2f}", f"{r['per_lookup_check_s']*1e3:.2f}", f"{r['render_s_estimate']:.1f}",
             f"{r['verify_render_share']:.3%}", f"{r['verify_lookup_share']:.2%}"] for r in data["models"]]
    env = data["environment"]
    return "\n\n".join([
        "# Exact weight digest vs a 28-step render",
        f"`python benchmarks/fingerprint_cost.py` — torch {env['torch']}, device {env['device']}, "
        f"{env['cpu_threads']} CPU threads, dtype {data['dtype']}, {data['repeats']} repeats (medians). "
        f"Load average before {tuple(round(x, 2) for x in data['loadavg_before'])}, after "
        f"{tuple(round(x, 2) for x in data['loadavg_after'])} (shared machine: absolute times are inflated).",
        md_table(head, rows),
        "Method (digest and step timed A/B interleaved, medians): digest time is summed per distinct tensor shape over the modulator tensors of the "
        "published model (listed on the meta device); the render is one reduced-depth step timed at "
        "the published width and 256 image tokens, scaled by FLOPs (FlopCounterMode on meta: full "
        "model at the published resolution / reduced model as timed) and by 28 steps. "
        "`verify=render` = one digest + 28 per-lookup checks (storage identity + 16-sample "
        "tripwire) per render; `verify=lookup` = a digest at every step.",
        "\n".join(f"- {r['model']}: render {r['render']}; timed step {r['reduced_step']}" for r in data["models"]),
    ])


if __name__ == "__main__":
    main()

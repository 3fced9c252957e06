"""Modulator weight offload: keep adaLN modulator weights off the execution device.

Once a render's modulators are precomputed (its timestep schedule x its conditioning), the
modulator ``Linear``s and embedders are never run during the denoising steps: every slot is armed
with a cached tensor (:mod:`fusion_diffusers.slots`). Their weights are 27-34 % of FLUX.1,
SD3/3.5, AuraFlow, Qwen-Image and DiT (``python -m fusion_diffusers.support``; ``benchmarks/offload_memory.py``), so they need not stay
on the accelerator. This is the lossless variant of what SGLang #34650 / vLLM-Omni #5783 do for
MiniMax-H3: the outputs stay bit-identical because the modulators are computed by
the same modules, with the same weights, on the same device and dtype as without offload.

Mechanism (the same one diffusers' group offloading uses, so ``Parameter`` objects, optimizers,
``state_dict`` and ``EMAModel.copy_to`` keep working): each watched tensor's ``.data`` *rests* on
``offload_device``; for a computation it is pointed at a copy on the execution device and
pointed back afterwards. Pointing back restores the same storage, ``data_ptr`` and ``_version``,
so the weight fingerprint and content tripwire of the cache (docs/design.md §4.3) watch the offloaded
copy itself: writes to it are still detected.

Streaming granularity: one computation streams *all* modulator weights to the execution device
once, computes, then releases them. :func:`fusion_diffusers.precompute` computes a whole
schedule inside one streaming, so each weight crosses to the device once per schedule; a plain
cache miss during a render streams once per missed step (correct, slower). Peak device memory
during a streaming is the uncached model's; between streamings no modulator weight is on the
execution device.

When ``offload_device`` equals the execution device (CPU-only machines) nothing moves and
nothing is saved; :class:`ResidentReport` says so (``same_device``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from fusion_infer.cache.offload import ResidentReport, WeightOffload, parameter_bytes

__all__ = ["ResidentReport", "WeightOffload", "parameter_bytes", "refuse_offload_hooks"]


_GROUP_OFFLOAD_HOOKS = ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker")


def refuse_offload_hooks(model: nn.Module, modules: Iterable[nn.Module] | None = None) -> None:
    """Raise ``ValueError`` when diffusers/accelerate offloading hooks sit on ``model``.

    ``modules``: check only these (plus ``model`` itself) instead of every submodule — the cheap
    per-call form (the modulator modules and the blocks are where group offloading hooks go).

    Group offloading and ``enable_model_cpu_offload``/``enable_sequential_cpu_offload`` move the
    same parameters between devices on their own schedule; combined with modulator weight offload
    the two would fight over where the modulator weights live. Use one or the other.
    """
    named = model.named_modules() if modules is None else [("", model), *((type(m).__name__, m) for m in modules)]
    for name, module in named:
        where = name or type(model).__name__
        if hasattr(module, "_hf_hook"):
            raise ValueError(
                f"offload_weights=True cannot be combined with accelerate CPU offload hooks "
                f"(found on {where}); use pipe.enable_model_cpu_offload()/enable_sequential_cpu_offload() "
                "or ModulatorCacheConfig(offload_weights=True), not both"
            )
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            for hook_name in _GROUP_OFFLOAD_HOOKS:
                if registry.get_hook(hook_name) is not None:
                    raise ValueError(
                        f"offload_weights=True cannot be combined with diffusers group offloading "
                        f"(hook {hook_name!r} found on {where}); use enable_group_offload(...) or "
                        "ModulatorCacheConfig(offload_weights=True), not both"
                    )

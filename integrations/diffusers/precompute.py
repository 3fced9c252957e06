"""``precompute(pipe_or_transformer, timesteps, **conditioning)``: fill a render's modulators up front.

With ``ModulatorCacheConfig(offload_weights=True)`` this is the intended start of a render: the
modulator weights are streamed to the execution device **once**, every step's modulators of the
schedule are computed with the model's own modules (one forward-shaped call per step, so the bits
equal those of the uncached forward), stored in the cache, and the weights go back to
``offload_device``. The denoising steps then hit the cache and run with no modulator weight on
the execution device. Without offload it simply warms the cache.

The timesteps must be exactly what the transformer's ``forward`` receives at each step (the key
is the exact bits): DiT/SD3 pipelines pass ``t.expand(batch)``; Flux pipelines pass
``t.expand(batch).to(dtype) / 1000``. With a pipeline, ``timesteps`` may be omitted: the
schedule is read from ``pipe.scheduler.timesteps`` and mapped by ``timestep_fn`` (default
``t.expand(batch_size)``).

Under offload the precomputed schedule becomes the cache's *plan*:

* **New schedule or step count** (a step of the same conditioning misses): the cache rebuilds
  transparently. Given a pipeline, the new schedule is read from ``pipe.scheduler.timesteps`` (the
  pipeline sets it before its first transformer call); when the missing step belongs to it, the
  weights are streamed in once, every step of the new schedule is recomputed and stored, and the
  weights go back to ``offload_device``. Without a schedule source each missing step streams on
  its own. Both log one line on the ``fusion_diffusers.precompute`` logger.
* **Table larger than the weights**: when the schedule's entries would take more bytes than the
  modulator weights themselves, holding them on the execution device saves nothing: precompute
  falls back to computing modulators directly — the weights return to the execution device, the
  cache stops offloading and bypasses every call (uncached, bit-identical) — and logs a warning.
  :attr:`PrecomputeReport.fallback` says why.

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> from fusion_diffusers import ModulatorCacheConfig, apply_modulator_cache
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10).eval()
    >>> cache = apply_modulator_cache(m, ModulatorCacheConfig(offload_weights=True))
    >>> rep = precompute(m, torch.tensor([900, 500, 100]), batch_size=2, class_labels=torch.tensor([1, 10]))
    >>> rep.computed, rep.streamings
    (3, 0)
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from fusion_infer import make_key
from fusion_infer.cache.store import value_nbytes

from .families import CallConditioning, unwrap_compiled
from .hooks import ModulatorCache, get_modulator_cache
from .modulators import conditioning_for
from .offload import ResidentReport, refuse_offload_hooks

logger = logging.getLogger(__name__)

__all__ = ["PrecomputeReport", "precompute"]


@dataclass(frozen=True)
class PrecomputeReport:
    """What :func:`precompute` did.

    Attributes:
        steps: timesteps in the schedule.
        computed: entries computed now (the others were already cached).
        streamings: times the offloaded weights were streamed to the device (1 with offload on a
            separate device, else 0).
        resident: :class:`~fusion_diffusers.offload.ResidentReport` after the precompute.
        fallback: why the cache fell back to computing modulators directly (the table would be
            larger than the weights), else None.
    """

    steps: int
    computed: int
    streamings: int
    resident: ResidentReport
    fallback: str | None = None


def _transformer(pipe_or_transformer: Any) -> nn.Module:
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(transformer, nn.Module):
        return unwrap_compiled(transformer)
    if isinstance(pipe_or_transformer, nn.Module):
        return unwrap_compiled(pipe_or_transformer)
    raise TypeError(
        "pipe_or_transformer must be a diffusers transformer or a pipeline with a `transformer` "
        f"component, got {type(pipe_or_transformer).__name__}"
    )


def _default_timestep_fn(batch_size: int | None) -> Callable[[Tensor], Tensor]:
    if batch_size is None:
        raise ValueError("batch_size is required when the schedule comes from the pipeline's scheduler")
    return lambda t: t.expand(batch_size)


def _scheduler_timesteps(source: Any) -> Tensor | None:
    scheduler = getattr(source, "scheduler", None)
    t = getattr(scheduler, "timesteps", None)
    return t if isinstance(t, Tensor) and t.numel() else None


def _steps(timesteps: Tensor | Sequence[Tensor], batch_size: int | None) -> list[Tensor]:
    if isinstance(timesteps, Tensor):
        if timesteps.dim() != 1:
            raise ValueError(
                f"timesteps must be a 1-D tensor of per-step values or a sequence of per-step "
                f"tensors, got a tensor of shape {tuple(timesteps.shape)}"
            )
        if batch_size is None:
            raise ValueError("batch_size is required when timesteps is a 1-D tensor of per-step values")
        # Each value as the pipelines pass it: a 0-d value expanded over the batch.
        return [t.expand(batch_size) for t in timesteps]
    steps = list(timesteps)
    for i, t in enumerate(steps):
        if not isinstance(t, Tensor):
            raise TypeError(f"timesteps[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return steps


def precompute(
    pipe_or_transformer: Any,
    timesteps: Tensor | Sequence[Tensor] | None = None,
    *,
    batch_size: int | None = None,
    timestep_fn: Callable[[Tensor], Tensor] | None = None,
    hidden_dtype: torch.dtype | None = None,
    lora_scale: float = 1.0,
    **conditioning: Any,
) -> PrecomputeReport:
    """Compute and cache every step's modulators of a known schedule and conditioning.

    Args:
        pipe_or_transformer: a pipeline (its ``transformer`` is used) or a transformer that has
            a modulator cache (:func:`apply_modulator_cache` / :func:`enable_modulator_cache`).
        timesteps: per-step timestep tensors exactly as ``forward`` receives them, or a 1-D
            tensor of per-step values that are each expanded to ``batch_size``; None with a
            pipeline: ``pipe.scheduler.timesteps`` mapped by ``timestep_fn``.
        batch_size: rows per forward call (CFG doubles it); required with a 1-D tensor.
        timestep_fn: scheduler value → the timestep tensor the pipeline passes to ``forward``
            (default ``t.expand(batch_size)``; Flux: ``lambda t: t.expand(b).to(dtype) / 1000``).
            Also used to read a new schedule when the cache rebuilds under offload.
        hidden_dtype: dtype of the hidden states (default: the transformer's dtype).
        lora_scale: the per-call ``joint_attention_kwargs["scale"]`` (SD3/Flux).
        **conditioning: as for :func:`compute_modulators` (``class_labels``,
            ``pooled_projections``, ``guidance``, ``added_cond_kwargs``; ``batch_size`` for
            PixArt/Sana is taken from ``batch_size``).

    Returns:
        :class:`PrecomputeReport` with the resident-bytes report.

    Raises:
        ValueError: no modulator cache applied; bad ``timesteps``/``batch_size``; offloading
            hooks present.
        TypeError: unknown conditioning names (the allowed ones are listed).
    """
    model = _transformer(pipe_or_transformer)
    cache = get_modulator_cache(model)
    if cache is None:
        raise ValueError(
            f"no modulator cache is applied to this {type(model).__name__}; call "
            "apply_modulator_cache(transformer, config) or enable_modulator_cache(pipe, config) first"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if timestep_fn is not None and not callable(timestep_fn):
        raise TypeError(f"timestep_fn must be callable or None, got {type(timestep_fn).__name__}")
    if timesteps is None:
        schedule = _scheduler_timesteps(pipe_or_transformer)
        if schedule is None:
            raise ValueError(
                "timesteps is None: pass the per-step timesteps, or a pipeline whose scheduler has "
                "timesteps set (pipe.scheduler.set_timesteps(n))"
            )
        fn = timestep_fn or _default_timestep_fn(batch_size)
        steps = [fn(t) for t in schedule]
    else:
        steps = _steps(timesteps, batch_size)
    if not steps:
        raise ValueError("timesteps is empty; pass at least one step")
    if cache.offload is not None:
        refuse_offload_hooks(model)
    if "batch_size" in cache.family.conditioning and "batch_size" not in conditioning:
        conditioning["batch_size"] = steps[0].shape[0] if steps[0].dim() else 1
    device = steps[0].device
    before = cache.offload.streamings if cache.offload is not None else 0
    conds = [conditioning_for(model, cache.family, t, hidden_dtype, lora_scale, dict(conditioning)) for t in steps]
    lora_key = cache.prepare()  # weights checked at rest, before streaming
    computed = 0
    fallback = None
    with cache.streaming(device):
        for i, cond in enumerate(conds):
            computed += cache.fill(cond, lora_key)
            if i == 0 and cache.offload is not None:
                fallback = _table_too_large(cache, cond, lora_key, len(conds))
                if fallback is not None:
                    break
    after = cache.offload.streamings if cache.offload is not None else 0
    if fallback is not None:
        _compute_directly(cache, fallback)
    elif cache.offload is not None:
        source = pipe_or_transformer if _scheduler_timesteps(pipe_or_transformer) is not None else None
        fn = timestep_fn or (_default_timestep_fn(batch_size) if batch_size is not None else None)
        _install_plan(cache, _Plan(cache, conds, source if fn is not None else None, fn))
    return PrecomputeReport(
        steps=len(steps), computed=computed, streamings=after - before, resident=cache.resident_report(),
        fallback=fallback,
    )


# ------------------------------------------------------------------------------ table size


def _table_too_large(cache: ModulatorCache, cond: CallConditioning, lora_key: tuple, steps: int) -> str | None:
    _, key = cache._key(cond, cond.timestep.detach().to("cpu"), lora_key)
    entry = value_nbytes(cache.core.store.peek(key))
    weights = cache.offload.nbytes
    if entry * steps <= weights:
        return None
    return (f"a table of {steps} steps x {entry} bytes = {entry * steps} bytes exceeds the {weights} bytes of "
            "modulator weights it would replace")


def _compute_directly(cache: ModulatorCache, reason: str) -> None:
    """Stop offloading: weights back on the execution device, every call computed directly."""
    home = cache.execution_device()
    with torch.no_grad():
        for t in cache.offload.tensors:
            if t.device.type != "meta":
                t.data = t.data.to(home)
    cache.offload = None
    cache.invalidate("offload_fallback")
    cache.bypass_reason = reason  # every thread: modulators computed by the model itself, bit-identical
    logger.warning("fusion_diffusers: %s; falling back to computing modulators directly "
                   "(weights stay on %s, cache bypassed)", reason, home)


# ------------------------------------------------------------------------------ plan / rebuild


def _cond_key(cond: CallConditioning) -> Any:
    return make_key(cond.values, cond.hidden_dtype, float(cond.lora_scale))


def _t_key(t: Tensor) -> Any:
    return make_key(t.detach().to("cpu"))


class _Plan:
    """The precomputed schedule of an offloaded cache and where to read a new one."""

    def __init__(self, cache: ModulatorCache, conds: list[CallConditioning], source: Any,
                 timestep_fn: Callable[[Tensor], Tensor] | None) -> None:
        self.cond = conds[0]
        self.key = _cond_key(conds[0])
        self.steps = {_t_key(c.timestep) for c in conds}
        self.source = weakref.ref(source) if source is not None else None
        self.timestep_fn = timestep_fn
        self.warned = False

    def new_schedule(self) -> list[Tensor] | None:
        source = self.source() if self.source is not None else None
        schedule = _scheduler_timesteps(source) if source is not None else None
        if schedule is None or self.timestep_fn is None:
            return None
        return [self.timestep_fn(t) for t in schedule]


class _PlannedMiss:
    """The cache's miss computation once a plan exists: rebuild a new schedule in one streaming."""

    def __init__(self, cache: ModulatorCache, inner: Callable[[CallConditioning], dict], plan: _Plan) -> None:
        self.cache = cache
        self.inner = inner
        self.plan = plan

    def __call__(self, cond: CallConditioning) -> dict[str, Any]:
        cache, plan = self.cache, self.plan
        if cache.offload is None or cache._streaming or _cond_key(cond) != plan.key:
            return self.inner(cond)
        here = _t_key(cond.timestep)
        if here in plan.steps:  # a planned step (a probe, or an evicted entry)
            return self.inner(cond)
        schedule = plan.new_schedule()
        keys = [_t_key(t) for t in schedule] if schedule else []
        if here not in keys:
            if not plan.warned:
                plan.warned = True
                logger.info("fusion_diffusers: timestep %s is not in the precomputed schedule and no new "
                            "schedule is readable; streaming the modulator weights per missing step (call "
                            "precompute() with the new schedule to stream once)", cond.timestep.flatten()[:1].tolist())
            return self.inner(cond)
        lora_key = cache._scan()[1]
        others = [replace(cond, timestep=t) for t, k in zip(schedule, keys) if k != here]
        with cache.streaming(cond.timestep.device):
            values = self.inner(cond)
            for c in others:
                cache.fill(c, lora_key)
        plan.steps = set(keys)
        plan.warned = False
        logger.info("fusion_diffusers: new schedule of %d steps under offload_weights: streamed the modulator "
                    "weights once and rebuilt %d entries", len(keys), len(others) + 1)
        return values


def _install_plan(cache: ModulatorCache, plan: _Plan) -> None:
    current = cache.__dict__.get("_compute")
    inner = current.inner if isinstance(current, _PlannedMiss) else cache._compute
    # An instance attribute shadows ModulatorCache._compute for this cache only: misses, probes
    # and fills all go through it; it defers to the original unless a new schedule shows up.
    cache._compute = _PlannedMiss(cache, inner, plan)

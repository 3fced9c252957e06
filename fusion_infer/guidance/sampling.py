"""Rectified-flow samplers (Euler and ping-pong), optionally with selective TFG guidance.

Convention (rectified flow, Liu et al. 2023; SD3, Esser et al. 2024 §2): ``x_σ = (1 − σ)·x_0 + σ·ε``, ``σ = 1`` noise, ``σ = 0`` data;
the model predicts the velocity ``v = ε − x_0``, so ``x̂_0 = x_σ − σ·v̂``.

* **Euler** (Liu et al. 2023, Eq. 1 integrated with explicit Euler; equal to DDIM with η = 0 in
  RF form): ``x_{i+1} = x_i + (σ_{i+1} − σ_i)·v̂ = (σ_{i+1}/σ_i)·x_i + (1 − σ_{i+1}/σ_i)·x̂_0``.
* **Ping-pong** (Stable Audio Open Small's sampler, ``stable-audio-tools``
  ``sample_flow_pingpong``): jump to the clean estimate and re-noise with
  fresh noise, ``x_{i+1} = (1 − σ_{i+1})·x̂_0 + σ_{i+1}·ε_{i+1}``.

With a :class:`~fusion_infer.guidance.tfg.SelectiveTFG`, on every step where a head's window holds
``σ_i`` (LatCH's selective TFG, arXiv 2603.04366)::

    Euler, mean_injection="tfg":   x_{i+1} = Euler(x_i, x̂_0) + (1 − σ_{i+1})·Δ_0 − g_var
    Euler, mean_injection="euler": x_{i+1} = Euler(x_i, x̂_0 + Δ_0) − g_var
    ping-pong:                     x_{i+1} = (1 − σ_{i+1})·(x̂_0 + Δ_0) + σ_{i+1}·ε − g_var

**Caching** (``cache=``): ``True`` attaches a :class:`~fusion_infer.cache.time_conditioning.TimeConditioningCache`
to the base model and every head for this render (warmed with the schedule and ``t = 0``);
a :class:`~fusion_infer.guidance.render_caches.RenderCaches` reuses caches across renders; ``False``
detaches any cache so every modulator is computed (the comparison path). Both paths give
bit-identical latents on the same device and dtype (the cache is lossless, docs/design.md §4), which
``tests/guidance`` checks with ``torch.equal``.

Randomness (ping-pong noise, mean-guidance smoothing) is drawn from ``generator`` in a fixed
order, so a render is reproducible from ``(noise, generator seed)``.

Example:
    >>> import torch
    >>> from fusion_infer.models.base_dit import BaseDiT
    >>> model = BaseDiT(in_channels=8, dim=32, depth=1, heads=2, freq_dim=32)
    >>> noise = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
    >>> a = sample(model, noise, rf_sigmas(8), cache=True).latents
    >>> b = sample(model, noise, rf_sigmas(8), cache=False).latents
    >>> torch.equal(a, b)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .render_caches import RenderCaches, uncached
from .tfg import SelectiveTFG, frozen

__all__ = ["SAMPLERS", "SampleResult", "euler_step", "pingpong_step", "rf_sigmas", "sample"]

SAMPLERS = ("euler", "pingpong")


def rf_sigmas(steps: int, shift: float = 1.0, *, device: torch.device | str | None = None) -> Tensor:
    """Decreasing schedule ``[steps + 1]`` from 1 to 0 with SD3's time shift (Esser et al. 2024,
    Eq. 23): ``σ = shift·u / (1 + (shift − 1)·u)`` for ``u`` uniform in ``[1, 0]``.

    Example:
        >>> rf_sigmas(4).tolist()
        [1.0, 0.75, 0.5, 0.25, 0.0]
        >>> [round(v, 3) for v in rf_sigmas(2, shift=3.0).tolist()]
        [1.0, 0.75, 0.0]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    s = shift * u / (1.0 + (shift - 1.0) * u)
    return s.to(device=device, dtype=torch.float32)


def euler_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """``x + (σ' − σ)·(x − x̂_0)/σ`` (the velocity recovered from the clean estimate).

    Example:
        >>> euler_step(torch.ones(1), torch.zeros(1), 1.0, 0.5).item()
        0.5
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 for an Euler step, got {sigma}")
    return x + ((sigma_next - sigma) / sigma) * (x - x0)


def pingpong_step(x0: Tensor, sigma_next: float, noise: Tensor) -> Tensor:
    """``(1 − σ')·x̂_0 + σ'·ε`` (re-noise the clean estimate with fresh noise).

    Example:
        >>> pingpong_step(torch.ones(1), 0.25, torch.zeros(1)).item()
        0.75
    """
    return (1.0 - sigma_next) * x0 + sigma_next * noise


@dataclass
class SampleResult:
    """Output of :func:`sample`.

    Attributes:
        latents: the final ``x`` at ``σ = 0``.
        model_calls: base-model forwards; head_calls: head forwards (each also a backward).
        guided_steps: steps on which any guidance was applied.
        cache_stats: per model (``"base"``, ``"head0"``, …) the cache's hits/misses after the
            render (empty with ``cache=False``).
    """

    latents: Tensor
    model_calls: int = 0
    head_calls: int = 0
    guided_steps: int = 0
    cache_stats: dict[str, Any] = field(default_factory=dict)


def _check_inputs(model: nn.Module, noise: Tensor, sigmas: Tensor, sampler: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.dim() != 3:
        raise ValueError("noise must be a floating tensor [B, C, T]")
    if not isinstance(sigmas, Tensor) or sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least 2 values (e.g. rf_sigmas(steps))")
    s = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(s).all()) or float(s[0]) > 1.0 or float(s[-1]) < 0.0 or not bool((s[1:] < s[:-1]).all()):
        raise ValueError("sigmas must be finite, strictly decreasing, within [0, 1]")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def sample(
    model: nn.Module,
    noise: Tensor,
    sigmas: Tensor,
    *,
    sampler: str = "euler",
    guidance: SelectiveTFG | None = None,
    cache: bool | RenderCaches = True,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> SampleResult:
    """Integrate from ``noise`` (at ``σ_0``) to ``σ = 0``, optionally with selective TFG.

    Args:
        model: rectified-flow velocity model ``(x, t) → v`` (e.g. :class:`~fusion_infer.models.base_dit.BaseDiT`).
        noise: ``[B, C, T]`` initial state (``x`` at ``sigmas[0]``).
        sigmas: decreasing schedule ending at 0 (:func:`rf_sigmas`).
        sampler: ``"euler"`` or ``"pingpong"``.
        guidance: a :class:`SelectiveTFG` or None (unguided).
        cache: ``True`` / ``False`` / a :class:`RenderCaches` (module docstring).
        generator: source of the ping-pong noise and guidance smoothing noise (None: a fresh
            generator seeded 0 on ``noise.device``, so renders are deterministic by default).
        callback: called as ``callback(i, x_next)`` after every step.

    Returns:
        :class:`SampleResult`.
    """
    _check_inputs(model, noise, sigmas, sampler)
    if guidance is not None and not isinstance(guidance, SelectiveTFG):
        raise TypeError(f"guidance must be a SelectiveTFG or None, got {type(guidance).__name__}")
    if not isinstance(cache, (bool, RenderCaches)):
        raise TypeError(f"cache must be True, False or a RenderCaches, got {type(cache).__name__}")
    if generator is None:
        generator = torch.Generator(device=noise.device).manual_seed(0)
    heads = guidance.modules if guidance is not None else []
    steps = [float(v) for v in sigmas.detach().to("cpu", torch.float32).tolist()]
    weights = [w.tolist() for w in guidance.step_weights(sigmas)] if guidance is not None else []
    result = SampleResult(latents=noise)
    with ExitStack() as stack:
        # Freeze everything: only x is differentiated, and a frozen model is what lets the cache
        # serve (it bypasses when modulator weights require grad).
        stack.enter_context(frozen([model, *heads]))
        t_values = torch.tensor(steps[:-1] + [0.0], dtype=torch.float32)
        if cache is False:
            stack.enter_context(uncached([model, *heads]))
            caches: dict[int, Any] = {}
        else:
            store = RenderCaches() if cache is True else cache
            caches = stack.enter_context(store.scope([model, *heads], t_values))
        x = noise
        for i in range(len(steps) - 1):
            t, t_next = steps[i], steps[i + 1]
            with torch.no_grad():
                v = model(x, t)
            result.model_calls += 1
            x0 = x - t * v
            w_i = [w[i] for w in weights]
            active = guidance is not None and any(w > 0 for w in w_i)
            g_var = delta0 = None
            if active:
                result.guided_steps += 1
                g_var = guidance.variance_gradient(x, t, w_i)
                delta0 = guidance.mean_correction(x0, w_i, generator)
                result.head_calls += sum(1 for h, w in zip(guidance.heads, w_i) if w * h.rho > 0)
                if delta0 is not None:
                    result.head_calls += guidance.n_iter * sum(
                        1 for h, w in zip(guidance.heads, w_i) if w * h.mu > 0
                    )
            if sampler == "euler":
                if delta0 is not None and guidance.mean_injection == "euler":
                    x_next = euler_step(x, x0 + delta0, t, t_next)
                else:
                    x_next = euler_step(x, x0, t, t_next)
                    if delta0 is not None:
                        x_next = x_next + (1.0 - t_next) * delta0
            else:
                guided_x0 = x0 if delta0 is None else x0 + delta0
                if t_next > 0:
                    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                    x_next = pingpong_step(guided_x0, t_next, eps)
                else:
                    x_next = guided_x0
            if g_var is not None:
                x_next = x_next - g_var
            x = x_next.detach()
            if callback is not None:
                callback(i, x)
        result.latents = x
        names = {id(getattr(model, "_orig_mod", model)): "base"}
        for k, h in enumerate(heads):
            names.setdefault(id(getattr(h, "_orig_mod", h)), f"head{k}")
        for key, c in caches.items():
            s = c.stats
            result.cache_stats[names.get(key, str(key))] = {"hits": s.hits, "misses": s.misses}
    return result

"""Selective training-free guidance (TFG) with one or more control heads, rectified-flow form.

Sources: TFG — Ye et al., "TFG: Unified Training-Free Guidance for Diffusion Models", NeurIPS 2024
(arXiv 2409.15761), Alg. 1 / ``methods/tfg.py::guide_step``; LatCH's *selective* TFG — Novack et
al. 2026 (arXiv 2603.04366), which swaps TFG's predictor ``f`` for a latent control head ``c_φ``
and applies guidance only on a window of steps. TFG: Ye et al. 2024, arXiv 2409.15761;
LatCH: Novack et al. 2026, arXiv 2603.04366. With ``ℓ`` the per-sample control loss (mean over channels and
frames) and ``s_{h,i}`` head ``h``'s step weight at step ``i``:

* **variance guidance** (TFG ``Δ_t``, "cheap form" of §1.6: the head is evaluated at the *current*
  time instead of on ``x̂_0(x_t)``, so nothing is backpropagated through the base model)::

      g_var = ∇_{x_t} Σ_h ρ_h · s_{h,i} · ℓ_h(c_h(x_t, t_i), y*_h)

* **mean guidance** (TFG ``Δ_0``: ``N_iter`` gradient steps on the clean estimate, head at
  ``t = 0``, TFG's implicit-dynamics smoothing with input noise ``γ·ε``)::

      z ← x̂_0;  repeat N_iter:  z ← z − ∇_z Σ_h μ_h · s_{h,i} · ℓ_h(c_h(z + γ·ε, 0), y*_h)
      Δ_0 = z − x̂_0

The sampler (:mod:`fusion_infer.guidance.sampling`) turns ``Δ_0`` and ``g_var`` into the next state.

**Step weights** (``step_weights``): TFG normalises its per-step schedule to **mean 1** over the
guided steps (``·len/sum``); dividing by the sum instead (``α_i/Σα``, the community RF port)
silently divides the strength by the number of steps (the
"step-weight pitfall"). We always normalise to mean 1 over the steps inside each head's window:

* ``"constant"`` (default): ``s_{h,i} = 1`` inside the window;
* ``"increase"``: TFG's ``α_t = ᾱ_t/ᾱ_{t−1}`` in RF form, ``(1 − t_i)/(1 − t_{i+1})`` (0 at
  ``t_0 = 1``, → 1 near the data), rescaled to mean 1 over the window. If every raw weight in a
  window is 0 (a window holding only ``t = 1``) the weights stay 0: there is nothing to rescale.

**Windows** are expressed in σ (= ``t`` for rectified flow), ``(σ_lo, σ_hi)`` inclusive, never as
step fractions, so they mean the same noise levels whatever the step count or schedule shift.

**Heads must be frozen for guidance** (only ``x`` is differentiated): :func:`frozen` switches
``requires_grad`` off for the duration so the :class:`~fusion_infer.cache.time_conditioning.TimeConditioningCache`
serves them instead of bypassing (it bypasses whenever modulator weights require grad).

Example:
    >>> import torch
    >>> from fusion_infer import ControlHead
    >>> head = ControlHead(dim=64, depth=1, heads=4, freq_dim=64, zero_init_output=False)
    >>> term = HeadGuidance(head, target=torch.zeros(1, 16), rho=1.0, mu=1.0, window=(0.2, 1.0))
    >>> tfg = SelectiveTFG([term], n_iter=4, gamma=0.1)
    >>> sigmas = torch.linspace(1, 0, 11)
    >>> tfg.step_weights(sigmas)[0].tolist()[:3], tfg.step_weights(sigmas)[0].tolist()[-2:]
    ([1.0, 1.0, 1.0], [1.0, 0.0])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GUIDANCE_LOSSES",
    "STEP_WEIGHTS",
    "HeadGuidance",
    "SelectiveTFG",
    "control_loss",
    "frozen",
    "step_weight_schedule",
]

GUIDANCE_LOSSES = ("mse", "l1", "huber")
STEP_WEIGHTS = ("constant", "increase")


def control_loss(pred: Tensor, target: Tensor, loss: str = "mse", huber_delta: float = 1.0) -> Tensor:
    """Per-sample control loss ``[B]``: the mean over channels and frames of the element loss.

    A mean per sample (not over the batch) keeps each sample's guidance gradient independent
    of the batch size. Use the loss the head was trained with (as LatCH does).

    Example:
        >>> control_loss(torch.ones(2, 1, 4), torch.zeros(1, 4)).tolist()
        [1.0, 1.0]
    """
    if loss not in GUIDANCE_LOSSES:
        raise ValueError(f"loss must be one of {GUIDANCE_LOSSES}, got {loss!r}")
    target = target.to(pred)
    if loss == "mse":
        e = (pred - target).square()
    elif loss == "l1":
        e = (pred - target).abs()
    else:
        e = F.huber_loss(pred, target.expand_as(pred), reduction="none", delta=huber_delta)
    return e.flatten(1).mean(1)


def step_weight_schedule(sigmas: Tensor, window: tuple[float, float], kind: str = "constant") -> Tensor:
    """Per-step weights ``[N]`` for the ``N = len(sigmas) − 1`` steps ``σ_i → σ_{i+1}``.

    Zero outside ``σ_lo ≤ σ_i ≤ σ_hi``; inside, ``kind`` weights rescaled to **mean 1** over the
    window's steps (TFG's ``·len/sum``; see the module docstring).

    Example:
        >>> s = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
        >>> [round(v, 3) for v in step_weight_schedule(s, (0.0, 1.0), "increase").tolist()]
        [0.0, 1.043, 1.391, 1.565]
        >>> step_weight_schedule(s, (0.3, 0.8), "constant").tolist()
        [0.0, 1.0, 1.0, 0.0]
    """
    if kind not in STEP_WEIGHTS:
        raise ValueError(f"step_weights must be one of {STEP_WEIGHTS}, got {kind!r}")
    lo, hi = _check_window(window)
    # Compare in float32, the precision the sampler hands the models σ in: σ = 0.8 (float32)
    # must count as inside a window ending at 0.8.
    s32 = sigmas.detach().to("cpu", torch.float32)
    inside = (s32[:-1] >= torch.tensor(lo, dtype=torch.float32)) & (s32[:-1] <= torch.tensor(hi, dtype=torch.float32))
    s = s32.to(torch.float64)
    cur, nxt = s[:-1], s[1:]
    if kind == "constant":
        raw = torch.ones_like(cur)
    else:
        raw = (1.0 - cur) / (1.0 - nxt).clamp_min(1e-12)
    raw = torch.where(inside, raw, torch.zeros_like(raw))
    n_in = int(inside.sum())
    total = float(raw.sum())
    if n_in and total > 0:
        raw = raw * (n_in / total)
    return raw.to(torch.float32)


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise TypeError(f"window must be a pair (sigma_lo, sigma_hi) of numbers, got {window!r}") from None
    if not (0.0 <= lo <= hi <= 1.0) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"window must satisfy 0 <= sigma_lo <= sigma_hi <= 1, got {window!r}")
    return lo, hi


@dataclass
class HeadGuidance:
    """One control head's part in guidance: its target, strengths, σ-window and loss.

    Attributes:
        head: a control head ``(x [B, C_in, T], t) → [B, C_out, T]`` (a ControlHead).
        target: ``[C_out, T]`` or ``[B, C_out, T]`` in the head's output units (e.g. the
            standardised control the head was trained to predict).
        rho: variance-guidance strength ``ρ`` (0 disables it for this head).
        mu: mean-guidance strength ``μ`` (0 disables it).
        window: ``(σ_lo, σ_hi)``, inclusive; guidance acts on steps whose current ``σ_i`` is inside.
        loss: ``"mse"`` (default), ``"l1"`` or ``"huber"`` — the loss the head was trained with.
        huber_delta: ``δ`` for ``"huber"``.
    """

    head: nn.Module
    target: Tensor
    rho: float = 1.0
    mu: float = 1.0
    window: tuple[float, float] = (0.0, 1.0)
    loss: str = "mse"
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.head, nn.Module):
            raise TypeError(f"head must be an nn.Module, got {type(self.head).__name__}")
        if not isinstance(self.target, Tensor) or not self.target.is_floating_point():
            raise TypeError("target must be a floating tensor [C_out, T] or [B, C_out, T]")
        if self.target.dim() not in (2, 3):
            raise ValueError(f"target must be [C_out, T] or [B, C_out, T], got shape {tuple(self.target.shape)}")
        for name in ("rho", "mu", "huber_delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"HeadGuidance.{name} must be a finite number >= 0, got {v!r}")
        if self.loss not in GUIDANCE_LOSSES:
            raise ValueError(f"HeadGuidance.loss must be one of {GUIDANCE_LOSSES}, got {self.loss!r}")
        self.window = _check_window(self.window)

    def loss_at(self, x: Tensor, t: float) -> Tensor:
        """Per-sample loss ``[B]`` of the head's prediction at ``(x, t)`` against the target."""
        target = self.target
        if target.dim() == 2:
            target = target[None]
        return control_loss(self.head(x, t), target, self.loss, self.huber_delta)


@contextmanager
def frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter of ``modules`` (restored after).

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with frozen([lin]):
        ...     lin.weight.requires_grad
        False
        >>> lin.weight.requires_grad
        True
    """
    saved: list[tuple[nn.Parameter, bool]] = []
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                saved.append((p, p.requires_grad))
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class SelectiveTFG:
    """Selective TFG over several heads (module docstring for the equations).

    Args:
        heads: one :class:`HeadGuidance` per head (each with its own target, ρ, μ, window, loss).
        n_iter: mean-guidance iterations ``N_iter`` (LatCH: 4). 0 disables mean guidance.
        gamma: input-noise smoothing ``γ`` for mean guidance (TFG's implicit dynamics; TFG
            default 0.01, LatCH's RF port ≈ 0.3). 0 disables it.
        step_weights: ``"constant"`` (default) or ``"increase"``; always mean 1 per window.
        mean_injection: how ``Δ_0`` enters an Euler step: ``"tfg"`` (default) adds
            ``(1 − σ_{i+1})·Δ_0`` to the *unguided* Euler step, the RF analogue of TFG's
            ``√ᾱ_{t−1}·Δ_0``; ``"euler"`` recomputes the Euler step from the guided clean estimate,
            which adds only ``(1 − σ_{i+1}/σ_i)·Δ_0`` (much weaker early).
            Ping-pong always uses the guided clean estimate, which is TFG-like by construction.

    Example:
        >>> SelectiveTFG([], n_iter=4).n_iter
        4
    """

    MEAN_INJECTIONS = ("tfg", "euler")

    def __init__(
        self,
        heads: Sequence[HeadGuidance],
        *,
        n_iter: int = 4,
        gamma: float = 0.1,
        step_weights: str = "constant",
        mean_injection: str = "tfg",
    ) -> None:
        heads = list(heads)
        for i, h in enumerate(heads):
            if not isinstance(h, HeadGuidance):
                raise TypeError(f"heads[{i}] must be a HeadGuidance, got {type(h).__name__}")
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
            raise ValueError(f"n_iter must be an int >= 0, got {n_iter!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        if step_weights not in STEP_WEIGHTS:
            raise ValueError(f"step_weights must be one of {STEP_WEIGHTS}, got {step_weights!r}")
        if mean_injection not in self.MEAN_INJECTIONS:
            raise ValueError(f"mean_injection must be one of {self.MEAN_INJECTIONS}, got {mean_injection!r}")
        self.heads = heads
        self.n_iter = n_iter
        self.gamma = float(gamma)
        self.step_weights_kind = step_weights
        self.mean_injection = mean_injection

    @property
    def modules(self) -> list[nn.Module]:
        """The heads' modules (for freezing and caching)."""
        return [h.head for h in self.heads]

    def step_weights(self, sigmas: Tensor) -> list[Tensor]:
        """Per-head step weights ``[N]`` for the schedule ``sigmas`` (:func:`step_weight_schedule`)."""
        return [step_weight_schedule(sigmas, h.window, self.step_weights_kind) for h in self.heads]

    def head_time_values(self, sigmas: Tensor) -> Tensor:
        """Every ``t`` a head is called at over ``sigmas``: the schedule's steps plus ``0.0``."""
        return torch.cat([sigmas[:-1].detach().to("cpu", torch.float32), torch.zeros(1)])

    def variance_gradient(self, x: Tensor, t: float, weights: Sequence[float]) -> Tensor | None:
        """``g_var = ∇_x Σ_h ρ_h s_{h,i} ℓ_h(c_h(x, t))`` (None when no head is active)."""
        terms = [(h, w * h.rho) for h, w in zip(self.heads, weights) if w * h.rho > 0]
        if not terms:
            return None
        with torch.enable_grad():
            xq = x.detach().requires_grad_(True)
            total = sum(scale * h.loss_at(xq, t).sum() for h, scale in terms)
            (grad,) = torch.autograd.grad(total, xq)
        return grad

    def mean_correction(
        self, x0: Tensor, weights: Sequence[float], generator: torch.Generator | None
    ) -> Tensor | None:
        """``Δ_0`` after ``N_iter`` smoothed gradient steps on ``x̂_0`` with the heads at ``t = 0``."""
        terms = [(h, w * h.mu) for h, w in zip(self.heads, weights) if w * h.mu > 0]
        if not terms or self.n_iter == 0:
            return None
        z = x0.detach()
        with torch.enable_grad():
            for _ in range(self.n_iter):
                zq = z.requires_grad_(True)
                inp = zq
                if self.gamma > 0:
                    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
                    inp = zq + self.gamma * noise
                total = sum(scale * h.loss_at(inp, 0.0).sum() for h, scale in terms)
                (grad,) = torch.autograd.grad(total, zq)
                z = (z - grad).detach()
        return z - x0.detach()

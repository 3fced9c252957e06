"""Polyak step-size multiplier for Schedule-Free (the ``polyak=`` option of FusionOpt).

Published reference: ScheduleFree+ (Defazio, arXiv 2605.19095), whose step size is

    α_t = γ_t · max(0, F_t + I_t) / ê_t,   I_t = β·⟨g_t, z_t − x_t⟩ = ⟨g_t, z_t − y_t⟩,
    e_t = β_p·e_{t−1} + (1−β_p)·‖g_t‖₁·√(π/2),   ê_t = e_t / (1 − β_p^t)

``P_t = max(0, F_t + I_t)/ê_t`` is a step length in parameter units per coordinate (loss divided
by the un-normalised L1 gradient norm; the earlier public FusionOpt divided by the *mean* |g|,
which multiplies P by the parameter count and pins any clamp at its top). FusionOpt keeps the
user's learning rate as the base and multiplies it by a dimensionless, clamped ratio:

    γ_t = lr_t · clamp(ratio_t, γ_min, γ_max)

with two ways to make P dimensionless:

``"relative"`` (default): ``ratio_t = P_t / P̄_{t−1}``, P̄ the bias-corrected EMA (β_p) of P. Scale
    free by construction: the step grows when the loss is high relative to the gradient compared
    with the recent past and shrinks when it is low. ratio = 1 on the first step.
``"sfplus"``: ``ratio_t = P_t / lr_t``: ScheduleFree+'s own step size measured in units of the
    user's learning rate, i.e. ``γ_t = clamp(α_t, γ_min·lr_t, γ_max·lr_t)`` (Polyak with
    safeguards). It assumes the optimum loss is 0, so on tasks with a large loss floor it sits at
    the top clamp; ``docs/polyak.md`` shows both on a real task.

Everything stays on the device (no host synchronisation); telemetry exposes the unclamped ratio so
saturation is visible.
"""

from __future__ import annotations

import math

import torch

__all__ = ["POLYAK_MODES", "PolyakState"]

POLYAK_MODES = ("off", "relative", "sfplus")
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)


class PolyakState:
    """Running statistics of the Polyak multiplier; all tensors live on the parameters' device."""

    def __init__(self, mode: str, beta_p: float, gamma_clamp: tuple[float, float], device) -> None:
        if mode not in POLYAK_MODES:
            raise ValueError(f"polyak must be one of {POLYAK_MODES}, got {mode!r}")
        if not 0.0 <= beta_p < 1.0:
            raise ValueError(f"polyak_beta must be in [0, 1), got {beta_p!r}")
        lo, hi = gamma_clamp
        if not (0.0 < lo <= hi) or math.isinf(hi):
            raise ValueError(f"gamma_clamp must be (min, max) with 0 < min <= max < inf, got {gamma_clamp!r}")
        self.mode, self.beta_p, self.clamp = mode, beta_p, (float(lo), float(hi))
        z = lambda: torch.zeros((), dtype=torch.float32, device=device)  # noqa: E731
        self.loss_ema, self.gnorm_ema, self.p_ema = z(), z(), z()
        self.loss_w, self.gnorm_w, self.p_w = z(), z(), z()  # bias-correction masses Σ(1−β)β^k
        self.ratio = torch.ones((), dtype=torch.float32, device=device)
        self.multiplier = torch.ones((), dtype=torch.float32, device=device)

    def update(
        self,
        loss: torch.Tensor,
        grad_l1: torch.Tensor,
        inner: torch.Tensor,
        lr_t: float,
        gate: torch.Tensor,
    ) -> torch.Tensor:
        """Fold in one step's loss ``F_t``, ``‖g‖₁`` and ``I_t``; return the clamped multiplier.

        ``gate`` is 0 on a skipped (non-finite) step: the EMAs and the multiplier then stay put.
        """
        b = self.beta_p
        w = (1.0 - b) * gate
        loss = loss.detach().to(torch.float32).reshape(())
        e_new = torch.where(gate > 0, grad_l1 * _SQRT_HALF_PI, self.gnorm_ema)
        f_new = torch.where(gate > 0, loss, self.loss_ema)
        self.gnorm_ema.lerp_(e_new, w)
        self.gnorm_w.lerp_(torch.ones_like(self.gnorm_w), w)
        self.loss_ema.lerp_(f_new, w)
        self.loss_w.lerp_(torch.ones_like(self.loss_w), w)
        e_hat = self.gnorm_ema / self.gnorm_w.clamp_min(1e-30)
        step_len = (loss + inner).clamp_min(0.0) / e_hat.clamp_min(1e-30)
        step_len = torch.where(gate > 0, step_len, torch.zeros_like(step_len))
        if self.mode == "sfplus":
            ratio = step_len / lr_t
        else:  # relative: compare with the EMA of past step lengths (ratio 1 on the first step)
            p_bar = self.p_ema / self.p_w.clamp_min(1e-30)
            ratio = torch.where(self.p_w > 0, step_len / p_bar.clamp_min(1e-30), torch.ones_like(step_len))
            self.p_ema.lerp_(step_len, w)
            self.p_w.lerp_(torch.ones_like(self.p_w), w)
        self.ratio = torch.where(gate > 0, ratio, self.ratio)
        self.multiplier = self.ratio.clamp(*self.clamp)
        return self.multiplier

    def state_dict(self) -> dict:
        keys = ("loss_ema", "gnorm_ema", "p_ema", "loss_w", "gnorm_w", "p_w", "ratio", "multiplier")
        return {k: getattr(self, k).clone() for k in keys}

    def load_state_dict(self, sd: dict) -> None:
        for k, v in sd.items():
            cur = getattr(self, k)
            setattr(self, k, v.to(device=cur.device, dtype=cur.dtype).clone())

"""Polyak step-size multiplier for Schedule-Free (the ``polyak=`` option of FusionOpt).

Published reference: ScheduleFree+ (Defazio, arXiv 2605.19095), whose step size is

    α_t = γ_t · max(0, F_t + I_t) / ê_t,   I_t = β·⟨g_t, z_t − x_t⟩ = ⟨g_t, z_t − y_t⟩,
    e_t = β_p·e_{t−1} + (1−β_p)·‖g_t‖₁·√(π/2),   ê_t = e_t / (1 − β_p^t)

Per group and per direction type. ScheduleFree+'s normaliser assumes Adam-like directions: for
``U = g/σ`` (σ the RMS from the second moment) and Gaussian-like gradients, ``⟨g, U⟩ = ‖g‖₂²/σ ≈
‖g‖₁·√(π/2)`` — the √(π/2) is exactly the correction from ``‖g‖₁`` to ``⟨g, U⟩``. FusionOpt steps
several groups with different directions (Adam-normalised scalars; NorMuon/orthogonalised
matrices of RMS 0.2) and learning rates, so it uses the quantity the formula stands for, the
first-order loss decrease of the un-multiplied step over *all* groups,

    D_t = Σ_groups η_g,t · ⟨g_t, U_g,t⟩ ,   D̂_t its bias-corrected EMA (β_p)

and the Polyak condition "linearised decrease = F_t + I_t" gives one dimensionless multiplier
``P_t = max(0, F_t + I_t)/D̂_t`` that scales every group's own learning rate:

    γ_g,t = η_g,t · clamp(ratio_t, γ_min, γ_max)

(For a single Adam group D_t = η·‖g‖₁√(π/2) in expectation, i.e. ScheduleFree+'s α_t; the earlier
rule divided the loss by ``‖g‖₁`` of all groups and took group 0's lr as the unit for every group,
which mis-scaled groups whose directions are not ±1-like.)

``"relative"`` (default): ``ratio_t = P_t / P̄_{t−1}``, P̄ the bias-corrected EMA (β_p) of P. Scale
    free by construction: the step grows when the loss is high relative to the expected decrease
    compared with the recent past and shrinks when it is low. ratio = 1 on the first step.
``"sfplus"``: ``ratio_t = P_t``: ScheduleFree+'s own step, in units of each group's learning rate
    (Polyak with safeguards). It assumes the optimum loss is 0, so on tasks with a large loss
    floor it sits at the top clamp; ``docs/polyak.md`` shows both on a real task.

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

    def observe_loss(self, loss: torch.Tensor, gate: torch.Tensor) -> None:
        """Fold the loss into its EMA only (Polyak off; the EMA is telemetry)."""
        w = (1.0 - self.beta_p) * gate
        self.loss_ema.lerp_(torch.where(gate > 0, loss, self.loss_ema), w)
        self.loss_w.lerp_(torch.ones_like(self.loss_w), w)

    def update(
        self,
        loss: torch.Tensor,
        decrease: torch.Tensor,
        inner: torch.Tensor,
        gate: torch.Tensor,
    ) -> torch.Tensor:
        """Fold in one step's loss ``F_t``, normaliser ``D_t`` and ``I_t``; return the clamped multiplier.

        ``D_t = Σ_g η_g·⟨g, U_g⟩`` is the first-order loss decrease of the unscaled step.
        ``gate`` is 0 on a skipped (non-finite) step: the EMAs and the multiplier then stay put.
        Statistics that overflow (absurd but finite gradients) are clamped to the fp32 range so
        every EMA stays finite.
        """
        b = self.beta_p
        w = (1.0 - b) * gate
        big = torch.finfo(torch.float32).max / 4
        loss = loss.detach().to(torch.float32).reshape(())
        decrease = torch.nan_to_num(decrease.float(), nan=0.0, posinf=big, neginf=0.0).clamp(0.0, big)
        inner = torch.nan_to_num(inner.float(), nan=0.0, posinf=big, neginf=-big).clamp(-big, big)
        e_new = torch.where(gate > 0, decrease, self.gnorm_ema)
        f_new = torch.where(gate > 0, loss, self.loss_ema)
        self.gnorm_ema.lerp_(e_new, w)
        self.gnorm_w.lerp_(torch.ones_like(self.gnorm_w), w)
        self.loss_ema.lerp_(f_new, w)
        self.loss_w.lerp_(torch.ones_like(self.loss_w), w)
        e_hat = self.gnorm_ema / self.gnorm_w.clamp_min(1e-30)
        # P_t: the Polyak multiplier that makes the linearised decrease equal F_t + I_t
        step_len = (loss + inner).clamp(0.0, big) / e_hat.clamp_min(1e-30)
        step_len = torch.where(gate > 0, step_len, torch.zeros_like(step_len)).clamp_max(big)
        if self.mode == "sfplus":
            ratio = step_len
        else:  # relative: compare with the EMA of past step lengths (ratio 1 on the first step)
            p_bar = self.p_ema / self.p_w.clamp_min(1e-30)
            ratio = torch.where(self.p_w > 0, step_len / p_bar.clamp_min(1e-30), torch.ones_like(step_len))
            self.p_ema.lerp_(step_len, w)
            self.p_w.lerp_(torch.ones_like(self.p_w), w)
        ratio = torch.nan_to_num(ratio, nan=1.0, posinf=big)
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

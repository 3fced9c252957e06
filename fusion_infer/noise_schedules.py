"""Forward noise schedules ``x_t = α_t·x0 + σ_t·ε`` shared by training and sampling.

A control head must be trained with the base model's own forward schedule (LatCH-F,
Novack et al. 2026, arXiv 2603.04366: a head trained with the wrong schedule gives unreliable guidance), so
a schedule is a small named object and the name goes into every checkpoint
(:mod:`fusion_infer.checkpoint`). Time runs over ``t ∈ [0, 1]``, ``t = 0`` clean, ``t = 1`` noise.

* ``"rectified_flow"`` (default): ``α_t = 1 − t``, ``σ_t = t`` (Liu, Gong & Liu 2022, "Flow
  Straight and Fast", eq. 1; Esser et al. 2024, SD3 §2; Stable Audio Open Small). The velocity is
  ``v = dx_t/dt = ε − x0``, so ``x0 = x_t − t·v`` and ``ε = x_t + (1 − t)·v``.
* ``"vp_cosine"``: ``α_t = cos(πt/2)``, ``σ_t = sin(πt/2)`` (variance preserving, α² + σ² = 1;
  the continuous-time cosine schedule of Nichol & Dhariwal 2021 without the offset, as used by
  Stable Audio Open 1.0). Its velocity is the *v-parameterisation* of Salimans & Ho 2022 (eq. 9
  there): ``v = α_t·ε − σ_t·x0``, so ``x0 = α_t·x_t − σ_t·v`` and ``ε = σ_t·x_t + α_t·v``. (The
  time derivative is ``dx_t/dt = (π/2)·v``; we follow the published v-objective rather than the
  raw derivative so a v-prediction model trained elsewhere plugs in unchanged.)

Both schedules give the clean estimate from an ε-prediction, ``x0 = (x_t − σ_t·ε)/α_t``, which is
undefined where ``α_t = 0`` (``t = 1``); :meth:`NoiseSchedule.x0_from_eps` clamps ``α_t`` from below
(``min_alpha``) and says so. The velocity forms are defined everywhere.

Example:
    >>> import torch
    >>> rf = get_noise_schedule("rectified_flow")
    >>> x0, eps, t = torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0.25, 1.0])
    >>> rf.add_noise(x0, eps, t)[:, 0]
    tensor([0.7500, 0.0000])
    >>> v = rf.velocity(x0, eps, t)
    >>> torch.allclose(rf.x0_from_velocity(rf.add_noise(x0, eps, t), v, t), x0)
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NOISE_SCHEDULES",
    "NoiseSchedule",
    "RectifiedFlow",
    "VPCosine",
    "get_noise_schedule",
]


def _broadcast_t(t: Any, like: Tensor) -> Tensor:
    """``t`` (scalar, ``[B]`` or already broadcastable) as a tensor shaped ``[B, 1, …]`` for ``like``."""
    t = torch.as_tensor(t, device=like.device)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.ndim == 1 and like.ndim > 1:
        if t.shape[0] not in (1, like.shape[0]):
            raise ValueError(
                f"t has {t.shape[0]} entries but the batch has {like.shape[0]}; pass one t per "
                "sample or a scalar"
            )
        t = t.view(-1, *([1] * (like.ndim - 1)))
    return t.to(like.dtype)


class NoiseSchedule:
    """A forward schedule ``x_t = α_t·x0 + σ_t·ε`` on ``t ∈ [0, 1]`` (``t = 0`` clean).

    Subclasses define :meth:`alpha_sigma` and the velocity convention; everything else follows.
    ``name`` is what checkpoints record.
    """

    name: str = ""

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(α_t, σ_t)`` elementwise for a float tensor ``t``."""
        raise NotImplementedError

    def _coefficients(self, t: Any, like: Tensor) -> tuple[Tensor, Tensor]:
        tt = _broadcast_t(t, like)
        if bool(((tt < 0) | (tt > 1) | torch.isnan(tt)).any()):
            raise ValueError(f"t must lie in [0, 1] for noise schedule {self.name!r}")
        return self.alpha_sigma(tt)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Any) -> Tensor:
        """Forward noising ``x_t = α_t·x0 + σ_t·ε``; ``t`` scalar or one value per sample."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t: Any, min_alpha: float = 1e-4) -> Tensor:
        """Clean estimate from an ε-prediction, ``(x_t − σ_t·ε)/max(α_t, min_alpha)``."""
        a, s = self._coefficients(t, x_t)
        return (x_t - s * eps) / a.clamp_min(min_alpha)

    def eps_from_x0(self, x_t: Tensor, x0: Tensor, t: Any, min_sigma: float = 1e-4) -> Tensor:
        """Noise estimate from a clean estimate, ``(x_t − α_t·x0)/max(σ_t, min_sigma)``."""
        a, s = self._coefficients(t, x_t)
        return (x_t - a * x0) / s.clamp_min(min_sigma)

    def velocity(self, x0: Tensor, noise: Tensor, t: Any) -> Tensor:
        """The velocity target of this schedule (see the module docstring)."""
        raise NotImplementedError

    def x0_from_velocity(self, x_t: Tensor, v: Tensor, t: Any) -> Tensor:
        """Clean estimate from a velocity prediction."""
        raise NotImplementedError

    def eps_from_velocity(self, x_t: Tensor, v: Tensor, t: Any) -> Tensor:
        """Noise estimate from a velocity prediction."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class RectifiedFlow(NoiseSchedule):
    """``x_t = (1 − t)·x0 + t·ε``; velocity ``v = ε − x0`` (Liu et al. 2022, eq. 1)."""

    name = "rectified_flow"

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, t

    def velocity(self, x0: Tensor, noise: Tensor, t: Any) -> Tensor:
        self._coefficients(t, x0)  # validates t even though v does not depend on it
        return noise - x0

    def x0_from_velocity(self, x_t: Tensor, v: Tensor, t: Any) -> Tensor:
        _, s = self._coefficients(t, x_t)
        return x_t - s * v

    def eps_from_velocity(self, x_t: Tensor, v: Tensor, t: Any) -> Tensor:
        a, _ = self._coefficients(t, x_t)
        return x_t + a * v


class VPCosine(NoiseSchedule):
    """``x_t = cos(πt/2)·x0 + sin(πt/2)·ε``; ``v = α·ε − σ·x0`` (Salimans & Ho 2022, eq. 9)."""

    name = "vp_cosine"

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        angle = t * (math.pi / 2)
        return torch.cos(angle), torch.sin(angle)

    def velocity(self, x0: Tensor, noise: Tensor, t: Any) -> Tensor:
        a, s = self._coefficients(t, x0)
        return a * noise - s * x0

    def x0_from_velocity(self, x_t: Tensor, v: Tensor, t: Any) -> Tensor:
        a, s = self._coefficients(t, x_t)
        return a * x_t - s * v

    def eps_from_velocity(self, x_t: Tensor, v: Tensor, t: Any) -> Tensor:
        a, s = self._coefficients(t, x_t)
        return s * x_t + a * v


NOISE_SCHEDULES: dict[str, NoiseSchedule] = {
    RectifiedFlow.name: RectifiedFlow(),
    VPCosine.name: VPCosine(),
}


def get_noise_schedule(name: str | NoiseSchedule) -> NoiseSchedule:
    """The schedule called ``name`` (or ``name`` itself if it already is one).

    Example:
        >>> get_noise_schedule("vp_cosine").name
        'vp_cosine'
    """
    if isinstance(name, NoiseSchedule):
        return name
    if name not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {sorted(NOISE_SCHEDULES)}, got {name!r}")
    return NOISE_SCHEDULES[name]

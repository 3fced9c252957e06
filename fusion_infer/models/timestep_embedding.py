"""Timestep validation, sinusoidal timestep features and the timestep-embedding MLP.

The sinusoidal features follow Vaswani et al. 2017 ("Attention Is All You Need", §3.5,
``PE(pos, 2i) = sin(pos / 10000^(2i/d))``) in the form DiT uses for diffusion time
(Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", ``TimestepEmbedder``):
``freqs_i = exp(-ln(max_period) · i / half)``, ``emb = [cos(s·t·freqs), sin(s·t·freqs)]``.
Fusion timesteps are floats in ``[0, 1]`` (0 = clean, 1 = noise); ``time_scale`` (1000 by
default) maps them onto DiT's integer-timestep range so the frequencies cover the unit interval.

Example:
    >>> import torch
    >>> from fusion_infer.models.timestep_embedding import TimestepEmbedder
    >>> emb = TimestepEmbedder(dim=32, freq_dim=16)
    >>> emb(torch.tensor([0.0, 0.5])).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["canonical_time_dtype", "validate_timesteps", "sinusoidal_features", "TimestepEmbedder"]


def canonical_time_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Dtype in which timesteps are keyed and embedded: float64 for float64 models, else float32.

    Half-precision models still compute the sinusoid in float32 (as DiT does): bf16 cannot even
    tell t = 0.999 from t = 1.0.
    """
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def validate_timesteps(
    t: Tensor | float | int,
    batch: int | None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    name: str = "t",
) -> Tensor:
    """Check ``t`` and return it as a ``[batch]`` tensor of ``dtype`` on ``device``.

    ``t`` may be a Python number, a 0-d tensor (broadcast to the batch) or a ``[batch]`` tensor;
    values must be finite and in ``[0, 1]``. ``-0.0`` is canonicalised to ``+0.0`` so the value
    (and therefore the cache key) is unique per number. With ``batch=None`` a 1-D ``t`` defines
    the batch and a scalar gives a batch of one.

    Raises:
        TypeError: ``t`` is not a real number / floating tensor.
        ValueError: wrong shape or values outside ``[0, 1]`` (or NaN/inf).

    Example:
        >>> validate_timesteps(0.5, 3)
        tensor([0.5000, 0.5000, 0.5000])
        >>> validate_timesteps(torch.tensor([1.5]), 1)
        Traceback (most recent call last):
        ...
        ValueError: t must lie in [0, 1] (0 = clean, 1 = noise); got values in [1.5, 1.5]
    """
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float in [0, 1] or a floating tensor, got bool")
    if isinstance(t, (int, float)):  # fast path: checked in Python, no reduction kernel/sync
        v = float(t)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite and in [0, 1]; got NaN or inf")
        if v < 0.0 or v > 1.0:
            raise ValueError(
                f"{name} must lie in [0, 1] (0 = clean, 1 = noise); got values in [{v:.6g}, {v:.6g}]"
            )
        return torch.full((1 if batch is None else batch,), v + 0.0, dtype=dtype, device=device)
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a float in [0, 1] or a floating tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (values in [0, 1]), got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.reshape(1).expand(1 if batch is None else batch)
    elif t.dim() != 1 or (batch is not None and t.shape[0] != batch):
        want = "[B]" if batch is None else f"[{batch}]"
        raise ValueError(
            f"{name} must be a scalar or have shape {want} (one timestep per batch row), "
            f"got shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} must contain at least one timestep")
    lo, hi = torch.aminmax(t.detach())
    lo_v, hi_v = float(lo), float(hi)
    if not (math.isfinite(lo_v) and math.isfinite(hi_v)):
        raise ValueError(f"{name} must be finite and in [0, 1]; got NaN or inf")
    if lo_v < 0.0 or hi_v > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] (0 = clean, 1 = noise); got values in [{lo_v:.6g}, {hi_v:.6g}]"
        )
    # `+ 0.0` turns -0.0 into +0.0 (IEEE round-to-nearest) and leaves every other value alone.
    return t.detach().to(device=device, dtype=dtype) + 0.0


def sinusoidal_features(
    t: Tensor, freq_dim: int, *, time_scale: float = 1000.0, max_period: float = 10000.0
) -> Tensor:
    """``[N] -> [N, freq_dim]`` features ``[cos(s·t·f_i), sin(s·t·f_i)]`` in ``t``'s dtype.

    Example:
        >>> sinusoidal_features(torch.zeros(1), 4)
        tensor([[1., 1., 0., 0.]])
    """
    half = freq_dim // 2
    exponent = torch.arange(half, dtype=t.dtype, device=t.device) * (-math.log(max_period) / half)
    args = (t * time_scale)[:, None] * torch.exp(exponent)[None, :]
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if freq_dim % 2:  # odd sizes get one zero column, as in DiT
        feats = torch.cat([feats, torch.zeros_like(feats[:, :1])], dim=-1)
    return feats


class TimestepEmbedder(nn.Module):
    """Sinusoidal features → ``Linear(freq_dim, dim) → SiLU → Linear(dim, dim)`` (DiT).

    Args:
        dim: output width.
        freq_dim: number of sinusoidal features.
        time_scale: multiplier applied to ``t ∈ [0, 1]`` before the sinusoid.
        max_period: longest period of the sinusoid (10000 as in the Transformer).
    """

    def __init__(
        self, dim: int, freq_dim: int = 256, time_scale: float = 1000.0, max_period: float = 10000.0
    ) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """``[N]`` timesteps (already validated, float32/float64) → ``[N, dim]`` embedding."""
        feats = sinusoidal_features(
            t, self.freq_dim, time_scale=self.time_scale, max_period=self.max_period
        )
        return self.mlp(feats.to(self.mlp[0].weight.dtype))

"""Hyper-parameters of the LatCH-style control head (:class:`ControlHeadConfig`).

Kept apart from :mod:`.control_head` so that cost accounting (:mod:`.cost`) can read a
configuration without importing the model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ControlHeadConfig"]


@dataclass(frozen=True)
class ControlHeadConfig:
    """Hyper-parameters of :class:`ControlHead` (defaults: ≈ 5.0 M parameters).

    Attributes:
        in_channels: latent channels ``C_in`` (64 for the Stable Audio VAE).
        out_channels: control-feature channels ``C_out``.
        dim: transformer width; depth: number of blocks; heads: attention heads
            (``dim / heads`` must be even for rotary positions).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        freq_dim: sinusoidal timestep features; time_scale: ``t ∈ [0, 1]`` multiplier.
        rope_base: rotary base ``θ``.
        cond_dim: width of an optional global conditioning vector (0 = none).
        modulator_rows: rows per modulator GEMM chunk (see :mod:`fusion_infer.models.modulators`);
            ``modulator_rows × dim`` and ``modulator_rows × freq_dim / 2`` must be multiples of 64
            (or ``modulator_rows == 1``) so each row's bits do not depend on its chunk position.
        zero_init_output: zero-initialise the output projection too (DiT); adaLN linears are
            always zero-initialised.
        eps: LayerNorm epsilon.
        attention_head_dim: per-head width; None (default) means ``dim / heads``. Set by
            width-shrunk heads (:func:`fusion_infer.shrink.shrink_width`), whose attention width
            ``heads · attention_head_dim`` is smaller than the residual width ``dim``.
        mlp_hidden_dim: MLP hidden width; None (default) means ``int(dim · mlp_ratio)``
            (``mlp_ratio`` is then ignored). Set by width-shrunk heads.

    Example:
        >>> ControlHeadConfig(dim=128, heads=4).head_dim
        32
    """

    in_channels: int = 64
    out_channels: int = 1
    dim: int = 256
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    freq_dim: int = 256
    time_scale: float = 1000.0
    rope_base: float = 10000.0
    cond_dim: int = 0
    modulator_rows: int = 8
    zero_init_output: bool = True
    eps: float = 1e-6
    attention_head_dim: int | None = None
    mlp_hidden_dim: int | None = None

    def __post_init__(self) -> None:
        positive = ("in_channels", "out_channels", "dim", "depth", "heads", "freq_dim", "modulator_rows")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ControlHeadConfig.{name} must be a positive int, got {v!r}")
        if isinstance(self.cond_dim, bool) or not isinstance(self.cond_dim, int) or self.cond_dim < 0:
            raise ValueError(f"ControlHeadConfig.cond_dim must be an int >= 0, got {self.cond_dim!r}")
        for name in ("mlp_ratio", "time_scale", "rope_base", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"ControlHeadConfig.{name} must be a positive number (and finite), got {v!r}")
        for name in ("attention_head_dim", "mlp_hidden_dim"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"ControlHeadConfig.{name} must be None or a positive int, got {v!r}")
        if self.attention_head_dim is None:
            if self.dim % self.heads:
                raise ValueError(
                    f"ControlHeadConfig.dim ({self.dim}) must be divisible by heads ({self.heads})"
                )
            if (self.dim // self.heads) % 2:
                raise ValueError(
                    f"ControlHeadConfig.dim / heads must be even for rotary positions, got {self.dim // self.heads}"
                )
        elif self.attention_head_dim % 2:
            raise ValueError(
                f"ControlHeadConfig.attention_head_dim must be even for rotary positions, got {self.attention_head_dim}"
            )
        if self.freq_dim % 2:
            raise ValueError(f"ControlHeadConfig.freq_dim must be even, got {self.freq_dim}")
        r = self.modulator_rows
        if r > 1 and ((r * self.dim) % 64 or (r * self.freq_dim // 2) % 64):
            raise ValueError(
                "ControlHeadConfig.modulator_rows × dim and modulator_rows × freq_dim/2 must be "
                f"multiples of 64 (or modulator_rows == 1) for bit-exact caching; got "
                f"modulator_rows={r}, dim={self.dim}, freq_dim={self.freq_dim}"
            )

    @property
    def head_dim(self) -> int:
        """Per-head width: ``attention_head_dim`` if set, else ``dim // heads``."""
        return self.attention_head_dim if self.attention_head_dim is not None else self.dim // self.heads

    @property
    def attention_dim(self) -> int:
        """Attention width ``heads · head_dim`` (equals ``dim`` unless width-shrunk)."""
        return self.heads * self.head_dim

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width: ``mlp_hidden_dim`` if set, else ``int(dim · mlp_ratio)``."""
        return self.mlp_hidden_dim if self.mlp_hidden_dim is not None else int(self.dim * self.mlp_ratio)

    @property
    def modulator_width(self) -> int:
        """Features per row of the stacked modulator table: ``6·dim·depth + 2·dim``."""
        return 6 * self.dim * self.depth + 2 * self.dim

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControlHeadConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ControlHeadConfig fields {unknown}; allowed: {sorted(names)}")
        return cls(**data)

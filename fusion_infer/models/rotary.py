"""1-D rotary position embedding (RoPE) for the control head's bidirectional attention.

Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding", eq. (34):
each pair of query/key channels ``(x_i, x_{i+d/2})`` at position ``m`` is rotated by the angle
``m·θ_i`` with ``θ_i = base^(-2i/d)``, so ``<R_m q, R_n k>`` depends only on ``m − n``. We use
the "rotate-half" pairing (channel ``i`` with ``i + d/2``, as GPT-NeoX/LLaMA implementations do),
which is the same rotation as the paper's adjacent pairing up to a fixed channel permutation.

Example:
    >>> import torch
    >>> from fusion_infer.models.rotary import apply_rotary, rotary_tables
    >>> cos, sin = rotary_tables(seq_len=5, head_dim=8)
    >>> q = torch.randn(1, 2, 5, 8)
    >>> apply_rotary(q, cos, sin).shape
    torch.Size([1, 2, 5, 8])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rotary_tables", "apply_rotary"]


def rotary_tables(
    seq_len: int,
    head_dim: int,
    *,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """``cos``/``sin`` tables of shape ``[seq_len, head_dim]`` (angles computed in float32+).

    Example:
        >>> cos, sin = rotary_tables(3, 4)
        >>> cos[0].tolist(), sin[0].tolist()
        ([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=work, device=device) / head_dim)
    angles = torch.arange(seq_len, dtype=work, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` of shape ``[..., T, head_dim]`` by the tables of :func:`rotary_tables`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin

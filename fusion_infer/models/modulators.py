"""Batched adaLN modulators over stacked block weights, computed in fixed-shape row chunks.

adaLN-zero (Peebles & Xie 2023, DiT §3.2) gives every block ``[shift, scale, gate] × 2 =
Linear(SiLU(c))`` with ``c`` the conditioning vector; the final layer gets ``[shift, scale]``.
They do not depend on the tokens, so all of them for ``N`` conditions are one GEMM
``SiLU(C) · [W_1; …; W_L; W_final]ᵀ + b`` over the concatenated (stacked) weights.

**Why fixed-shape chunks.** A cache is lossless only if the modulators of one timestep have the
same bits whether they were computed alone (an uncached forward), together with 40 others
(``warm``) or with a different mix (a batch of mixed timesteps). BLAS does not promise that:
measured here (torch 2.13 CPU, MKL), ``F.linear`` on a ``[M, 256] × [256, 6656]`` problem gives
different bits in ~80 % of the elements of row 0 for ``M < 16`` than for ``M ≥ 16`` (GEMV vs
GEMM kernels); cuBLAS likewise picks algorithms (split-K, tiles) by shape. So every modulator
computation here — embedding MLP and stacked GEMM — runs on chunks of exactly
``rows_per_call`` rows (zero-padded), and each chunk is a separate call. A row's result then
depends only on its own inputs and the weights (same shapes → same kernels), which the tests
check for random mixes and permutations. Elementwise transcendental ops (``sin``, ``SiLU``) are
position-independent as long as a chunk's element count is a multiple of the CPU vector width
(ATen finishes non-multiple tails with scalar code): hence
:class:`fusion_infer.models.control_head.ControlHeadConfig` requires ``rows × width ≡ 0 (mod 64)``.

Example:
    >>> import torch
    >>> from fusion_infer.models.modulators import chunked_modulator_table
    >>> W, b = torch.randn(12, 4), torch.randn(12)
    >>> embed = lambda t, cond: t[:, None].expand(-1, 4)
    >>> table = chunked_modulator_table(embed, W, b, torch.rand(5), None, rows_per_call=2)
    >>> table.shape
    torch.Size([5, 12])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Modulators", "split_modulator_table", "chunked_modulator_table"]


class Modulators(NamedTuple):
    """All modulators of a control head for a batch.

    Attributes:
        blocks: per block a ``[B, 6, dim]`` tensor, rows ``shift_msa, scale_msa, gate_msa,
            shift_mlp, scale_mlp, gate_mlp`` (DiT order).
        final: ``[B, 2, dim]``: ``shift, scale`` of the final adaptive norm.
    """

    blocks: tuple[Tensor, ...]
    final: Tensor

    @property
    def batch_size(self) -> int:
        """Leading (batch) dimension."""
        return self.final.shape[0]


def split_modulator_table(flat: Tensor, depth: int, dim: int) -> Modulators:
    """Views of a ``[B, 6·dim·depth + 2·dim]`` table as :class:`Modulators` (no copy).

    Example:
        >>> m = split_modulator_table(torch.zeros(3, 6 * 4 * 2 + 2 * 4), depth=2, dim=4)
        >>> [tuple(b.shape) for b in m.blocks], tuple(m.final.shape)
        ([(3, 6, 4), (3, 6, 4)], (3, 2, 4))
    """
    width = 6 * dim * depth + 2 * dim
    if flat.dim() != 2 or flat.shape[1] != width:
        raise ValueError(
            f"modulator table must have shape [B, {width}] (depth={depth}, dim={dim}), "
            f"got {tuple(flat.shape)}"
        )
    b = flat.shape[0]
    split = 6 * dim * depth
    blocks = flat[:, :split].view(b, depth, 6, dim).unbind(1)  # one view op, then C++ unbind
    return Modulators(blocks=blocks, final=flat[:, split:].view(b, 2, dim))


def chunked_modulator_table(
    embed: Callable[[Tensor, Tensor | None], Tensor],
    weight: Tensor,
    bias: Tensor | None,
    t: Tensor,
    cond: Tensor | None,
    rows_per_call: int,
) -> Tensor:
    """``[N]`` timesteps (+ ``[N, …]`` conditioning) → ``[N, out]`` stacked modulator rows.

    Computes ``F.linear(SiLU(embed(t, cond)), weight, bias)`` on consecutive chunks of exactly
    ``rows_per_call`` rows (the last one zero-padded), one call per chunk, so each output row is
    bit-identical however the rows were grouped (see the module docstring). Differentiable.

    Args:
        embed: ``(t_chunk [R], cond_chunk [R, …] | None) -> c [R, dim]``.
        weight: stacked ``[out, dim]`` modulator weight; ``bias``: ``[out]`` or None.
        t: ``[N]`` validated timesteps; ``cond``: ``[N, …]`` or None.
        rows_per_call: chunk height ``R`` (≥ 1).
    """
    n = t.shape[0]
    r = rows_per_call
    chunks = -(-n // r)
    pad = chunks * r - n
    if pad:
        t = torch.cat([t, t.new_zeros(pad)])
        if cond is not None:
            cond = torch.cat([cond, cond.new_zeros((pad, *cond.shape[1:]))])
    outs = []
    for i in range(chunks):
        tc = t[i * r : (i + 1) * r]
        cc = None if cond is None else cond[i * r : (i + 1) * r]
        outs.append(F.linear(F.silu(embed(tc, cc)), weight, bias))
    out = outs[0] if chunks == 1 else torch.cat(outs)
    return out[:n] if pad else out

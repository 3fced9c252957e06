"""Parameter and FLOP counts of a :class:`~fusion_infer.control_head.ControlHead` forward.

FLOPs follow the usual convention (and ``torch.utils.flop_counter``): ``2·m·n·k`` per matrix
product, i.e. multiply–adds of every ``Linear`` and of attention's ``QKᵀ`` and ``AV``; norms,
activations, rotary and softmax are not counted. The modulator path is reported separately
because it is what :class:`~fusion_infer.cache.TimeConditioningCache` removes.

Example:
    >>> from fusion_infer import ControlHeadConfig, head_cost
    >>> c = head_cost(ControlHeadConfig(), seq_len=256)
    >>> round(c.params / 1e6, 2), round(c.modulator_share, 4)
    (5.01, 0.0019)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .control_head import ControlHeadConfig

__all__ = ["HeadCost", "head_cost"]


@dataclass(frozen=True)
class HeadCost:
    """Sizes and per-forward FLOPs for ``batch`` sequences of ``seq_len`` frames.

    Attributes:
        params: all parameters; modulator_params: timestep MLP + ``cond_proj`` + every adaLN
            linear (what the modulators depend on).
        body_flops: FLOPs of a forward with precomputed modulators (linear layers + attention).
        attention_flops: the ``QKᵀ`` and ``AV`` part of ``body_flops``.
        modulator_flops: FLOPs to compute the modulators of ``batch`` rows (ideal, without the
            zero-padding to ``modulator_rows`` that the implementation adds per chunk).
        modulator_flops_per_chunk: FLOPs actually executed per padded chunk.
    """

    seq_len: int
    batch: int
    params: int
    modulator_params: int
    body_flops: int
    attention_flops: int
    modulator_flops: int
    modulator_flops_per_chunk: int

    @property
    def total_flops(self) -> int:
        """``body_flops + modulator_flops``."""
        return self.body_flops + self.modulator_flops

    @property
    def modulator_share(self) -> float:
        """Fraction of the ideal per-forward FLOPs spent on modulators."""
        return self.modulator_flops / self.total_flops

    def as_dict(self) -> dict[str, Any]:
        """Plain dict including the derived fields."""
        d = asdict(self)
        d["total_flops"] = self.total_flops
        d["modulator_share"] = self.modulator_share
        return d


def head_cost(config: ControlHeadConfig, seq_len: int = 256, batch: int = 1) -> HeadCost:
    """Parameters and FLOPs of one forward of a head with ``config`` (see :class:`HeadCost`).

    Example:
        >>> head_cost(ControlHeadConfig(dim=64, depth=1, heads=4, freq_dim=64), seq_len=8).params
        95553
    """
    if not isinstance(config, ControlHeadConfig):
        raise TypeError(f"config must be a ControlHeadConfig, got {type(config).__name__}")
    for name, v in (("seq_len", seq_len), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    c = config
    d, h, L, T = c.dim, c.mlp_hidden, c.depth, seq_len

    def lin(i: int, o: int) -> int:
        return i * o + o

    per_block_body = lin(d, 3 * d) + lin(d, d) + lin(d, h) + lin(h, d)
    t_mlp = lin(c.freq_dim, d) + lin(d, d)
    cond = lin(c.cond_dim, d) if c.cond_dim else 0
    adaln = L * lin(d, 6 * d) + lin(d, 2 * d)
    modulator_params = t_mlp + cond + adaln
    params = lin(c.in_channels, d) + L * per_block_body + lin(d, c.out_channels) + modulator_params

    linear_macs = T * (c.in_channels * d + L * (3 * d * d + d * d + 2 * d * h) + d * c.out_channels)
    attention_macs = L * 2 * T * T * d
    per_row_mod_macs = c.freq_dim * d + d * d + c.cond_dim * d + d * c.modulator_width
    return HeadCost(
        seq_len=T,
        batch=batch,
        params=params,
        modulator_params=modulator_params,
        body_flops=2 * batch * (linear_macs + attention_macs),
        attention_flops=2 * batch * attention_macs,
        modulator_flops=2 * batch * per_row_mod_macs,
        modulator_flops_per_chunk=2 * c.modulator_rows * per_row_mod_macs,
    )

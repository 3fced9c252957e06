"""Parameter and FLOP counts of a :class:`~fusion_infer.models.control_head.ControlHead` forward.

FLOPs follow the usual convention (and ``torch.utils.flop_counter``): ``2·m·n·k`` per matrix
product, i.e. multiply–adds of every ``Linear`` and of attention's ``QKᵀ`` and ``AV``; norms,
activations, rotary and softmax are not counted. The modulator path is reported separately
because it is what :class:`~fusion_infer.cache.time_conditioning.TimeConditioningCache` removes.

Example:
    >>> from fusion_infer import ControlHeadConfig, head_cost
    >>> c = head_cost(ControlHeadConfig(), seq_len=256)
    >>> round(c.params / 1e6, 2), round(c.modulator_share, 4)
    (5.01, 0.0019)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .head_config import ControlHeadConfig

__all__ = ["CostItem", "HeadCost", "head_cost", "head_cost_items"]

#: Cost categories shared with :func:`fusion_infer.shrink.count_cost`.
CATEGORIES = ("attention", "mlp", "modulators", "embeddings")


@dataclass(frozen=True)
class CostItem:
    """One line of a cost itemisation.

    Attributes:
        name: module path (``blocks.2.qkv``) or a pseudo-name for weight-free matmuls
            (``blocks.2.attention_scores``: ``QKᵀ`` and ``AV``).
        category: ``"attention"``, ``"mlp"``, ``"modulators"`` (everything the adaLN modulators
            depend on: timestep/class/conditioning embedders and the adaLN linears or tables) or
            ``"embeddings"`` (token-side input/output projections, patch and caption embeddings).
        block: index of the transformer block holding it, or None (outside the blocks).
        params: parameters it owns; flops: FLOPs per forward (``2·m·n·k`` per matrix product).
        kind: ``"linear"`` (a weight matmul: ``∝ width²`` when all widths scale together) or
            ``"scores"`` (attention's ``QKᵀ``/``AV``: ``∝ width · tokens²``) or ``"table"``
            (a parameter table without matmul FLOPs).
    """

    name: str
    category: str
    block: int | None
    params: int
    flops: int
    kind: str = "linear"


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


def _check(config: Any, seq_len: Any, batch: Any) -> None:
    if not isinstance(config, ControlHeadConfig):
        raise TypeError(f"config must be a ControlHeadConfig, got {type(config).__name__}")
    for name, v in (("seq_len", seq_len), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def head_cost_items(config: ControlHeadConfig, seq_len: int = 256, batch: int = 1) -> list[CostItem]:
    """Itemised parameters and FLOPs of one forward of a head with ``config``.

    Token-side linears run on ``batch · seq_len`` rows; the modulator path (timestep MLP,
    ``cond_proj``, adaLN linears) on ``batch`` rows (ideal count, without chunk padding).

    Example:
        >>> items = head_cost_items(ControlHeadConfig(dim=64, depth=1, heads=4, freq_dim=64), seq_len=8)
        >>> [i.name for i in items if i.block == 0]
        ['blocks.0.qkv', 'blocks.0.proj', 'blocks.0.attention_scores', 'blocks.0.mlp.0', 'blocks.0.mlp.2', 'blocks.0.adaLN_mod.1']
    """
    _check(config, seq_len, batch)
    c = config
    d, a, h, T, B = c.dim, c.attention_dim, c.mlp_hidden, seq_len, batch

    def lin(name: str, cat: str, block: int | None, i: int, o: int, rows: int) -> CostItem:
        return CostItem(name, cat, block, i * o + o, 2 * rows * i * o)

    items = [
        lin("latent_proj", "embeddings", None, c.in_channels, d, B * T),
        lin("t_embedder.mlp.0", "modulators", None, c.freq_dim, d, B),
        lin("t_embedder.mlp.2", "modulators", None, d, d, B),
    ]
    if c.cond_dim:
        items.append(lin("cond_proj", "modulators", None, c.cond_dim, d, B))
    for i in range(c.depth):
        p = f"blocks.{i}."
        items += [
            lin(p + "qkv", "attention", i, d, 3 * a, B * T),
            lin(p + "proj", "attention", i, a, d, B * T),
            # QKᵀ ([T, hd] × [hd, T] per head) and AV ([T, T] × [T, hd]): 2 · 2·T·T·a.
            CostItem(p + "attention_scores", "attention", i, 0, 2 * 2 * B * T * T * a, "scores"),
            lin(p + "mlp.0", "mlp", i, d, h, B * T),
            lin(p + "mlp.2", "mlp", i, h, d, B * T),
            lin(p + "adaLN_mod.1", "modulators", i, d, 6 * d, B),
        ]
    items += [
        lin("final.adaLN_mod.1", "modulators", None, d, 2 * d, B),
        lin("final.linear", "embeddings", None, d, c.out_channels, B * T),
    ]
    return items


def head_cost(config: ControlHeadConfig, seq_len: int = 256, batch: int = 1) -> HeadCost:
    """Parameters and FLOPs of one forward of a head with ``config`` (see :class:`HeadCost`).

    Sums :func:`head_cost_items`; :func:`fusion_infer.shrink.count_cost` reports the same items
    by category and block.

    Example:
        >>> head_cost(ControlHeadConfig(dim=64, depth=1, heads=4, freq_dim=64), seq_len=8).params
        95553
    """
    items = head_cost_items(config, seq_len, batch)
    mod = [i for i in items if i.category == "modulators"]
    mod_flops = sum(i.flops for i in mod)
    return HeadCost(
        seq_len=seq_len,
        batch=batch,
        params=sum(i.params for i in items),
        modulator_params=sum(i.params for i in mod),
        body_flops=sum(i.flops for i in items) - mod_flops,
        attention_flops=sum(i.flops for i in items if i.kind == "scores"),
        modulator_flops=mod_flops,
        # Each padded chunk runs the same matmuls on exactly modulator_rows rows.
        modulator_flops_per_chunk=mod_flops // batch * config.modulator_rows,
    )

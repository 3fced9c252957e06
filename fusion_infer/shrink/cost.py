"""``count_cost``: parameters and FLOPs per forward, by category and by block.

Convention (the same as :mod:`fusion_infer.models.cost` and ``torch.utils.flop_counter``): a matrix
product ``[m, k] × [k, n]`` costs ``2·m·n·k`` FLOPs (one multiply–add = 2 FLOPs); only matmul-like
work is counted — every ``Linear``/``Conv2d`` weight product and attention's ``QKᵀ`` and ``AV`` —
while biases, norms, activations, softmax, rotary and embedding-table gathers count 0.
``FlopCounterMode`` follows the same rules (it only has formulas for matmul/conv/attention ops),
so the totals agree exactly; ``tests/shrink/test_cost.py`` checks that. The one deliberate
difference is the control head's modulator path: ``count_cost`` reports the ideal ``batch``-row
cost, while the implementation computes modulators in zero-padded chunks of
``config.modulator_rows`` rows (for bit-exact caching), which ``FlopCounterMode`` sees as
``ceil(batch / modulator_rows)`` full chunks.

Categories: ``attention`` (q/k/v/out projections + scores), ``mlp``, ``modulators`` (everything the
adaLN modulators depend on: timestep/class embedders, adaLN linears, scale-shift tables — the
work a :class:`~fusion_infer.TimeConditioningCache` removes) and ``embeddings`` (token-side
input/output projections: latent/patch embedding, caption projection, output projection).

Structure: ``total = fixed + Σ_blocks block`` (depth-linear), and within a block
``linear`` FLOPs scale with ``width²`` when every width scales together (``d·d_inner`` when only
the inner widths do, as in :func:`~fusion_infer.shrink.shrink_width`), while ``scores`` FLOPs
scale with ``width · tokens²``. :meth:`ModelCost.structure` reports these terms.

* :class:`~fusion_infer.ControlHead`: the analytic itemisation
  :func:`fusion_infer.models.cost.head_cost_items` (the one accounting behind ``ControlHead.cost``).
* diffusers ``DiTTransformer2DModel`` / ``PixArtTransformer2DModel``: measured — forward hooks on
  every ``Linear``/``Conv2d`` (FLOPs from the shapes they actually see) and every attention module
  (``QKᵀ``/``AV`` from query and key lengths), parameters from ``named_parameters``. DiT runs its
  block-0 timestep/class embedder a second time for the final layer; that call is counted (it is
  real work) and lands on block 0.

Example:
    >>> import torch
    >>> from fusion_infer import ControlHead
    >>> from fusion_infer.shrink import count_cost
    >>> head = ControlHead(dim=64, depth=2, heads=4, freq_dim=64)
    >>> cost = count_cost(head, (torch.zeros(1, 64, 32), torch.zeros(1)))
    >>> cost.total_params == head.cost(seq_len=32).params, len(cost.block_flops)
    (True, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.cost import CATEGORIES, CostItem, head_cost_items
from .families import block_index, categorize, model_family

__all__ = ["ModelCost", "count_cost", "cost_from_items"]


@dataclass(frozen=True)
class ModelCost:
    """Parameters and FLOPs of one forward, itemised.

    Attributes:
        family: model family (:data:`fusion_infer.shrink.families.SUPPORTED_FAMILIES`).
        depth: number of blocks; width: residual width.
        items: every :class:`~fusion_infer.models.cost.CostItem`.
        params / flops: totals per category (keys :data:`fusion_infer.models.cost.CATEGORIES`).
        block_params / block_flops: per block (all categories).
    """

    family: str
    depth: int
    width: int
    items: tuple[CostItem, ...]
    params: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)
    block_params: tuple[int, ...] = ()
    block_flops: tuple[int, ...] = ()

    @property
    def total_params(self) -> int:
        """All parameters."""
        return sum(self.params.values())

    @property
    def total_flops(self) -> int:
        """FLOPs of one forward (modulators included)."""
        return sum(self.flops.values())

    @property
    def fixed_flops(self) -> int:
        """FLOPs outside the blocks (do not change with depth)."""
        return self.total_flops - sum(self.block_flops)

    def structure(self) -> dict[str, float]:
        """Depth/width terms: ``total = fixed + depth · per_block``, ``per_block = linear + scores``.

        ``per_block_linear_flops`` is the weight-matmul part (``∝ width²``),
        ``per_block_scores_flops`` the attention-score part (``∝ width · tokens²``); both are
        means over blocks.
        """
        n = max(self.depth, 1)
        lin = sum(i.flops for i in self.items if i.block is not None and i.kind == "linear")
        sc = sum(i.flops for i in self.items if i.block is not None and i.kind == "scores")
        return {
            "depth": self.depth,
            "width": self.width,
            "fixed_flops": self.fixed_flops,
            "per_block_flops": sum(self.block_flops) / n,
            "per_block_linear_flops": lin / n,
            "per_block_scores_flops": sc / n,
            "fixed_params": self.total_params - sum(self.block_params),
            "per_block_params": sum(self.block_params) / n,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the item list)."""
        return {
            "family": self.family,
            "depth": self.depth,
            "width": self.width,
            "params": dict(self.params),
            "flops": dict(self.flops),
            "total_params": self.total_params,
            "total_flops": self.total_flops,
            "block_params": list(self.block_params),
            "block_flops": list(self.block_flops),
            "structure": self.structure(),
        }

    def markdown(self) -> str:
        """A small markdown table: params and FLOPs per category, plus totals."""
        rows = ["| category | params | FLOPs | FLOP share |", "|---|---|---|---|"]
        tot = max(self.total_flops, 1)
        for c in CATEGORIES:
            rows.append(f"| {c} | {self.params[c]:,} | {self.flops[c]:,} | {self.flops[c] / tot:.1%} |")
        rows.append(f"| **total** | {self.total_params:,} | {self.total_flops:,} | 100% |")
        return "\n".join(rows)


def cost_from_items(family: str, depth: int, width: int, items: Sequence[CostItem]) -> ModelCost:
    """Aggregate ``items`` into a :class:`ModelCost`."""
    params = dict.fromkeys(CATEGORIES, 0)
    flops = dict.fromkeys(CATEGORIES, 0)
    bp, bf = [0] * depth, [0] * depth
    for it in items:
        params[it.category] += it.params
        flops[it.category] += it.flops
        if it.block is not None:
            bp[it.block] += it.params
            bf[it.block] += it.flops
    return ModelCost(family, depth, width, tuple(items), params, flops, tuple(bp), tuple(bf))


def count_cost(model: nn.Module, example_inputs: Any) -> ModelCost:
    """Parameters and FLOPs of one forward of ``model`` on ``example_inputs``.

    Args:
        model: a :class:`~fusion_infer.ControlHead`, or a diffusers ``DiTTransformer2DModel`` /
            ``PixArtTransformer2DModel``.
        example_inputs: what the model is called with — a tuple of positional arguments, a dict of
            keyword arguments, or a ``(args_tuple, kwargs_dict)`` pair. For a control head only the
            shapes matter (``x [B, C_in, T]``; nothing is run); a diffusers model is run once under
            ``torch.no_grad()`` with forward hooks.

    Raises:
        TypeError: unsupported model family or malformed ``example_inputs``.

    Example:
        >>> from fusion_infer import ControlHead
        >>> c = count_cost(ControlHead(dim=64, depth=3, heads=4, freq_dim=64), (torch.zeros(2, 64, 16), 0.5))
        >>> c.depth, sorted(c.flops)
        (3, ['attention', 'embeddings', 'mlp', 'modulators'])
    """
    family = model_family(model)
    model = getattr(model, "_orig_mod", model)
    args, kwargs = _split_inputs(example_inputs)
    if family == "control_head":
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise TypeError("example_inputs for a ControlHead must start with x: Tensor [B, C_in, T]")
        cfg = model.config
        items = head_cost_items(cfg, seq_len=int(x.shape[2]), batch=int(x.shape[0]))
        return cost_from_items(family, cfg.depth, cfg.dim, items)
    return _measured_cost(model, family, args, kwargs)


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if (
        isinstance(example_inputs, tuple)
        and len(example_inputs) == 2
        and isinstance(example_inputs[0], (tuple, list))
        and isinstance(example_inputs[1], Mapping)
    ):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    raise TypeError(
        "example_inputs must be a tuple of positional args, a dict of keyword args or an "
        f"(args, kwargs) pair, got {type(example_inputs).__name__}"
    )


def _is_attention(module: nn.Module) -> bool:
    # diffusers' Attention: to_q/to_k/to_v linears and a `heads` count; processors vary, but
    # every processor computes softmax(QKᵀ)V over the projected widths.
    return all(hasattr(module, a) for a in ("to_q", "to_k", "to_v", "heads"))


def _measured_cost(model: nn.Module, family: str, args: tuple, kwargs: dict) -> ModelCost:
    flops: dict[str, int] = {}
    handles = []

    def add(name: str, f: int) -> None:
        flops[name] = flops.get(name, 0) + f

    def linear_hook(name: str):
        def hook(mod: nn.Linear, inp: tuple, out: Tensor) -> None:
            rows = inp[0].numel() // mod.in_features
            add(name, 2 * rows * mod.in_features * mod.out_features)

        return hook

    def conv_hook(name: str):
        def hook(mod: nn.Conv2d, inp: tuple, out: Tensor) -> None:
            k = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            add(name, 2 * out.numel() * k)

        return hook

    def attention_hook(name: str):
        def hook(mod: nn.Module, a: tuple, kw: dict, out: Any) -> None:
            hs = kw.get("hidden_states", a[0] if a else None)
            enc = kw.get("encoder_hidden_states", a[1] if len(a) > 1 else None)
            if hs.dim() == 4:  # [B, C, H, W] inputs are flattened by the processors
                hs = hs.flatten(2).transpose(1, 2)
            b, tq = hs.shape[0], hs.shape[1]
            tk = tq if enc is None else enc.shape[1]
            qk = mod.to_q.out_features  # QKᵀ contracts over the query/key width
            v = mod.to_v.out_features  # AV contracts over keys, produces the value width
            add(name + ".attention_scores", 2 * b * tq * tk * (qk + v))

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook(name)))
        elif isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook(name)))
        elif isinstance(mod, nn.Conv1d | nn.Conv3d):
            raise TypeError(f"count_cost does not count {type(mod).__name__} ({name})")
        if _is_attention(mod):
            handles.append(mod.register_forward_hook(attention_hook(name), with_kwargs=True))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()

    items: list[CostItem] = []
    owned: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear | nn.Conv2d | nn.Embedding):
            own = sum(p.numel() for p in mod.parameters(recurse=False))
            owned.update(f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False))
            items.append(
                CostItem(name, categorize(family, name), block_index(name), own, flops.pop(name, 0),
                         "table" if isinstance(mod, nn.Embedding) else "linear")
            )
    for name, p in model.named_parameters():  # loose parameters (scale_shift_table, …)
        if name not in owned:
            items.append(CostItem(name, categorize(family, name), block_index(name), p.numel(), 0, "table"))
    for name, f in flops.items():  # attention scores
        items.append(CostItem(name, "attention", block_index(name), 0, f, "scores"))
    depth = len(model.transformer_blocks)
    width = int(model.transformer_blocks[0].attn1.to_q.in_features) if depth else 0
    return cost_from_items(family, depth, width, items)

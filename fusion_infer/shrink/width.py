"""Width shrink of a control head: prune attention heads and MLP hidden units.

Scores (``strategy=``; sources differ, both exposed):

* ``"importance"`` (default, needs ``calibration``): the exact size of what a unit adds to the
  residual stream on the calibration batch. Removing MLP hidden unit ``j`` of a block changes the
  block's update by ``g_mlp ⊙ W₂[:, j] · a_j`` (``a`` = GELU output, ``g_mlp`` = the adaLN-zero
  gate), so ``I_j = E_{b,t}[a_{b,t,j}² · ‖g_{mlp,b} ⊙ W₂[:, j]‖²]``; removing head ``h`` changes
  it by ``g_msa ⊙ W_O[:, h] o_h``, so ``I_h = E_{b,t}‖g_{msa,b} ⊙ W_O[:, h] o_{h,b,t}‖²``. This is
  the activation-based importance of Minitron (Muralidharan et al. 2024, arXiv 2407.14679, §2.2:
  head/neuron scores from calibration activations) taken one step further to the gated output
  contribution, which is what an adaLN-zero block adds to its residual.
* ``"magnitude"`` (no data): ``‖W_O[:, h]‖_F`` per head and ``‖W₁[j, :]‖·‖W₂[:, j]‖`` per unit.

Every block keeps the same number of heads (``max(1, round(ratio · heads))``) and MLP units
(``max(1, round(ratio · mlp_hidden))``) — the config stays uniform — but each block picks its
own. Head width ``head_dim`` and the residual width ``dim`` are unchanged, so the modulators
(which act on the residual channels: shift/scale before, gate after each branch) keep all their
rows, rotary tables are unchanged, and the new config records
``heads``, ``attention_head_dim`` and ``mlp_hidden_dim``.

Not supported (documented in ``docs/shrink.md``): pruning the residual width ``dim`` (it would
remove modulator rows and change every LayerNorm's statistics), per-block different widths,
and width shrink of diffusers models (raises ``TypeError``).

Example:
    >>> import torch
    >>> from fusion_infer import ControlHead
    >>> head = ControlHead(dim=64, depth=2, heads=4, freq_dim=64)
    >>> small = shrink_width(head, 0.5, strategy="magnitude")
    >>> small.config.heads, small.config.attention_dim, small.config.mlp_hidden
    (2, 32, 128)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from .calibration import private_copy, run_model
from .families import model_family

__all__ = ["shrink_width", "width_importance", "WIDTH_STRATEGIES", "kept_counts"]

WIDTH_STRATEGIES = ("importance", "magnitude")


def kept_counts(heads: int, mlp_hidden: int, ratio: float) -> tuple[int, int]:
    """``(heads kept, MLP units kept)`` for ``ratio`` (round half to even, at least 1 each).

    Example:
        >>> kept_counts(8, 1024, 0.75)
        (6, 768)
    """
    return max(1, round(ratio * heads)), max(1, round(ratio * mlp_hidden))


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio must be a number in (0, 1], got {type(ratio).__name__}")
    if not (0 < ratio <= 1) or math.isnan(ratio):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def width_importance(
    model: nn.Module, calibration: Any = None, strategy: str = "importance"
) -> list[tuple[Tensor, Tensor]]:
    """Per block ``(head scores [heads], MLP unit scores [mlp_hidden])`` (float64, higher = keep).

    Args:
        model: a :class:`~fusion_infer.ControlHead` (not modified: scoring runs on a copy).
        calibration: ``(x, t)`` / dict of the head's call arguments; required for
            ``strategy="importance"``.
        strategy: ``"importance"`` or ``"magnitude"`` (see the module docstring).
    """
    _check_family(model)
    if strategy not in WIDTH_STRATEGIES:
        raise ValueError(f"strategy must be one of {WIDTH_STRATEGIES}, got {strategy!r}")
    model = getattr(model, "_orig_mod", model)
    cfg = model.config
    hd = cfg.head_dim
    if strategy == "magnitude":
        out = []
        for blk in model.blocks:
            wo = blk.proj.weight.detach().double()  # [dim, heads·hd]
            heads = wo.view(wo.shape[0], cfg.heads, hd).pow(2).sum((0, 2)).sqrt()
            w1, w2 = blk.mlp[0].weight.detach().double(), blk.mlp[2].weight.detach().double()
            units = w1.norm(dim=1) * w2.norm(dim=0)
            out.append((heads, units))
        return out
    if calibration is None:
        raise ValueError('strategy="importance" needs calibration= (a batch of model inputs)')
    work = private_copy(model).eval()
    acc: list[list[Tensor]] = [[torch.zeros(cfg.heads, dtype=torch.float64),
                                torch.zeros(cfg.mlp_hidden, dtype=torch.float64)] for _ in work.blocks]
    gates: dict[int, Tensor] = {}
    handles = []
    for i, blk in enumerate(work.blocks):

        def grab_mods(m: nn.Module, a: tuple, kw: dict, i: int = i) -> None:
            gates[i] = kw["mods"].detach().double()  # [B, 6, dim]; ControlHead passes mods=

        def heads_hook(m: nn.Linear, a: tuple, i: int = i) -> None:
            o = a[0].detach().double()  # [B, T, heads·hd], heads concatenated
            g = gates[i][:, 2]  # gate_msa [B, dim]
            w = m.weight.detach().double()
            b, t, _ = o.shape
            for h in range(cfg.heads):
                contrib = o[..., h * hd : (h + 1) * hd] @ w[:, h * hd : (h + 1) * hd].T  # [B, T, dim]
                acc[i][0][h] += (contrib * g[:, None, :]).pow(2).sum(-1).mean().cpu()

        def units_hook(m: nn.Module, a: tuple, out: Tensor, i: int = i, blk: nn.Module = blk) -> None:
            act2 = out.detach().double().pow(2).mean(1)  # [B, hidden]
            g2 = gates[i][:, 5].pow(2)  # gate_mlp² [B, dim]
            w2 = blk.mlp[2].weight.detach().double().pow(2)  # [dim, hidden]
            acc[i][1] += (act2 * (g2 @ w2)).mean(0).cpu()

        handles += [
            blk.register_forward_pre_hook(grab_mods, with_kwargs=True),
            blk.proj.register_forward_pre_hook(heads_hook),
            blk.mlp[1].register_forward_hook(units_hook),
        ]
    try:
        run_model(work, calibration)
    finally:
        for h in handles:
            h.remove()
    return [(a[0], a[1]) for a in acc]


def _check_family(model: nn.Module) -> None:
    family = model_family(model)
    if family != "control_head":
        raise TypeError(
            f"shrink_width supports fusion_infer.ControlHead only, got {type(model).__name__} "
            f"(family {family!r}); use shrink_depth for diffusers models"
        )


def _top(scores: Tensor, k: int) -> Tensor:
    # Stable: among equal scores the lower index wins; result sorted (unit order is preserved).
    order = sorted(range(scores.numel()), key=lambda j: (-float(scores[j]), j))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def shrink_width(
    model: nn.Module,
    ratio: float,
    *,
    strategy: str = "importance",
    calibration: Any = None,
) -> nn.Module:
    """A new control head with a ``ratio`` of the attention heads and MLP units of every block.

    Args:
        model: a :class:`~fusion_infer.ControlHead` (untouched).
        ratio: fraction kept, in ``(0, 1]``; ``1`` copies the model exactly.
        strategy: ``"importance"`` (needs ``calibration``) or ``"magnitude"``.
        calibration: the head's call arguments, e.g. ``(x, t)``.

    Returns:
        A :class:`~fusion_infer.ControlHead` with ``heads``, ``attention_head_dim`` and
        ``mlp_hidden_dim`` set in its config; same device, dtype, train/eval mode and
        ``requires_grad`` flags. Residual width, modulators, embeddings and the final layer are
        copied unchanged.

    Raises:
        TypeError: not a control head; ValueError: ``ratio`` outside ``(0, 1]``, unknown strategy,
        ``"importance"`` without ``calibration``.

    Example:
        >>> import torch
        >>> from fusion_infer import ControlHead
        >>> head = ControlHead(dim=64, depth=2, heads=4, freq_dim=64)
        >>> x = torch.randn(2, 64, 8)
        >>> torch.equal(shrink_width(head, 1.0, calibration=(x, 0.5))(x, 0.5), head(x, 0.5))
        True
    """
    _check_family(model)
    ratio = _check_ratio(ratio)
    if strategy not in WIDTH_STRATEGIES:
        raise ValueError(f"strategy must be one of {WIDTH_STRATEGIES}, got {strategy!r}")
    if strategy == "importance" and calibration is None:
        raise ValueError('strategy="importance" needs calibration= (a batch of model inputs)')
    model = getattr(model, "_orig_mod", model)
    cfg = model.config
    n_heads, n_units = kept_counts(cfg.heads, cfg.mlp_hidden, ratio)
    scores = width_importance(model, calibration, strategy)
    hd, d = cfg.head_dim, cfg.dim
    new_cfg = dataclasses.replace(
        cfg, heads=n_heads, attention_head_dim=hd, mlp_hidden_dim=n_units
    )
    state = dict(model.state_dict())
    for i, (hs, us) in enumerate(scores):
        heads = _top(hs, n_heads)
        units = _top(us, n_units)
        p = f"blocks.{i}."
        qkv_w = state[p + "qkv.weight"].view(3, cfg.heads, hd, d)
        state[p + "qkv.weight"] = qkv_w[:, heads].reshape(3 * n_heads * hd, d).clone()
        qkv_b = state[p + "qkv.bias"].view(3, cfg.heads, hd)
        state[p + "qkv.bias"] = qkv_b[:, heads].reshape(-1).clone()
        proj_w = state[p + "proj.weight"].view(d, cfg.heads, hd)
        state[p + "proj.weight"] = proj_w[:, heads].reshape(d, n_heads * hd).clone()
        state[p + "mlp.0.weight"] = state[p + "mlp.0.weight"][units].clone()
        state[p + "mlp.0.bias"] = state[p + "mlp.0.bias"][units].clone()
        state[p + "mlp.2.weight"] = state[p + "mlp.2.weight"][:, units].clone()
    new = type(model)(new_cfg)
    new.load_state_dict(state)
    new = new.to(device=model.device, dtype=model.dtype)
    new.train(model.training)
    for (_, p_new), p_old in zip(new.named_parameters(), model.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    return new

"""Depth shrink: keep a subset of the transformer blocks.

Strategies (TinyFusion, Fang et al. 2024, arXiv 2412.01199; BK-SDM, Kim et al. 2023,
arXiv 2305.15798; ShortGPT, Men et al. 2024, arXiv 2403.03853):

* ``"uniform"`` — keep ``n`` blocks evenly spread over the stack, indices
  ``round(i · (L−1)/(n−1))`` for ``i = 0…n−1`` (first and last always kept), the fixed-pattern
  baseline of BK-SDM-style block removal (Kim et al. 2023, arXiv 2305.15798) and TinyFusion's
  ``prune_by_index``.
* ``"importance"`` — score every block on a calibration batch and keep the ``n`` highest (one
  shot). Two scores (sources differ; both exposed through ``metric=``):

  - ``"output"`` (default): ``I_i = mean((f(x) − f_{−i}(x))²)``, the change of the model output
    when block ``i`` is bypassed (its input passed through unchanged) — the calibration-loss
    baseline TinyFusion compares against (Fang et al. 2025, arXiv 2412.01199, §4 "oracle/loss"
    baselines);
  - ``"block_influence"``: ShortGPT's Block Influence ``BI_i = 1 − E_tokens[cos(h_i, h_{i+1})]``
    between a block's input and output hidden states (Men et al. 2024, arXiv 2403.03853, Eq. 1),
    one forward for all blocks.

An adaLN-zero block with zero gates is the identity, so both scores are exactly 0 for it.

Example:
    >>> import torch
    >>> from fusion_infer import ControlHead
    >>> head = ControlHead(dim=64, depth=6, heads=4, freq_dim=64)
    >>> small = shrink_depth(head, n_blocks=4)
    >>> small.config.depth, uniform_keep(6, 4)
    (4, [0, 2, 3, 5])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .calibration import private_copy, run_model
from .families import block_list, model_family

__all__ = ["shrink_depth", "block_importance", "select_blocks", "uniform_keep", "DEPTH_STRATEGIES", "DEPTH_METRICS"]

DEPTH_STRATEGIES = ("uniform", "importance")
DEPTH_METRICS = ("output", "block_influence")


def uniform_keep(depth: int, n_blocks: int) -> list[int]:
    """Evenly spread block indices ``round(i · (depth−1)/(n_blocks−1))`` (``[0]`` for one block).

    Example:
        >>> uniform_keep(6, 3), uniform_keep(28, 14)[:4]
        ([0, 3, 5], [0, 2, 4, 6])
    """
    if n_blocks == 1:
        return [0]
    # Exact rational arithmetic, ties rounded half up: no float-rounding surprises.
    return [(2 * i * (depth - 1) + (n_blocks - 1)) // (2 * (n_blocks - 1)) for i in range(n_blocks)]


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def block_importance(model: nn.Module, calibration: Any, metric: str = "output") -> Tensor:
    """Per-block importance scores (float64 ``[depth]``, higher = more important).

    Args:
        model: a supported model (``fusion_infer.shrink.SUPPORTED_FAMILIES``); not modified
            (scoring runs on a private copy).
        calibration: the model's call arguments: ``(x, t)`` / ``(x, t, None, ...)`` tuple or a dict
            of keyword arguments (diffusers: ``hidden_states``, ``timestep``, ``class_labels``…).
        metric: ``"output"`` (output change when the block is bypassed) or ``"block_influence"``
            (ShortGPT BI); see the module docstring.

    Example:
        >>> import torch
        >>> from fusion_infer import ControlHead
        >>> head = ControlHead(dim=64, depth=3, heads=4, freq_dim=64)  # zero gates: identities
        >>> block_importance(head, (torch.randn(2, 64, 8), 0.5)).tolist()
        [0.0, 0.0, 0.0]
    """
    if metric not in DEPTH_METRICS:
        raise ValueError(f"metric must be one of {DEPTH_METRICS}, got {metric!r}")
    if calibration is None:
        raise ValueError("calibration is required for importance scores (a batch of model inputs)")
    work = private_copy(model).eval()
    blocks = block_list(work)
    if metric == "output":
        ref = run_model(work, calibration).double()
        scores = []
        for blk in blocks:
            # Forward hook replacing the block's output by its input = bypassing the block.
            h = blk.register_forward_hook(lambda m, a, kw, out: _hidden(a, kw), with_kwargs=True)
            try:
                out = run_model(work, calibration).double()
            finally:
                h.remove()
            scores.append(((out - ref) ** 2).mean())
        return torch.stack(scores)
    sims: list[Tensor] = [torch.zeros((), dtype=torch.float64)] * len(blocks)
    handles = []
    for i, blk in enumerate(blocks):

        def hook(m: nn.Module, a: tuple, kw: dict, out: Any, i: int = i) -> None:
            hin, hout = _hidden(a, kw).double(), (out[0] if isinstance(out, tuple) else out).double()
            sims[i] = F.cosine_similarity(hin, hout, dim=-1).mean()

        handles.append(blk.register_forward_hook(hook, with_kwargs=True))
    try:
        run_model(work, calibration)
    finally:
        for h in handles:
            h.remove()
    return 1.0 - torch.stack(sims)


def select_blocks(
    model: nn.Module,
    n_blocks: int,
    strategy: str = "uniform",
    calibration: Any = None,
    metric: str = "output",
) -> list[int]:
    """Sorted indices of the ``n_blocks`` blocks :func:`shrink_depth` keeps.

    Ties in importance keep the earlier block (stable sort).
    """
    depth = len(block_list(model))
    _check_n(n_blocks, depth)
    if strategy not in DEPTH_STRATEGIES:
        raise ValueError(f"strategy must be one of {DEPTH_STRATEGIES}, got {strategy!r}")
    if strategy == "uniform":
        return uniform_keep(depth, n_blocks)
    if calibration is None:
        raise ValueError('strategy="importance" needs calibration= (a batch of model inputs)')
    scores = block_importance(model, calibration, metric)
    order = sorted(range(depth), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n_blocks])


def _check_n(n_blocks: Any, depth: int) -> None:
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int):
        raise TypeError(f"n_blocks must be an int, got {type(n_blocks).__name__}")
    if not 1 <= n_blocks <= depth:
        raise ValueError(f"n_blocks must be in [1, {depth}] (the model has {depth} blocks), got {n_blocks}")


def _check_keep(keep: Any, depth: int) -> list[int]:
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence):
        raise TypeError(f"keep must be a sequence of block indices, got {type(keep).__name__}")
    out = []
    for k in keep:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"keep must hold ints, got {k!r}")
        if not 0 <= k < depth:
            raise ValueError(f"keep index {k} out of range: the model has blocks 0..{depth - 1}")
        out.append(k)
    if not out:
        raise ValueError("keep must name at least one block")
    if len(set(out)) != len(out):
        raise ValueError(f"keep has repeated indices: {list(keep)}")
    return sorted(out)


def shrink_depth(
    model: nn.Module,
    n_blocks: int | None = None,
    *,
    keep: Sequence[int] | None = None,
    strategy: str = "uniform",
    calibration: Any = None,
    metric: str = "output",
) -> nn.Module:
    """A new model holding copies of a subset of ``model``'s blocks (the original is untouched).

    Args:
        model: :class:`~fusion_infer.ControlHead` or diffusers ``DiTTransformer2DModel`` /
            ``PixArtTransformer2DModel``.
        n_blocks: how many blocks to keep (1…depth); exclusive with ``keep``.
        keep: explicit block indices to keep (any order, no repeats); ``strategy`` is then unused.
        strategy: ``"uniform"`` or ``"importance"`` (needs ``calibration``).
        calibration: model inputs for importance scoring (see :func:`block_importance`).
        metric: importance score, ``"output"`` or ``"block_influence"``.

    Returns:
        A model of the same class whose config says the new depth (``ControlHeadConfig.depth``,
        diffusers ``config.num_layers``), on the same device/dtype and in the same train/eval mode.
        Kept blocks keep their order; everything outside the blocks is copied unchanged.

    Example:
        >>> from fusion_infer import ControlHead
        >>> head = ControlHead(dim=64, depth=4, heads=4, freq_dim=64)
        >>> shrink_depth(head, keep=[3, 0]).config.depth
        2
    """
    family = model_family(model)
    model = getattr(model, "_orig_mod", model)
    depth = len(block_list(model))
    if (n_blocks is None) == (keep is None):
        raise ValueError("give exactly one of n_blocks= or keep=")
    if keep is not None:
        kept = _check_keep(keep, depth)
    else:
        kept = select_blocks(model, n_blocks, strategy, calibration, metric)
    if family == "control_head":
        cfg = dataclasses.replace(model.config, depth=len(kept))
        new = type(model)(cfg)
        state = {}
        for k, v in model.state_dict().items():
            if k.startswith("blocks."):
                _, i, rest = k.split(".", 2)
                if int(i) not in kept:
                    continue
                k = f"blocks.{kept.index(int(i))}.{rest}"
            state[k] = v
        new.load_state_dict(state)
        new = new.to(device=model.device, dtype=model.dtype)
        new.train(model.training)
        for (n_new, p_new) in new.named_parameters():
            p_new.requires_grad_(_old_param(model, n_new, kept).requires_grad)
        return new
    new = private_copy(model)
    new.transformer_blocks = nn.ModuleList([new.transformer_blocks[i] for i in kept])
    new.register_to_config(num_layers=len(kept))
    return new


def _old_param(model: nn.Module, name: str, kept: list[int]) -> Tensor:
    if name.startswith("blocks."):
        _, j, rest = name.split(".", 2)
        name = f"blocks.{kept[int(j)]}.{rest}"
    return model.get_parameter(name)

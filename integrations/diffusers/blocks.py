"""The ``mods=None`` block protocol for diffusers DiT blocks (docs/design.md §3).

:func:`patch_blocks` registers a ``"fusion_block_mods"`` hook on every block of a supported
transformer; the block's ``forward`` then accepts a trailing keyword ``mods=None``:

* ``mods=None`` — unchanged behaviour (the hook forwards the call untouched);
* ``mods=<dict>`` — that block's modulators in the layout of
  :meth:`fusion_diffusers.Modulators.block` (relative site path → tensor); they are armed in the
  block's slots (:mod:`fusion_diffusers.slots`, the same mechanism the cache uses) for this call
  only, so the block uses them instead of computing its own;
* ``mods=<Modulators>`` — the whole result of :func:`compute_modulators`; the block picks its
  own entry.

Positional parameters keep their order (gradient checkpointing and diffusers' block registry
call blocks positionally); ``inspect.signature(block.forward)`` shows ``mods`` as a trailing
keyword-only parameter.

adaLN-single blocks (PixArt) have no modulator module of their own — their modulation input is
the shared ``timestep`` argument produced by ``adaln_single`` — so their ``mods`` dict is empty.

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> from fusion_diffusers import compute_modulators
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10).eval()
    >>> patch_blocks(m)
    >>> t, y = torch.tensor([10]), torch.tensor([1])
    >>> h = torch.randn(1, 4, 16)
    >>> mods = compute_modulators(m, t, class_labels=y)
    >>> blk = m.transformer_blocks[0]
    >>> with torch.no_grad():
    ...     a = blk(h, timestep=t, class_labels=y)
    ...     b = blk(h, timestep=t, class_labels=y, mods=mods.block("transformer_blocks.0"))
    >>> torch.equal(a, b)
    True
    >>> unpatch_blocks(m)
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from diffusers.hooks import HookRegistry, ModelHook

from .families import block_paths, unwrap_compiled
from .hook_chain import make_portable
from .modulators import Modulators
from .slots import SlotTable

__all__ = ["BLOCK_HOOK_NAME", "BlockModsHook", "patch_blocks", "unpatch_blocks", "blocks_patched"]

BLOCK_HOOK_NAME = "fusion_block_mods"
_USER = "patch_blocks"


class BlockModsHook(ModelHook):
    """Adds the trailing ``mods=None`` keyword to one block's forward."""

    _is_stateful = False

    def __init__(self, table: SlotTable, block_path: str, rel_sites: tuple[str, ...]) -> None:
        super().__init__()
        self.table = table
        self.block_path = block_path
        self.rel_sites = rel_sites

    def new_forward(self, module: nn.Module, *args: Any, mods: Any = None, **kwargs: Any) -> Any:
        if mods is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        values = self._resolve(mods)
        full = {f"{self.block_path}.{rel}": v for rel, v in values.items()}
        self.table.sync(list(full))
        previous = self.table.arm(full)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.table.restore(previous)

    def _resolve(self, mods: Any) -> dict[str, Any]:
        if isinstance(mods, Modulators):
            return mods.block(self.block_path)
        if not isinstance(mods, dict):
            raise TypeError(
                f"{self.block_path}: mods must be None, a dict of this block's modulators or a "
                f"Modulators object, got {type(mods).__name__}"
            )
        unknown = set(mods) - set(self.rel_sites)
        if unknown:
            raise ValueError(
                f"{self.block_path}: unknown modulator names {sorted(unknown)}; allowed: {list(self.rel_sites)}"
            )
        return mods


def _with_mods_signature(forward: Any) -> inspect.Signature:
    sig = inspect.signature(forward)
    params = [p for p in sig.parameters.values() if p.name != "mods"]
    tail = [p for p in params if p.kind == inspect.Parameter.VAR_KEYWORD]
    head = [p for p in params if p.kind != inspect.Parameter.VAR_KEYWORD]
    mods = inspect.Parameter("mods", inspect.Parameter.KEYWORD_ONLY, default=None)
    return sig.replace(parameters=[*head, mods, *tail])


def patch_blocks(transformer: nn.Module) -> None:
    """Give every block of ``transformer`` a trailing ``mods=None`` keyword (idempotent).

    Raises :class:`fusion_diffusers.UnsupportedModelError` for unsupported models.
    """
    model = unwrap_compiled(transformer)
    table = SlotTable.acquire(model, _USER)
    for bpath in block_paths(model, table.family):
        block = model.get_submodule(bpath)
        registry = HookRegistry.check_if_exists_or_initialize(block)
        if registry.get_hook(BLOCK_HOOK_NAME) is not None:
            continue
        signature = _with_mods_signature(block.forward)
        registry.register_hook(BlockModsHook(table, bpath, table.family.block_sites(block)), BLOCK_HOOK_NAME)
        make_portable(block)
        block.forward.__signature__ = signature
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


def unpatch_blocks(transformer: nn.Module) -> None:
    """Remove what :func:`patch_blocks` added (a no-op on an unpatched model)."""
    model = unwrap_compiled(transformer)
    table = SlotTable.get(model)
    if table is None or _USER not in table.users:
        return
    for bpath in block_paths(model, table.family):
        registry = getattr(model.get_submodule(bpath), "_diffusers_hook", None)
        if registry is not None and registry.get_hook(BLOCK_HOOK_NAME) is not None:
            registry.remove_hook(BLOCK_HOOK_NAME, recurse=False)
            make_portable(model.get_submodule(bpath))
    table.release(_USER)
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


def blocks_patched(transformer: nn.Module) -> bool:
    """Whether :func:`patch_blocks` is active on ``transformer``."""
    table = SlotTable.get(unwrap_compiled(transformer))
    return table is not None and _USER in table.users

"""``compute_modulators``: every modulator tensor of a diffusers DiT for one timestep batch.

The result is what a cache entry holds and what the ``mods=`` argument of a patched block takes
(:mod:`fusion_diffusers.blocks`): one layout for both.

Modulators are computed by calling the model's own modulator modules with exactly the inputs its
``forward`` would give them (same ops, same dtypes, same batch), so replaying them is bit-exact
(docs/design.md §4.1). Stacking all blocks' weights into one batched matmul, as Fusion's own models do,
would change the reduction order and therefore the bits; it is not done here.

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=2, sample_size=4, num_embeds_ada_norm=10)
    >>> mods = compute_modulators(m, torch.tensor([999, 999]), class_labels=torch.tensor([3, 10]))
    >>> sorted(mods.block("transformer_blocks.1"))
    ['norm1.emb', 'norm1.linear']
    >>> mods.block("transformer_blocks.1")["norm1.linear"].shape
    torch.Size([2, 96])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .families import (
    CallConditioning,
    Family,
    block_paths,
    resolve_family,
    site_paths,
    unwrap_compiled,
)
from .slots import SlotTable

__all__ = ["Modulators", "compute_modulators", "lora_scaled"]


@dataclass(frozen=True)
class Modulators:
    """Modulator outputs of one call, keyed by the dotted path of the module that produces them.

    Attributes:
        values: site path → output (a tensor, or a tuple for ``adaln_single``).
        block_sites: block path → the block's site paths *relative to the block*.
        family: the family name that produced them.
    """

    values: dict[str, Any]
    block_sites: dict[str, tuple[str, ...]]
    family: str

    def block(self, path: str) -> dict[str, Any]:
        """The ``mods`` dict of one block: relative site path → tensor (empty for adaLN-single)."""
        try:
            rel = self.block_sites[path]
        except KeyError:
            raise KeyError(f"no block {path!r}; blocks: {list(self.block_sites)[:4]}…") from None
        return {r: self.values[f"{path}.{r}"] for r in rel}

    def blocks(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(block path, mods)`` for every block in call order."""
        for path in self.block_sites:
            yield path, self.block(path)

    @property
    def model_level(self) -> dict[str, Any]:
        """Sites outside the blocks (shared embedders, ``norm_out.linear``, ``proj_out_1`` …)."""
        inside = {f"{b}.{r}" for b, rel in self.block_sites.items() for r in rel}
        return {k: v for k, v in self.values.items() if k not in inside}

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors."""
        total = 0
        for v in self.values.values():
            for t in v if isinstance(v, tuple) else (v,):
                total += t.numel() * t.element_size()
        return total


class lora_scaled:  # noqa: N801 - used like a function-style context manager
    """Apply diffusers' per-call LoRA scale to PEFT layers under ``modules``, then restore exactly.

    diffusers' ``apply_lora_scale`` decorator multiplies ``scaling[adapter]`` of every active
    adapter by ``joint_attention_kwargs["scale"]`` for the duration of a forward and divides it
    back afterwards. Computing modulators outside that forward (on a cache miss) must see the
    same scaled values; the exact original ``scaling`` dicts are restored (no ``x*s/s`` drift).
    """

    def __init__(self, modules: list[nn.Module], scale: float) -> None:
        self.layers = [m for root in modules for m in root.modules() if _is_lora_layer(m)]
        self.scale = scale
        self.saved: list[dict] = []

    def __enter__(self) -> lora_scaled:
        if self.scale == 1.0:  # diffusers' scale_lora_layers returns early for 1.0 as well
            return self
        for layer in self.layers:
            self.saved.append(dict(layer.scaling))
            layer.scale_layer(self.scale)
        return self

    def __exit__(self, *exc: Any) -> None:
        for layer, saved in zip(self.layers, self.saved):
            layer.scaling.clear()
            layer.scaling.update(saved)
        self.saved = []


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "scaling") and hasattr(module, "scale_layer") and hasattr(module, "active_adapters")


def compute_from_conditioning(model: nn.Module, family: Family, cond: CallConditioning) -> Modulators:
    """All modulators for an already-extracted :class:`CallConditioning` (used by the cache)."""
    values = family.compute(model, cond)
    block_sites = {b: family.block_sites(model.get_submodule(b)) for b in block_paths(model, family)}
    return Modulators(values=values, block_sites=block_sites, family=family.name)


def compute_modulators(
    transformer: nn.Module,
    timestep: Tensor,
    *,
    hidden_dtype: torch.dtype | None = None,
    lora_scale: float = 1.0,
    **conditioning: Any,
) -> Modulators:
    """Compute every block's (and the model-level) modulators of ``transformer`` at once.

    Args:
        transformer: a supported diffusers transformer (see :func:`resolve_family`).
        timestep: the timestep tensor exactly as the model's ``forward`` receives it.
        hidden_dtype: dtype of the hidden states inside the model (default: ``transformer.dtype``).
        lora_scale: the per-call LoRA scale (``joint_attention_kwargs["scale"]``) for SD3/Flux.
        **conditioning: the other forward arguments the modulators depend on —
            DiT: ``class_labels``; PixArt: ``added_cond_kwargs`` and ``batch_size``;
            SD3: ``pooled_projections``; Flux: ``pooled_projections``, ``guidance``;
            Sana: ``guidance`` (Sprint), ``batch_size``; AuraFlow: none (timestep only);
            the other families: their ``Family.conditioning`` (e.g. HiDream ``pooled_embeds``,
            CogView4 ``original_size``/``target_size``/``crop_coords``, FLUX.2 ``guidance``;
            HunyuanVideo ``pooled_projections``, ``guidance``; LTX-2 ``audio_timestep``,
            ``sigma``, …), plus ``<name>_dtype`` for each of the family's ``dtype_args`` (Wan:
            ``encoder_hidden_states_dtype``, default the hidden dtype).
            ``batch_size`` defaults to the timestep's length.

    Returns:
        :class:`Modulators`; ``mods.block(path)`` is the ``mods=`` argument of that block.

    Example:
        >>> import torch
        >>> from diffusers import SD3Transformer2DModel
        >>> m = SD3Transformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2,
        ...     attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
        ...     caption_projection_dim=16, pooled_projection_dim=10, pos_embed_max_size=8)
        >>> mods = compute_modulators(m, torch.tensor([500.0]), pooled_projections=torch.randn(1, 10))
        >>> [t.shape[-1] for t in mods.block("transformer_blocks.1").values()]
        [96, 32]
    """
    model = unwrap_compiled(transformer)
    family = resolve_family(model)
    cond = conditioning_for(model, family, timestep, hidden_dtype, lora_scale, conditioning)
    return compute_with_slots_empty(model, family, cond)


def compute_with_slots_empty(model: nn.Module, family: Family, cond: CallConditioning) -> Modulators:
    """Compute with every slot temporarily empty, so modules really run (never replay)."""
    table = SlotTable.get(model)
    previous = None
    if table is not None:
        table.sync()
        previous = table.arm(dict.fromkeys(table.sites))
    try:
        modules = [model.get_submodule(p) for p in site_paths(model, family)]
        with lora_scaled(modules, cond.lora_scale):
            return compute_from_conditioning(model, family, cond)
    finally:
        if table is not None:
            table.restore(previous)


def conditioning_for(
    model: nn.Module,
    family: Family,
    timestep: Tensor,
    hidden_dtype: torch.dtype | None,
    lora_scale: float,
    conditioning: dict[str, Any],
) -> CallConditioning:
    """Validate user-given conditioning and build the :class:`CallConditioning` a forward would.

    Raises ``TypeError``/``ValueError`` naming the argument and the allowed values.
    """
    if not isinstance(timestep, Tensor):
        raise TypeError(f"timestep must be a torch.Tensor, got {type(timestep).__name__}")
    allowed = set(family.conditioning) | {f"{name}_dtype" for name in family.dtype_args}
    unknown = set(conditioning) - allowed
    if unknown:
        raise TypeError(
            f"got unexpected conditioning {sorted(unknown)} for "
            f"{type(model).__name__}; allowed: {sorted(allowed)}"
        )
    values = {name: conditioning.get(name) for name in family.conditioning}
    if family.name == "dit" and values["class_labels"] is None:
        raise ValueError("class_labels is required for DiTTransformer2DModel (allowed: a LongTensor of labels)")
    if family.name == "sd3" and values["pooled_projections"] is None:
        raise ValueError("pooled_projections is required for SD3Transformer2DModel")
    if family.name == "flux" and values["pooled_projections"] is None:
        raise ValueError("pooled_projections is required for FluxTransformer2DModel")
    for name in family.required:
        if values[name] is None:
            raise ValueError(f"{name} is required for {family.model_class.__name__}")
    if "batch_size" in values and values["batch_size"] is None:
        values["batch_size"] = timestep.shape[0] if timestep.dim() else 1
    dtype = hidden_dtype if hidden_dtype is not None else model.dtype
    for name in family.dtype_args:  # as Family.call_conditioning keys them (default: hidden dtype)
        values[f"{name}_dtype"] = conditioning.get(f"{name}_dtype") or dtype
    if family.adjust_values is not None:  # the same edits a forward call's values get
        family.adjust_values(model, values)
    cond = CallConditioning(timestep=timestep, values=values, hidden_dtype=dtype, lora_scale=lora_scale)
    return cond

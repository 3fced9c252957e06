"""The description of one model family: which modules compute modulators and how.

A *family* names, for one exact diffusers transformer class, every module whose output is a pure
function of ``(timestep, conditioning, weights)`` — the *modulator sites* — and how to compute all
of them at once from the model's forward arguments. Everything else in the integration (the slots
that replay cached tensors, the cache key, the ``mods=None`` block patcher) is driven by these
descriptions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CallConditioning", "ComputeFn", "Family", "UnsupportedModelError"]


class UnsupportedModelError(TypeError):
    """Raised when a model (or one of its blocks) is not a layout the integration has proven."""


@dataclass(frozen=True)
class CallConditioning:
    """Everything the modulators of one forward call depend on, besides the weights.

    ``values`` maps names (``"class_labels"``, ``"pooled_projections"``, ``"guidance"``,
    ``"added_cond_kwargs"``, ``"batch_size"``) to what the model passes to its embedders; the cache
    key is built from the exact bits of ``timestep``, these values, ``hidden_dtype`` and
    ``lora_scale``.
    """

    timestep: Tensor
    values: dict[str, Any]
    hidden_dtype: torch.dtype
    lora_scale: float = 1.0


ComputeFn = Callable[[nn.Module, CallConditioning], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """How one diffusers transformer class computes its modulators.

    Attributes:
        name: short family name (``"dit"``, ``"pixart"``, ``"sd3"``, ``"flux"``).
        model_class: the exact class handled (subclasses are refused).
        block_lists: names of the ``nn.ModuleList`` attributes holding the blocks.
        model_sites: model-level site paths (outside blocks).
        block_sites: block → its site paths relative to the block.
        conditioning: forward-argument names (besides ``timestep``) feeding the modulators.
        lora_scale_kwarg: forward kwarg whose ``"scale"`` entry diffusers' ``apply_lora_scale``
            applies to PEFT layers for the call (None when the class has no such decorator).
        compute: computes every site's output from a :class:`CallConditioning`.
        check: returns a refusal reason for configurations the family does not cover, else None.
        adjust_values: optional in-place edit of the picked conditioning values for inputs the
            model ignores in some configurations (so they never split the key).
        dtype_args: forward tensor arguments whose *dtype* (not content) the modulators depend on
            (Wan casts its time embedding with ``type_as(encoder_hidden_states)``); each is keyed
            as ``"<name>_dtype"`` and defaults to the hidden dtype when absent.
        model_sites_of: optional model → model-level site paths, for classes whose model-level
            sites depend on the configuration (replaces ``model_sites`` when set).
        verified_versions: diffusers versions the family was proven bit-exact on; on any other
            version the first ``apply_modulator_cache`` runs a self-check on a tiny instance
            (:func:`fusion_diffusers.selfcheck.ensure_verified`).
        timestep_arg: name of the forward argument holding the timestep (``"timesteps"`` for
            HiDream, ``"t"`` for Z-Image).
        hidden_arg: name of the forward argument holding the latents; a list (Z-Image) gives
            the hidden dtype of its first tensor and the batch size of its length.
        required: conditioning names :func:`~fusion_diffusers.compute_modulators` must be given.
        uncacheable_call: bound forward arguments → a reason when *this call* cannot be served
            from one entry (e.g. a module run twice with different inputs in one forward); the
            cache then runs the call uncached (counted in ``stats.bypassed``). None: always served.
        dynamic_model_sites: model → extra model-level site paths that depend on the config
            (e.g. one final layer per patch size), appended after ``model_sites``.
    """

    name: str
    model_class: type
    block_lists: tuple[str, ...]
    model_sites: tuple[str, ...]
    block_sites: Callable[[nn.Module], tuple[str, ...]]
    conditioning: tuple[str, ...]
    lora_scale_kwarg: str | None
    compute: ComputeFn
    check: Callable[[nn.Module], str | None]
    adjust_values: Callable[[nn.Module, dict[str, Any]], None] | None = None
    dtype_args: tuple[str, ...] = ()
    model_sites_of: Callable[[nn.Module], tuple[str, ...]] | None = None
    verified_versions: tuple[str, ...] = ("0.42.1",)
    timestep_arg: str = "timestep"
    hidden_arg: str = "hidden_states"
    required: tuple[str, ...] = ()
    uncacheable_call: Callable[[nn.Module, dict[str, Any]], str | None] | None = None
    dynamic_model_sites: Callable[[nn.Module], tuple[str, ...]] | None = None

    def call_conditioning(self, model: nn.Module, args: tuple, kwargs: dict) -> CallConditioning | None:
        """Bind a forward call's arguments and pick out what the modulators depend on.

        Returns None when ``uncacheable_call`` names a reason this call cannot be served, and
        under ``torch.autocast``: the forwards take the dtype of their modulator inputs from
        intermediate activations (``timestep.to(x_embedder(x).dtype)``, ``emb.to(hidden.dtype)``)
        that autocast changes, which a computation from the call's inputs cannot reproduce
        bit for bit.
        """
        bound = _forward_signature(self.model_class).bind(model, *args, **kwargs)
        arguments = bound.arguments
        if self.uncacheable_call is not None and self.uncacheable_call(model, arguments) is not None:
            return None
        hidden_states = arguments[self.hidden_arg]
        batch = len(hidden_states) if isinstance(hidden_states, (list, tuple)) else None
        while isinstance(hidden_states, (list, tuple)):
            hidden_states = hidden_states[0]
        timestep = arguments.get(self.timestep_arg)
        if not isinstance(timestep, Tensor):
            raise TypeError(
                f"{self.model_class.__name__}: the modulator cache needs `{self.timestep_arg}` as a "
                f"torch.Tensor, got {type(timestep).__name__}"
            )
        if torch.is_autocast_enabled(timestep.device.type):
            return None
        values = {name: arguments.get(name) for name in self.conditioning}
        if "batch_size" in values:  # not a forward argument: the models take it from the latents
            values["batch_size"] = hidden_states.shape[0] if batch is None else batch
        for name in self.dtype_args:
            arg = arguments.get(name)
            values[f"{name}_dtype"] = arg.dtype if isinstance(arg, Tensor) else hidden_states.dtype
        if self.adjust_values is not None:
            self.adjust_values(model, values)
        lora_scale = 1.0
        if self.lora_scale_kwarg is not None:
            extra = arguments.get(self.lora_scale_kwarg)
            if extra is not None:
                lora_scale = extra.get("scale", 1.0)
        return CallConditioning(timestep, values, hidden_states.dtype, lora_scale)


_SIGNATURES: dict[type, inspect.Signature] = {}


def _forward_signature(cls: type) -> inspect.Signature:
    sig = _SIGNATURES.get(cls)
    if sig is None:
        sig = _SIGNATURES[cls] = inspect.signature(cls.forward)
    return sig

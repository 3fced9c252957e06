"""Provenance trace: which module outputs of a forward depend on the timestep but not on tokens.

One forward of a (tiny) transformer runs under a :class:`~torch.overrides.TorchFunctionMode`
that tags every tensor with the set of forward arguments it was computed from (dynamic taint
tracking: each op's outputs get the union of its inputs' tags; in-place ops and ``__setitem__``
add the tags to the written tensor). Forward hooks on every submodule read the tags of each
module's output. A module is **pure** when all its outputs in the call depend on no *token*
argument (the latent and text token streams); a pure module whose output depends on a timestep
argument is a **modulator module**. A modulator module is a **site** (a *sink*) when its output
flows — through plain tensor ops, not through another pure module — into a computation that also
depends on tokens (``x * (1 + scale) + shift``, a gate, a learned table added to the embedding and
then applied): those are the outputs a modulator cache must replay, and the weights a modulator
offload can move away.

What the trace proves and what it does not:

* It sees data flow through tensor ops only. Values that leave torch (``t.item()``, ``int(t)``,
  Python control flow on values) drop their tags, so an output may look *less* dependent than it
  is; tests therefore also compare cached and uncached outputs bit for bit.
* Ops whose result does not depend on the input values (``zeros_like``, ``new_ones``, shape
  queries) do not propagate tags.
* Rotary/positional tables depend on position ids, not on a timestep: they are pure but not
  modulator modules.

Token arguments are chosen by :func:`token_arguments`: every tensor argument that is not a
timestep and either is named like a token stream (``hidden_states``, ``encoder_hidden_states*``,
``x``, ``*latents*``, ``*_feats``) or has three or more dimensions (a sequence of tokens or a
latent grid).

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10).eval()
    >>> tr = trace_forward(m, {"hidden_states": torch.randn(2, 4, 4, 4),
    ...                        "timestep": torch.tensor([5, 7]), "class_labels": torch.tensor([1, 2])})
    >>> sorted(tr.sites)
    ['proj_out_1', 'transformer_blocks.0.norm1.linear']
    >>> sorted(tr.labels["transformer_blocks.0.norm1.emb"])
    ['class_labels', 'timestep']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "ModuleRecord",
    "Trace",
    "is_timestep_argument",
    "token_arguments",
    "trace_forward",
]

_EMPTY: frozenset = frozenset()

# Results that depend on the shape/dtype/device of the inputs, never on their values.
_VALUE_FREE = {
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
    torch.randn_like, torch.randint_like,
    Tensor.new_zeros, Tensor.new_ones, Tensor.new_empty, Tensor.new_full,
    Tensor.size, Tensor.dim, Tensor.numel, Tensor.__len__,
}

_TOKEN_NAME = re.compile(r"hidden_states|latent|feats$|^x$|_bth$|pixel_values|input_img")


def is_timestep_argument(name: str) -> bool:
    """Whether a forward argument name denotes a timestep (``timestep``, ``t``, ``sigma``, …)."""
    return "timestep" in name or name in ("t", "sigma", "audio_sigma", "timesteps")


def token_arguments(inputs: dict[str, Any]) -> frozenset[str]:
    """Forward arguments treated as token streams (see the module docstring)."""
    out = set()
    for name, value in inputs.items():
        if is_timestep_argument(name):
            continue
        leaves = [t for t in tree_leaves(value) if isinstance(t, Tensor)]
        if not leaves:
            continue
        if _TOKEN_NAME.search(name) or any(t.dim() >= 3 for t in leaves):
            out.add(name)
    return frozenset(out)


@dataclass
class ModuleRecord:
    """What one module did during the traced forward.

    Attributes:
        path: dotted path of the module.
        calls: how many times it ran.
        impure_calls: calls whose output depended on a token argument.
        labels: forward arguments its outputs depended on (union over calls).
        has_weights: the module (with its children) holds parameters or buffers.
    """

    path: str
    calls: int = 0
    impure_calls: int = 0
    labels: set[str] = field(default_factory=set)
    has_weights: bool = False

    @property
    def pure(self) -> bool:
        """Every call's output was free of token arguments (and depended on some argument)."""
        return self.calls > 0 and self.impure_calls == 0 and bool(self.labels)


@dataclass(frozen=True)
class Trace:
    """The result of :func:`trace_forward`.

    Attributes:
        modules: path → :class:`ModuleRecord` for every module that ran.
        token_args: forward arguments treated as token streams.
        time_args: forward arguments treated as timesteps.
        sinks: pure module paths whose output flowed directly into a token computation.
    """

    modules: dict[str, ModuleRecord]
    token_args: frozenset[str]
    time_args: frozenset[str]
    sinks: frozenset[str]

    @property
    def labels(self) -> dict[str, frozenset[str]]:
        """path → forward arguments its outputs depended on."""
        return {p: frozenset(r.labels) for p, r in self.modules.items()}

    def is_modulator(self, path: str) -> bool:
        """Pure and dependent on a timestep argument."""
        rec = self.modules.get(path)
        return rec is not None and rec.pure and bool(rec.labels & self.time_args)

    @property
    def sites(self) -> frozenset[str]:
        """Modulator modules with weights whose output is consumed by a token computation.

        These are the modules a family must list (a cache must replay them, an offload moves
        their weights). Weight-free sinks (a bare ``SiLU``) cost nothing to recompute.
        """
        return frozenset(p for p in self.sinks if self.is_modulator(p) and self.modules[p].has_weights)

    @property
    def mixed(self) -> frozenset[str]:
        """Modules that consumed-by-tokens in some call but ran on token data in another: a
        slot cannot replace them (shared between the conditioning and the token paths)."""
        return frozenset(p for p in self.sinks if self.modules[p].impure_calls and self.modules[p].labels
                         & self.time_args)

    def conditioning_of(self, paths: Iterable[str]) -> frozenset[str]:
        """Forward arguments (timesteps excluded) that feed any of ``paths``."""
        out: set[str] = set()
        for p in paths:
            out |= self.modules[p].labels
        return frozenset(out - self.time_args)


class _Tags:
    """Per-tensor tags: (argument labels, source pure-module paths), keyed by tensor identity."""

    def __init__(self) -> None:
        self.map: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def get(self, t: Tensor) -> tuple[frozenset, frozenset]:
        return self.map.get(t, (_EMPTY, _EMPTY))

    def set(self, t: Tensor, labels: frozenset, src: frozenset) -> None:
        if labels or src:
            self.map[t] = (labels, src)
        elif t in self.map:
            del self.map[t]


def _tensors(tree: Any) -> list[Tensor]:
    return [x for x in tree_leaves(tree) if isinstance(x, Tensor)]


class _ProvenanceMode(TorchFunctionMode):
    def __init__(self, tags: _Tags, token: frozenset[str], sinks: set[str]) -> None:
        super().__init__()
        self.tags = tags
        self.token = token
        self.sinks = sinks

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _VALUE_FREE:
            return out
        name = getattr(func, "__name__", "")
        if func is Tensor.type_as:  # takes only the dtype of its second argument
            inputs = _tensors(args[:1])
        else:
            inputs = _tensors((args, kwargs))
        labels: frozenset = _EMPTY
        srcs = []
        for t in inputs:
            lab, src = self.tags.get(t)
            labels = labels | lab
            if src:
                srcs.append((lab, src))
        if not labels and not srcs:
            return out
        tokenish = bool(labels & self.token)
        src_out: frozenset = _EMPTY
        if tokenish:
            # A pure value meets the token stream here: its producing modules are sites.
            for lab, src in srcs:
                if not lab & self.token:
                    self.sinks.update(src)
        else:
            for _, src in srcs:
                src_out = src_out | src
        written = list(_tensors(out))
        if name == "__setitem__" or (name.endswith("_") and not name.endswith("__")):
            written += _tensors(args[:1])
        if "out" in kwargs:
            written += _tensors(kwargs["out"])
        for t in written:
            old_lab, old_src = self.tags.get(t)
            self.tags.set(t, labels | old_lab, (src_out | old_src) if not tokenish else _EMPTY)
        return out


def trace_forward(
    model: nn.Module,
    inputs: dict[str, Any],
    *,
    token_args: Iterable[str] | None = None,
) -> Trace:
    """Run ``model(**inputs)`` once under the provenance trace (no grad) and return the :class:`Trace`.

    Args:
        model: the transformer (modules hooked by the modulator cache must not be armed).
        inputs: forward keyword arguments; every tensor in them is tagged with its argument name.
        token_args: override :func:`token_arguments`.
    """
    token = frozenset(token_args) if token_args is not None else token_arguments(inputs)
    time_args = frozenset(n for n in inputs if is_timestep_argument(n) and _tensors(inputs[n]))
    tags = _Tags()
    for name, value in inputs.items():
        for t in _tensors(value):
            lab, _ = tags.get(t)
            tags.set(t, lab | {name}, _EMPTY)
    records: dict[str, ModuleRecord] = {}
    sinks: set[str] = set()
    handles = []

    def make_hook(path: str, module: nn.Module):
        rec = ModuleRecord(path, has_weights=any(True for _ in module.parameters()) or any(
            True for _ in module.buffers()))

        def hook(mod, args, kwargs, output):
            rec.calls += 1
            records.setdefault(path, rec)
            in_ids = {id(t) for t in _tensors((args, kwargs))}
            outs = [t for t in _tensors(output) if id(t) not in in_ids]  # identity modules pass through
            labels: frozenset = _EMPTY
            for t in outs:
                labels = labels | tags.get(t)[0]
            rec.labels |= labels
            if labels & token:
                rec.impure_calls += 1
                return
            if labels:
                for t in outs:
                    tags.set(t, tags.get(t)[0], frozenset({path}))

        return hook

    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_hook(make_hook(path, module), with_kwargs=True))
    try:
        with torch.no_grad(), _ProvenanceMode(tags, token, sinks):
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return Trace(modules=records, token_args=token, time_args=time_args, sinks=frozenset(sinks))

"""Picklable, copyable diffusers hook chains.

diffusers' ``HookRegistry.register_hook`` (``src/diffusers/hooks/hooks.py``) replaces
``module.forward`` by ``functools.partial(rewritten_forward, module)`` where
``rewritten_forward`` is a closure over the hook's ``HookFunctionReference``. A closure is
neither picklable (``torch.save(transformer)`` fails) nor copied by ``copy.deepcopy`` (functions
are copied by reference): ``ema = copy.deepcopy(transformer)`` would return a model whose
``forward`` still runs the *original* model's hooks and modules, ignoring its own weights.

:func:`make_portable` rebuilds the chain of a module's registry from plain objects — a
:class:`HookedForward` per hook (the same three steps as diffusers' closure: ``pre_forward``,
the next forward, ``post_forward``) — so ``copy.deepcopy`` maps every reference to the copy and
pickle stores it. The registry's own bookkeeping (``_fn_refs``, ``original_forward``) keeps its
meaning, so diffusers' ``remove_hook`` still works, for our hooks and for any other hook on the
same module.

Example:
    >>> import copy, torch
    >>> from diffusers.hooks import HookRegistry, ModelHook
    >>> lin = torch.nn.Linear(2, 2)
    >>> HookRegistry.check_if_exists_or_initialize(lin).register_hook(ModelHook(), "noop")
    >>> make_portable(lin)
    >>> twin = copy.deepcopy(lin)
    >>> with torch.no_grad():
    ...     _ = twin.weight.zero_(); _ = twin.bias.zero_()
    >>> float(twin(torch.ones(1, 2)).abs().sum()), bool(lin(torch.ones(1, 2)).abs().sum() > 0)
    (0.0, True)
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

__all__ = ["HookedForward", "make_portable"]


class HookedForward:
    """``module.forward`` for one hook of a registry: pre_forward → next forward → post_forward.

    A plain object (``module``, ``fn_ref``, ``__wrapped__``), so deepcopy and pickle follow it.
    ``__wrapped__`` is the previous forward, as with diffusers' ``functools.update_wrapper``, so
    ``inspect.signature`` still reports the model's real signature.
    """

    def __init__(self, module: nn.Module, fn_ref: Any, wrapped: Any) -> None:
        self.module = module
        self.fn_ref = fn_ref
        self.__wrapped__ = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn_ref = self.fn_ref
        args, kwargs = fn_ref.pre_forward(self.module, *args, **kwargs)
        output = fn_ref.forward(*args, **kwargs)
        return fn_ref.post_forward(self.module, output)


def _portable_base(forward: Any, module: nn.Module) -> bool:
    # A bound method of the module itself (or one of our objects) survives copies and pickle.
    if isinstance(forward, HookedForward):
        return True
    return isinstance(forward, types.MethodType) and forward.__self__ is module


def make_portable(module: nn.Module) -> None:
    """Rebuild ``module``'s diffusers hook chain from :class:`HookedForward` objects (idempotent).

    A no-op when the module has no registry or hooks, or when the innermost forward is not the
    module's own bound method (something outside diffusers wrapped it; left untouched).
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or not registry._fn_refs:
        return
    first = registry._fn_refs[0]
    base = first.original_forward if first.original_forward is not None else first.forward
    if isinstance(base, HookedForward) or not _portable_base(base, module):
        return
    extra = dict(getattr(module.forward, "__dict__", {}))  # e.g. a __signature__ set on the outer forward
    extra.pop("__wrapped__", None)
    previous = base
    for fn_ref in registry._fn_refs:
        if fn_ref.original_forward is not None:  # a hook with new_forward: fn_ref.forward is its partial
            fn_ref.original_forward = previous
        else:
            fn_ref.forward = previous
        previous = HookedForward(module, fn_ref, previous)
    for key, value in extra.items():
        if key not in ("module", "fn_ref"):
            setattr(previous, key, value)
    module.forward = previous

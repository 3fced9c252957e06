"""``torch.compile`` for FusionOpt's pure per-shape-batch functions, with an eager fallback.

FusionOpt compiles the functions that do the arithmetic on one batch of same-shape matrices
(Newton–Schulz, the KL-Shampoo step and seed, MONA), not ``step()``: the step walks Python
structures (param groups, state dicts, shape buckets) that would make a compiled graph guard on
every step. Each function is compiled with ``dynamic=False``: a model has a handful of distinct
matrix shapes and a static graph per shape is what Inductor optimises best; the Python-bool
switches (KL ``refresh``) add one graph each. Nothing is compiled again after the first step
that has seen every shape and switch (tests/optim/test_full_recipe.py counts frames).

Because dynamo's recompile limit applies per function (8 by default in torch 2.x) and a model
can have more shapes × switches than that, :func:`compile_pure` raises
``torch._dynamo.config.recompile_limit`` to at least :data:`RECOMPILE_LIMIT` (a global setting;
raising it never changes what other compiled code computes).

If compiling is unavailable (no dynamo on this platform/Python) or fails at the first call (no
C++ compiler for Inductor on CPU, unsupported op), the wrapper warns once and runs the eager
function from then on. The functions are pure, so re-running one eagerly after a failed
compiled attempt is safe.

Example:
    >>> import torch
    >>> f = compile_pure(lambda x: x + 1, "increment", backend="eager")
    >>> f(torch.ones(2))
    tensor([2., 2.])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["DEFAULT_BACKEND", "RECOMPILE_LIMIT", "CompiledOrEager", "compile_pure"]

#: torch.compile backend used by ``FusionOpt(compile=True)``.
DEFAULT_BACKEND = "inductor"
#: Lower bound applied to ``torch._dynamo.config.recompile_limit`` when compiling.
RECOMPILE_LIMIT = 64


class CompiledOrEager:
    """Call the compiled function; on its first failure warn and fall back to eager for good."""

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any] | None, name: str) -> None:
        self.eager, self.compiled, self.name = eager, compiled, name

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # any compile failure means "use eager"
            warnings.warn(
                f"FusionOpt: torch.compile of {self.name} failed ({type(exc).__name__}: {exc}); "
                "running it eagerly from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            self.compiled = None
            return self.eager(*args, **kwargs)


def _raise_recompile_limit() -> None:
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
            return


def compile_pure(fn: Callable[..., Any], name: str, *, backend: str | None = None) -> CompiledOrEager:
    """Wrap a pure function in ``torch.compile(dynamic=False)`` with an eager fallback.

    ``backend`` defaults to :data:`DEFAULT_BACKEND` (``"inductor"``).
    """
    try:
        import torch._dynamo

        if hasattr(torch._dynamo, "is_dynamo_supported") and not torch._dynamo.is_dynamo_supported():
            raise RuntimeError("torch._dynamo is not supported on this platform/Python")
        _raise_recompile_limit()
        compiled = torch.compile(fn, backend=backend or DEFAULT_BACKEND, dynamic=False)
    except Exception as exc:
        warnings.warn(
            f"FusionOpt: torch.compile is unavailable ({type(exc).__name__}: {exc}); "
            f"{name} runs eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        compiled = None
    return CompiledOrEager(fn, compiled, name)

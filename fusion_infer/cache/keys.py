"""Exact-bits cache keys over tensors and Python values (docs/design.md §4.2).

A modulator cache is only lossless if two inputs share a key exactly when they are bit-identical:
rounding a timestep (``round(t, 6)``) or keying on ``t`` alone when pooled text / class labels /
guidance also feed the modulators silently replays wrong values (a
t-only key measured max |Δ| = 0.14 on a tiny FLUX.1 with two prompts). These helpers turn tensors into hashable keys made of
their dtype, shape, device and *raw bytes*, so ``0.1`` in float32 and float64, ``-0.0`` and ``0.0``,
or two NaN payloads never collide.

Reading bytes copies the tensor to the host (a device sync on CUDA); keys are meant for small
conditioning tensors (timesteps, pooled vectors, labels), not for activations.

Example:
    >>> import torch
    >>> from fusion_infer.cache.keys import make_key, row_keys
    >>> make_key(torch.tensor([0.5]), "cond") == make_key(torch.tensor([0.5]), "cond")
    True
    >>> k = row_keys(torch.tensor([0.25, 0.25, 1.0]))
    >>> k[0] == k[1], k[0] == k[2]
    (True, False)
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["float_bits", "tensor_bits", "tensor_key", "row_bits", "row_keys", "make_key", "dedupe"]


def float_bits(value: float) -> int:
    """The IEEE-754 binary64 bit pattern of a Python float, as an int (``-0.0`` ≠ ``0.0``).

    Example:
        >>> float_bits(0.0) == float_bits(-0.0)
        False
    """
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _as_bytes_matrix(t: Tensor, rows: int) -> Tensor:
    """Host copy of ``t`` reshaped to ``[rows, nbytes_per_row]`` uint8 (exact bits)."""
    host = t.detach().to("cpu").contiguous().reshape(rows, -1)
    if host.numel() and host.stride(-1) != 1:
        # A size-1 dimension expanded from a scalar (`t.expand(1)`, what batch-1 pipelines pass)
        # counts as contiguous with stride 0, which `view(uint8)` refuses: give it real strides.
        host = host.clone(memory_format=torch.contiguous_format)
    if host.dtype == torch.bool:  # bool has no same-size integer view; it is one byte already
        host = host.to(torch.uint8)
    return host.view(torch.uint8)


def tensor_bits(t: Tensor) -> bytes:
    """Raw bytes of ``t`` in row-major order (host copy; dtype and shape are *not* included).

    Example:
        >>> tensor_bits(torch.tensor([1.0])) == tensor_bits(torch.tensor([1.0], dtype=torch.float64))
        False
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"tensor_bits expects a torch.Tensor, got {type(t).__name__}")
    return _as_bytes_matrix(t, 1).numpy().tobytes()


def tensor_key(t: Tensor) -> tuple:
    """Hashable key of a whole tensor: ``("tensor", dtype, shape, device, bytes)``."""
    return ("tensor", str(t.dtype), tuple(t.shape), str(t.device), tensor_bits(t))


def row_bits(t: Tensor) -> list[bytes]:
    """Raw bytes of each slice ``t[i]`` along the first dimension (one host copy for all rows).

    Use it when a batch mixes conditions and each row is cached separately.

    Example:
        >>> a, b = row_bits(torch.tensor([[1.0, 2.0], [1.0, 2.0]]))
        >>> a == b
        True
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"row_bits expects a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 0:
        raise ValueError("row_bits needs a tensor with a batch dimension, got a 0-d tensor")
    arr = _as_bytes_matrix(t, t.shape[0]).numpy()
    return [arr[i].tobytes() for i in range(arr.shape[0])]


def row_keys(*columns: Tensor | None, prefix: tuple = ()) -> list[tuple]:
    """One key per batch row: ``prefix + (dtype/shape signature, row bytes) per column``.

    ``columns`` are tensors sharing their first (batch) dimension; ``None`` columns are recorded
    as absent so "no conditioning" never collides with a conditioning of zeros. The per-column
    signature (dtype and trailing shape) keeps float32/float64 inputs with equal bytes apart.

    Example:
        >>> t = torch.tensor([0.1, 0.1]); y = torch.tensor([3, 4])
        >>> ks = row_keys(t, y, prefix=("float32",))
        >>> ks[0] == ks[1]
        False
    """
    batch = None
    parts: list[list] = []
    for i, col in enumerate(columns):
        if col is None:
            parts.append(None)
            continue
        if not isinstance(col, Tensor):
            raise TypeError(f"row_keys column {i} must be a Tensor or None, got {type(col).__name__}")
        if col.dim() == 0:
            raise ValueError(f"row_keys column {i} has no batch dimension (0-d tensor)")
        if batch is None:
            batch = col.shape[0]
        elif col.shape[0] != batch:
            raise ValueError(
                f"row_keys columns disagree on the batch size: column {i} has {col.shape[0]}, "
                f"expected {batch}"
            )
        sig = (str(col.dtype), tuple(col.shape[1:]), str(col.device))
        parts.append([(sig, b) for b in row_bits(col)])
    if batch is None:
        raise ValueError("row_keys needs at least one tensor column")
    return [
        prefix + tuple(None if p is None else p[r] for p in parts) for r in range(batch)
    ]


def make_key(*parts: Any) -> tuple:
    """Hashable key from tensors, numbers, strings, dtypes, devices, None and nested containers.

    Floats are keyed by their exact bits (no rounding); tensors by :func:`tensor_key`.

    Example:
        >>> make_key(0.1, torch.float32) == make_key(0.1, torch.float32)
        True
        >>> make_key(0.0) == make_key(-0.0)
        False
    """
    return tuple(_key_part(p) for p in parts)


def _key_part(p: Any) -> Hashable:
    if isinstance(p, Tensor):
        return tensor_key(p)
    if isinstance(p, bool) or p is None or isinstance(p, (int, str, bytes)):
        return (type(p).__name__, p)
    if isinstance(p, float):
        return ("float", float_bits(p))
    if isinstance(p, (torch.dtype, torch.device)):
        return (type(p).__name__, str(p))
    if isinstance(p, (tuple, list)):
        return (type(p).__name__, tuple(_key_part(x) for x in p))
    if isinstance(p, dict):
        return ("dict", tuple(sorted((str(k), _key_part(v)) for k, v in p.items())))
    raise TypeError(
        f"make_key cannot key a {type(p).__name__}; allowed: Tensor, int, float, bool, str, bytes, "
        "None, torch.dtype, torch.device, and tuple/list/dict of those"
    )


def dedupe(keys: Sequence[Hashable]) -> tuple[list[Hashable], list[int]]:
    """Distinct keys in first-seen order and, per input position, the index of its distinct key.

    Example:
        >>> dedupe(["a", "b", "a"])
        (['a', 'b'], [0, 1, 0])
    """
    index: dict[Hashable, int] = {}
    distinct: list[Hashable] = []
    inverse: list[int] = []
    for k in keys:
        j = index.get(k)
        if j is None:
            j = index[k] = len(distinct)
            distinct.append(k)
        inverse.append(j)
    return distinct, inverse

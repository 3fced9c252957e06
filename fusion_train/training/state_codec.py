"""Lossless, pickle-free encoding of nested training state: tensors apart, the rest as strict JSON.

An optimizer's ``state_dict()`` (and a loader position, a few best-so-far numbers) is a tree of
dicts, lists and tuples whose leaves are tensors and Python scalars. :func:`encode_tree` splits
such a tree into a JSON-compatible object and a flat ``{name: tensor}`` dict (stored with
safetensors); :func:`decode_tree` validates the JSON and rebuilds the very same tree. Unlike a
pickle (``torch.save``), nothing in the file can name a callable, so loading cannot run code;
unlike ``torch.load`` with ``weights_only=True`` there is no unpickler at all.

What round-trips exactly (``decode_tree(*encode_tree(x)) == x``, tensors bit for bit):

* ``None``, ``bool``, ``int`` (any size), ``str``;
* ``float`` including ``nan``/``±inf`` (written as ``{"__float__": "nan"}``, a NaN with another
  sign or payload as ``{"__float__": "nan:<its 64 bits in hex>"}``: strict JSON has no such
  numbers; finite floats use ``repr``, which round-trips every double, Python ``json``);
* ``list``; ``tuple`` (``{"__tuple__": [...]}``); ``dict`` with ``str`` keys (a JSON object)
  or other hashable keys — ``int`` parameter ids, tuples — (``{"__dict__": [[key, value], ...]}``);
* ``torch.Tensor`` (``{"__tensor__": "t/3"}``; the same tensor object twice is stored once and
  decoded as one object), ``torch.dtype`` and ``torch.device``.

Anything else raises ``TypeError`` naming its place in the tree. Tensor views that share storage
without being the same object are stored as separate tensors (``torch.save`` would keep the
sharing); no optimizer in this project keeps such views in its state.

Example:
    >>> import torch
    >>> tree = {"state": {0: {"step": torch.tensor(3.0)}}, "betas": (0.9, 0.999), "best": float("inf")}
    >>> doc, tensors = encode_tree(tree)
    >>> sorted(tensors)
    ['t/0']
    >>> back = decode_tree(doc, tensors)
    >>> back["betas"], back["best"], torch.equal(back["state"][0]["step"], tree["state"][0]["step"])
    ((0.9, 0.999), inf, True)
"""

from __future__ import annotations

import math
import struct
from typing import Any

import torch

__all__ = ["MAX_TREE_DEPTH", "decode_tree", "encode_tree"]

#: Deepest nesting accepted on decode (an optimizer state dict nests about 5 levels).
MAX_TREE_DEPTH = 48

_TAGS = ("__tuple__", "__dict__", "__tensor__", "__float__", "__dtype__", "__device__")
_FLOAT_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_DTYPES = {
    str(dt).removeprefix("torch."): dt
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
               torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
}


_CANONICAL_NAN_BITS = struct.unpack("<Q", struct.pack("<d", math.nan))[0]


def _float_name(x: float) -> str:
    """``"inf"``/``"-inf"``, ``"nan"`` for the canonical NaN, else ``"nan:<64-bit pattern in hex>"``
    (a NaN's sign and payload survive too)."""
    if not math.isnan(x):
        return "inf" if x > 0 else "-inf"
    bits = struct.unpack("<Q", struct.pack("<d", x))[0]
    return "nan" if bits == _CANONICAL_NAN_BITS else f"nan:{bits:016x}"


def _float_from_name(name: Any) -> float | None:
    if not isinstance(name, str):
        return None
    if name in _FLOAT_NAMES:
        return _FLOAT_NAMES[name]
    if name.startswith("nan:") and len(name) == 20 and all(c in "0123456789abcdef" for c in name[4:]):
        value = struct.unpack("<d", struct.pack("<Q", int(name[4:], 16)))[0]
        return value if math.isnan(value) else None
    return None


def encode_tree(tree: Any, prefix: str = "t/") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``tree`` into ``(json_object, {name: tensor})``; tensors are named ``f"{prefix}{i}"``.

    Tensors are detached, moved to CPU and made contiguous (copied only when needed).
    """
    tensors: dict[str, torch.Tensor] = {}
    names: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []  # ids stay unique while the originals are referenced

    def enc(x: Any, where: str, depth: int) -> Any:
        if depth > MAX_TREE_DEPTH:
            raise ValueError(f"{where}: nests more than {MAX_TREE_DEPTH} levels")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return float(x) if math.isfinite(x) else {"__float__": _float_name(x)}
        if isinstance(x, torch.Tensor):
            name = names.get(id(x))
            if name is None:
                name = f"{prefix}{len(tensors)}"
                names[id(x)] = name
                keep_alive.append(x)
                # A contiguous private copy: safetensors needs contiguous, unshared storage, and a
                # later in-place update of the live tensor must not change what is written.
                tensors[name] = x.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            return {"__tensor__": name}
        if isinstance(x, torch.dtype):
            return {"__dtype__": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"__device__": str(x)}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not any(k in _TAGS for k in x):
                return {k: enc(v, f"{where}.{k}", depth + 1) for k, v in x.items()}
            return {"__dict__": [[enc(k, f"{where} key {k!r}", depth + 1), enc(v, f"{where}[{k!r}]", depth + 1)]
                                 for k, v in x.items()]}
        raise TypeError(
            f"{where}: cannot store a {type(x).__module__}.{type(x).__qualname__} in a training state "
            "(allowed: None, bool, int, float, str, list, tuple, dict, torch.Tensor, torch.dtype, torch.device)"
        )

    doc = enc(tree, "state", 0)
    return doc, tensors


def decode_tree(doc: Any, tensors: dict[str, torch.Tensor], *, require_all: bool = True) -> Any:
    """Rebuild what :func:`encode_tree` split; ``ValueError`` naming the place of anything malformed.

    ``require_all``: every tensor in ``tensors`` must be referenced (a file with stray tensors was
    not written by :func:`encode_tree`).
    """
    used: set[str] = set()

    def dec(x: Any, where: str, depth: int) -> Any:
        if depth > MAX_TREE_DEPTH:
            raise ValueError(f"{where}: nests more than {MAX_TREE_DEPTH} levels")
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            if not math.isfinite(x):
                raise ValueError(f"{where}: a non-finite float must be written as {{'__float__': ...}}")
            return x
        if isinstance(x, list):
            return [dec(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]
        if not isinstance(x, dict):
            raise ValueError(f"{where}: unexpected JSON value of type {type(x).__name__}")
        tags = [k for k in x if k in _TAGS]
        if not tags:
            return {k: dec(v, f"{where}.{k}", depth + 1) for k, v in x.items()}
        if len(x) != 1:
            raise ValueError(f"{where}: a tagged value {tags[0]!r} must be the object's only key")
        tag, body = tags[0], x[tags[0]]
        if tag == "__tensor__":
            if not isinstance(body, str) or body not in tensors:
                raise ValueError(f"{where}: refers to tensor {body!r:.60}, which the file does not hold")
            used.add(body)
            return tensors[body]
        if tag == "__float__":
            value = _float_from_name(body)
            if value is None:
                raise ValueError(
                    f"{where}: __float__ must be one of {sorted(_FLOAT_NAMES)} or 'nan:<16 hex digits of a NaN>', "
                    f"got {body!r:.60}"
                )
            return value
        if tag == "__dtype__":
            if body not in _DTYPES:
                raise ValueError(f"{where}: __dtype__ must be one of {sorted(_DTYPES)}, got {body!r:.60}")
            return _DTYPES[body]
        if tag == "__device__":
            try:
                return torch.device(body)
            except (TypeError, RuntimeError) as exc:
                raise ValueError(f"{where}: invalid __device__ {body!r:.60}") from exc
        if not isinstance(body, list):
            raise ValueError(f"{where}: {tag} must hold a list")
        if tag == "__tuple__":
            return tuple(dec(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(body))
        out = {}
        for i, pair in enumerate(body):  # "__dict__"
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError(f"{where}: __dict__ entry {i} must be a [key, value] pair")
            key = dec(pair[0], f"{where} key {i}", depth + 1)
            try:
                hash(key)
            except TypeError:
                raise ValueError(f"{where}: __dict__ key {i} is not hashable ({type(key).__name__})") from None
            if isinstance(key, torch.Tensor):
                raise ValueError(f"{where}: __dict__ key {i} may not be a tensor")
            out[key] = dec(pair[1], f"{where}[{key!r}]", depth + 1)
        return out

    tree = dec(doc, "state", 0)
    if require_all:
        stray = sorted(set(tensors) - used)
        if stray:
            raise ValueError(f"tensors {stray[:8]} are not referenced by the state")
    return tree

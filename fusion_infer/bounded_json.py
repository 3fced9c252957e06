"""JSON parsing with bounded nesting and strict numbers, for metadata read from untrusted files.

Python's ``json`` parser recurses once per nesting level, so a few kilobytes of ``[[[[…]]]]``
raise ``RecursionError`` (or worse, exhaust the C stack) instead of a parse error. The JSON
specification (RFC 8259 §9) lets a parser "set limits on the maximum depth of nesting";
:func:`loads_bounded` does that *before* parsing, with a linear scan that never recurses, and
also refuses the non-standard constants ``NaN``, ``Infinity`` and ``-Infinity`` that Python's
``json`` would otherwise accept (RFC 8259 §6: they "are not permitted").

Example:
    >>> loads_bounded('{"a": [1, 2.5, "x"]}')
    {'a': [1, 2.5, 'x']}
    >>> loads_bounded("[" * 100 + "]" * 100, max_depth=32)
    Traceback (most recent call last):
    ...
    ValueError: JSON nests 100 levels deep; at most 32 are allowed
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MAX_DEPTH", "json_depth", "loads_bounded"]

#: Default nesting limit: far above any metadata this project writes (≤ 6 levels).
DEFAULT_MAX_DEPTH = 64

# A complete JSON string literal (RFC 8259 §7); brackets inside strings do not nest.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text``, ignoring brackets inside string literals.

    Linear time and no recursion, so it is safe on any input; ``text`` need not be valid JSON.

    Example:
        >>> json_depth('{"a": [[1], "]]]"]}')
        3
    """
    stripped = _STRING.sub('""', text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(stripped, dtype=np.uint8)
    if codes.size == 0:
        return 0
    step = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE).astype(np.int64)
    return int(max(0, np.cumsum(step).max()))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"JSON contains {name}, which is not valid JSON (numbers must be finite)")


def loads_bounded(text: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, allow_nonfinite: bool = False) -> Any:
    """``json.loads(text)`` that refuses nesting deeper than ``max_depth`` and NaN/Infinity.

    ``allow_nonfinite=True`` parses ``NaN``/``Infinity``/``-Infinity`` to floats (as Python's
    ``json`` writes them by default) for callers that check finiteness field by field.
    Raises ``ValueError`` (``json.JSONDecodeError`` for syntax errors) — never ``RecursionError``.

    Example:
        >>> loads_bounded("[NaN]")
        Traceback (most recent call last):
        ...
        ValueError: JSON contains NaN, which is not valid JSON (numbers must be finite)
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"JSON is not valid UTF-8 ({exc})") from exc
    if not isinstance(text, str):
        raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON nests {depth} levels deep; at most {max_depth} are allowed")
    try:
        if allow_nonfinite:
            return json.loads(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:  # unreachable after the depth check; kept as a last line of defence
        raise ValueError("JSON nests too deeply to parse") from exc

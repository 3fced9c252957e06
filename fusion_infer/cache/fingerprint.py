"""Exact content fingerprints of weight tensors, computed on the tensors' own device (docs/design.md §4.3).

A cached modulator is valid only while every tensor it was computed from holds the same bits.
Version counters and storage pointers miss writes through ``.data`` (EMA swaps, PEFT merges,
``emb.weight.data[7] += 0.5``) and tensors created under ``torch.inference_mode`` have no
version counter at all, so the only complete check is one over the *values*. This module
computes a 64-bit digest of a tensor's logical contents that is

* **exact for one-element changes** — any change confined to one 64-bit word of the tensor's
  bytes (in particular any change of one element, down to one bit) always changes the digest;
  proof below, property-tested in ``tests/infer/test_fingerprint.py``;
* **layout-independent** — the digest is a function of dtype, shape and the logical element
  values only (a transposed, sliced or offset tensor is read through its strides; a
  non-contiguous tensor is made contiguous first, i.e. its *current* memory is read);
* **deterministic across reduction orders** — the per-word terms are summed modulo 2⁶⁴, an
  associative and commutative operation, so chunking, threads and GPU reduction trees give the
  same bits;
* **cheap** — a handful of elementwise integer kernels per 2 MiB chunk plus one reduction (see
  ``benchmarks/fingerprint_cost.py``: ≈ 5 GB/s on two shared CPU cores), no host sync until the
  caller reads the digests.

Algorithm. The tensor's bytes (logical order, native byte order) are read as 64-bit words
``w_0 … w_{M-1}`` (a trailing partial word is zero-padded; dtype and shape are compared
separately by :func:`storage_identity`). Word ``i`` sits at row ``r = i // 4096`` and column
``c = i % 4096``. With odd column multipliers ``a_c`` (splitmix64 outputs forced odd), row
offsets ``b_r = r · φ`` (φ = 0x9E3779B97F4A7C15) and the splitmix64/Stafford "Mix13" odd
constant ``K = 0xBF58476D1CE4E5B9`` (Steele, Lea & Flood 2014, "Fast splittable pseudorandom
number generators", OOPSLA, §2), all arithmetic modulo 2⁶⁴::

    y_i   = w_i · a_c + b_r
    y_i  ^= y_i >>> 31              (logical shift)
    y_i  *= K
    H     = Σ_i y_i

**One-word property.** For a fixed position the map ``w ↦ y`` is a bijection of ℤ/2⁶⁴: a
product with an odd constant is invertible modulo 2⁶⁴, adding a constant is invertible, and
``y ↦ y ⊕ (y >>> 31)`` is invertible (the top 31 bits pass unchanged and determine the rest).
So if exactly one word changes, exactly one term ``y_i`` changes, to a *different* value, and
``H' − H = y_i' − y_i ≢ 0 (mod 2⁶⁴)``. Changes of several words collide only when their term
changes cancel modulo 2⁶⁴; the nonlinear, position-keyed mix makes that a ≈ 2⁻⁶⁴ event for
any edit that is not constructed against this function (it is not a cryptographic hash and does
not defend against an adversary who controls the weights *and* wants a stale cache).

Example:
    >>> import torch
    >>> from fusion_infer.cache.fingerprint import tensor_digest
    >>> w = torch.randn(64, 32)
    >>> d = tensor_digest(w)
    >>> w.view(torch.int32)[5, 7] ^= 1          # flip the lowest bit of one element
    >>> bool(tensor_digest(w) != d)
    True
    >>> bool(tensor_digest(w.t().contiguous().t()) == tensor_digest(w))   # layout-independent
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["COLUMNS", "digest_tensors", "digests_to_host", "storage_identity", "tensor_digest", "version_of"]

#: Words per row of the position layout (fixes the position weights; chunking never changes H).
COLUMNS = 4096
_PHI = 0x9E3779B97F4A7C15
_K = 0xBF58476D1CE4E5B9
_LOW33 = (1 << 33) - 1
#: Rows per chunk: 64 rows = 2 MiB of words on CPU (temporaries stay in cache), more on GPUs.
_CHUNK_ROWS = {"cpu": 64}
_DEFAULT_CHUNK_ROWS = 4096


def _signed(x: int) -> int:
    """Two's-complement int64 value of an unsigned 64-bit integer."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def _splitmix64(x: int) -> int:
    z = (x + _PHI) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return z ^ (z >> 31)


#: Odd column multipliers a_c (as int64 values), built once on the host.
_COLUMN_MULTIPLIERS = [_signed(_splitmix64(c) | 1) for c in range(COLUMNS)]
_MULT_CACHE: dict[torch.device, Tensor] = {}


def _multipliers(device: torch.device) -> Tensor:
    a = _MULT_CACHE.get(device)
    if a is None:
        a = _MULT_CACHE[device] = torch.tensor(_COLUMN_MULTIPLIERS, dtype=torch.int64, device=device)
    return a


def version_of(t: Tensor) -> int | None:
    """The autograd version counter of ``t``, or None (inference-mode tensors have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def storage_identity(t: Tensor) -> tuple:
    """``(id, data_ptr, storage_offset, strides, shape, dtype, device, version)`` of ``t``.

    Everything about *where and how* the values live, read without touching them (no kernel).
    ``w.data = w.data.t()`` keeps ``data_ptr`` and, for a square matrix, the shape — but not the
    strides; ``.to()``/``assign=True`` loads change the pointer; in-place autograd-visible writes
    bump the version.
    """
    return (
        id(t),
        t.data_ptr(),
        t.storage_offset(),
        t.stride(),
        t.shape,
        t.dtype,
        t.device,
        version_of(t),
    )


def _words(t: Tensor) -> Tensor:
    """The tensor's logical bytes as int64 words (a view when possible; else a fresh copy)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    if flat.numel() == 1 and flat.stride(0) != 1:  # a one-element view may keep any stride
        flat = flat.as_strided((1,), (1,))
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    raw = flat.view(torch.uint8)
    n = raw.numel()
    main = n - n % 8
    if main and raw.storage_offset() % 8 != 0:
        raw = raw.clone()  # an unaligned view (a slice of a packed buffer): aligned copy
    body = raw[:main].view(torch.int64) if main else raw.new_empty(0, dtype=torch.int64)
    if main == n:
        return body
    tail = torch.zeros(8, dtype=torch.uint8, device=raw.device)
    tail[: n - main] = raw[main:]
    return torch.cat([body, tail.view(torch.int64)])


def _mix_sum(words: Tensor, row0: int, a: Tensor) -> Tensor:
    """Σ mix(w) over a block of whole rows starting at row ``row0`` (words.numel() % COLUMNS == 0)."""
    rows = words.numel() // COLUMNS
    w = words.view(rows, COLUMNS)
    b = torch.arange(row0, row0 + rows, dtype=torch.int64, device=w.device).mul_(_signed(_PHI)).unsqueeze(1)
    y = torch.mul(w, a)
    y.add_(b)
    z = torch.bitwise_right_shift(y, 31)
    z.bitwise_and_(_LOW33)  # arithmetic shift + mask = logical shift
    y.bitwise_xor_(z)
    y.mul_(_signed(_K))
    return y.sum()


def tensor_digest(t: Tensor) -> Tensor:
    """64-bit content digest of ``t`` (an int64 0-d tensor on ``t``'s device; see module docs).

    Example:
        >>> a = torch.arange(10.0)
        >>> bool(tensor_digest(a) == tensor_digest(a.clone())), bool(tensor_digest(a) == tensor_digest(a + 1))
        (True, False)
    """
    words = _words(t)
    device = words.device
    a = _multipliers(device)
    total = torch.zeros((), dtype=torch.int64, device=device)
    m = words.numel()
    full_rows = m // COLUMNS
    step = _CHUNK_ROWS.get(device.type, _DEFAULT_CHUNK_ROWS)
    for r in range(0, full_rows, step):
        rows = min(step, full_rows - r)
        total += _mix_sum(words[r * COLUMNS : (r + rows) * COLUMNS], r, a)
    rest = m - full_rows * COLUMNS
    if rest:
        # The last partial row: the same formula on its first `rest` columns.
        y = torch.mul(words[full_rows * COLUMNS :], a[:rest])
        y.add_(_signed(full_rows * _PHI))
        z = torch.bitwise_right_shift(y, 31)
        z.bitwise_and_(_LOW33)
        y.bitwise_xor_(z)
        y.mul_(_signed(_K))
        total += y.sum()
    return total


def digest_tensors(tensors: Sequence[Tensor]) -> dict[torch.device, Tensor]:
    """Digests of many tensors, stacked per device (``{device: int64 [n_on_device]}``).

    Nothing is copied to the host: compare with :func:`digests_to_host` (one sync per device).
    """
    per_device: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        if t.device.type == "meta":  # no data to read: storage identity is all there is
            continue
        per_device.setdefault(t.device, []).append(tensor_digest(t))
    return {dev: torch.stack(ds) for dev, ds in per_device.items()}


def digests_to_host(digests: dict[torch.device, Tensor]) -> tuple:
    """Host tuple of the digests from :func:`digest_tensors` (the one place that syncs)."""
    return tuple((str(dev), tuple(d.tolist())) for dev, d in digests.items())

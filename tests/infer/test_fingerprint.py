"""The exact weight digest: one-bit property, layout independence, reference arithmetic, watcher."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_infer.cache.fingerprint import (
    _COLUMN_MULTIPLIERS,
    _K,
    _PHI,
    COLUMNS,
    _words,
    digest_tensors,
    digests_to_host,
    storage_identity,
    tensor_digest,
)
from fusion_infer.cache.weight_watch import WeightWatcher


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: a second OpenMP thread only adds wake-ups
    yield
    torch.set_num_threads(previous)


INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
            torch.float16: torch.int16, torch.int64: torch.int64, torch.uint8: torch.uint8}


def _reference(t: torch.Tensor) -> int:
    """The digest in pure Python integers modulo 2**64 (the documented formula)."""
    total = 0
    for i, w in enumerate(_words(t).tolist()):
        r, c = divmod(i, COLUMNS)
        y = (w * _COLUMN_MULTIPLIERS[c] + r * _PHI) % 2**64
        y ^= y >> 31
        total = (total + y * _K) % 2**64
    return total - 2**64 if total >= 2**63 else total


@pytest.mark.parametrize("n", [1, 3, COLUMNS, COLUMNS * 2 + 5, COLUMNS * 70 + 1])
def test_torch_digest_equals_the_pure_python_reference(n):
    t = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert tensor_digest(t).item() == _reference(t)


@settings(max_examples=80, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.uint8]),
    rows=st.integers(1, 70),
    cols=st.integers(1, 90),
    layout=st.sampled_from(["contiguous", "transposed", "offset"]),
    data=st.data(),
)
def test_any_one_bit_flip_changes_the_digest(dtype, rows, cols, layout, data):
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    base = (torch.randn(rows + 1, cols + 1, generator=g) * 100).to(dtype)
    if layout == "contiguous":
        t = base[:rows, :cols].contiguous()
    elif layout == "transposed":
        t = base.t().contiguous()[:cols, :rows].t()  # [rows, cols] read through transposed strides
    else:
        t = base.reshape(-1)[1 : 1 + rows * cols].view(rows, cols)  # a storage offset
    d0 = tensor_digest(t)
    i = data.draw(st.integers(0, t.shape[0] - 1))
    j = data.draw(st.integers(0, t.shape[1] - 1))
    bits = t.view(INT_VIEW[dtype])
    nbits = t.element_size() * 8
    b = data.draw(st.integers(0, nbits - 1))
    mask = torch.tensor(1, dtype=torch.int64).bitwise_left_shift(b).to(INT_VIEW[dtype])
    if INT_VIEW[dtype] != torch.uint8 and b == nbits - 1:
        mask = torch.tensor(torch.iinfo(INT_VIEW[dtype]).min, dtype=INT_VIEW[dtype])
    bits[i, j] ^= mask
    assert tensor_digest(t).item() != d0.item()
    bits[i, j] ^= mask
    assert tensor_digest(t).item() == d0.item()


def test_digest_depends_on_values_not_layout():
    a = torch.randn(37, 53)
    b = a.t().contiguous().t()  # same values, transposed storage
    c = torch.empty(2000)[7 : 7 + a.numel()].view(37, 53)
    c.copy_(a)
    assert not b.is_contiguous() and c.storage_offset() == 7
    assert tensor_digest(a) == tensor_digest(b) == tensor_digest(c)
    assert tensor_digest(a) != tensor_digest(a.t().contiguous())  # different values per position


def test_swapping_two_elements_changes_the_digest():
    t = torch.randn(64, 64)
    d = tensor_digest(t)
    t[[3, 40]] = t[[40, 3]]
    assert tensor_digest(t) != d


def test_inference_mode_complex_bool_and_meta_tensors():
    with torch.inference_mode():
        t = torch.randn(10, 10)
    d = tensor_digest(t)
    with torch.inference_mode():
        t[3, 3] += 1.0
    assert tensor_digest(t) != d
    assert tensor_digest(torch.ones(3, dtype=torch.complex64)) != tensor_digest(torch.ones(3, dtype=torch.complex64) * 1j)
    assert tensor_digest(torch.tensor([True, False])) != tensor_digest(torch.tensor([False, True]))
    digests = digest_tensors([torch.empty(3, device="meta"), torch.ones(2)])
    assert list(digests) == [torch.device("cpu")]
    assert len(digests_to_host(digests)[0][1]) == 1


def test_storage_identity_sees_strides_offsets_and_versions():
    w = torch.randn(8, 8)
    ident = storage_identity(w)
    w.data = w.data.t()  # same pointer and shape, other strides
    assert storage_identity(w) != ident
    with torch.inference_mode():
        it = torch.randn(3)
    assert storage_identity(it)[-1] is None  # no version counter


def test_tripwire_reads_live_memory_of_non_contiguous_tensors():
    # The earlier tripwire sampled through reshape(-1), a frozen copy for non-contiguous tensors.
    w = torch.nn.Parameter(torch.randn(64, 32).t().contiguous().t(), requires_grad=False)
    assert not w.is_contiguous()
    watcher = WeightWatcher([w])
    snap = watcher.snapshot()
    w.data.copy_(torch.randn(64, 32))  # dense rewrite through .data: no version bump
    assert watcher.changed(snap) == "content"


def test_watcher_full_check_sees_sparse_edits_the_samples_miss():
    emb = torch.nn.Embedding(1000, 8)
    watcher = WeightWatcher(emb.parameters)
    snap = watcher.snapshot()
    emb.weight.data[7, 1:] += 0.5
    assert watcher.changed(snap) is None  # row 7 holds no sampled element
    assert watcher.changed(snap, full=True) == "digest"
    assert watcher.changed(watcher.snapshot(full=False), full=True) == "digest"  # no digest recorded

"""Model-agnostic cache core: exact keys, bounded LRU store, weight watcher, probe protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion_infer.cache.core import (
    BoundedStore,
    CacheCore,
    WeightWatcher,
    bits_equal,
    dedupe,
    float_bits,
    make_key,
    row_bits,
    row_keys,
    tensor_bits,
)

# ------------------------------------------------------------------------------------ keys


def test_make_key_uses_exact_bits_not_values():
    assert make_key(0.1) == make_key(0.1)
    assert make_key(0.0) != make_key(-0.0)
    assert make_key(torch.tensor([0.0])) != make_key(torch.tensor([-0.0]))
    # same value, different dtype or shape or device string → different keys
    assert make_key(torch.tensor([0.5])) != make_key(torch.tensor([0.5], dtype=torch.float64))
    assert make_key(torch.tensor([0.5])) != make_key(torch.tensor(0.5))
    # neighbouring float32 values (1 ulp apart) are different keys: no rounding
    a = torch.tensor([0.3], dtype=torch.float32)
    b = torch.nextafter(a, torch.tensor([1.0]))
    assert make_key(a) != make_key(b)
    assert make_key(1, "x", None, torch.float16, (1.5, [2])) == make_key(1, "x", None, torch.float16, (1.5, [2]))
    assert make_key(True) != make_key(1)


def test_make_key_rejects_unkeyable_values():
    with pytest.raises(TypeError, match="make_key cannot key a object"):
        make_key(object())


def test_float_bits_roundtrip_distinguishes_signed_zero():
    assert float_bits(1.0) == 0x3FF0000000000000
    assert float_bits(-0.0) != float_bits(0.0)


def test_tensor_and_row_bits_cover_all_dtypes():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.bool):
        t = torch.ones(3, 2, dtype=dtype)
        assert len(tensor_bits(t)) == t.numel() * t.element_size()
        rows = row_bits(t)
        assert len(rows) == 3 and rows[0] == rows[2]


def test_row_keys_per_row_and_conditioning():
    t = torch.tensor([0.25, 0.25, 0.25, 1.0])
    y = torch.tensor([[1.0], [1.0], [2.0], [1.0]])
    ks = row_keys(t, y, prefix=("p",))
    assert ks[0] == ks[1] and ks[0] != ks[2] and ks[0] != ks[3]
    assert all(k[0] == "p" for k in ks)
    # "no conditioning" never collides with a conditioning tensor
    assert row_keys(t, None)[0] != row_keys(t, torch.zeros(4, 1))[0]
    # a t-only key would merge rows 0 and 2, which differ in conditioning
    assert row_keys(t)[0] == row_keys(t)[2]


def test_row_keys_rejects_bad_input():
    with pytest.raises(ValueError, match="batch size"):
        row_keys(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="0-d"):
        row_keys(torch.tensor(1.0))
    with pytest.raises(TypeError, match="column 0"):
        row_keys([1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        row_keys(None)


def test_dedupe_first_seen_order_and_inverse():
    distinct, inverse = dedupe(["b", "a", "b", "c", "a"])
    assert distinct == ["b", "a", "c"]
    assert inverse == [0, 1, 0, 2, 1]
    assert [distinct[i] for i in inverse] == ["b", "a", "b", "c", "a"]


# ------------------------------------------------------------------------------------ store


def test_store_lru_eviction_and_stats():
    s = BoundedStore(max_entries=2)
    s.put("a", torch.zeros(4))
    s.put("b", torch.zeros(4))
    assert s.get("a") is not None  # a becomes most recent
    s.put("c", torch.zeros(4))  # evicts b (least recently used)
    assert "b" not in s and "a" in s and "c" in s
    assert s.get("b") is None
    st = s.stats
    assert (st.hits, st.misses, st.evictions, st.entries, st.bytes) == (1, 1, 1, 2, 32)
    assert st.hit_rate == 0.5
    assert st.as_dict()["hit_rate"] == 0.5


def test_store_byte_budget_and_oversized_values():
    s = BoundedStore(max_entries=None, max_bytes=40)
    assert s.put("a", torch.zeros(4))  # 16 bytes
    assert s.put("b", (torch.zeros(2), torch.zeros(2)))  # 16 bytes
    assert s.put("c", torch.zeros(4))  # 48 > 40 → evict a
    assert "a" not in s and s.stats.bytes == 32
    assert not s.put("huge", torch.zeros(11))  # 44 bytes alone exceed the budget
    assert "huge" not in s
    s.put("b", torch.zeros(1))  # replacing a key re-accounts its bytes
    assert s.stats.bytes == 20
    s.clear()
    assert len(s) == 0 and s.stats.bytes == 0 and s.stats.entries == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_store_rejects_bad_limits(bad):
    with pytest.raises(ValueError, match="max_entries"):
        BoundedStore(max_entries=bad)
    with pytest.raises(ValueError, match="max_bytes"):
        BoundedStore(max_bytes=bad)


# ------------------------------------------------------------------------------------ watcher


def _lin() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(8, 8)


def test_watcher_unchanged_weights_report_nothing_even_with_nan():
    lin = _lin()
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    w = WeightWatcher(lin)
    snap = w.snapshot()
    assert w.changed(snap) is None


def test_watcher_catches_each_kind_of_change():
    lin = _lin()
    w = WeightWatcher(lin.parameters)

    snap = w.snapshot()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    lin(torch.randn(2, 8)).sum().backward()
    opt.step()
    assert w.changed(snap) == "fingerprint"  # in-place step bumps _version

    snap = w.snapshot()
    lin.load_state_dict(_lin().state_dict())  # in-place copy: same data_ptr, new _version
    assert w.changed(snap) == "fingerprint"

    snap = w.snapshot()
    ptr, ver = lin.weight.data_ptr(), lin.weight._version
    lin.weight.data.copy_(torch.randn(8, 8))  # EMA-style swap: no version bump, same pointer
    assert (lin.weight.data_ptr(), lin.weight._version) == (ptr, ver)
    assert w.changed(snap) == "content"

    snap = w.snapshot()
    lin.to(torch.float64)
    assert w.changed(snap) == "fingerprint"


def test_watcher_tripwire_can_be_disabled_and_then_misses_data_writes():
    lin = _lin()
    w = WeightWatcher(lin, samples_per_tensor=0)
    snap = w.snapshot()
    lin.weight.data.copy_(torch.randn(8, 8))
    assert w.changed(snap) is None  # documents why the probe exists


def test_watcher_callable_sees_replaced_modules():
    holder = nn.Sequential(_lin())
    w = WeightWatcher(lambda: list(holder.parameters()))
    snap = w.snapshot()
    holder[0] = _lin()  # same values, new parameter objects
    assert w.changed(snap) == "fingerprint"


def test_watcher_rejects_bad_arguments():
    with pytest.raises(ValueError, match="samples_per_tensor"):
        WeightWatcher([], samples_per_tensor=-1)
    with pytest.raises(TypeError, match="watched item 0"):
        WeightWatcher([1.0]).snapshot()


# ------------------------------------------------------------------------------------ core


def test_bits_equal_semantics():
    nan = torch.tensor([float("nan"), 1.0])
    assert bits_equal(nan, nan.clone())
    assert not bits_equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not bits_equal(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert bits_equal((torch.ones(1), [torch.zeros(2)]), (torch.ones(1), [torch.zeros(2)]))
    assert not bits_equal((torch.ones(1),), (torch.ones(1), torch.ones(1)))


class _LinCache:
    """Minimal glue over CacheCore used to test the protocol."""

    def __init__(self, lin: nn.Linear, **kw):
        self.lin = lin
        self.core = CacheCore(lin.parameters, recompute_probe=self._compute, **kw)

    def _compute(self, x):
        with torch.no_grad():
            return self.lin(x)

    def __call__(self, x):
        self.core.validate()
        key = make_key(x)
        y = self.core.get(key)
        if y is None:
            y = self._compute(x)
            self.core.put(key, y)
            if not self.core.has_probe:
                self.core.expect_probe(x, y)
        return y


def test_core_hits_and_invalidates_on_data_write():
    c = _LinCache(_lin())
    x = torch.randn(1, 8)
    y0 = c(x)
    assert torch.equal(c(x), y0) and c.core.stats.hits == 1
    c.lin.weight.data.add_(1.0)
    y1 = c(x)
    assert torch.equal(y1, c._compute(x)) and not torch.equal(y1, y0)
    assert c.core.stats.invalidations_by_reason["content"] == 1


def test_core_render_digest_catches_change_the_cheap_checks_miss():
    # tripwire off + a `.data` write = invisible to identity and tripwire; the digest sees it
    c = _LinCache(_lin(), samples_per_tensor=0, probe_every=None)
    x = torch.randn(1, 8)
    c(x)
    c.lin.weight.data[3, 5] += 1.0
    assert not torch.equal(c(x), c._compute(x))  # inside a render: stale until the next render
    with c.core.render():  # render boundary → exact digests → invalidation
        y = c(x)
    assert torch.equal(y, c._compute(x))
    assert c.core.stats.invalidations_by_reason["digest"] == 1


def test_core_verify_lookup_catches_change_at_the_next_lookup():
    c = _LinCache(_lin(), samples_per_tensor=0, probe_every=None, verify="lookup")
    x = torch.randn(1, 8)
    c(x)
    c.lin.weight.data[3, 5] += 1.0
    assert torch.equal(c(x), c._compute(x))
    assert c.core.stats.invalidations_by_reason["digest"] == 1


def test_core_probe_catches_state_outside_the_watched_tensors():
    lin = _lin()
    scale = [1.0]

    def compute(x):
        with torch.no_grad():
            return lin(x) * scale[0]

    core = CacheCore([], recompute_probe=compute, probe_every=None)  # watches nothing

    def cached(x):
        core.validate()
        y = core.get(make_key(x))
        if y is None:
            y = compute(x)
            core.put(make_key(x), y)
            core.expect_probe(x, y)
        return y

    x = torch.randn(1, 8)
    cached(x)
    scale[0] = 2.0
    with core.render():
        assert torch.equal(cached(x), compute(x))
    assert core.stats.invalidations_by_reason["probe"] == 1 and core.stats.probe_failures == 1


def test_core_probe_every_and_request_probe():
    c = _LinCache(_lin(), samples_per_tensor=0, probe_every=3)
    x = torch.randn(1, 8)
    c(x)
    c.lin.weight.data[0, 0] += 1.0
    c(x)  # 2nd validate: nothing due yet → stale value served
    y = c(x)  # 3rd validate compares the exact digests
    assert torch.equal(y, c._compute(x))
    assert c.core.stats.verifications == 1
    c.lin.weight.data[0, 1] += 1.0
    c.core.request_probe()
    assert torch.equal(c(x), c._compute(x))
    assert c.core.stats.invalidations_by_reason["digest"] == 2


def test_core_confirm_probe_piggyback():
    c = _LinCache(_lin())
    x = torch.randn(1, 8)
    c(x)
    assert c.core.confirm_probe(c._compute(c.core.probe_inputs))
    assert not c.core.confirm_probe(c._compute(c.core.probe_inputs) + 1)
    assert len(c.core) == 0 and not c.core.has_probe
    gen = c.core.generation
    c.core.invalidate()
    assert c.core.generation == gen + 1


def test_core_weights_swapped_context():
    c = _LinCache(_lin(), samples_per_tensor=0, probe_every=None)
    x = torch.randn(1, 8)
    c(x)
    with c.core.weights_swapped():
        c.lin.weight.data.mul_(-1.0)
    assert len(c.core) == 0
    assert torch.equal(c(x), c._compute(x))


def test_core_rejects_bad_arguments():
    with pytest.raises(ValueError, match="probe_every"):
        CacheCore([], probe_every=0)
    with pytest.raises(TypeError, match="recompute_probe"):
        CacheCore([], recompute_probe=3)
    with pytest.raises(ValueError, match="verify must be one of"):
        CacheCore([], verify="sometimes")

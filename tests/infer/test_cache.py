"""TimeConditioningCache: bit-exact outputs, exact keys, mixed batches, bounds, stats, lifecycle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_infer import ControlHead, TimeConditioningCache

from .heads import latents, small_head, uncached


def frozen(seed: int = 0, **kw) -> ControlHead:
    return small_head(seed, **kw).requires_grad_(False)


def test_cached_outputs_equal_uncached_bit_for_bit():
    head = frozen()
    x = latents(4)
    ts = [0.0, 0.37, 1.0, torch.tensor([0.1, 0.9, 0.1, 0.0])]
    refs = [head(x, t) for t in ts]
    with TimeConditioningCache(head) as cache:
        for _ in range(2):  # first pass misses, second pass hits
            for t, ref in zip(ts, refs):
                assert torch.equal(head(x, t), ref)
    assert cache.stats.hits > 0 and cache.stats.misses == 5  # distinct t: 0, .37, 1, .1, .9


@settings(max_examples=30, deadline=None)
@given(
    pool=st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=6, unique=True),
    picks=st.lists(st.integers(0, 5), min_size=1, max_size=6),
    warm_mask=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_property_mixed_batches_equal_uncached(pool, picks, warm_mask):
    """Random timestep sets, random mixed batches, random partial warm-up → identical bits."""
    head = _HEAD
    t = torch.tensor([pool[i % len(pool)] for i in picks])
    x = latents(len(picks), seq=8)
    ref = uncached(head, x, t)
    cache = TimeConditioningCache(head, max_entries=8)
    warm = [v for v, w in zip(pool, warm_mask) if w]
    if warm:
        cache.warm(torch.tensor(warm))
    with cache:
        assert torch.equal(head(x, t), ref)
        assert torch.equal(head(x, t), ref)
    assert cache.stats.entries <= 8


_HEAD = frozen(3)


def test_keys_use_exact_bits_no_rounding():
    head = frozen()
    x = latents(1)
    a = torch.tensor([0.3])
    b = torch.nextafter(a, torch.tensor([1.0]))  # one float32 ulp away
    with TimeConditioningCache(head) as cache:
        ya, yb = head(x, a), head(x, b)
    assert cache.stats.entries == 2
    assert torch.equal(ya, uncached(head, x, a)) and torch.equal(yb, uncached(head, x, b))
    # a float64 timestep is keyed by the float32 bits the embedding actually consumes
    with cache:
        head(x, torch.tensor([0.3], dtype=torch.float64))
    assert cache.stats.entries == 2
    # -0.0 is canonicalised to +0.0 before keying and embedding
    with cache:
        y0 = head(x, 0.0)
        yneg = head(x, -0.0)
    assert torch.equal(y0, yneg) and cache.stats.entries == 3


def test_conditioning_is_part_of_the_key():
    head = small_head(cond_dim=4).requires_grad_(False)
    x = latents(3)
    cond = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0]])
    t = torch.tensor([0.5, 0.5, 0.5])
    ref = uncached(head, x, t, cond)
    with TimeConditioningCache(head) as cache:
        out = head(x, t, cond=cond)
        out2 = head(x, t, cond=cond.flip(0))
    assert torch.equal(out, ref)
    assert torch.equal(out2, uncached(head, x, t, cond.flip(0)))
    assert cache.stats.entries == 2  # same t, two distinct conditions
    assert not torch.equal(out[0], out[1])  # a t-only key would have replayed row 0 for row 1


def test_warm_is_batched_and_does_not_touch_hit_counters():
    head = frozen()
    schedule = torch.linspace(1.0, 0.0, 41)
    cache = TimeConditioningCache(head, max_entries=64)
    assert cache.warm(schedule) == 41
    assert cache.warm(schedule) == 0
    assert (cache.stats.hits, cache.stats.misses, cache.stats.entries) == (0, 0, 41)
    x = latents(1)
    with cache:
        for t in schedule:
            assert torch.equal(head(x, t), uncached(head, x, t))
    assert (cache.stats.hits, cache.stats.misses) == (41, 0)
    assert cache.stats.hit_rate == 1.0
    with pytest.raises(ValueError, match="max_entries=8"):
        TimeConditioningCache(head, max_entries=8).warm(schedule)


def test_stats_bytes_and_bounds():
    head = frozen()
    width = head.config.modulator_width
    cache = TimeConditioningCache(head, max_entries=3)
    cache.warm([0.1, 0.2, 0.3])
    assert cache.stats.bytes == 3 * width * 4
    x = latents(1)
    with cache:
        head(x, 0.4)  # evicts the least recently used row (0.1)
        assert cache.stats.entries == 3 and cache.stats.evictions == 1
        assert torch.equal(head(x, 0.1), uncached(head, x, 0.1))
    by_bytes = TimeConditioningCache(head, max_entries=None, max_bytes=2 * width * 4)
    by_bytes.warm([0.1, 0.2])
    with by_bytes:
        head(x, 0.3)
    assert by_bytes.stats.entries == 2 and by_bytes.stats.bytes == 2 * width * 4
    d = cache.stats.as_dict()
    assert set(d) >= {"hits", "misses", "entries", "bytes", "hit_rate"}
    assert "entries=3" in repr(cache)


def test_attach_detach_and_exclusive():
    head = frozen()
    a, b = TimeConditioningCache(head), TimeConditioningCache(head)
    a.attach()
    assert a.attached and head.modulator_provider is a
    with pytest.raises(RuntimeError, match="another TimeConditioningCache"):
        b.attach()
    a.detach()
    assert not a.attached and head.modulator_provider is None
    x = latents(1)
    head(x, 0.5)
    assert a.stats.misses == 0  # detached: not consulted
    with b:
        head(x, 0.5)
    assert b.stats.misses == 1 and not b.attached


def test_modulators_api_and_compiled_wrapper_unwrapped():
    head = frozen()
    cache = TimeConditioningCache(torch.compile(head))  # unwrapped, nothing compiled here
    assert cache.model is head
    m1, m2 = cache.modulators([0.2, 0.7, 0.2]), head.compute_modulators([0.2, 0.7, 0.2])
    assert all(torch.equal(a, b) for a, b in zip(m1.blocks, m2.blocks))
    assert torch.equal(m1.final, m2.final)
    assert cache.stats.entries == 2


def test_cached_rows_computed_in_inference_mode_work_with_autograd_later():
    head = frozen()
    cache = TimeConditioningCache(head)
    with torch.inference_mode():
        cache.warm([0.0, 0.5])
    x = latents(2).requires_grad_(True)
    with cache:
        head(x, 0.5).square().sum().backward()
    g_cached = x.grad.clone()
    x.grad = None
    uncached(head, x, 0.5).square().sum().backward()
    assert torch.equal(g_cached, x.grad)
    assert cache.stats.hits == 1


def test_bad_arguments():
    with pytest.raises(TypeError, match="ControlHead-like"):
        TimeConditioningCache(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="on_grad must be one of"):
        TimeConditioningCache(frozen(), on_grad="ignore")
    with pytest.raises(ValueError, match="max_entries"):
        TimeConditioningCache(frozen(), max_entries=0)
    with pytest.raises(ValueError, match="probe_every"):
        TimeConditioningCache(frozen(), probe_every=-1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TimeConditioningCache(frozen()).warm([0.5, 2.0])

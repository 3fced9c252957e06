"""Gradients (guidance and training) and torch.compile with the cache attached."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from fusion_infer import TimeConditioningCache

from .heads import latents, small_head

SCHEDULE = torch.linspace(1.0, 0.025, 40)


def _guidance_grads(head, x0, steps):
    """The LatCH guidance pattern: per step one call at t_curr and 4 calls at t = 0, each
    differentiated w.r.t. its input."""
    grads = []
    target = torch.zeros(x0.shape[0], head.config.out_channels, x0.shape[2])
    for t in steps:
        for tv in [t] + [torch.tensor(0.0)] * 4:
            x = x0.clone().requires_grad_(True)
            loss = (head(x, tv) - target).square().sum()
            (g,) = torch.autograd.grad(loss, x)
            grads.append(g)
    return grads


def test_guidance_gradients_wrt_input_identical_with_and_without_cache():
    head = small_head(2).requires_grad_(False)
    x0 = latents(2, seed=3)
    ref = _guidance_grads(head, x0, SCHEDULE[:3])
    with TimeConditioningCache(head) as cache:
        got = _guidance_grads(head, x0, SCHEDULE[:3])
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    assert cache.stats.misses == 4 and cache.stats.hits == 11  # t=0 once, three t_curr


def _train(head, steps=3, seed=0):
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 8, 16, generator=g)
        t = torch.rand(4, generator=g)
        y = torch.randn(4, 3, 16, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(head(x, t), y).backward()
        opt.step()


def test_training_with_cache_attached_trains_modulators_exactly_like_without():
    a = small_head(4)
    b = copy.deepcopy(a)
    start = [p.detach().clone() for p in a.modulator_parameters()]
    cache = TimeConditioningCache(a).attach()
    _train(a)
    _train(b)
    assert cache.stats.bypassed == 3 and cache.stats.hits == 0
    for pa, pb, p0 in zip(a.modulator_parameters(), b.modulator_parameters(), start):
        assert torch.equal(pa, pb)  # same updates as uncached training
        assert not torch.equal(pa, p0)  # and they did move: not frozen


def test_training_with_cache_can_raise_instead():
    head = small_head(4)
    TimeConditioningCache(head, on_grad="raise").attach()
    with pytest.raises(RuntimeError, match="silently freeze"):
        head(latents(1), 0.5)
    with torch.no_grad():  # inference with the same cache is fine
        head(latents(1), 0.5)


def test_frozen_modulators_with_trainable_body_use_the_cache():
    a = small_head(5)
    for p in a.modulator_parameters():
        p.requires_grad_(False)
    b = copy.deepcopy(a)
    cache = TimeConditioningCache(a).attach()
    _train(a)
    _train(b)
    assert cache.stats.bypassed == 0 and cache.stats.misses == 12
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def _compile_schedule(backend):
    head = small_head(6).requires_grad_(False)
    x = latents(2, seed=8)
    eager = {}
    for t in list(SCHEDULE) + [torch.tensor(0.0)]:
        eager[float(t)] = head(x, t)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(head, backend=backend)
    cache = TimeConditioningCache(compiled).attach()
    graphs_after_first_step = None
    outs = []
    for i, t in enumerate(SCHEDULE):
        for tv in [t] + [torch.tensor(0.0)] * 4:
            outs.append((compiled(x, tv), eager[float(tv)]))
        if i == 0:
            graphs_after_first_step = counters["stats"]["unique_graphs"]
    graphs = counters["stats"]["unique_graphs"]
    cached_out = compiled(x, SCHEDULE[5])
    cache.detach()
    uncached_out = compiled(x, SCHEDULE[5])
    return graphs_after_first_step, graphs, counters["stats"]["unique_graphs"], outs, cached_out, uncached_out, cache


def test_compile_no_recompile_per_timestep_and_equal_to_eager():
    first, after40, after_detach, outs, cached, uncached_out, cache = _compile_schedule("aot_eager")
    assert first >= 1 and after40 == first and after_detach == first  # no graph per timestep
    assert all(torch.equal(a, b) for a, b in outs)  # aot_eager runs the eager kernels
    assert torch.equal(cached, uncached_out)
    assert cache.stats.misses == 41 and cache.stats.hits == 160


@pytest.mark.slow
def test_compile_inductor_no_recompile_and_cached_equals_uncached():
    first, after40, after_detach, outs, cached, uncached_out, _ = _compile_schedule("inductor")
    assert after40 == first and after_detach == first
    for a, b in outs:  # generated kernels fuse differently from eager: close, not bit-equal
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the modulator path runs eagerly in both cases, so the cache changes no bits under compile
    assert torch.equal(cached, uncached_out)

"""Never-stale test matrix (docs/design.md §4.3): after each weight change the cached head equals a fresh evaluation.

Every case first checks that the change really changes the outputs (otherwise the test could
not fail), then that the cached outputs equal an uncached evaluation bit for bit, and records
which mechanism caught it (``stats.invalidations_by_reason``).
"""

from __future__ import annotations

import copy

import pytest
import schedulefree
import torch

from fusion_infer import TimeConditioningCache

from .heads import latents, randomize_, small_head, uncached

TS = [torch.tensor([0.0, 0.0]), torch.tensor([0.8, 0.0]), torch.tensor([0.35, 0.8])]


def _outputs(head, x):
    with torch.no_grad():
        return [head(x, t) for t in TS]


def _assert_fresh(head, x, before=None):
    with torch.no_grad():
        now = [head(x, t) for t in TS]
        for t, y in zip(TS, now):
            assert torch.equal(y, uncached(head, x, t))
    if before is not None:  # the change must be visible, or the test could not fail
        assert any(not torch.equal(a, b) for a, b in zip(now, before))
    return now


@pytest.fixture
def setup():
    head = small_head(11)
    cache = TimeConditioningCache(head).attach()
    x = latents(2, seed=5)
    before = _outputs(head, x)  # table filled
    _outputs(head, x)
    assert cache.stats.hits > 0
    yield head, cache, x, before
    cache.detach()


def _train_step(head, opt, x):
    opt.zero_grad()
    head(x, torch.tensor([0.3, 0.6])).square().mean().backward()
    opt.step()


def test_optimizer_step(setup):
    head, cache, x, before = setup
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    _train_step(head, opt, x)  # grad-requiring weights + grad enabled → bypassed, not cached
    assert cache.stats.bypassed == 1
    _assert_fresh(head, x, before)
    assert cache.stats.invalidations_by_reason["fingerprint"] >= 1


def test_load_state_dict_in_place(setup):
    head, cache, x, before = setup
    ptrs = [p.data_ptr() for p in head.parameters()]
    head.load_state_dict(randomize_(copy.deepcopy(head), seed=99).state_dict())
    assert ptrs == [p.data_ptr() for p in head.parameters()]  # in place: same storage
    _assert_fresh(head, x, before)
    assert cache.stats.invalidations_by_reason["fingerprint"] == 1


def test_load_state_dict_assign(setup):
    head, cache, x, before = setup
    head.load_state_dict(randomize_(copy.deepcopy(head), seed=98).state_dict(), assign=True)
    _assert_fresh(head, x, before)
    assert cache.stats.invalidations_by_reason["fingerprint"] == 1


def test_ema_swap_through_data_copy(setup):
    """ema_pytorch / diffusers EMAModel.copy_to: `p.data.copy_(ema)`: no _version bump."""
    head, cache, x, before = setup
    ema = [p.detach().clone() + 0.01 * torch.randn_like(p) for p in head.parameters()]
    backup = [p.detach().clone() for p in head.parameters()]
    versions = [p._version for p in head.parameters()]
    with torch.no_grad():
        for p, e in zip(head.parameters(), ema):
            p.data.copy_(e)
    assert versions == [p._version for p in head.parameters()]  # fingerprint cannot see it
    _assert_fresh(head, x, before)
    assert cache.stats.invalidations_by_reason["content"] == 1
    with torch.no_grad():  # restore
        for p, b in zip(head.parameters(), backup):
            p.data.copy_(b)
    after = _assert_fresh(head, x)
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert cache.stats.invalidations_by_reason["content"] == 2


def test_schedule_free_eval_train_swaps(setup):
    head, cache, x, before = setup
    opt = schedulefree.AdamWScheduleFree(head.parameters(), lr=1e-2, warmup_steps=0)
    opt.train()
    for _ in range(3):
        _train_step(head, opt, x)
    y_train = _assert_fresh(head, x, before)
    opt.eval()  # parameters y → x
    y_eval = _assert_fresh(head, x, y_train)
    opt.train()  # x → y
    _assert_fresh(head, x, y_eval)
    assert cache.stats.invalidations >= 3


def test_dtype_round_trip(setup):
    head, cache, x, before = setup
    head.to(torch.float64)
    x64 = x.double()
    with torch.no_grad():
        for t in TS:
            y = head(x64, t)
            assert y.dtype == torch.float64
            assert torch.equal(y, uncached(head, x64, t))
    head.to(torch.float32)
    after = _assert_fresh(head, x)
    assert all(torch.equal(a, b) for a, b in zip(after, before))  # f32→f64→f32 is exact
    assert cache.stats.invalidations_by_reason["fingerprint"] == 2


def test_requires_grad_changes(setup):
    head, cache, x, before = setup
    head.requires_grad_(False)
    hits = cache.stats.hits
    assert all(torch.equal(a, b) for a, b in zip([head(x, t) for t in TS], before))
    assert cache.stats.hits > hits  # grad mode on but nothing requires grad → cached
    head.requires_grad_(True)
    bypassed = cache.stats.bypassed
    out = head(x, TS[1])
    assert cache.stats.bypassed == bypassed + 1  # would train modulators → computed with autograd
    assert torch.equal(out, before[1]) and out.requires_grad
    head.blocks[0].adaLN_mod.requires_grad_(False)
    head(x, TS[1])
    assert cache.stats.bypassed == bypassed + 2  # other modulator weights still require grad


def test_explicit_invalidate_for_changes_no_check_can_see():
    head = small_head(11)
    cache = TimeConditioningCache(head, samples_per_tensor=0, probe_every=None).attach()
    x = latents(2, seed=5)
    before = _outputs(head, x)
    head.blocks[1].adaLN_mod[1].weight.data[5, 3] += 0.5  # .data: no version bump, tripwire off
    with torch.no_grad():
        stale = [head(x, t) for t in TS]
    assert all(torch.equal(a, b) for a, b in zip(stale, before))  # the documented residual risk
    cache.invalidate()
    _assert_fresh(head, x, before)
    assert cache.stats.invalidations_by_reason["explicit"] == 1


def test_render_digest_catches_sparse_data_edit():
    head = small_head(11)
    cache = TimeConditioningCache(head, samples_per_tensor=0, probe_every=None).attach()
    x = latents(2, seed=5)
    before = _outputs(head, x)
    head.final.adaLN_mod[1].weight.data[7, 1] -= 0.5
    with cache.render():
        _assert_fresh(head, x, before)
    assert cache.stats.invalidations_by_reason["digest"] == 1


def test_periodic_digest():
    head = small_head(11)
    cache = TimeConditioningCache(head, samples_per_tensor=0, probe_every=2).attach()
    x = latents(2, seed=5)
    before = _outputs(head, x)  # 3 lookups: the probe last ran on the 3rd
    head.t_embedder.mlp[0].weight.data[0, 17] += 0.5  # a sine column: invisible at t = 0
    with torch.no_grad():
        stale = head(x, TS[1])  # 1st lookup since the probe: not due yet
        assert torch.equal(stale, before[1])
        fresh = head(x, TS[1])  # 2nd lookup: exact digests compared
    assert torch.equal(fresh, uncached(head, x, TS[1])) and not torch.equal(fresh, stale)
    assert cache.stats.invalidations_by_reason["digest"] == 1
    _assert_fresh(head, x, before)


def test_miss_computation_probes_for_free_and_refreshes_hits_in_the_same_batch(setup):
    head, cache, x, before = setup
    w = head.blocks[0].adaLN_mod[1].weight
    w.data.view(-1)[1] += 0.5  # an element the tripwire does not sample
    t_mixed = torch.tensor([0.8, 0.123])  # 0.8 is cached (stale), 0.123 is a miss
    with torch.no_grad():
        y = head(x, t_mixed)
        assert torch.equal(y, uncached(head, x, t_mixed))
    assert cache.stats.invalidations_by_reason["probe"] == 1
    assert cache.stats.invalidations_by_reason["content"] == 0
    _assert_fresh(head, x, before)


def test_digest_on_first_lookup_after_attach():
    head = small_head(11)
    cache = TimeConditioningCache(head, samples_per_tensor=0, probe_every=None).attach()
    x = latents(2, seed=5)
    before = _outputs(head, x)
    cache.detach()
    head.blocks[0].adaLN_mod[1].bias.data[2] += 0.5
    cache.attach()
    _assert_fresh(head, x, before)
    assert cache.stats.invalidations_by_reason["digest"] == 1


def test_weights_swapped_context(setup):
    head, cache, x, before = setup
    backup = copy.deepcopy(head.state_dict())
    with cache.weights_swapped():
        for p in head.parameters():
            p.data.mul_(0.5)
    _assert_fresh(head, x, before)
    with cache.weights_swapped():
        for p, (_, b) in zip(head.parameters(), backup.items()):
            p.data.copy_(b)
    after = _assert_fresh(head, x)
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_diffusers_ema_model_copy_to_and_restore(setup):
    """The real diffusers EMAModel (foreach `_foreach_copy_` on `.data`)."""
    from diffusers.training_utils import EMAModel

    head, cache, x, before = setup
    ema = EMAModel(head.parameters(), decay=0.5, foreach=True)
    _train_step(head, torch.optim.AdamW(head.parameters(), lr=1e-2), x)
    ema.step(head.parameters())
    trained = _assert_fresh(head, x, before)
    ema.store(head.parameters())
    ema.copy_to(head.parameters())
    _assert_fresh(head, x, trained)
    ema.restore(head.parameters())
    restored = _assert_fresh(head, x)
    assert all(torch.equal(a, b) for a, b in zip(restored, trained))
    assert cache.stats.invalidations_by_reason["content"] == 2

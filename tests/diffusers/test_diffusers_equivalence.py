"""Bit-equality of cached vs uncached outputs for every supported family, and key completeness."""

from __future__ import annotations

import pytest
import torch
from cache_checks import (
    assert_fill_and_replay_exact,
    assert_miss_and_exact,
    one_cached_entry,
    scaled,
)
from diffusers_tiny_models import CASE_BY_NAME, CASES, build, forward
from fusion_diffusers import (
    ModulatorCacheConfig,
    apply_modulator_cache,
    compute_modulators,
    get_modulator_cache,
    remove_modulator_cache,
    stats,
    verify_equivalence,
)

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cached_outputs_bit_equal_uncached(case, batch, dtype):
    model = build(case, dtype)
    steps = [case.inputs(batch, dtype, seed=s, t=t) for s, t in ((0, case.t_hi), (1, case.t_lo))]
    cache = assert_fill_and_replay_exact(model, steps, forward)
    assert cache.stats.misses == len(steps) and cache.stats.hits == len(steps)
    remove_modulator_cache(model)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replayed_modulators_are_really_used(case):
    """A wrong entry in the table must change the output (otherwise equality proves nothing)."""
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    with one_cached_entry(model, x, forward) as (reference, values):
        for path, v in list(values.items()):
            values[path] = scaled(v)
        assert not torch.equal(forward(model, x), reference)


def _perturbations(case_name, x):
    """(name, modified inputs) for every conditioning the modulators depend on."""
    out = []
    t = x["timestep"]
    bumped = torch.nextafter(t.float(), torch.full_like(t.float(), -1e9)).to(t.dtype) if t.is_floating_point() else t - 1
    out.append(("timestep_one_ulp", {**x, "timestep": bumped}))
    if case_name == "dit":
        out.append(("class_labels", {**x, "class_labels": x["class_labels"].flip(0)}))
    if case_name == "pixart_alpha":
        ack = x["added_cond_kwargs"]
        out.append(("resolution", {**x, "added_cond_kwargs": {**ack, "resolution": ack["resolution"] * 2}}))
        out.append(("aspect_ratio", {**x, "added_cond_kwargs": {**ack, "aspect_ratio": ack["aspect_ratio"] + 0.25}}))
    if case_name.startswith(("sd3", "flux")):
        p = x["pooled_projections"]
        out.append(("pooled_projections", {**x, "pooled_projections": p.flip(0)}))
        one = p.clone()
        one[0, 0] = torch.nextafter(one[0, 0], torch.tensor(10.0, dtype=one.dtype))
        out.append(("pooled_one_ulp", {**x, "pooled_projections": one}))
    if case_name in ("flux_dev", "sana_sprint"):
        out.append(("guidance", {**x, "guidance": x["guidance"] + 1.0}))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_changing_any_conditioning_never_replays_a_stale_entry(case):
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    cache = apply_modulator_cache(model)
    forward(model, x)
    for name, changed in _perturbations(case.name, x):
        assert_miss_and_exact(cache, model, changed, forward, name)
    if case.name == "auraflow":
        # AuraFlow's modulators depend on t only: another prompt must *hit* and stay exact.
        hits = cache.stats.hits
        other = {**x, "encoder_hidden_states": x["encoder_hidden_states"] * -1}
        with cache.disabled():
            expected = forward(model, other)
        assert torch.equal(forward(model, other), expected)
        assert cache.stats.hits == hits + 1
    if case.name == "pixart_sigma":
        # Σ ignores resolution/aspect: changing them must *hit* (t-only reuse across sizes).
        ack = x["added_cond_kwargs"]
        hits = cache.stats.hits
        forward(model, {**x, "added_cond_kwargs": {**ack, "resolution": ack["resolution"] * 2}})
        assert cache.stats.hits == hits + 1


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compute_modulators_matches_forward(case):
    """The slots armed with compute_modulators' output reproduce the uncached forward."""
    from fusion_diffusers.families import resolve_family
    from fusion_diffusers.slots import SlotTable

    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_lo)
    reference = forward(model, x)
    fam = resolve_family(model)
    cond = {k: x.get(k) for k in fam.conditioning if k in x}
    mods = compute_modulators(model, x["timestep"], hidden_dtype=torch.float32, **cond)
    table = SlotTable.acquire(model, "test")
    previous = table.arm(mods.values)
    try:
        assert torch.equal(forward(model, x), reference)
    finally:
        table.restore(previous)
        table.release("test")


def test_compute_modulators_rejects_bad_conditioning():
    model = build(CASE_BY_NAME["dit"])
    with pytest.raises(TypeError, match="pooled_projections"):
        compute_modulators(model, torch.tensor([1]), pooled_projections=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="class_labels"):
        compute_modulators(model, torch.tensor([1]))
    with pytest.raises(TypeError, match="timestep"):
        compute_modulators(model, 5, class_labels=torch.tensor([1]))


def test_bounded_store_evicts_and_reports_bytes():
    case = CASE_BY_NAME["dit"]
    model = build(case)
    cache = apply_modulator_cache(model, ModulatorCacheConfig(max_entries=2))
    for t in (900, 800, 700):
        forward(model, case.inputs(2, torch.float32, t=t))
    s = stats(model)
    assert s.entries == 2 and s.evictions == 1 and s.bytes > 0
    assert cache.stats is s


def test_apply_twice_and_bad_config_are_clear_errors():
    model = build(CASE_BY_NAME["dit"])
    with pytest.raises(TypeError, match="ModulatorCacheConfig"):
        apply_modulator_cache(model, {"max_entries": 3})
    apply_modulator_cache(model)
    with pytest.raises(ValueError, match="already applied"):
        apply_modulator_cache(model)
    remove_modulator_cache(model)
    with pytest.raises(ValueError, match="no modulator cache"):
        stats(model)
    with pytest.raises(ValueError, match="probe"):
        ModulatorCacheConfig(probe="sometimes")
    with pytest.raises(ValueError, match="max_entries"):
        ModulatorCacheConfig(max_entries=0)


def test_remove_restores_the_plain_model():
    case = CASE_BY_NAME["flux_dev"]
    model = build(case)
    apply_modulator_cache(model)
    remove_modulator_cache(model)
    assert get_modulator_cache(model) is None
    for m in model.modules():
        registry = getattr(m, "_diffusers_hook", None)
        assert registry is None or not registry.hooks, type(m).__name__


def test_training_mode_and_grad_bypass_the_cache():
    case = CASE_BY_NAME["dit"]
    model = build(case)
    cache = apply_modulator_cache(model)
    x = case.inputs(2, torch.float32)
    model.train()
    with torch.no_grad():
        model(**x)
    assert cache.stats.bypassed == 1 and cache.stats.misses == 0
    model.eval()
    out = model(**x).sample  # grad enabled, parameters require grad: bypass, gradients flow
    out.sum().backward()
    assert cache.stats.bypassed == 2
    assert model.transformer_blocks[0].norm1.linear.weight.grad is not None


@pytest.mark.parametrize("name", ["dit", "sd3", "flux_dev"])
def test_verify_equivalence_on_transformers(name):
    case = CASE_BY_NAME[name]
    model = build(case)
    report = verify_equivalence(model, **case.inputs(2, torch.float32))
    assert report.bit_equal and report.max_abs_diff == 0.0
    assert report.hits == 1 and report.misses == 1
    assert get_modulator_cache(model) is None  # applied for the check only

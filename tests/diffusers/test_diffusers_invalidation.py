"""Never stale: LoRA (peft) on the modulator linears, and weight changes that keep data pointers."""

from __future__ import annotations

import pytest
import torch
from diffusers.training_utils import EMAModel
from diffusers_tiny_models import CASE_BY_NAME, build, forward
from fusion_diffusers import ModulatorCacheConfig, apply_modulator_cache
from peft import LoraConfig

MOD_TARGETS = {
    # The module names diffusers' LoRA converters target on Flux/SD3 (diffusers `loaders/lora_conversion_utils.py`).
    "flux_dev": ["norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"],
    "sd3": ["norm1.linear", "norm1_context.linear", "norm_out.linear"],
}


def _lora(seed: int) -> LoraConfig:
    torch.manual_seed(seed)
    # init_lora_weights=False: random B, so the adapter really changes the modulators.
    return LoraConfig(r=2, lora_alpha=2, target_modules=None, init_lora_weights=False)


def _add_adapter(model, name: str, case_name: str, seed: int) -> None:
    cfg = _lora(seed)
    cfg.target_modules = MOD_TARGETS[case_name]
    model.add_adapter(cfg, adapter_name=name)


def _check(model, cache, x, **extra):
    """Cached output (twice: fill then replay) equals the uncached output of the same model now."""
    with cache.disabled():
        expected = forward(model, x, **extra)
    assert torch.equal(forward(model, x, **extra), expected)
    assert torch.equal(forward(model, x, **extra), expected)
    return expected


@pytest.mark.parametrize("case_name", ["flux_dev", "sd3"])
def test_lora_on_modulator_linears_never_stale(case_name):
    case = CASE_BY_NAME[case_name]
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    cache = apply_modulator_cache(model)
    base = _check(model, cache, x)

    _add_adapter(model, "a", case_name, seed=1)  # slots must move onto the lora.Linear wrappers
    with_a = _check(model, cache, x)
    assert not torch.equal(with_a, base)

    half = _check(model, cache, x, joint_attention_kwargs={"scale": 0.5})
    assert not torch.equal(half, with_a)
    assert torch.equal(_check(model, cache, x), with_a)  # scale 1.0 again: its entry is reused

    _add_adapter(model, "b", case_name, seed=2)
    model.set_adapters(["a", "b"], weights=[0.7, 0.3])
    mixed = _check(model, cache, x)
    model.set_adapters(["a", "b"], weights=[0.7, 0.9])
    assert not torch.equal(_check(model, cache, x), mixed)
    model.set_adapters("b")  # switch
    only_b = _check(model, cache, x)
    assert not torch.equal(only_b, with_a)

    model.disable_lora()
    assert torch.equal(_check(model, cache, x), base)
    model.enable_lora()
    assert torch.equal(_check(model, cache, x), only_b)

    model.fuse_lora(lora_scale=0.8)  # weight.data += delta: same data_ptr, no _version bump
    _check(model, cache, x)
    model.unfuse_lora()
    _check(model, cache, x)

    model.delete_adapters(["a", "b"])
    _check(model, cache, x)
    assert cache.stats.hits > 0


def _dit_setup():
    case = CASE_BY_NAME["dit"]
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    return case, model, x


def test_load_state_dict_keeps_pointers_but_is_detected():
    case, model, x = _dit_setup()
    other = build(case, seed=7).state_dict()
    cache = apply_modulator_cache(model, ModulatorCacheConfig(samples_per_tensor=0, probe="never"))
    before = _check(model, cache, x)
    ptr = model.transformer_blocks[0].norm1.linear.weight.data_ptr()
    model.load_state_dict(other)
    assert model.transformer_blocks[0].norm1.linear.weight.data_ptr() == ptr
    assert not torch.equal(_check(model, cache, x), before)
    assert cache.stats.invalidations_by_reason["fingerprint"] >= 1


def test_ema_copy_to_and_restore_are_detected():
    case, model, x = _dit_setup()
    ema = EMAModel(build(case, seed=3).parameters())  # shadow = other weights
    cache = apply_modulator_cache(model)
    online = _check(model, cache, x)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())  # _foreach_copy_ on .data: no _version bump
    averaged = _check(model, cache, x)
    assert not torch.equal(averaged, online)
    ema.restore(model.parameters())
    assert torch.equal(_check(model, cache, x), online)


def test_dense_data_write_caught_by_tripwire_every_call():
    _, model, x = _dit_setup()
    cache = apply_modulator_cache(model, ModulatorCacheConfig(probe="never"))
    _check(model, cache, x)
    with torch.no_grad():
        model.transformer_blocks[1].norm1.linear.weight.data.mul_(1.5)
    _check(model, cache, x)
    assert cache.stats.invalidations_by_reason["content"] == 1


def test_sparse_data_write_caught_by_digest_at_render_start():
    """One element the tripwire does not sample: the exact digest at the next render catches it."""
    case, model, x = _dit_setup()
    cache = apply_modulator_cache(model, ModulatorCacheConfig(samples_per_tensor=1))
    schedule = [case.inputs(2, torch.float32, t=t) for t in (999, 500)]
    for step in schedule:  # render 1
        _check(model, cache, step)
    w = model.transformer_blocks[0].norm1.linear.weight
    with torch.no_grad():
        w.data[5, 3] += 1.0  # element 0 is the only sampled one
    for step in schedule:  # render 2: t goes back up -> digests compared before replaying
        with cache.disabled():
            expected = forward(model, step)
        assert torch.equal(forward(model, step), expected)
    assert cache.stats.invalidations_by_reason["digest"] == 1


def test_explicit_invalidation_and_weights_swapped():
    _, model, x = _dit_setup()
    cache = apply_modulator_cache(model, ModulatorCacheConfig(samples_per_tensor=0, probe="never"))
    _check(model, cache, x)
    with cache.weights_swapped():
        with torch.no_grad():
            model.proj_out_1.weight.data[0, 0] += 1.0
    _check(model, cache, x)
    cache.invalidate()
    assert cache.stats.entries == 0


def test_dtype_change_is_a_new_key_and_a_new_table():
    case, model, x = _dit_setup()
    cache = apply_modulator_cache(model)
    _check(model, cache, x)
    model.to(torch.bfloat16)
    xb = {**x, "hidden_states": x["hidden_states"].to(torch.bfloat16)}
    out = _check(model, cache, xb)
    assert out.dtype == torch.bfloat16


def test_probe_always_verifies_every_replayed_entry():
    _, model, x = _dit_setup()
    cache = apply_modulator_cache(model, ModulatorCacheConfig(samples_per_tensor=0, probe="always"))
    _check(model, cache, x)
    with torch.no_grad():
        model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight.data[3, 0] += 1.0
    _check(model, cache, x)  # label 3 is in the batch: its row changed, the hit must be refreshed
    # The repeated timestep also marks a render start, whose exact digest sees the edit first.
    assert cache.stats.probes >= 2
    assert cache.stats.probe_failures + cache.stats.invalidations_by_reason["digest"] == 1

"""Modulator weight offload: bit-equal renders, weights unused during steps, accounting.

The strongest check is the meta-tensor proof: after :func:`precompute`, every offloaded modulator
weight is replaced by a meta tensor (any use raises) and the schedule still renders bit-equal.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTPipeline
from diffusers.hooks import apply_group_offloading
from diffusers_tiny_models import CASE_BY_NAME, build, forward, make_dit, randomize
from fusion_diffusers import (
    ModulatorCacheConfig,
    apply_modulator_cache,
    enable_modulator_cache,
    precompute,
    remove_modulator_cache,
)
from test_diffusers_pipelines import PIPES, STEPS, _render, tiny_vae
from torch import nn

OFFLOAD = ModulatorCacheConfig(offload_weights=True)
# For the meta proof the never-stale checks are switched off on purpose: replacing weights by
# meta tensors *is* a weight change, which the fingerprint would (correctly) answer by dropping
# the table. The proof is about what the steps touch, not about detection.
OFFLOAD_BLIND = ModulatorCacheConfig(offload_weights=True, samples_per_tensor=0, probe="never")

# Site modules of each family, written out independently of fusion_diffusers.families.
MODULATOR_NAMES = {
    "dit": ("norm1.emb", "norm1.linear", "proj_out_1"),
    "sd3": ("time_text_embed", "norm1.linear", "norm1_context.linear", "norm_out.linear"),
    "flux_dev": ("time_text_embed", "norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"),
}

SCHEDULE = {  # per-step timestep values as the forward receives them
    "dit": [999, 666, 333],
    "sd3": [1000.0, 600.0, 200.0],
    "flux_dev": [1.0, 0.6, 0.2],
    "pixart_alpha": [999, 666, 333],
    "auraflow": [1.0, 0.6, 0.2],
    "sana_sprint": [999, 666, 333],
}
CONDITIONING = {  # forward input names that feed the modulators
    "dit": ("class_labels",),
    "sd3": ("pooled_projections",),
    "flux_dev": ("pooled_projections", "guidance"),
    "pixart_alpha": ("added_cond_kwargs",),
    "auraflow": (),
    "sana_sprint": ("guidance",),
}


def _step_inputs(name: str, t: float, seed: int = 0) -> dict:
    return CASE_BY_NAME[name].inputs(2, torch.float32, seed=seed, t=t)


def _modulator_bytes_by_name(model: nn.Module, names: tuple[str, ...]) -> int:
    total = 0
    for pname, p in model.named_parameters():
        module_path = pname.rsplit(".", 1)[0]
        if any(module_path == n or module_path.endswith("." + n) or module_path.startswith(n + ".")
               or f".{n}." in f".{module_path}." for n in names):
            total += p.numel() * p.element_size()
    return total


def _to_meta(tensors: list[torch.Tensor], model: nn.Module) -> int:
    """Replace the given parameters inside ``model`` by meta parameters; returns how many."""
    ids = {id(t) for t in tensors}
    replaced = 0
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in ids:
                module._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
                replaced += 1
    return replaced


@pytest.mark.parametrize("name", list(PIPES))
def test_offloaded_renders_bit_equal_to_uncached(name):
    pipe, kwargs = PIPES[name]()
    reference = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe, OFFLOAD)
    first = _render(pipe, kwargs)
    second = _render(pipe, kwargs)
    assert cache.stats.misses == STEPS and cache.stats.hits == STEPS
    assert torch.equal(first, reference) and torch.equal(second, reference)
    assert cache.offload.nbytes > 0
    assert all(t.device.type == "cpu" for t in cache.offload.tensors)


@pytest.mark.parametrize("name", list(SCHEDULE))
def test_precompute_then_meta_weights_render_bit_equal(name):
    model = build(CASE_BY_NAME[name])
    steps = [_step_inputs(name, t) for t in SCHEDULE[name]]
    reference = [forward(model, s) for s in steps]

    cache = apply_modulator_cache(model, OFFLOAD_BLIND)
    cond = {k: steps[0][k] for k in CONDITIONING[name]}
    report = precompute(model, [s["timestep"] for s in steps], **cond)
    assert report.steps == len(steps) and report.computed == len(steps)
    assert _to_meta(cache.offload.tensors, model) == len(cache.offload.tensors) > 0
    cache.core._snapshot = None  # see OFFLOAD_BLIND: accept the meta weights as the baseline

    outputs = [forward(model, s) for s in steps]
    assert cache.stats.misses == 0 and cache.stats.hits == len(steps)
    for out, ref in zip(outputs, reference):
        assert torch.equal(out, ref)
    # The test can fail: a step that is not precomputed needs the weights, and they are gone.
    with pytest.raises((NotImplementedError, RuntimeError)):
        forward(model, _step_inputs(name, SCHEDULE[name][-1] / 2))


@pytest.mark.parametrize("name", ["dit", "sd3", "flux_dev"])
def test_miss_after_offload_restores_correctness(name):
    model = build(CASE_BY_NAME[name])
    schedule = SCHEDULE[name]
    new_cond = [_step_inputs(name, t, seed=5) for t in schedule]  # new pooled text / guidance
    if name == "dit":
        for s in new_cond:
            s["class_labels"] = torch.tensor([42, 1000])
    reference = [forward(model, s) for s in new_cond]
    new_schedule = _step_inputs(name, schedule[0] * 0.77)
    ref_schedule = forward(model, new_schedule)

    cache = apply_modulator_cache(model, OFFLOAD)
    steps = [_step_inputs(name, t) for t in schedule]
    precompute(model, [s["timestep"] for s in steps], **{k: steps[0][k] for k in CONDITIONING[name]})
    assert all(torch.equal(forward(model, s), r) for s, r in zip(new_cond, reference))
    assert torch.equal(forward(model, new_schedule), ref_schedule)
    assert cache.stats.misses == len(schedule) + 1
    assert all(t.device.type == "cpu" for t in cache.offload.tensors)  # back at rest


def test_weight_change_on_offloaded_copy_is_detected():
    model = build(CASE_BY_NAME["dit"])
    steps = [_step_inputs("dit", t) for t in SCHEDULE["dit"]]
    cache = apply_modulator_cache(model, OFFLOAD)
    precompute(model, [s["timestep"] for s in steps], class_labels=steps[0]["class_labels"])
    with torch.no_grad():  # EMAModel.copy_to-style write: same data_ptr, same _version
        for t in cache.offload.tensors:
            t.data.mul_(1.5)
    with cache.disabled():
        reference = [forward(model, s) for s in steps]
    outputs = [forward(model, s) for s in steps]
    assert cache.stats.invalidations_by_reason["content"] >= 1
    assert all(torch.equal(o, r) for o, r in zip(outputs, reference))


@pytest.mark.parametrize("name", ["dit", "sd3", "flux_dev"])
def test_accounting_drops_resident_bytes_by_the_modulator_share(name):
    model = build(CASE_BY_NAME[name])
    expected = _modulator_bytes_by_name(model, MODULATOR_NAMES[name])
    total = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    cache = apply_modulator_cache(model, OFFLOAD)
    assert cache.offload.nbytes == expected
    # CPU-only machine: stand in for an accelerator by moving every other parameter to "meta"
    # (the modulator weights rest on "cpu"), then count by device.
    offloaded = {id(t) for t in cache.offload.tensors}
    others = [p for p in model.parameters() if id(p) not in offloaded]
    _to_meta(others, model)
    for module in model.modules():
        for name, b in list(module._buffers.items()):
            if b is not None and id(b) not in offloaded:
                module._buffers[name] = b.to("meta")
    report = cache.resident_report(execution_device="meta")
    assert report.total_bytes == total and report.modulator_bytes == expected
    assert report.resident_before == total and report.resident_after == total - expected
    assert report.saved_fraction_of_share == 1.0 and not report.same_device
    assert 0.0 < report.modulator_share < 1.0


def test_same_device_report_and_remove_brings_weights_home():
    model = build(CASE_BY_NAME["dit"])
    cache = apply_modulator_cache(model, OFFLOAD)
    report = cache.resident_report()
    assert report.same_device and report.saved_bytes == 0 and report.modulator_bytes > 0
    remove_modulator_cache(model)
    plain = apply_modulator_cache(model).resident_report()
    assert plain.offload_device == "none" and plain.resident_before == plain.resident_after


def test_refuses_group_offloading():
    model = randomize(make_dit(), 0).eval()
    apply_group_offloading(model, onload_device=torch.device("cpu"), offload_type="block_level",
                           num_blocks_per_group=1)
    with pytest.raises(ValueError, match="group offloading"):
        apply_modulator_cache(model, OFFLOAD)
    apply_modulator_cache(model)  # without offload the cache composes (other modules' hooks)


def test_refuses_group_offloading_added_after_the_cache():
    model = randomize(make_dit(), 0).eval()
    apply_modulator_cache(model, OFFLOAD)
    apply_group_offloading(model, onload_device=torch.device("cpu"), offload_type="leaf_level")
    with pytest.raises(ValueError, match="group offloading"):
        forward(model, _step_inputs("dit", 999))


def test_refuses_accelerate_cpu_offload_hooks():
    pipe = DiTPipeline(transformer=randomize(make_dit(), 0).eval(), vae=tiny_vae(4), scheduler=None)
    pipe.transformer._hf_hook = object()  # what accelerate's cpu_offload_with_hook attaches
    with pytest.raises(ValueError, match="enable_model_cpu_offload"):
        enable_modulator_cache(pipe, OFFLOAD)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="offload_weights"):
        ModulatorCacheConfig(offload_weights="yes")
    with pytest.raises(ValueError, match="offload_device"):
        ModulatorCacheConfig(offload_weights=True, offload_device="meta")
    with pytest.raises(ValueError, match="offload_device"):
        ModulatorCacheConfig(offload_weights=True, offload_device="floppy")
    model = build(CASE_BY_NAME["dit"])
    with pytest.raises(ValueError, match="apply_modulator_cache"):
        precompute(model, torch.tensor([999]), batch_size=1, class_labels=torch.tensor([1]))
    apply_modulator_cache(model, OFFLOAD)
    with pytest.raises(ValueError, match="batch_size"):
        precompute(model, torch.tensor([999]), class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="1-D"):
        precompute(model, torch.ones(2, 2), batch_size=2, class_labels=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="allowed"):
        precompute(model, torch.tensor([999]), batch_size=1, class_labels=torch.tensor([1]), pooled=1)
    with pytest.raises(TypeError, match="pipe_or_transformer"):
        precompute(object(), torch.tensor([999]), batch_size=1)


def test_precompute_of_pipeline_schedule_makes_render_all_hits():
    pipe, kwargs = PIPES["dit"]()
    reference = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe, OFFLOAD)
    pipe.scheduler.set_timesteps(STEPS)
    labels = torch.tensor(kwargs["class_labels"] + [1000] * len(kwargs["class_labels"]))  # CFG rows
    report = precompute(pipe, pipe.scheduler.timesteps, batch_size=len(labels), class_labels=labels)
    assert report.computed == STEPS
    rendered = _render(pipe, kwargs)
    assert cache.stats.misses == 0 and cache.stats.hits == STEPS  # precompute fills without counting
    assert torch.equal(rendered, reference)


def test_disabled_calls_stream_and_training_calls_are_refused():
    model = build(CASE_BY_NAME["sd3"])
    x = _step_inputs("sd3", 500.0)
    reference = forward(model, x)
    cache = apply_modulator_cache(model, OFFLOAD)
    with cache.disabled():
        assert torch.equal(forward(model, x), reference)
    assert cache.stats.bypassed == 1 and cache.stats.entries == 0
    with pytest.raises(RuntimeError, match="no_grad"):
        model(**x)  # autograd through modulator weights resting off the device
    model.train()
    with pytest.raises(RuntimeError, match="eval"), torch.no_grad():
        model(**x)

"""Offload + precompute: a new schedule rebuilds transparently; a table larger than the weights
falls back to computing directly. Both log a line and stay bit-equal to the uncached model."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers_tiny_models import CASE_BY_NAME, build, forward
from fusion_diffusers import (
    ModulatorCacheConfig,
    apply_modulator_cache,
    enable_modulator_cache,
    precompute,
)
from test_diffusers_pipelines import PIPES, STEPS, _gen

OFFLOAD = ModulatorCacheConfig(offload_weights=True)
LOGGER = "fusion_diffusers.precompute"


def _render(pipe, kwargs, steps):
    with torch.no_grad():
        return pipe(**kwargs, num_inference_steps=steps, generator=_gen(), output_type="pt").images


def test_new_step_count_rebuilds_the_whole_schedule_at_its_first_step(caplog):
    pipe, kwargs = PIPES["dit"]()
    reference = {n: _render(pipe, kwargs, n) for n in (STEPS, 5)}
    cache = enable_modulator_cache(pipe, OFFLOAD)
    labels = torch.tensor(kwargs["class_labels"] + [1000] * len(kwargs["class_labels"]))  # CFG rows
    pipe.scheduler.set_timesteps(STEPS)
    report = precompute(pipe, batch_size=len(labels), class_labels=labels)  # schedule from the scheduler
    assert report.computed == STEPS and report.fallback is None
    assert torch.equal(_render(pipe, kwargs, STEPS), reference[STEPS])
    assert cache.stats.misses == 0 and cache.stats.hits == STEPS

    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = _render(pipe, kwargs, 5)
    assert torch.equal(out, reference[5])
    # One miss (the first step of the new schedule) rebuilt all five entries in one streaming.
    assert cache.stats.misses == 1 and cache.stats.hits == STEPS + 4
    assert any("new schedule of 5 steps" in r.getMessage() for r in caplog.records)
    assert all(t.device.type == "cpu" for t in cache.offload.tensors)  # back at rest
    assert torch.equal(_render(pipe, kwargs, 5), reference[5]) and cache.stats.misses == 1


def test_new_schedule_without_a_scheduler_streams_per_step_and_says_so(caplog):
    model = build(CASE_BY_NAME["dit"])
    inputs = CASE_BY_NAME["dit"].inputs
    old = [inputs(2, torch.float32, t=t) for t in (999, 666, 333)]
    new = [inputs(2, torch.float32, t=t) for t in (900, 450)]
    reference = [forward(model, x) for x in new]
    cache = apply_modulator_cache(model, OFFLOAD)
    precompute(model, [x["timestep"] for x in old], class_labels=old[0]["class_labels"])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        outputs = [forward(model, x) for x in new]
    assert all(torch.equal(o, r) for o, r in zip(outputs, reference))
    assert cache.stats.misses == 2
    messages = [r.getMessage() for r in caplog.records if "not in the precomputed schedule" in r.getMessage()]
    assert len(messages) == 1  # once per schedule change, not per step


def test_table_larger_than_the_weights_falls_back_to_computing_directly(caplog):
    model = build(CASE_BY_NAME["dit"])
    batch = 64  # 10 steps x 64 rows of modulators outweigh the tiny model's modulator weights
    x = {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
        "timestep": torch.full((batch,), 999, dtype=torch.long),
        "class_labels": torch.arange(batch) % 1001,
    }
    reference = forward(model, x)
    cache = apply_modulator_cache(model, OFFLOAD)
    weights = cache.offload.nbytes
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = precompute(model, torch.linspace(999, 99, 10).long(), batch_size=batch,
                            class_labels=x["class_labels"])
    assert report.fallback is not None and str(weights) in report.fallback
    assert report.computed == 1  # stopped after measuring the first entry
    assert any("falling back to computing modulators directly" in r.getMessage() for r in caplog.records)
    assert cache.offload is None and cache.stats.entries == 0
    assert torch.equal(forward(model, x), reference)
    assert cache.stats.bypassed == 1 and cache.stats.hits == 0


def test_small_table_keeps_offloading():
    model = build(CASE_BY_NAME["dit"])
    cache = apply_modulator_cache(model, OFFLOAD)
    report = precompute(model, torch.tensor([999, 500]), batch_size=2, class_labels=torch.tensor([1, 2]))
    assert report.fallback is None and cache.offload is not None and report.computed == 2


def test_precompute_from_the_scheduler_needs_one():
    model = build(CASE_BY_NAME["dit"])
    apply_modulator_cache(model, OFFLOAD)
    with pytest.raises(ValueError, match="set_timesteps"):
        precompute(model, batch_size=2, class_labels=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="timestep_fn"):
        precompute(model, torch.tensor([999]), batch_size=2, timestep_fn=3, class_labels=torch.tensor([1, 2]))

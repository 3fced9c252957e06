"""Composition: torch.compile (whole model, regional), diffusers FirstBlockCache, the block patcher."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch._dynamo
from diffusers import FirstBlockCacheConfig, Transformer2DModel
from diffusers.hooks import apply_first_block_cache
from diffusers_tiny_models import CASE_BY_NAME, CASES, build, forward
from fusion_diffusers import (
    UnsupportedModelError,
    apply_modulator_cache,
    compute_modulators,
    patch_blocks,
    remove_modulator_cache,
    unpatch_blocks,
)
from fusion_diffusers.families import block_paths, resolve_family


def _schedule(case, n=4):
    ts = torch.linspace(case.t_hi, case.t_lo, n).tolist()
    return [case.inputs(2, torch.float32, seed=0, t=t) for t in ts]


def _frames_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_compile_equals_eager_and_does_not_recompile_per_step(mode):
    case = CASE_BY_NAME["flux_dev"]
    model = build(case)
    steps = _schedule(case)
    eager = [forward(model, x) for x in steps]
    torch._dynamo.reset()
    cache = apply_modulator_cache(model)
    # aot_eager keeps eager numerics, so equality with the eager run is bitwise.
    if mode == "whole":
        runner = torch.compile(model, backend="aot_eager")
    else:
        model.compile_repeated_blocks(backend="aot_eager")
        runner = model
    outs = [forward(runner, steps[0])]
    graphs_after_first = _frames_compiled()
    outs += [forward(runner, x) for x in steps[1:]]
    assert _frames_compiled() == graphs_after_first  # new timesteps: no new graphs
    outs += [forward(runner, x) for x in steps]  # second render: all hits, still no new graphs
    assert _frames_compiled() == graphs_after_first
    assert cache.stats.hits == len(steps)
    for ref, out in zip(eager + eager, outs):
        assert torch.equal(ref, out)
    torch._dynamo.reset()


def test_stacked_with_first_block_cache_equals_first_block_cache_alone():
    case = CASE_BY_NAME["flux_dev"]
    steps = _schedule(case, n=5)

    def run(with_modulator_cache: bool) -> list[torch.Tensor]:
        model = build(case)
        apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.3))
        if with_modulator_cache:
            apply_modulator_cache(model)
        outs = []
        for _render in range(2):
            for x in steps:
                with model.cache_context("cond"):
                    outs.append(forward(model, x))
            model._reset_stateful_cache()
        return outs, model

    alone, _ = run(False)
    stacked, model = run(True)
    assert all(torch.equal(a, b) for a, b in zip(alone, stacked))
    remove_modulator_cache(model)  # FirstBlockCache hooks stay in place
    registry = model.transformer_blocks[0]._diffusers_hook
    assert "fbc_leader_block_hook" in registry.hooks


def test_unsupported_models_are_refused_naming_the_class():
    # Transformer2DModel can run DiT's very blocks, but its forward is not one we have proven.
    other = Transformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=8,
        patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
    )
    for fn in (apply_modulator_cache, patch_blocks):
        with pytest.raises(UnsupportedModelError, match="Transformer2DModel is not supported"):
            fn(other)
    with pytest.raises(UnsupportedModelError, match="Transformer2DModel"):
        compute_modulators(other, torch.tensor([1]))

    class MyDiT(type(build(CASE_BY_NAME["dit"]))):  # a subclass may override forward
        pass

    with pytest.raises(UnsupportedModelError, match="MyDiT"):
        apply_modulator_cache(MyDiT(num_attention_heads=2, attention_head_dim=8, num_layers=1, sample_size=4,
                                    in_channels=4, num_embeds_ada_norm=10))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_patched_blocks_use_given_mods_and_keep_behaviour_without(case):
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_lo)
    reference = forward(model, x)
    patch_blocks(model)
    assert torch.equal(forward(model, x), reference)  # mods=None everywhere: unchanged
    fam = resolve_family(model)
    for bpath in block_paths(model, fam):
        block = model.get_submodule(bpath)
        params = list(inspect.signature(block.forward).parameters.values())
        assert params[-1].name == "mods" and params[-1].kind is inspect.Parameter.KEYWORD_ONLY
        plain = [p.name for p in inspect.signature(type(block).forward).parameters.values()][1:]
        assert [p.name for p in params[:-1]] == plain  # positional order kept

    # Feed every block its mods through the keyword (a forward pre-hook adds it to each call).
    cond = {k: x.get(k) for k in fam.conditioning if k in x}

    def run_with(mods, only: str | None = None) -> torch.Tensor:
        def feed(module, args, kwargs):
            return args, {**kwargs, "mods": mods}

        handles = [model.get_submodule(b).register_forward_pre_hook(feed, with_kwargs=True)
                   for b in block_paths(model, fam) if only in (None, b)]
        try:
            return forward(model, x)
        finally:
            for h in handles:
                h.remove()

    same = compute_modulators(model, x["timestep"], hidden_dtype=torch.float32, **cond)
    assert torch.equal(run_with(same), reference)
    assert torch.equal(run_with({}), reference)  # an empty dict arms nothing
    other = compute_modulators(model, x["timestep"] * 0 + case.t_hi, hidden_dtype=torch.float32, **cond)
    if fam.name not in ("pixart", "sana"):  # adaLN-single blocks have no modulator module
        assert not torch.equal(run_with(other), reference)  # the given tensors are really used
        first = block_paths(model, fam)[0]
        assert not torch.equal(run_with(other.block(first), only=first), reference)
    unpatch_blocks(model)
    assert torch.equal(forward(model, x), reference)


def test_mods_argument_errors_and_stacking_with_cache():
    case = CASE_BY_NAME["dit"]
    model = build(case)
    x = case.inputs(2, torch.float32)
    patch_blocks(model)
    cache = apply_modulator_cache(model)
    block = model.transformer_blocks[0]
    h = torch.randn(2, 16, 16)
    with pytest.raises(TypeError, match="mods must be"):
        block(h, timestep=x["timestep"], class_labels=x["class_labels"], mods=[1])
    with pytest.raises(ValueError, match="allowed"):
        block(h, timestep=x["timestep"], class_labels=x["class_labels"], mods={"norm2.linear": h})
    out = forward(model, x)
    unpatch_blocks(model)  # the cache keeps its slots
    assert torch.equal(forward(model, x), out) and cache.stats.hits == 1
    remove_modulator_cache(model)
    assert not hasattr(model, "_fusion_modulator_slots")


def test_gradient_checkpointing_calls_blocks_positionally_through_the_patch():
    case = CASE_BY_NAME["sd3"]
    model = build(case)
    x = case.inputs(2, torch.float32)
    expected = model(**x).sample
    patch_blocks(model)
    model.enable_gradient_checkpointing()
    model.train()
    out = model(**x).sample
    out.sum().backward()
    assert torch.equal(out, expected)

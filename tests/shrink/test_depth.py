"""shrink_depth: block selection, weight copies, importance scores, errors."""

from __future__ import annotations

import pytest
import torch

from fusion_infer import Modulators, TimeConditioningCache
from fusion_infer.shrink import block_importance, select_blocks, shrink_depth, uniform_keep

from . import models


def bypassing(model, drop):
    """Forward hooks that make the blocks in ``drop`` return their input (an oracle)."""
    blocks = model.blocks if hasattr(model, "blocks") else model.transformer_blocks
    hs = []
    for i in drop:
        hs.append(blocks[i].register_forward_hook(
            lambda m, a, kw, out: kw.get("hidden_states", a[0] if a else None), with_kwargs=True))
    return hs


def test_uniform_keep():
    assert uniform_keep(6, 4) == [0, 2, 3, 5]
    assert uniform_keep(6, 3) == [0, 3, 5]  # 2.5 rounds half up
    assert uniform_keep(6, 6) == list(range(6))
    assert uniform_keep(6, 1) == [0]
    assert uniform_keep(28, 14) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27]


@pytest.mark.parametrize("keep", [[0, 1, 2, 3], [1, 3], [2], [0, 3]])
def test_kept_blocks_compute_exactly_what_they_computed_in_the_parent(keep):
    h = models.head()
    x, t = models.batch()
    small = shrink_depth(h, keep=keep)
    assert small.config.depth == len(keep) and len(small.blocks) == len(keep)
    full_mods = h.compute_modulators(t)
    sub = Modulators(blocks=tuple(full_mods.blocks[i] for i in keep), final=full_mods.final)
    hooks = bypassing(h, [i for i in range(4) if i not in keep])
    try:
        ref = h(x, mods=full_mods)
    finally:
        for hk in hooks:
            hk.remove()
    assert torch.equal(small(x, mods=sub), ref)
    # mods=None: the shrunk head computes the same modulator values (different GEMM width, so
    # equal to rounding, not necessarily bit for bit, vs the parent's stacked table).
    torch.testing.assert_close(small(x, t), ref, rtol=1e-5, atol=1e-6)


def test_keep_order_does_not_matter_and_original_is_untouched():
    h = models.head()
    before = {k: v.clone() for k, v in h.state_dict().items()}
    cache = TimeConditioningCache(h.requires_grad_(False)).attach()
    x, t = models.batch()
    h(x, t)
    stats = (cache.stats.hits, cache.stats.misses, cache.stats.invalidations)
    a = shrink_depth(h, keep=[3, 1])
    b = shrink_depth(h, 2, strategy="importance", calibration=(x, t))
    shrink_depth(h, 2, strategy="importance", calibration=(x, t), metric="block_influence")
    assert all(torch.equal(before[k], v) for k, v in h.state_dict().items())
    assert (cache.stats.hits, cache.stats.misses, cache.stats.invalidations) == stats
    assert all(not blk._forward_hooks and not blk._forward_pre_hooks for blk in h.blocks)
    assert h.config.depth == 4 and len(h.blocks) == 4
    assert torch.equal(a.blocks[0].qkv.weight, h.blocks[1].qkv.weight)
    assert a.blocks[0].qkv.weight.data_ptr() != h.blocks[1].qkv.weight.data_ptr()  # a copy
    assert a.modulator_provider is None and b.modulator_provider is None
    cache.detach()


def test_preserves_dtype_mode_and_requires_grad():
    h = models.head().double().train()
    h.t_embedder.requires_grad_(False)
    small = shrink_depth(h, 2)
    assert small.dtype == torch.float64 and small.training
    assert not any(p.requires_grad for p in small.t_embedder.parameters())
    assert all(p.requires_grad for p in small.blocks.parameters())


@pytest.mark.parametrize("metric", ["output", "block_influence"])
def test_importance_finds_the_identity_block(metric):
    h = models.head()
    with torch.no_grad():  # zero adaLN → zero gates → block 2 is the identity
        h.blocks[2].adaLN_mod[1].weight.zero_()
        h.blocks[2].adaLN_mod[1].bias.zero_()
    x, t = models.batch()
    scores = block_importance(h, (x, t), metric)
    assert scores.shape == (4,) and scores.dtype == torch.float64
    assert scores[2] == 0 and bool((scores[[0, 1, 3]] > 0).all())
    assert select_blocks(h, 3, "importance", (x, t), metric) == [0, 1, 3]
    small = shrink_depth(h, 3, strategy="importance", calibration=(x, t), metric=metric)
    mods = h.compute_modulators(t)
    sub = Modulators(blocks=(mods.blocks[0], mods.blocks[1], mods.blocks[3]), final=mods.final)
    assert torch.equal(small(x, mods=sub), h(x, mods=mods))  # dropping an identity is lossless


def test_output_importance_equals_the_bypass_oracle():
    h = models.head()
    x, t = models.batch()
    scores = block_importance(h, (x, t))
    ref = h(x, t).double()
    for i in range(4):
        hooks = bypassing(h, [i])
        try:
            out = h(x, t).double()
        finally:
            for hk in hooks:
                hk.remove()
        assert scores[i] == ((out - ref) ** 2).mean()


def test_block_influence_matches_shortgpt_definition():
    h = models.head()
    x, t = models.batch()
    hs = []
    hooks = [b.register_forward_hook(lambda m, a, kw, out: hs.append((a[0], out)), with_kwargs=True)
             for b in h.blocks]
    with torch.no_grad():
        h(x, t)
    for hk in hooks:
        hk.remove()
    expect = torch.stack([1 - torch.nn.functional.cosine_similarity(i.double(), o.double(), dim=-1).mean()
                          for i, o in hs])
    torch.testing.assert_close(block_importance(h, (x, t), "block_influence"), expect)


@pytest.mark.parametrize("family", ["dit", "pixart"])
def test_diffusers_depth(family):
    model = models.tiny_dit() if family == "dit" else models.tiny_pixart()
    inputs = models.dit_inputs() if family == "dit" else models.pixart_inputs()
    # DiT's final layer reuses block 0's timestep/class embedder: keep block 0 for the oracle.
    small = shrink_depth(model, keep=[0, 2])
    assert small.config.num_layers == 2 and len(small.transformer_blocks) == 2
    assert model.config.num_layers == 3 and len(model.transformer_blocks) == 3
    hooks = bypassing(model, [1])
    try:
        with torch.no_grad():
            ref = model(**inputs).sample
    finally:
        for hk in hooks:
            hk.remove()
    with torch.no_grad():
        assert torch.equal(small(**inputs).sample, ref)
    scores = block_importance(model, inputs)
    assert scores.shape == (3,) and bool((scores > 0).all())
    imp = shrink_depth(model, 1, strategy="importance", calibration=inputs)
    assert imp.config.num_layers == 1


def test_errors():
    h = models.head()
    cal = models.batch()
    with pytest.raises(ValueError, match=r"n_blocks must be in \[1, 4\]"):
        shrink_depth(h, 5)
    with pytest.raises(ValueError, match=r"n_blocks must be in \[1, 4\]"):
        shrink_depth(h, 0)
    with pytest.raises(TypeError, match="n_blocks must be an int"):
        shrink_depth(h, 2.0)
    with pytest.raises(ValueError, match="exactly one of n_blocks= or keep="):
        shrink_depth(h)
    with pytest.raises(ValueError, match="exactly one of n_blocks= or keep="):
        shrink_depth(h, 2, keep=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        shrink_depth(h, keep=[0, 4])
    with pytest.raises(ValueError, match="repeated"):
        shrink_depth(h, keep=[1, 1])
    with pytest.raises(ValueError, match="at least one"):
        shrink_depth(h, keep=[])
    with pytest.raises(ValueError, match="strategy must be one of"):
        shrink_depth(h, 2, strategy="random")
    with pytest.raises(ValueError, match="needs calibration"):
        shrink_depth(h, 2, strategy="importance")
    with pytest.raises(ValueError, match="metric must be one of"):
        shrink_depth(h, 2, strategy="importance", calibration=cal, metric="cosine")
    with pytest.raises(TypeError, match="ControlHead or one of the diffusers classes"):
        shrink_depth(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)
    with pytest.raises(TypeError, match="calibration must be"):
        block_importance(h, "batch")

"""shrink_width: head/unit importance against a removal oracle, weight slicing, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fusion_infer.shrink import count_cost, kept_counts, shrink_width, width_importance

from . import models


def block_update(model, i, x, t):
    """Block i's residual update ``block(h) − h`` on the calibration batch (oracle helper)."""
    seen = {}
    hk = model.blocks[i].register_forward_hook(
        lambda m, a, kw, out: seen.update(d=(out - a[0]).double()), with_kwargs=True)
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        hk.remove()
    return seen["d"]


def test_ratio_one_is_an_exact_copy():
    h = models.head()
    x, t = models.batch()
    same = shrink_width(h, 1.0, calibration=(x, t))
    assert same.config.heads == 4 and same.config.mlp_hidden == h.config.mlp_hidden
    assert torch.equal(same(x, t), h(x, t))


def test_unit_importance_equals_the_removal_oracle():
    # Removing MLP unit j changes the block's update by exactly its gated contribution (the MLP is
    # the block's last branch), so the score must equal mean_{b,t} ‖Δupdate‖² measured by zeroing
    # the unit's output weights.
    h = models.head()
    x, t = models.batch()
    scores = width_importance(h, (x, t))
    for i in (0, 2):
        base = block_update(h, i, x, t)
        for unit in (0, 5, 100):
            m = models.head()
            with torch.no_grad():
                m.blocks[i].mlp[2].weight[:, unit] = 0
            delta = block_update(m, i, x, t) - base
            torch.testing.assert_close(scores[i][1][unit], delta.pow(2).sum(-1).mean(), rtol=1e-5, atol=0)  # fp32 oracle


def test_head_importance_equals_gated_head_contribution():
    h = models.head()
    x, t = models.batch()
    scores = width_importance(h, (x, t))
    hd = h.config.head_dim
    seen = {}
    blk = h.blocks[1]
    hk = blk.proj.register_forward_pre_hook(lambda m, a: seen.update(o=a[0].double()))
    with torch.no_grad():
        h(x, t)
    hk.remove()
    gate = h.compute_modulators(t).blocks[1][:, 2].double()
    w = blk.proj.weight.double()
    for head in range(4):
        sl = slice(head * hd, (head + 1) * hd)
        contrib = (seen["o"][..., sl] @ w[:, sl].T) * gate[:, None, :]
        torch.testing.assert_close(scores[1][0][head], contrib.pow(2).sum(-1).mean(), rtol=1e-9, atol=1e-12)


def test_dead_heads_and_units_are_pruned_first_and_losslessly():
    h = models.head()
    hd = h.config.head_dim
    dead_units = torch.arange(0, 128, 2)  # half of the 128 units
    with torch.no_grad():
        for blk in h.blocks:
            blk.proj.weight[:, 1 * hd : 2 * hd] = 0
            blk.proj.weight[:, 3 * hd : 4 * hd] = 0
            blk.mlp[2].weight[:, dead_units] = 0
    x, t = models.batch()
    for strategy in ("importance", "magnitude"):
        scores = width_importance(h, (x, t), strategy)
        assert all(float(s[0][1]) == 0 == float(s[0][3]) for s in scores)
        small = shrink_width(h, 0.5, strategy=strategy, calibration=(x, t))
        assert small.config.heads == 2 and small.config.mlp_hidden == 64
        assert small.config.attention_head_dim == hd and small.config.attention_dim == 2 * hd
        for blk, ref in zip(small.blocks, h.blocks):
            live = torch.cat([ref.proj.weight[:, :hd], ref.proj.weight[:, 2 * hd : 3 * hd]], 1)
            assert torch.equal(blk.proj.weight, live)
            assert torch.equal(blk.mlp[0].weight, ref.mlp[0].weight[1::2])
        torch.testing.assert_close(small(x, t), h(x, t), rtol=1e-5, atol=1e-6)


def test_qkv_rows_follow_the_kept_heads():
    h = models.head()
    small = shrink_width(h, 0.25, strategy="magnitude")  # keeps 1 head
    hd, d = h.config.head_dim, h.config.dim
    for blk, ref, (hs, _) in zip(small.blocks, h.blocks, width_importance(h, strategy="magnitude")):
        k = int(hs.argmax())
        w = ref.qkv.weight.view(3, 4, hd, d)[:, k].reshape(3 * hd, d)
        assert torch.equal(blk.qkv.weight, w)
        assert torch.equal(blk.qkv.bias, ref.qkv.bias.view(3, 4, hd)[:, k].reshape(-1))


def test_params_and_config_of_the_shrunk_head():
    h = models.head()
    x, t = models.batch()
    small = shrink_width(h, 0.75, calibration=(x, t))
    assert kept_counts(4, 128, 0.75) == (3, 96)
    assert (small.config.heads, small.config.mlp_hidden_dim) == (3, 96)
    assert small.config.dim == h.config.dim  # residual width stays
    assert count_cost(small, (x, t)).total_params == sum(p.numel() for p in small.parameters())
    assert small(x, t).shape == h(x, t).shape


@pytest.mark.parametrize("ratio", [0, -0.5, 1.5, math.nan, math.inf])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        shrink_width(models.head(), ratio, strategy="magnitude")


def test_errors():
    h = models.head()
    with pytest.raises(TypeError, match="ratio must be a number"):
        shrink_width(h, "0.5", strategy="magnitude")
    with pytest.raises(TypeError, match="ratio must be a number"):
        shrink_width(h, True, strategy="magnitude")
    with pytest.raises(ValueError, match="needs calibration"):
        shrink_width(h, 0.5)
    with pytest.raises(ValueError, match="strategy must be one of"):
        shrink_width(h, 0.5, strategy="uniform")
    with pytest.raises(TypeError, match="shrink_width supports fusion_infer.ControlHead only"):
        shrink_width(models.tiny_dit(), 0.5, calibration=models.dit_inputs())

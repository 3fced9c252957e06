"""count_cost: categories, depth/width structure, and parity with torch's FlopCounterMode."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fusion_infer import ControlHead, ControlHeadConfig, head_cost, head_cost_items
from fusion_infer.shrink import count_cost, shrink_depth, shrink_width

from . import models


def flop_counter_total(model, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(*args, **kwargs)
    return fc.get_total_flops()


def test_head_cost_items_sum_to_the_published_head_cost():
    # The numbers in head_cost's docstrings predate the itemisation: they must not move.
    c = head_cost(ControlHeadConfig(), seq_len=256)
    assert c.params == 5014017 == sum(p.numel() for p in ControlHead().parameters())
    items = head_cost_items(ControlHeadConfig(), seq_len=256)
    assert sum(i.params for i in items) == c.params
    assert sum(i.flops for i in items) == c.total_flops
    assert sum(i.flops for i in items if i.kind == "scores") == c.attention_flops


def test_control_head_params_match_the_module_per_item():
    h = models.head()
    cost = count_cost(h, models.batch())
    assert cost.total_params == sum(p.numel() for p in h.parameters())
    mods = {n: m for n, m in h.named_modules()}
    for item in cost.items:
        if item.params:
            assert item.params == sum(p.numel() for p in mods[item.name].parameters()), item.name
    assert cost.params["modulators"] == h.cost(seq_len=16).modulator_params


@pytest.mark.parametrize("batch_size", [1, 3])
def test_control_head_flops_match_flop_counter(monkeypatch, batch_size):
    h = models.head()
    x, t = models.batch(batch_size)
    cost = count_cost(h, (x, t))
    hc = h.cost(seq_len=16, batch=batch_size)
    mods = h.compute_modulators(t)
    # On CPU FlopCounterMode has no formula for the fused SDPA kernel, so it misses QKᵀ and AV…
    body = flop_counter_total(h, x, mods=mods)
    assert body == cost.total_flops - cost.flops["modulators"] - hc.attention_flops
    # …and counts them exactly once attention is written as matmuls.
    monkeypatch.setattr(F, "scaled_dot_product_attention", models.math_sdpa)
    assert flop_counter_total(h, x, mods=mods) == cost.total_flops - cost.flops["modulators"]
    # mods=None also runs the modulator path, in zero-padded chunks of modulator_rows rows.
    chunks = math.ceil(batch_size / h.config.modulator_rows)
    full = flop_counter_total(h, x, t)
    assert full == cost.total_flops - cost.flops["modulators"] + chunks * hc.modulator_flops_per_chunk


@pytest.mark.parametrize("family", ["dit", "pixart"])
def test_diffusers_flops_match_flop_counter(monkeypatch, family):
    model = models.tiny_dit() if family == "dit" else models.tiny_pixart()
    inputs = models.dit_inputs() if family == "dit" else models.pixart_inputs()
    cost = count_cost(model, inputs)
    assert cost.total_params == sum(p.numel() for p in model.parameters())
    assert cost.depth == 3 and len(cost.block_flops) == 3
    scores = sum(i.flops for i in cost.items if i.kind == "scores")
    assert scores > 0
    assert flop_counter_total(model, **inputs) == cost.total_flops - scores
    monkeypatch.setattr(F, "scaled_dot_product_attention", models.math_sdpa)
    assert flop_counter_total(model, **inputs) == cost.total_flops
    assert all(cost.flops[c] > 0 for c in ("attention", "mlp", "modulators", "embeddings"))


def test_pixart_cross_attention_scores_scale_with_text_tokens():
    model = models.tiny_pixart(layers=1)
    a = count_cost(model, models.pixart_inputs(text_tokens=5))
    b = count_cost(model, models.pixart_inputs(text_tokens=10))
    sc = {c.name: c.flops for c in a.items if c.kind == "scores"}
    sc2 = {c.name: c.flops for c in b.items if c.kind == "scores"}
    assert sc2["transformer_blocks.0.attn1.attention_scores"] == sc["transformer_blocks.0.attn1.attention_scores"]
    assert sc2["transformer_blocks.0.attn2.attention_scores"] == 2 * sc["transformer_blocks.0.attn2.attention_scores"]


def test_depth_is_linear_in_the_count():
    h = models.head()
    inputs = models.batch()
    full = count_cost(h, inputs)
    s = full.structure()
    assert s["fixed_flops"] + 4 * s["per_block_flops"] == full.total_flops
    for n in (1, 2, 3):
        small = count_cost(shrink_depth(h, n), inputs)
        assert small.total_flops == s["fixed_flops"] + n * s["per_block_flops"]
        assert small.total_params == s["fixed_params"] + n * s["per_block_params"]


def test_width_is_quadratic_in_block_linears_and_linear_in_scores():
    x = torch.zeros(1, 8, 64)
    costs = {
        d: count_cost(ControlHead(dataclasses.replace(models.CONFIG, dim=d, freq_dim=d)), (x, 0.5)).structure()
        for d in (32, 64)
    }
    assert costs[64]["per_block_linear_flops"] == 4 * costs[32]["per_block_linear_flops"]
    assert costs[64]["per_block_scores_flops"] == 2 * costs[32]["per_block_scores_flops"]
    # Head/unit pruning keeps the residual width: block linears shrink linearly in the ratio.
    h = models.head()
    half = count_cost(shrink_width(h, 0.5, strategy="magnitude"), (x, 0.5)).structure()
    full = count_cost(h, (x, 0.5)).structure()
    mod_per_block = 2 * 32 * 6 * 32  # adaLN linear, one row: unchanged
    assert half["per_block_linear_flops"] - mod_per_block == (full["per_block_linear_flops"] - mod_per_block) / 2


def test_as_dict_and_markdown():
    cost = count_cost(models.head(), models.batch())
    d = cost.as_dict()
    assert d["total_flops"] == sum(d["flops"].values()) and d["depth"] == 4
    assert "| **total** |" in cost.markdown()


def test_bad_inputs():
    with pytest.raises(TypeError, match="ControlHead or one of the diffusers classes"):
        count_cost(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    with pytest.raises(TypeError, match="example_inputs"):
        count_cost(models.head(), 3)
    with pytest.raises(TypeError, match="must start with x"):
        count_cost(models.head(), (0.5,))

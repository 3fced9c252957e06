"""ControlHead: shapes, the mods=None protocol, batched modulators, validation, cost helper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from fusion_infer import (
    AdaLNZeroBlock,
    ControlHead,
    ControlHeadConfig,
    Modulators,
    apply_rotary,
    head_cost,
    rotary_tables,
    sinusoidal_features,
    split_modulator_table,
)

from .heads import SMALL, latents, small_head


def test_default_head_is_about_five_million_parameters():
    head = ControlHead()
    n = sum(p.numel() for p in head.parameters())
    assert 4.5e6 < n < 5.5e6
    assert n == head_cost(head.config).params == head.cost().params
    y = head(latents(1, 32, channels=64), 0.5)
    assert y.shape == (1, 1, 32)


def test_fresh_head_is_identity_blocks_and_zero_output():
    head = ControlHead(SMALL)
    x = latents(2)
    assert torch.equal(head(x, 0.3), torch.zeros(2, 3, 16))
    h = torch.randn(2, 16, 32)
    block = head.blocks[0]
    assert torch.equal(block(h, c=torch.randn(2, 32)), h)  # adaLN-zero: gates start at 0


def test_output_shape_and_timestep_forms_agree():
    head = small_head()
    x = latents(3)
    y = head(x, torch.tensor([0.25, 0.25, 0.25]))
    assert y.shape == (3, 3, 16)
    assert torch.equal(head(x, 0.25), y)
    assert torch.equal(head(x, torch.tensor(0.25)), y)
    assert torch.equal(head(x, [0.25, 0.25, 0.25]), y)
    assert torch.equal(head(x, torch.tensor([0.25] * 3, dtype=torch.float64)), y)


def test_mods_protocol_is_the_single_code_path():
    head = small_head()
    x = latents(4)
    t = torch.tensor([0.0, 0.5, 0.5, 1.0])
    mods = head.compute_modulators(t)
    assert isinstance(mods, Modulators) and mods.batch_size == 4
    assert torch.equal(head(x, mods=mods), head(x, t))
    assert torch.equal(head(x, None, mods), head(x, t))


def test_batched_stacked_modulators_match_per_block_linears():
    head = small_head()
    t = torch.tensor([0.1, 0.9])
    mods = head.compute_modulators(t)
    tt, _ = head.prepare_conditions(t, None, 2)
    c = head.t_embedder(tt)
    for block, m in zip(head.blocks, mods.blocks):
        torch.testing.assert_close(m, block.adaLN_mod(c).view(2, 6, 32), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mods.final, head.final.adaLN_mod(c).view(2, 2, 32), rtol=1e-6, atol=1e-6)
    # and the block-level mods=None path (c given) agrees with the model-level mods
    h = torch.randn(2, 16, 32)
    torch.testing.assert_close(head.blocks[0](h, c=c), head.blocks[0](h, mods=mods.blocks[0]), rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    ts=st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=20),
    seed=st.integers(0, 2**16),
)
def test_modulator_rows_do_not_depend_on_their_batch(ts, seed):
    """Row bits are a function of (t, weights) only: alone, batched, permuted or duplicated."""
    head = _HEAD
    t = torch.tensor(ts, dtype=torch.float32)
    table = head.modulator_table(t)
    perm = torch.randperm(len(ts), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(head.modulator_table(t[perm]), table[perm])
    for i in range(min(len(ts), 4)):
        assert torch.equal(head.modulator_table(t[i : i + 1])[0], table[i])
    doubled = head.modulator_table(torch.cat([t, t]))
    assert torch.equal(doubled[: len(ts)], table) and torch.equal(doubled[len(ts) :], table)


_HEAD = small_head(7)


def test_plain_linear_is_not_batch_invariant_here_which_is_why_we_chunk():
    """Documents the hazard the fixed-shape chunks remove (skips if this BLAS happens to be invariant)."""
    torch.manual_seed(0)
    w, x = torch.randn(1536, 256), torch.randn(41, 256)
    full = torch.nn.functional.linear(x, w)
    if torch.equal(torch.nn.functional.linear(x[:1], w)[0], full[0]):
        pytest.skip("this BLAS gives batch-invariant rows for M=1 vs M=41")
    assert not torch.equal(torch.nn.functional.linear(x[:1], w)[0], full[0])


def test_sinusoidal_features_match_numpy_reference():
    t = torch.tensor([0.0, 0.123, 1.0], dtype=torch.float64)
    got = sinusoidal_features(t, 8, time_scale=1000.0, max_period=10000.0).numpy()
    half = 4
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = (t.numpy() * 1000.0)[:, None] * freqs[None]
    want = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_rotary_scores_depend_only_on_relative_position():
    cos, sin = rotary_tables(12, 8)
    q, k = torch.randn(8), torch.randn(8)
    rq = apply_rotary(q.expand(12, 8), cos, sin)
    rk = apply_rotary(k.expand(12, 8), cos, sin)
    scores = rq @ rk.T  # [m, n]
    for d in (-3, 0, 2):
        diag = torch.diagonal(scores, offset=d)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(12))  # rotations keep norms
    with pytest.raises(ValueError, match="even"):
        rotary_tables(4, 7)


def test_attention_is_bidirectional():
    head = small_head()
    x = latents(1)
    x2 = x.clone()
    x2[..., -1] += 1.0  # change the last frame only
    assert not torch.equal(head(x, 0.5)[..., 0], head(x2, 0.5)[..., 0])


def test_conditioned_head_uses_cond():
    head = small_head(cond_dim=5)
    x = latents(2)
    c1, c2 = torch.randn(2, 5), torch.randn(2, 5)
    assert not torch.equal(head(x, 0.5, cond=c1), head(x, 0.5, cond=c2))
    with pytest.raises(ValueError, match="cond is required"):
        head(x, 0.5)
    with pytest.raises(ValueError, match=r"cond must have shape \[2, 5\]"):
        head(x, 0.5, cond=torch.randn(2, 4))
    with pytest.raises(TypeError, match="cond must be a floating tensor"):
        head(x, 0.5, cond=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="cond_dim=0"):
        small_head()(x, 0.5, cond=c1)


@pytest.mark.parametrize(
    "t, err, match",
    [
        (-0.1, ValueError, r"\[0, 1\]"),
        (1.0001, ValueError, r"\[0, 1\]"),
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        (torch.tensor([0.1, 0.2]), ValueError, r"shape \[3\]"),
        (torch.full((3, 1), 0.5), ValueError, r"shape \[3\]"),
        (torch.tensor([0, 1, 1]), TypeError, "floating"),
        (True, TypeError, "bool"),
        ("0.5", TypeError, "str"),
    ],
)
def test_bad_timesteps_raise(t, err, match):
    with pytest.raises(err, match=match):
        small_head()(latents(3), t)


def test_bad_inputs_raise():
    head = small_head()
    with pytest.raises(ValueError, match=r"x must have shape \[B, 8, T\]"):
        head(torch.randn(2, 7, 16), 0.5)
    with pytest.raises(TypeError, match="dtype"):
        head(latents(2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="t is required"):
        head(latents(2))
    with pytest.raises(TypeError, match="mods must be a Modulators"):
        head(latents(2), mods=(torch.zeros(2, 6, 32),))
    with pytest.raises(ValueError, match=r"mods.blocks\[0\] must have shape \[3, 6, 32\]"):
        head(latents(3), mods=head.compute_modulators([0.1, 0.2]))
    with pytest.raises(ValueError, match="c \\(conditioning\\) or mods"):
        AdaLNZeroBlock(32, 4, 64)(torch.randn(1, 4, 32))
    with pytest.raises(ValueError, match=r"shape \[B, 448\]"):
        split_modulator_table(torch.zeros(2, 10), depth=2, dim=32)
    with pytest.raises(TypeError, match="ControlHeadConfig"):
        ControlHead({"dim": 32})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0}, "dim must be a positive int"),
        ({"depth": 1.5}, "depth must be a positive int"),
        ({"heads": 5}, "divisible by heads"),
        ({"heads": 256}, "even for rotary"),
        ({"mlp_ratio": 0}, "mlp_ratio must be a positive number"),
        ({"cond_dim": -1}, "cond_dim must be an int >= 0"),
        ({"freq_dim": 31}, "freq_dim must be even"),
        ({"dim": 40, "heads": 4, "modulator_rows": 4}, "multiples of 64"),
        ({"in_channels": True}, "in_channels must be a positive int"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ControlHeadConfig(**kwargs)
    ControlHeadConfig(dim=40, heads=4, modulator_rows=1)  # one row per call is always exact


def test_config_roundtrip_and_unknown_fields():
    c = ControlHeadConfig(dim=64, heads=4, cond_dim=3)
    assert ControlHeadConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown ControlHeadConfig fields \\['width'\\]"):
        ControlHeadConfig.from_dict({"width": 3})
    assert ControlHead(c, depth=1).config.depth == 1


@pytest.mark.parametrize("cfg", [SMALL, ControlHeadConfig(in_channels=4, out_channels=2, dim=64, depth=3, heads=8, freq_dim=32, cond_dim=7, mlp_ratio=2.0)])
def test_head_cost_matches_module_and_flop_counter(cfg):
    head = ControlHead(cfg)
    cost = head_cost(cfg, seq_len=24, batch=2)
    assert cost.params == sum(p.numel() for p in head.parameters())
    assert cost.modulator_params == sum(p.numel() for p in head.modulator_parameters())
    cond = torch.randn(2, cfg.cond_dim) if cfg.cond_dim else None
    mods = head.compute_modulators([0.2, 0.4], cond)
    x = torch.randn(2, cfg.in_channels, 24)
    with FlopCounterMode(display=False) as fc:
        head(x, mods=mods)
    # torch's counter does not count CPU flash-attention kernels; the linear part must agree
    assert fc.get_total_flops() in (cost.body_flops, cost.body_flops - cost.attention_flops)
    t = torch.rand(cfg.modulator_rows)
    c = torch.randn(cfg.modulator_rows, cfg.cond_dim) if cfg.cond_dim else None
    with FlopCounterMode(display=False) as fc:
        head.modulator_table(t, c)
    assert fc.get_total_flops() == cost.modulator_flops_per_chunk
    assert cost.modulator_flops * cfg.modulator_rows == cost.modulator_flops_per_chunk * 2
    assert 0 < cost.modulator_share < 1 and cost.as_dict()["total_flops"] == cost.total_flops
    with pytest.raises(ValueError, match="seq_len"):
        head_cost(cfg, seq_len=0)


def test_training_without_cache_updates_modulator_weights():
    head = small_head()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in head.modulator_parameters()]
    x, target = latents(4), torch.randn(4, 3, 16)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(head(x, torch.rand(4)), target).backward()
        opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, head.modulator_parameters()))

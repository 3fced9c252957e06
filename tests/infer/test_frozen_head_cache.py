"""load_head returns a frozen head the cache can serve; a trainable head makes the cache bypass,
and it says so once."""

from __future__ import annotations

import warnings

import pytest
import torch

from fusion_infer import ControlHead, ControlHeadConfig, TimeConditioningCache, load_head

CFG = ControlHeadConfig(in_channels=8, out_channels=2, dim=32, depth=1, heads=2, freq_dim=32)


@pytest.fixture
def checkpoint(tmp_path):
    from fusion_train import export_checkpoint

    torch.manual_seed(0)
    head = ControlHead(CFG)
    with torch.no_grad():  # adaLN-zero initialises the output layers to zero: randomise everything
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return export_checkpoint(head, None, tmp_path / "h.safetensors")


def test_load_head_returns_a_frozen_eval_model(checkpoint):
    head = load_head(checkpoint).model
    assert not head.training
    assert not any(p.requires_grad for p in head.parameters())
    x = torch.randn(2, 8, 16, requires_grad=True)  # guidance still differentiates w.r.t. the input
    head(x, 0.5).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_loaded_head_is_served_by_the_cache(checkpoint):
    head = load_head(checkpoint).model
    x = torch.randn(2, 8, 16)
    ref = head(x, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no bypass warning for a frozen head
        with TimeConditioningCache(head) as cache:
            cache.warm(torch.tensor([0.25]))
            out = head(x, 0.25)
    assert torch.equal(out, ref) and cache.stats.hits == 1 and cache.stats.bypassed == 0


def test_bypass_for_trainable_weights_warns_once(checkpoint):
    head = load_head(checkpoint).model.requires_grad_(True)
    x = torch.randn(2, 8, 16)
    with TimeConditioningCache(head) as cache:
        with pytest.warns(RuntimeWarning, match=r"bypassed: grad is enabled .*head\.requires_grad_\(False\)"):
            head(x, 0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the second and third bypass stay quiet
            head(x, 0.5)
            head(x, 0.75)
            with torch.no_grad():  # no grad mode: served, no warning
                head(x, 0.5)
    assert cache.stats.bypassed == 3 and cache.stats.hits + cache.stats.misses >= 1

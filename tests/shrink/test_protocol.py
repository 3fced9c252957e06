"""Shrunk heads keep the mods=None protocol, the TimeConditioningCache contract and their config."""

from __future__ import annotations

import pytest
import torch

from fusion_infer import ControlHead, ControlHeadConfig, TimeConditioningCache
from fusion_infer.shrink import shrink_depth, shrink_width

from . import models


def shrunk_variants():
    h = models.head()
    cal = models.batch()
    return {
        "depth_uniform": shrink_depth(h, 2),
        "depth_importance": shrink_depth(h, 3, strategy="importance", calibration=cal),
        "width_half": shrink_width(h, 0.5, calibration=cal),
        "depth_and_width": shrink_width(shrink_depth(h, 3), 0.75, calibration=cal),
    }


@pytest.fixture(scope="module")
def variants():
    return shrunk_variants()


@pytest.mark.parametrize("name", ["depth_uniform", "depth_importance", "width_half", "depth_and_width"])
def test_cached_equals_uncached_bit_for_bit(variants, name):
    model = variants[name].requires_grad_(False)
    x, _ = models.batch(4)
    t = torch.tensor([0.0, 0.25, 0.25, 1.0])
    ref = model(x, mods=model.compute_modulators(t))
    assert torch.equal(model(x, t), ref)  # mods=None == explicit mods
    with TimeConditioningCache(model, max_entries=64) as cache:
        cache.warm(torch.linspace(0, 1, 9))
        with cache.render():
            first = model(x, t)
            second = model(x, t)
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert cache.stats.hits > 0


@pytest.mark.parametrize("name", ["depth_importance", "width_half", "depth_and_width"])
def test_config_round_trip_rebuilds_the_same_model(variants, name):
    model = variants[name]
    cfg = ControlHeadConfig.from_dict(model.config.to_dict())
    assert cfg == model.config
    twin = ControlHead(cfg)
    twin.load_state_dict(model.state_dict())
    x, t = models.batch()
    assert torch.equal(twin(x, t), model(x, t))


def test_config_validation_of_the_new_fields():
    with pytest.raises(ValueError, match="attention_head_dim must be even"):
        ControlHeadConfig(dim=32, heads=3, attention_head_dim=7, freq_dim=32)
    with pytest.raises(ValueError, match="mlp_hidden_dim must be None or a positive int"):
        ControlHeadConfig(dim=32, heads=4, mlp_hidden_dim=0, freq_dim=32)
    c = ControlHeadConfig(dim=32, heads=3, attention_head_dim=8, mlp_hidden_dim=40, freq_dim=32)
    assert (c.head_dim, c.attention_dim, c.mlp_hidden) == (8, 24, 40)


def test_shrunk_head_trains():
    model = shrunk_variants()["depth_and_width"].train()
    x, t = models.batch()
    loss = model(x, t).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["depth_importance", "width_half", "depth_and_width"])
def test_export_and_load_through_the_checkpoint_format(variants, name, tmp_path):
    from fusion_infer import load_head
    from fusion_train import export_checkpoint

    model = variants[name]
    path = export_checkpoint(model, None, tmp_path / f"{name}.safetensors", step=0)
    loaded = load_head(path)
    assert loaded.model.config == model.config
    assert loaded.metadata["model_config"] == model.config.to_dict()
    x, t = models.batch()
    assert torch.equal(loaded.model(x, t), model(x, t))

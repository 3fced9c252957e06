"""TimeConditioningCache(offload_weights=True): steps run without the modulator weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion_infer import TimeConditioningCache

from .heads import latents, small_head, uncached

SCHEDULE = [1.0, 0.75, 0.5, 0.25, 0.0]


def _to_meta(model: nn.Module, tensors: list[torch.Tensor]) -> int:
    ids = {id(t) for t in tensors}
    n = 0
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in ids:
                module._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
                n += 1
    return n


def test_warm_then_meta_weights_steps_bit_equal():
    head = small_head().requires_grad_(False)
    x = latents(2)
    reference = [uncached(head, x, t) for t in SCHEDULE]
    cache = TimeConditioningCache(head, offload_weights=True, samples_per_tensor=0, probe_every=None).attach()
    assert cache.warm(torch.tensor(SCHEDULE)) == len(SCHEDULE)
    n = len(head.modulator_parameters())
    assert _to_meta(head, head.modulator_parameters()) == n
    # Replacing weights is a weight change the fingerprint would rightly answer by dropping the
    # table; accept the meta weights as the baseline so the test shows what the steps touch.
    cache.core._snapshot = None
    with torch.no_grad():
        outputs = [head(x, t) for t in SCHEDULE]
    assert all(torch.equal(o, r) for o, r in zip(outputs, reference))
    assert cache.stats.hits == len(SCHEDULE)
    with pytest.raises((NotImplementedError, RuntimeError)):  # a miss needs the weights
        head(x, 0.125)


def test_offloaded_miss_and_weight_change_stay_exact():
    head = small_head(cond_dim=3).requires_grad_(False)
    x = latents(2)
    cond = torch.randn(2, 3)
    cache = TimeConditioningCache(head, offload_weights=True).attach()
    assert all(p.device.type == "cpu" for p in cache.offload.tensors)
    cache.warm(torch.tensor([0.5, 0.5]), cond)
    new_cond = torch.randn(2, 3)
    with torch.no_grad():
        out = head(x, 0.5, cond=new_cond)  # miss: new conditioning
    cache.detach()
    assert torch.equal(out, uncached(head, x, 0.5, new_cond))
    cache.attach()
    with torch.no_grad():
        for p in cache.offload.tensors:
            p.data.mul_(1.25)  # EMA-style write on the resting copy
        out = head(x, 0.5, cond=cond)
    cache.detach()
    assert torch.equal(out, uncached(head, x, 0.5, cond))
    assert cache.stats.invalidations_by_reason["content"] >= 1


def test_report_restore_and_errors():
    head = small_head().requires_grad_(False)
    cache = TimeConditioningCache(head, offload_weights=True)
    report = cache.resident_report()
    mod = sum(p.numel() * p.element_size() for p in head.modulator_parameters())
    assert report.modulator_bytes == mod and report.same_device and report.saved_bytes == 0
    cache.restore_weights()
    assert cache.offload is None
    with pytest.raises(TypeError, match="offload_weights"):
        TimeConditioningCache(head, offload_weights=1)
    with pytest.raises(ValueError, match="offload_device"):
        TimeConditioningCache(head, offload_weights=True, offload_device="meta")
    trainable = small_head()
    cache = TimeConditioningCache(trainable, offload_weights=True).attach()
    with pytest.raises(RuntimeError, match="restore_weights"):
        trainable(latents(1), 0.5)

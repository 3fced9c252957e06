"""Small randomised control heads shared by the fusion_infer tests."""

from __future__ import annotations

import torch

from fusion_infer import ControlHead, ControlHeadConfig

SMALL = ControlHeadConfig(in_channels=8, out_channels=3, dim=32, depth=2, heads=4, freq_dim=32)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values: zero-initialised adaLN/output layers would make
    cached == uncached trivially true (all modulators zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def small_head(seed: int = 0, **overrides) -> ControlHead:
    """A randomised tiny head (dim 32, depth 2); ``overrides`` change config fields."""
    torch.manual_seed(seed)
    return randomize_(ControlHead(SMALL, **overrides), seed)


def latents(batch: int, seq: int = 16, seed: int = 1, channels: int = 8, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, seq, generator=g, dtype=dtype)


def uncached(model: ControlHead, x: torch.Tensor, t, cond=None) -> torch.Tensor:
    """A fresh evaluation that bypasses any attached cache (explicit ``mods``)."""
    batch = x.shape[0]
    tt, cc = model.prepare_conditions(t, cond, batch)
    return model(x, mods=model.compute_modulators(tt, cc))

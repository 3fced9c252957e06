"""Tiny data and head configs shared by the training tests (fp32, a few frames, one block)."""

from __future__ import annotations

import functools

import torch

from fusion_infer import ControlHead, ControlHeadConfig
from fusion_train.data import synthetic_data

# dim=32: every matrix routes to FusionOpt's scalar (SF-AdamW) path; WIDE has 128-wide matrices so
# the spectral (Newton–Schulz) path runs too.
TINY = ControlHeadConfig(in_channels=64, out_channels=5, dim=32, depth=1, heads=2, freq_dim=64, modulator_rows=2)
WIDE = ControlHeadConfig(in_channels=64, out_channels=5, dim=128, depth=1, heads=2, freq_dim=64, modulator_rows=1)


@functools.cache
def tiny_data(n: int = 12, frames: int = 16, seed: int = 0):
    """Synthetic excerpts (cached: the generator renders audio)."""
    return synthetic_data(n, frames=frames, seed=seed)


def random_head(config: ControlHeadConfig = TINY, seed: int = 0) -> ControlHead:
    """A head with every parameter random (zero-initialised layers would hide mistakes)."""
    torch.manual_seed(seed)
    head = ControlHead(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return head


def trained_steps(model, optimizer, steps: int = 3, seed: int = 0) -> None:
    """A few real optimizer steps on random data so Schedule-Free's x, y and z all differ."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(2, cfg.in_channels, 8, generator=g)
        t = torch.rand(2, generator=g)
        loss = model(x, t).square().mean()
        loss.backward()
        optimizer.step(loss=loss.detach()) if hasattr(optimizer, "averaged") else optimizer.step()

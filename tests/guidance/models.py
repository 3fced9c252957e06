"""Tiny randomised base models/heads and analytic oracles shared by the guidance tests."""

from __future__ import annotations

import torch
from torch import nn

from fusion_infer import ControlHead, ControlHeadConfig
from fusion_infer.models.base_dit import BaseDiT, base_dit_config

CHANNELS, FRAMES = 8, 16


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Random values everywhere: zero-initialised adaLN layers would make caching trivially exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def small_base(seed: int = 0) -> BaseDiT:
    return randomize_(BaseDiT(base_dit_config(in_channels=CHANNELS, dim=32, depth=2, heads=4, freq_dim=32)), seed)


def small_head(seed: int = 1, out_channels: int = 1) -> ControlHead:
    cfg = ControlHeadConfig(in_channels=CHANNELS, out_channels=out_channels, dim=32, depth=1, heads=4, freq_dim=32)
    return randomize_(ControlHead(cfg), seed)


def noise(batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, CHANNELS, FRAMES, generator=torch.Generator().manual_seed(seed))


class PointOracle(nn.Module):
    """Exact RF velocity when the data is the single point ``x0``: ``v = (x − x0)/t``."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("x0", x0)

    def forward(self, x, t):
        return (x - self.x0) / t


class GaussianOracle(nn.Module):
    """Exact RF velocity for data ``N(m, s²)`` per element (posterior mean of a Gaussian).

    ``x_t = (1−t)x0 + tε``: ``E[x0|x_t] = m + (1−t)s²/((1−t)²s² + t²)·(x_t − (1−t)m)``, and the
    probability-flow map sends ``ε`` to ``m + s·ε``.
    """

    def __init__(self, m: float, s: float) -> None:
        super().__init__()
        self.m, self.s = m, s

    def forward(self, x, t):
        a, s2 = 1.0 - t, self.s**2
        x0 = self.m + a * s2 / (a * a * s2 + t * t) * (x - a * self.m)
        return (x - x0) / t


class ChannelMeanHead(nn.Module):
    """A differentiable analytic 'head': the channel mean ``[B, 1, T]`` (ignores t)."""

    def forward(self, x, t):
        return x.mean(1, keepdim=True)

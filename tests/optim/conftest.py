import pytest
import torch
from torch import nn


class TinyDiT(nn.Module):
    """A small adaLN-zero-shaped model with the parameter kinds routing must tell apart."""

    def __init__(self, dim: int = 128, in_ch: int = 16, n_classes: int = 10, depth: int = 2):
        super().__init__()
        self.x_embedder = nn.Linear(in_ch, dim)
        self.y_embedder = nn.Embedding(n_classes, dim)
        self.t_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            blk = nn.Module()
            blk.norm = nn.LayerNorm(dim)
            blk.qkv = nn.Linear(dim, 3 * dim)
            blk.proj = nn.Linear(dim, dim)
            blk.fc1 = nn.Linear(dim, 2 * dim)
            blk.fc2 = nn.Linear(2 * dim, dim)
            blk.adaLN_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
            self.blocks.append(blk)
        self.final_norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, in_ch)

    def forward(self, x, t, y):
        c = self.t_embedder(t) + self.y_embedder(y)
        h = self.x_embedder(x)
        for blk in self.blocks:
            sh1, sc1, g1, sh2, sc2, g2 = blk.adaLN_mod(c).chunk(6, dim=-1)
            a = blk.norm(h) * (1 + sc1[:, None]) + sh1[:, None]
            q, k, v = blk.qkv(a).chunk(3, dim=-1)
            att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v
            h = h + g1[:, None] * blk.proj(att)
            a = blk.norm(h) * (1 + sc2[:, None]) + sh2[:, None]
            h = h + g2[:, None] * blk.fc2(torch.nn.functional.gelu(blk.fc1(a)))
        return self.proj_out(self.final_norm(h))


def make_batches(n: int, seed: int = 0, batch: int = 8, tokens: int = 12, dim: int = 128, in_ch: int = 16):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, tokens, in_ch, generator=g)
        t = torch.randn(batch, dim, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        target = torch.randn(batch, tokens, in_ch, generator=g)
        out.append((x, t, y, target))
    return out


@pytest.fixture
def tiny_dit():
    torch.manual_seed(0)
    model = TinyDiT()
    # adaLN-zero initialises the modulators at zero; give them small values so every path trains
    for blk in model.blocks:
        nn.init.normal_(blk.adaLN_mod[1].weight, std=0.02)
    return model

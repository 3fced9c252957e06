"""Tiny randomised models shared by the shrink tests (no downloads: built from configs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusion_infer import ControlHead, ControlHeadConfig

CONFIG = ControlHeadConfig(in_channels=8, out_channels=3, dim=32, depth=4, heads=4, freq_dim=32)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Random values everywhere: zero-initialised adaLN layers make every block the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def head(seed: int = 0, **overrides) -> ControlHead:
    torch.manual_seed(seed)
    return randomize_(ControlHead(CONFIG, **overrides), seed).eval()


def batch(n: int = 3, seq: int = 16, seed: int = 1, channels: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, seq, generator=g), torch.rand(n, generator=g)


def tiny_dit(layers: int = 3):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    m = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=layers,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1,
    )
    return randomize_(m, 1, 0.1).eval()


def dit_inputs(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(2)
    return {
        "hidden_states": torch.randn(n, 4, 8, 8, generator=g),
        "timestep": torch.tensor([3, 7][:n]),
        "class_labels": torch.tensor([1, 2][:n]),
    }


def tiny_pixart(layers: int = 3):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    m = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=layers, sample_size=8, patch_size=2, cross_attention_dim=16,
        caption_channels=12, norm_num_groups=1,
    )
    return randomize_(m, 1, 0.1).eval()


def pixart_inputs(n: int = 2, text_tokens: int = 5) -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "hidden_states": torch.randn(n, 4, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(n, text_tokens, 12, generator=g),
        "timestep": torch.tensor([3, 7][:n]),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


def math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Attention written as plain matmuls, so FlopCounterMode sees ``QKᵀ`` and ``AV`` on CPU."""
    assert dropout_p == 0.0 and not is_causal
    s = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    return F.softmax(s, dim=-1) @ v

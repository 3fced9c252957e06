"""Tiny random diffusers transformers and their forward inputs (no downloads, no text encoders).

Every parameter is re-drawn from N(0, 0.2²) after construction: diffusers' default init leaves
some modulator paths near zero, and a test that cannot tell a stale modulator from a fresh one
cannot fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import (
    AuraFlowTransformer2DModel,
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
)
from torch import nn


def randomize(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return model


def make_dit(num_layers: int = 2) -> nn.Module:
    # num_embeds_ada_norm=1000: DiTPipeline hard-codes the null class 1000.
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=num_layers, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
    )


def make_pixart(additional: bool = True, num_layers: int = 2) -> nn.Module:
    # inner dim 24: adaLN-single's size embedding needs a multiple of 3.
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
        num_layers=num_layers, cross_attention_dim=24, caption_channels=12, sample_size=8,
        use_additional_conditions=additional,
    )


def make_sd3(dual: bool = False, num_layers: int = 2) -> nn.Module:
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
        caption_projection_dim=16, pooled_projection_dim=10, pos_embed_max_size=8,
        dual_attention_layers=(0,) if dual else (), qk_norm="rms_norm" if dual else None,
    )


def make_flux(guidance: bool = True) -> nn.Module:
    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, out_channels=None, num_layers=1, num_single_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
        pooled_projection_dim=10, guidance_embeds=guidance, axes_dims_rope=(2, 2, 4),
    )


def make_auraflow() -> nn.Module:
    return AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=16,
    )


def make_sana(guidance: bool = False) -> nn.Module:
    return SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=12, sample_size=8, guidance_embeds=guidance,
    )


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dit_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    labels = torch.tensor([3, 1000, 7, 1000][:batch])  # CFG rows: class, null class
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
        "class_labels": labels,
    }


def pixart_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
        "added_cond_kwargs": {
            "resolution": torch.tensor([[64.0, 64.0], [64.0, 96.0]][:batch]).to(dtype),
            "aspect_ratio": torch.tensor([[1.0], [1.5]][:batch]).to(dtype),
        },
    }


def sd3_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "pooled_projections": torch.randn(batch, 10, generator=g).to(dtype),  # rows differ (CFG)
        "timestep": torch.full((batch,), float(t)).to(dtype),
    }


def flux_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 0.999, guidance: bool = True) -> dict:
    g = _gen(seed)
    out = {
        "hidden_states": torch.randn(batch, 16, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "pooled_projections": torch.randn(batch, 10, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "img_ids": torch.randn(16, 3, generator=g),
        "txt_ids": torch.zeros(5, 3),
    }
    if guidance:
        out["guidance"] = torch.full((batch,), 3.5).to(dtype)
    return out


def auraflow_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 0.999) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
    }


def sana_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0, guidance: bool = False) -> dict:
    g = _gen(seed)
    out = {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
    }
    if guidance:
        out["guidance"] = torch.full((batch,), 4.5).to(dtype)
    return out


@dataclass(frozen=True)
class Case:
    """One model configuration under test."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[..., dict]
    t_hi: float  # a first timestep of a schedule
    t_lo: float  # a later timestep


CASES = [
    Case("dit", make_dit, dit_inputs, 999, 500),
    Case("pixart_alpha", lambda: make_pixart(True), pixart_inputs, 999, 500),
    Case("pixart_sigma", lambda: make_pixart(False), pixart_inputs, 999, 500),
    Case("sd3", lambda: make_sd3(False), sd3_inputs, 1000.0, 500.0),
    Case("sd35", lambda: make_sd3(True), sd3_inputs, 1000.0, 500.0),
    Case("flux_dev", lambda: make_flux(True), flux_inputs, 1.0, 0.5),
    Case("auraflow", make_auraflow, auraflow_inputs, 1.0, 0.5),
    Case("sana", make_sana, sana_inputs, 999, 500),
    Case("sana_sprint", lambda: make_sana(True), lambda *a, **k: sana_inputs(*a, guidance=True, **k), 999, 500),
    Case("flux_schnell", lambda: make_flux(False), lambda *a, **k: flux_inputs(*a, guidance=False, **k), 1.0, 0.5),
]
CASE_BY_NAME = {c.name: c for c in CASES}


def build(case: Case, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(case.build(), seed).to(dtype).eval()


def forward(model: nn.Module, inputs: dict, **extra) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **extra).sample

"""Tiny random image transformers of the newer diffusers families and their forward inputs.

Configurations are reduced copies of the released models' configs (no downloads, no text
encoders); every parameter is re-drawn by :func:`diffusers_tiny_models.randomize` so a stale
modulator changes the output. Inputs give each batch row its own conditioning (CFG-like rows).
"""

from __future__ import annotations

import torch
from diffusers import (
    BriaFiboTransformer2DModel,
    BriaTransformer2DModel,
    ChromaTransformer2DModel,
    CogView3PlusTransformer2DModel,
    CogView4Transformer2DModel,
    ErnieImageTransformer2DModel,
    Flux2Transformer2DModel,
    GlmImageTransformer2DModel,
    HiDreamImageTransformer2DModel,
    HunyuanDiT2DModel,
    HunyuanImageTransformer2DModel,
    LongCatImageTransformer2DModel,
    Lumina2Transformer2DModel,
    NucleusMoEImageTransformer2DModel,
    OmniGenTransformer2DModel,
    OvisImageTransformer2DModel,
    QwenImageTransformer2DModel,
    ZImageTransformer2DModel,
)
from diffusers.models.embeddings import get_2d_rotary_pos_embed
from diffusers.models.transformers.transformer_krea2 import Krea2Transformer2DModel
from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21Transformer2DModel
from diffusers_tiny_models import Case
from torch import nn


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _t(batch: int, t: float, dtype: torch.dtype, spread: float) -> torch.Tensor:
    # Rows share the step's timestep as pipelines pass it (`t.expand(batch)`); `spread` != 0 gives
    # rows different values where a model is also driven per row.
    return (torch.full((batch,), float(t)) + spread * torch.arange(batch)).to(dtype)


# ----------------------------------------------------------------------------- Qwen-Image


def make_qwen_image(zero_cond_t: bool = False, additional_t_cond: bool = False, num_layers: int = 2) -> nn.Module:
    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=8, out_channels=4, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, axes_dims_rope=(2, 2, 4),
        zero_cond_t=zero_cond_t, use_additional_t_cond=additional_t_cond,
    )


def qwen_image_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0, *,
                      zero_cond_t: bool = False, additional_t_cond: bool = False) -> dict:
    g = _gen(seed)
    shapes = [(1, 4, 4)] + ([(1, 2, 2)] if zero_cond_t else [])  # Edit-2511: target, then a reference
    tokens = sum(f * h * w for f, h, w in shapes)
    out = {
        "hidden_states": torch.randn(batch, tokens, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "encoder_hidden_states_mask": torch.ones(batch, 5, dtype=torch.long),
        "timestep": _t(batch, t, dtype, 0.0),
        "img_shapes": [shapes] * batch,
    }
    if additional_t_cond:
        out["additional_t_cond"] = torch.tensor([0, 1, 1, 0][:batch])
    return out


# ----------------------------------------------------------------------------- FLUX.2


def make_flux2(guidance: bool = True) -> nn.Module:
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, timestep_guidance_channels=16,
        axes_dims_rope=(2, 2, 2, 2), guidance_embeds=guidance,
    )


def flux2_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0, *, guidance: bool = True) -> dict:
    g = _gen(seed)
    out = {
        "hidden_states": torch.randn(batch, 16, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "timestep": _t(batch, t, dtype, 0.0),
        "img_ids": torch.randint(0, 4, (16, 4), generator=g),
        "txt_ids": torch.zeros(5, 4, dtype=torch.long),
    }
    if guidance:
        out["guidance"] = torch.tensor([4.0, 2.5, 4.0, 2.5][:batch]).to(dtype)
    return out


# ----------------------------------------------------------------------------- Z-Image


def make_z_image() -> nn.Module:
    return ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=12, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32],
    )


def z_image_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 0.0) -> dict:
    g = _gen(seed)
    return {
        "x": [torch.randn(4, 1, 8, 8, generator=g).to(dtype) for _ in range(batch)],
        "t": torch.full((batch,), float(t)).to(dtype),
        "cap_feats": [torch.randn(5 + i, 12, generator=g).to(dtype) for i in range(batch)],
    }


# ----------------------------------------------------------------------------- Chroma


def make_chroma() -> nn.Module:
    return ChromaTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, axes_dims_rope=(2, 2, 4),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
    )


def chroma_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 16, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "timestep": _t(batch, t, dtype, 0.0),
        "img_ids": torch.randint(0, 4, (16, 3), generator=g).float(),
        "txt_ids": torch.zeros(5, 3),
    }


# ----------------------------------------------------------------------------- HiDream


def make_hidream() -> nn.Module:
    return HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[8, 4], text_emb_dim=10, num_routed_experts=2,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(16, 16), llama_layers=(0, 1),
    )


def hidream_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1000.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "timesteps": torch.full((batch,), float(t)).to(dtype),
        "encoder_hidden_states_t5": torch.randn(batch, 5, 8, generator=g).to(dtype),
        "encoder_hidden_states_llama3": torch.randn(2, batch, 4, 4, generator=g).to(dtype),
        "pooled_embeds": torch.randn(batch, 10, generator=g).to(dtype),
    }


# ----------------------------------------------------------------------------- Lumina2


def make_lumina2() -> nn.Module:
    return Lumina2Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_refiner_layers=1,
        num_attention_heads=3, num_kv_heads=1, multiple_of=2, axes_dim_rope=(4, 2, 2),
        axes_lens=(128, 128, 128), cap_feat_dim=12,
    )


def lumina2_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 0.0) -> dict:
    g = _gen(seed)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "encoder_attention_mask": mask,
    }


# ----------------------------------------------------------------------------- CogView4


def make_cogview4() -> nn.Module:
    return CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4,
        text_embed_dim=12, time_embed_dim=8, condition_dim=4,
    )


def cogview4_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    sizes = torch.tensor([[64.0, 64.0], [64.0, 96.0], [32.0, 64.0], [64.0, 32.0]][:batch])
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "original_size": sizes.to(dtype),
        "target_size": sizes.flip(-1).to(dtype),
        "crop_coords": torch.zeros(batch, 2).to(dtype),
    }


def make_cogview3plus() -> nn.Module:
    return CogView3PlusTransformer2DModel(
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4, out_channels=4,
        text_embed_dim=12, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8,
    )


def make_glm_image() -> nn.Module:
    return GlmImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4,
        text_embed_dim=12, time_embed_dim=8, condition_dim=4, prior_vq_quantizer_codebook_size=32,
    )


def glm_image_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    x = cogview4_inputs(batch, dtype, seed, t)
    del x["original_size"]
    g = _gen(seed + 100)
    x["prior_token_id"] = torch.randint(0, 32, (batch, 16), generator=g)
    x["prior_token_drop"] = torch.tensor([False, True, False, True][:batch])
    return x


# ----------------------------------------------------------------------------- ERNIE-Image


def make_ernie_image() -> nn.Module:
    return ErnieImageTransformer2DModel(
        hidden_size=16, num_attention_heads=2, num_layers=2, ffn_hidden_size=32, in_channels=4, out_channels=4,
        patch_size=2, text_in_dim=12, rope_axes_dim=(2, 2, 4),
    )


def ernie_image_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "text_bth": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "text_lens": torch.tensor([5, 3, 4, 2][:batch]),
    }


# ----------------------------------------------------------------------------- OmniGen


def make_omnigen() -> nn.Module:
    return OmniGenTransformer2DModel(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=2,
        pad_token_id=0, vocab_size=64, in_channels=4, time_step_dim=4,
        rope_scaling={"long_factor": [1.0, 2.0], "short_factor": [1.0, 2.0]},
    )


def omnigen_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0) -> dict:
    g = _gen(seed)
    text, image = 5, 16
    seq = text + 1 + image
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "input_ids": torch.randint(1, 64, (batch, text), generator=g),
        "input_img_latents": [],
        "input_image_sizes": {},
        "attention_mask": torch.ones(batch, seq, seq).to(dtype),
        "position_ids": torch.arange(seq).repeat(batch, 1),
    }


# ----------------------------------------------------------------------------- HunyuanImage 2.1


def make_hunyuan_image(guidance: bool = False, meanflow: bool = False) -> nn.Module:
    return HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=2, patch_size=(1, 1), guidance_embeds=guidance, text_embed_dim=12,
        rope_axes_dim=(4, 4), use_meanflow=meanflow,
    )


def hunyuan_image_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0, *,
                         guidance: bool = False, meanflow: bool = False) -> dict:
    g = _gen(seed)
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[1:, 3:] = 0  # padded prompts in the other rows
    out = {
        "hidden_states": torch.randn(batch, 4, 4, 4, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g).to(dtype),
        "encoder_attention_mask": mask,
    }
    if guidance:
        out["guidance"] = torch.full((batch,), 3500.0).to(dtype)
    if meanflow:
        out["timestep_r"] = torch.full((batch,), float(t) / 2).to(dtype)
    return out


# ----------------------------------------------------------------------------- Nucleus-MoE-Image


def make_nucleusmoe_image() -> nn.Module:
    return NucleusMoEImageTransformer2DModel(
        # 5 layers: the default strategy keeps blocks 0-2 and the last dense, so block 3 routes experts
        patch_size=2, in_channels=8, out_channels=2, num_layers=5, attention_head_dim=8, num_attention_heads=2,
        num_key_value_heads=2, joint_attention_dim=12, axes_dims_rope=(2, 2, 4), moe_enabled=True,
        dense_moe_strategy="leave_first_three_and_last_block_dense", num_experts=4, moe_intermediate_dim=8,
        capacity_factors=1.0,
    )


def nucleusmoe_image_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0) -> dict:
    x = qwen_image_inputs(batch, dtype, seed, t)
    x["img_shapes"] = x["img_shapes"][0]
    return x


# ----------------------------------------------------------------------------- Hunyuan-DiT


def make_hunyuan_dit(style_and_size: bool = True) -> nn.Module:
    return HunyuanDiT2DModel(
        sample_size=8, num_layers=4, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
        cross_attention_dim=12, cross_attention_dim_t5=16, pooled_projection_dim=8, hidden_size=24,
        text_len=4, text_len_t5=6, use_style_cond_and_image_meta_size=style_and_size,
    )


def hunyuan_dit_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    rope = get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4), output_type="pt")
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 4, 12, generator=g).to(dtype),
        "text_embedding_mask": torch.ones(batch, 4, dtype=torch.long),
        "encoder_hidden_states_t5": torch.randn(batch, 6, 16, generator=g).to(dtype),
        "text_embedding_mask_t5": torch.ones(batch, 6, dtype=torch.long),
        "image_meta_size": torch.tensor([[64, 64, 64, 64, 0, 0], [64, 96, 64, 96, 0, 0]][:batch]).to(dtype),
        "style": torch.zeros(batch, dtype=torch.long),  # the released models have one style
        "image_rotary_emb": rope,
    }


# ----------------------------------------------------------------------------- Krea 2


def make_krea2() -> nn.Module:
    return Krea2Transformer2DModel(
        in_channels=8, num_layers=2, attention_head_dim=8, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, timestep_embed_dim=16, text_hidden_dim=16, num_text_layers=2,
        text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=32,
        num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(2, 2, 4),
    )


def krea2_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0) -> dict:
    g = _gen(seed)
    ids = torch.cat([torch.zeros(5, 3), torch.randint(0, 4, (16, 3), generator=g).float()])
    return {
        "hidden_states": torch.randn(batch, 16, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 2, 16, generator=g).to(dtype),
        "timestep": torch.full((batch,), float(t)).to(dtype),
        "position_ids": ids,
    }


# ----------------------------------------------------------------------------- FLUX.1-style stacks
# LongCat-Image, Bria 3.x, Bria FIBO, Ovis-Image: one temb, AdaLayerNormZero(/Single) blocks.

_FLUXLIKE = dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=12, axes_dims_rope=[2, 2, 4])


def make_longcat_image() -> nn.Module:
    return LongCatImageTransformer2DModel(**_FLUXLIKE, pooled_projection_dim=12)


def make_bria(guidance: bool = False) -> nn.Module:
    return BriaTransformer2DModel(**_FLUXLIKE, guidance_embeds=guidance)


def make_bria_fibo(guidance: bool = False) -> nn.Module:
    return BriaFiboTransformer2DModel(**{**_FLUXLIKE, "joint_attention_dim": 16}, guidance_embeds=guidance,
                                      text_encoder_dim=6)


def make_ovis_image() -> nn.Module:
    return OvisImageTransformer2DModel(**_FLUXLIKE, out_channels=8)


def fluxlike_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0, *, ctx: int = 12,
                    guidance: float | None = None, fibo_layers: int = 0) -> dict:
    g = _gen(seed)
    out = {
        "hidden_states": torch.randn(batch, 16, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, ctx, generator=g).to(dtype),
        "timestep": _t(batch, t, dtype, 0.0),
        "img_ids": torch.randint(0, 4, (16, 3), generator=g).float(),
        "txt_ids": torch.zeros(5, 3),
    }
    if guidance is not None:
        out["guidance"] = torch.full((batch,), guidance).to(dtype)
    if fibo_layers:
        out["text_encoder_layers"] = [torch.randn(batch, 5, 6, generator=g).to(dtype) for _ in range(fibo_layers)]
    return out


# ----------------------------------------------------------------------------- Qwen-Image 2.1


def make_qwen_image21(causal: bool = True) -> nn.Module:
    return QwenImage21Transformer2DModel(
        patch_size=1, in_channels=8, out_channels=8, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        context_in_dim=12, mlp_ratio=2, axes_dims_rope=(2, 2, 4), causal_condition=causal,
    )


def qwen_image21_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 1.0) -> dict:
    g = _gen(seed)
    text = 5
    img_mask = torch.zeros(batch, text + 4, dtype=torch.bool)
    img_mask[:, text:] = True  # 4 image slots of 2x2 latent tokens: a 4x4 target
    return {
        "hidden_states": torch.randn(batch, 16, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, text, 12, generator=g).to(dtype),
        "timestep": _t(batch, t, dtype, 0.0),
        "img_shapes": [[(1, 4, 4)]] * batch,
        "img_mask": img_mask,
    }


CASES = [
    Case("qwen_image", make_qwen_image, qwen_image_inputs, 1.0, 0.5),
    Case("qwen_image_edit_2511", lambda: make_qwen_image(zero_cond_t=True),
         lambda *a, **k: qwen_image_inputs(*a, zero_cond_t=True, **k), 1.0, 0.5),
    Case("qwen_image_layered", lambda: make_qwen_image(additional_t_cond=True),
         lambda *a, **k: qwen_image_inputs(*a, additional_t_cond=True, **k), 1.0, 0.5),
    Case("flux2_dev", make_flux2, flux2_inputs, 1.0, 0.5),
    Case("flux2_klein", lambda: make_flux2(False), lambda *a, **k: flux2_inputs(*a, guidance=False, **k), 1.0, 0.5),
    Case("z_image", make_z_image, z_image_inputs, 0.0, 0.5),
    Case("chroma", make_chroma, chroma_inputs, 1.0, 0.5),
    Case("hidream", make_hidream, hidream_inputs, 1000.0, 500.0),
    Case("lumina2", make_lumina2, lumina2_inputs, 0.0, 0.5),
    Case("cogview4", make_cogview4, cogview4_inputs, 999.0, 500.0),
    Case("hunyuan_dit", make_hunyuan_dit, hunyuan_dit_inputs, 999.0, 500.0),
    Case("hunyuan_dit_12", lambda: make_hunyuan_dit(False), hunyuan_dit_inputs, 999.0, 500.0),
    Case("krea2", make_krea2, krea2_inputs, 1.0, 0.5),
    Case("longcat_image", make_longcat_image, fluxlike_inputs, 1.0, 0.5),
    Case("bria", make_bria, fluxlike_inputs, 1000.0, 500.0),
    Case("bria_fibo", lambda: make_bria_fibo(True),
         lambda *a, **k: fluxlike_inputs(*a, ctx=16, guidance=3.0, fibo_layers=3, **k), 1000.0, 500.0),
    Case("ovis_image", make_ovis_image, fluxlike_inputs, 1.0, 0.5),
    Case("qwen_image21", make_qwen_image21, qwen_image21_inputs, 1.0, 0.5),
    Case("qwen_image21_plain", lambda: make_qwen_image21(False), qwen_image21_inputs, 1.0, 0.5),
    Case("cogview3plus", make_cogview3plus, cogview4_inputs, 999.0, 500.0),
    Case("glm_image", make_glm_image, glm_image_inputs, 999.0, 500.0),
    Case("ernie_image", make_ernie_image, ernie_image_inputs, 999.0, 500.0),
    Case("omnigen", make_omnigen, omnigen_inputs, 1.0, 0.5),
    Case("hunyuan_image", make_hunyuan_image, hunyuan_image_inputs, 999.0, 500.0),
    Case("nucleusmoe_image", make_nucleusmoe_image, nucleusmoe_image_inputs, 1.0, 0.5),
    Case("hunyuan_image_distilled", lambda: make_hunyuan_image(True, True),
         lambda *a, **k: hunyuan_image_inputs(*a, guidance=True, meanflow=True, **k), 999.0, 500.0),
]
CASE_BY_NAME = {c.name: c for c in CASES}


def forward(model: nn.Module, inputs: dict, **extra) -> torch.Tensor:
    """The first output of a forward call, as one tensor (Z-Image returns a list of samples)."""
    with torch.no_grad():
        out = model(**inputs, **extra, return_dict=False)[0]
    return torch.stack(out) if isinstance(out, (list, tuple)) else out

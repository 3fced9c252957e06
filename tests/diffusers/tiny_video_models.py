"""Tiny random video / audio-video diffusers transformers and their forward inputs.

Same :class:`~diffusers_tiny_models.Case` type as the image cases; weights re-drawn with
:func:`~diffusers_tiny_models.randomize` so a stale modulator changes the output. Inputs give
every batch row its own conditioning (prompt, pooled text, guidance, per-token timesteps) so a
row mix-up is visible.
"""

from __future__ import annotations

import torch
from diffusers import (
    AllegroTransformer3DModel,
    ChronoEditTransformer3DModel,
    CogVideoXTransformer3DModel,
    ConsisIDTransformer3DModel,
    EasyAnimateTransformer3DModel,
    HunyuanVideo15Transformer3DModel,
    HunyuanVideoFramepackTransformer3DModel,
    HunyuanVideoTransformer3DModel,
    LatteTransformer3DModel,
    LTX2VideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    MiniMaxH3Transformer3DModel,
    MochiTransformer3DModel,
    SanaVideoTransformer3DModel,
    SkyReelsV2Transformer3DModel,
    WanTransformer3DModel,
    WanVACETransformer3DModel,
)
from diffusers_tiny_models import Case
from torch import nn


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(batch: int, value: float) -> torch.Tensor:
    return torch.full((batch,), float(value))


# ----------------------------------------------------------------------------- Wan family

def make_wan(num_layers: int = 2) -> nn.Module:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=num_layers, rope_max_seq_len=32,
    )


def wan_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0, per_token: bool = False) -> dict:
    g = _gen(seed)
    x = {
        "hidden_states": torch.randn(batch, 4, 2, 4, 4, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "timestep": _rows(batch, t),
    }
    if per_token:  # Wan 2.2 TI2V: first-frame tokens (2x2 after patching) at t = 0
        ts = torch.full((batch, 2 * 2 * 2), float(t))
        ts[:, :4] = 0.0
        x["timestep"] = ts
    return x


def make_chronoedit() -> nn.Module:
    return ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    )


def make_wan_vace() -> nn.Module:
    return WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, vace_layers=[0],
        vace_in_channels=6,
    )


def wan_vace_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    x = wan_inputs(batch, dtype, seed, t)
    x["control_hidden_states"] = torch.randn(batch, 6, 2, 4, 4, generator=_gen(seed + 100)).to(dtype)
    return x


def make_skyreels(sample_info: bool = False) -> nn.Module:
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        inject_sample_info=sample_info,
    )


def skyreels_inputs(
    batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0, forcing: bool = False, fps: int | None = None
) -> dict:
    x = wan_inputs(batch, dtype, seed, t)
    if forcing:  # diffusion forcing: one noise level per latent frame (2 frames)
        x["timestep"] = torch.stack([_rows(batch, t), _rows(batch, t * 0.5)], dim=1)
        x["enable_diffusion_forcing"] = True
    if fps is not None:
        x["fps"] = [fps] * batch
    return x


# ----------------------------------------------------------------------------- HunyuanVideo

def make_hunyuan_video(guidance: bool = True, image_condition_type: str | None = None) -> nn.Module:
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=guidance,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
        image_condition_type=image_condition_type,
    )


def hunyuan_video_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 2, 4, 4, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "encoder_attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "pooled_projections": torch.randn(batch, 8, generator=g).to(dtype),
        "timestep": _rows(batch, t).to(dtype),
        "guidance": _rows(batch, 6000.0).to(dtype),
    }


def make_hunyuan_video_framepack() -> nn.Module:
    return HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4), has_image_proj=True,
        image_proj_dim=12, has_clean_x_embedder=True,
    )


def hunyuan_video_framepack_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    x = hunyuan_video_inputs(batch, dtype, seed, t)
    g = _gen(seed + 50)
    x["hidden_states"] = torch.randn(batch, 4, 2, 4, 4, generator=g).to(dtype)
    x["image_embeds"] = torch.randn(batch, 3, 12, generator=g).to(dtype)
    x["indices_latents"] = torch.arange(3, 5)
    # FramePack's history: one clean frame, 2x- and 4x-compressed older frames (token-side only).
    x["latents_clean"] = torch.randn(batch, 4, 1, 4, 4, generator=g).to(dtype)
    x["indices_latents_clean"] = torch.tensor([2])
    x["latents_history_2x"] = torch.randn(batch, 4, 2, 4, 4, generator=g).to(dtype)
    x["indices_latents_history_2x"] = torch.tensor([0, 1])
    x["latents_history_4x"] = torch.randn(batch, 4, 4, 4, 4, generator=g).to(dtype)
    x["indices_latents_history_4x"] = torch.arange(4)
    return x


def make_hunyuan_video15(meanflow: bool = False) -> nn.Module:
    return HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
        text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4), use_meanflow=meanflow,
    )


def hunyuan_video15_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0,
                           meanflow: bool = False) -> dict:
    g = _gen(seed)
    x = {
        "hidden_states": torch.randn(batch, 4, 2, 4, 4, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]][:batch]),
        "encoder_hidden_states_2": torch.randn(batch, 3, 8, generator=g).to(dtype),
        "encoder_attention_mask_2": torch.ones(batch, 3, dtype=torch.long),
        "image_embeds": torch.zeros(batch, 2, 12).to(dtype),  # t2v: all-zero image embeddings
        "timestep": _rows(batch, t).to(dtype),
    }
    if meanflow:
        x["timestep_r"] = _rows(batch, t * 0.5).to(dtype)
    return x


# ----------------------------------------------------------------------------- LTX / LTX-2

def make_ltx() -> nn.Module:
    return LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=16,
    )


def ltx_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0, per_token: bool = False) -> dict:
    g = _gen(seed)
    tokens = 2 * 4 * 4
    x = {
        "hidden_states": torch.randn(batch, tokens, 4, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "encoder_attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "timestep": _rows(batch, t),
        "num_frames": 2, "height": 4, "width": 4,
    }
    if per_token:  # image-to-video: first-frame tokens conditioned (t = 0)
        ts = torch.full((batch, tokens), float(t))
        ts[:, :16] = 0.0
        x["timestep"] = ts
    return x


def make_ltx2(prompt_mod: bool = False) -> nn.Module:
    return LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
        audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2,
        caption_channels=16, rope_double_precision=False, cross_attn_mod=prompt_mod, audio_cross_attn_mod=prompt_mod,
    )


def ltx2_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0, sigma: bool = False) -> dict:
    g = _gen(seed)
    x = {
        "hidden_states": torch.randn(batch, 2 * 4 * 4, 4, generator=g).to(dtype),
        "audio_hidden_states": torch.randn(batch, 5, 4, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "audio_encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "encoder_attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "audio_encoder_attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "timestep": _rows(batch, t),
        "audio_timestep": _rows(batch, t * 0.9),
        "num_frames": 2, "height": 4, "width": 4, "audio_num_frames": 5, "fps": 24.0,
    }
    if sigma:
        x["sigma"] = _rows(batch, t / 1000.0)
        x["audio_sigma"] = _rows(batch, t * 0.9 / 1000.0)
    return x


# ----------------------------------------------------------------------------- MiniMax-H3

H3_TEXT, H3_AUDIO, H3_VIDEO = 3, 4, 8


def make_minimax_h3() -> nn.Module:
    return MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=2, num_refiner_layers=1,
        ffn_dim=32, in_channels=4, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8, freq_dim=8,
        time_embed_hidden_dim=24, time_embed_dim=16, rope_freq_dim=2,
    )


def minimax_h3_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 0.9) -> dict:
    g = _gen(seed)
    seq = H3_TEXT + H3_AUDIO + H3_VIDEO
    text = torch.arange(H3_TEXT)
    audio = torch.arange(H3_TEXT, H3_TEXT + H3_AUDIO)
    video = torch.arange(H3_TEXT + H3_AUDIO, seq)
    tags = torch.zeros(seq, dtype=torch.long)
    tags[text], tags[audio] = 1, 2
    t_idx = torch.zeros(seq, dtype=torch.long)
    t_idx[audio] = 1  # the audio rows follow their own schedule
    pos = torch.zeros(seq, 3)
    pos[:, 0] = torch.arange(seq, dtype=torch.float32)
    pos[video, 1] = torch.arange(H3_VIDEO, dtype=torch.float32) % 4
    return {
        "hidden_states": torch.randn(batch, H3_VIDEO, 16, generator=g).to(dtype),
        "audio_hidden_states": torch.randn(batch, H3_AUDIO, 6, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, H3_TEXT, 8, generator=g).to(dtype),
        "timestep": torch.tensor([t, t * 0.5]),
        "timestep_indices": t_idx, "token_tags": tags, "position_ids": pos,
        "video_indices": video, "audio_indices": audio, "text_indices": text,
    }


# ----------------------------------------------------------------------------- CogVideoX / Sana-Video

def make_cogvideox(ofs: bool = False) -> nn.Module:
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        patch_size_t=1 if ofs else None, temporal_compression_ratio=4, max_text_seq_length=5,
        ofs_embed_dim=8 if ofs else None, use_rotary_positional_embeddings=ofs,
    )


def cogvideox_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0, ofs: bool = False) -> dict:
    g = _gen(seed)
    x = {
        "hidden_states": torch.randn(batch, 3, 4, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
    }
    if ofs:
        x["ofs"] = torch.full((batch,), 2.0).to(dtype)
    return x


def make_consisid() -> nn.Module:
    return ConsisIDTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=5,
    )


def make_easyanimate() -> nn.Module:
    return EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=8,
        sample_height=8, time_embed_dim=8, text_embed_dim=16, num_layers=2, mmdit_layers=2,
    )


def easyanimate_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 2, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
    }


def make_sana_video() -> nn.Module:
    return SanaVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16,
        sample_size=8, patch_size=(1, 2, 2), rope_max_seq_len=32,
    )


def sana_video_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 2, 4, 4, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
    }


def make_mochi() -> nn.Module:
    return MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=4, text_embed_dim=16, time_embed_dim=4, max_sequence_length=16,
    )


def mochi_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 2, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]][:batch], dtype=torch.bool),
        "timestep": _rows(batch, t),
    }


def make_allegro() -> nn.Module:
    return AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        num_layers=2, cross_attention_dim=24, sample_height=8, sample_width=8, sample_frames=8, caption_channels=16,
    )


def allegro_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 2, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
    }


def make_latte() -> nn.Module:
    return LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=24, sample_size=8, patch_size=2, norm_type="ada_norm_single", caption_channels=16,
        video_length=2, activation_fn="gelu-approximate", norm_elementwise_affine=False, norm_eps=1e-6,
    )


def latte_inputs(batch: int, dtype: torch.dtype, seed: int = 0, t: float = 999.0) -> dict:
    g = _gen(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 2, 8, 8, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g).to(dtype),
        "timestep": torch.full((batch,), int(t), dtype=torch.long),
    }


def _with(inputs, **fixed):
    return lambda *a, **k: inputs(*a, **fixed, **k)


CASES = [
    Case("wan", make_wan, wan_inputs, 999.0, 500.0),
    Case("wan22_ti2v", make_wan, _with(wan_inputs, per_token=True), 999.0, 500.0),
    Case("wan_vace", make_wan_vace, wan_vace_inputs, 999.0, 500.0),
    Case("chronoedit", make_chronoedit, wan_inputs, 999.0, 500.0),
    Case("skyreels_v2", make_skyreels, skyreels_inputs, 999.0, 500.0),
    Case("skyreels_v2_df", make_skyreels, _with(skyreels_inputs, forcing=True), 999.0, 500.0),
    # fps with diffusion forcing only broadcasts for batch 1 in diffusers 0.42.1, so fps alone here.
    Case("skyreels_v2_fps", lambda: make_skyreels(True), _with(skyreels_inputs, fps=1), 999.0, 500.0),
    Case("hunyuan_video", make_hunyuan_video, hunyuan_video_inputs, 999.0, 500.0),
    Case("hunyuan_video_framepack", make_hunyuan_video_framepack, hunyuan_video_framepack_inputs, 999.0, 500.0),
    Case("hunyuan_video15", make_hunyuan_video15, hunyuan_video15_inputs, 999.0, 500.0),
    Case("hunyuan_video15_meanflow", lambda: make_hunyuan_video15(True),
         _with(hunyuan_video15_inputs, meanflow=True), 999.0, 500.0),
    Case("ltx", make_ltx, ltx_inputs, 999.0, 500.0),
    Case("ltx_i2v", make_ltx, _with(ltx_inputs, per_token=True), 999.0, 500.0),
    Case("ltx2", make_ltx2, ltx2_inputs, 999.0, 500.0),
    Case("ltx23", lambda: make_ltx2(True), _with(ltx2_inputs, sigma=True), 999.0, 500.0),
    Case("minimax_h3", make_minimax_h3, minimax_h3_inputs, 0.9, 0.4),
    Case("cogvideox", make_cogvideox, cogvideox_inputs, 999, 500),
    Case("cogvideox15_ofs", lambda: make_cogvideox(True), _with(cogvideox_inputs, ofs=True), 999, 500),
    Case("sana_video", make_sana_video, sana_video_inputs, 999, 500),
    Case("consisid", make_consisid, cogvideox_inputs, 999, 500),
    Case("easyanimate", make_easyanimate, easyanimate_inputs, 999, 500),
    Case("mochi", make_mochi, mochi_inputs, 999.0, 500.0),
    Case("allegro", make_allegro, allegro_inputs, 999, 500),
    Case("latte", make_latte, latte_inputs, 999, 500),
]
CASE_BY_NAME = {c.name: c for c in CASES}


def output(result) -> torch.Tensor | tuple:
    """The tensors a forward returns (video, plus audio for the audio-video models)."""
    audio = getattr(result, "audio_sample", None)
    return result.sample if audio is None else (result.sample, audio)


def forward(model: nn.Module, inputs: dict, **extra):
    with torch.no_grad():
        return output(model(**inputs, **extra))


def same(a, b) -> bool:
    """Bitwise equality of forward outputs (tensors or tuples of tensors)."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)

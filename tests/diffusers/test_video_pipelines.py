"""Video pipelines from tiny random components: two renders, the second replays every modulator.

No downloads and no text encoders: the pipelines get precomputed prompt embeddings. The CFG
case counts the computations the cache saves: the conditional and unconditional passes of a
step share one entry (the prompt feeds no modulator of these families).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
    LTX2Pipeline,
    WanPipeline,
)
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from diffusers_tiny_models import build, randomize
from fusion_diffusers import (
    ModulatorCacheConfig,
    apply_modulator_cache,
    disable_modulator_cache,
    enable_modulator_cache,
    precompute,
)
from tiny_video_models import CASE_BY_NAME, make_ltx2, make_wan, minimax_h3_inputs

from fusion_infer import make_key

STEPS = 3


def tiny_wan_vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()


def _wan_pipe(ti2v: bool = False) -> tuple[WanPipeline, dict]:
    transformer = randomize(make_wan(), 0).eval()
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=tiny_wan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer, expand_timesteps=ti2v,
    )
    g = torch.Generator().manual_seed(1)
    return pipe, {
        "prompt_embeds": torch.randn(1, 5, 16, generator=g),
        "negative_prompt_embeds": torch.randn(1, 5, 16, generator=g),
        "height": 32, "width": 32, "num_frames": 5, "guidance_scale": 5.0,
    }


def _hunyuan_video15_pipe() -> tuple[HunyuanVideo15Pipeline, dict]:
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(16,) * 5, layers_per_block=1).eval()
    # in_channels = 2·latent + 1: the pipeline concatenates (zero) condition latents and a mask.
    transformer = randomize(HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
        text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4),
    ), 0).eval()
    pipe = HunyuanVideo15Pipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=None, tokenizer_2=None,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    g = torch.Generator().manual_seed(1)
    ones = torch.ones(1, 5, dtype=torch.long)
    return pipe, {
        "prompt_embeds": torch.randn(1, 5, 16, generator=g), "prompt_embeds_mask": ones,
        "negative_prompt_embeds": torch.randn(1, 5, 16, generator=g), "negative_prompt_embeds_mask": ones,
        "prompt_embeds_2": torch.randn(1, 3, 8, generator=g), "prompt_embeds_mask_2": ones[:, :3],
        "negative_prompt_embeds_2": torch.randn(1, 3, 8, generator=g), "negative_prompt_embeds_mask_2": ones[:, :3],
        "height": 32, "width": 32, "num_frames": 5,
    }


def _ltx2_pipe() -> tuple[LTX2Pipeline, dict]:
    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=16, text_proj_in_factor=2, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
    ).eval()
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()
    vocoder = LTX2Vocoder(
        in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    ).eval()
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None, tokenizer=None,
        connectors=connectors, transformer=randomize(make_ltx2(), 0).eval(), vocoder=vocoder,
    )
    g = torch.Generator().manual_seed(1)
    ones = torch.ones(1, 8, dtype=torch.long)
    # The pipeline's own sampling defaults: CFG (batched), STG (here on block 1), modality guidance
    # and the cross timestep (LTX-2.3).
    return pipe, {
        "prompt_embeds": torch.randn(1, 8, 32, generator=g), "prompt_attention_mask": ones,
        "negative_prompt_embeds": torch.randn(1, 8, 32, generator=g), "negative_prompt_attention_mask": ones,
        "height": 32, "width": 32, "num_frames": 5, "frame_rate": 25.0, "spatio_temporal_guidance_blocks": [1],
        "max_sequence_length": 8,
    }


# name -> (builder, (misses, hits) of the first render). Wan: CFG in two calls per step, the second
# hits. HunyuanVideo 1.5: the guider runs the two CFG branches as separate calls. LTX-2: a batch-2
# CFG call plus batch-1 STG and modality-isolated calls per step (the batch size is in the key).
PIPES = {
    "wan": (_wan_pipe, (STEPS, STEPS)),
    "wan22_ti2v": (lambda: _wan_pipe(ti2v=True), (STEPS, STEPS)),
    "hunyuan_video15": (_hunyuan_video15_pipe, (STEPS, STEPS)),
    "ltx2": (_ltx2_pipe, (2 * STEPS, STEPS)),
}


def _render(pipe, kwargs) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = pipe(**kwargs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="pt")
    audio = getattr(out, "audio", None)
    return (out.frames,) if audio is None else (out.frames, audio)


def _equal(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(PIPES))
def test_second_render_replays_every_modulator_and_cfg_shares_entries(name):
    build, (misses, hits) = PIPES[name]
    pipe, kwargs = build()
    reference = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe)
    first = _render(pipe, kwargs)
    assert (cache.stats.misses, cache.stats.hits) == (misses, hits)
    second = _render(pipe, kwargs)
    assert cache.stats.misses == misses and cache.stats.hits == 2 * hits + misses  # second render: all hits
    assert cache.stats.probe_failures == 0
    assert _equal(first, reference) and _equal(second, reference)
    disable_modulator_cache(pipe)


def test_batch_one_pipelines_key_expanded_scalar_timesteps():
    """Batch-1 pipelines pass ``t.expand(1)`` (stride 0): keyed like the plain tensor."""
    t = torch.tensor(500.0)
    assert make_key(t.expand(1)) == make_key(torch.tensor([500.0]))
    assert make_key(t.expand(1, 1)) == make_key(torch.tensor([[500.0]]))


def _minimax_h3_render(model, steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop of diffusers' MiniMax-H3 modular denoise step (``modular_pipelines/minimax_h3/
    denoise.py``): one packed sequence per step, the distinct noise levels as ``timestep`` (video
    rows and audio rows on their own schedules) and per-row ``timestep_indices``; flow-matching
    Euler updates. The modular pipeline itself needs its hub repository, so it is not built here.
    """
    x = minimax_h3_inputs(1, torch.float32, seed=3)
    video, audio = x["hidden_states"], x["audio_hidden_states"]
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    audio_sigmas = sigmas.pow(1.2)
    with torch.no_grad():
        for i in range(steps):
            t = torch.stack([sigmas[i], audio_sigmas[i]])
            out = model(**{**x, "hidden_states": video, "audio_hidden_states": audio, "timestep": t})
            video = video + (sigmas[i + 1] - sigmas[i]) * out.sample
            audio = audio + (audio_sigmas[i + 1] - audio_sigmas[i]) * out.audio_sample
    return video, audio


def test_minimax_h3_render_loop_offloaded_and_precomputed_bit_equal():
    model = build(CASE_BY_NAME["minimax_h3"])
    reference = _minimax_h3_render(model)
    cache = apply_modulator_cache(model, ModulatorCacheConfig(offload_weights=True))
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    report = precompute(model, [torch.stack([s, s.pow(1.2)]) for s in sigmas[:-1]])
    assert report.computed == STEPS
    # The per-block adaln_proj linears are the bulk of the modulator weights that rest off the device.
    adaln = {id(p) for blk in model.transformer_blocks for p in blk.adaln_proj.parameters()}
    assert adaln <= {id(t) for t in cache.offload.tensors}
    for _ in range(2):
        assert _equal(_minimax_h3_render(model), reference)
    assert cache.stats.misses == 0 and cache.stats.hits == 2 * STEPS

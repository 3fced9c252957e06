"""Image pipelines of the newer families from tiny random components: two renders, the second
replays every modulator bit-equal; the CFG passes that share modulators are counted.

No downloads and no text encoders: the pipelines take precomputed prompt embeddings
(``prompt_embeds``), which is what their text encoders would produce.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
)
from diffusers_tiny_models import randomize
from fusion_diffusers import (
    ModulatorCacheConfig,
    disable_modulator_cache,
    enable_modulator_cache,
    precompute,
)
from tiny_image_models import make_z_image

STEPS = 3


def _qwen_pipe():
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=2, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.0, 0.0], latents_std=[1.0, 1.0],
    ).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=8, out_channels=2, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, axes_dims_rope=(2, 2, 4),
    )
    randomize(transformer, 0).eval()
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                             tokenizer=None, transformer=transformer)
    g = torch.Generator().manual_seed(1)
    return pipe, {
        "prompt_embeds": torch.randn(1, 5, 12, generator=g),
        "prompt_embeds_mask": torch.ones(1, 5, dtype=torch.long),
        "negative_prompt_embeds": torch.randn(1, 4, 12, generator=g),
        "negative_prompt_embeds_mask": torch.ones(1, 4, dtype=torch.long),
        "true_cfg_scale": 4.0,  # two transformer calls per step, same timestep
        "height": 16,
        "width": 16,
    }


def _flux2_vae():
    torch.manual_seed(0)
    return AutoencoderKLFlux2(
        block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1, latent_channels=2, norm_num_groups=8, sample_size=16,
    ).eval()


def _flux2_transformer(guidance: bool):
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2), guidance_embeds=guidance,
    )
    return randomize(transformer, 0).eval()


def _flux2_pipe():
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux2_vae(), text_encoder=None,
                         tokenizer=None, transformer=_flux2_transformer(True))
    g = torch.Generator().manual_seed(1)
    return pipe, {"prompt_embeds": torch.randn(1, 5, 12, generator=g), "guidance_scale": 4.0,
                  "height": 16, "width": 16}


def _flux2_klein_pipe():
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux2_vae(), text_encoder=None,
                              tokenizer=None, transformer=_flux2_transformer(False), is_distilled=False)
    g = torch.Generator().manual_seed(1)
    return pipe, {"prompt_embeds": torch.randn(1, 5, 12, generator=g),
                  "negative_prompt_embeds": torch.randn(1, 5, 12, generator=g),
                  "guidance_scale": 4.0, "height": 16, "width": 16}


def _z_image_pipe():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=8, shift_factor=0.0,
    ).eval()
    transformer = randomize(make_z_image(), 0).eval()
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                          tokenizer=None, transformer=transformer)
    g = torch.Generator().manual_seed(1)
    return pipe, {"prompt_embeds": [torch.randn(5, 12, generator=g)],
                  "negative_prompt_embeds": [torch.randn(3, 12, generator=g)],
                  "guidance_scale": 4.0, "height": 16, "width": 16}


# name -> (builder, transformer calls per step)
PIPES = {"qwen_image": (_qwen_pipe, 2), "flux2": (_flux2_pipe, 1), "flux2_klein": (_flux2_klein_pipe, 2),
         "z_image": (_z_image_pipe, 1)}


def _render(pipe, kwargs):
    with torch.no_grad():
        return pipe(**kwargs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                    output_type="pt").images


@pytest.mark.parametrize("name", list(PIPES))
def test_second_render_replays_every_modulator_bit_equal(name):
    build, calls = PIPES[name]
    pipe, kwargs = build()
    reference = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe)
    first = _render(pipe, kwargs)
    # Modulators of these families depend on the timestep (and guidance) only: where CFG runs a
    # second, unconditional call per step, that call replays the conditional call's entry.
    assert cache.stats.misses == STEPS
    assert cache.stats.hits == (calls - 1) * STEPS
    second = _render(pipe, kwargs)
    assert cache.stats.misses == STEPS and cache.stats.hits == (2 * calls - 1) * STEPS
    assert torch.equal(first, reference) and torch.equal(second, reference)
    disable_modulator_cache(pipe)


def test_qwen_image_offloaded_precompute_renders_bit_equal():
    pipe, kwargs = _qwen_pipe()
    reference = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe, ModulatorCacheConfig(offload_weights=True))
    # The timesteps the pipeline will pass: `t.expand(1) / 1000` of its schedule (captured once).
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"].clone()),
                                                      with_kwargs=True)
    with cache.disabled():
        _render(pipe, kwargs)
    hook.remove()
    report = precompute(pipe, seen[::2])
    assert report.computed == STEPS and report.steps == STEPS
    assert torch.equal(_render(pipe, kwargs), reference)
    assert cache.stats.misses == 0 and cache.stats.hits == 2 * STEPS
    assert cache.offload.nbytes > 0

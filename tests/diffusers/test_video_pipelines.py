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
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
    WanPipeline,
)
from diffusers.guiders import ClassifierFreeGuidance
from diffusers_tiny_models import randomize
from fusion_diffusers import disable_modulator_cache, enable_modulator_cache
from tiny_video_models import make_wan

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


PIPES = {"wan": _wan_pipe, "wan22_ti2v": lambda: _wan_pipe(ti2v=True), "hunyuan_video15": _hunyuan_video15_pipe}


def _render(pipe, kwargs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(**kwargs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                    output_type="pt").frames


@pytest.mark.parametrize("name", list(PIPES))
def test_second_render_replays_every_modulator_and_cfg_shares_entries(name):
    pipe, kwargs = PIPES[name]()
    reference = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe)
    first = _render(pipe, kwargs)
    # CFG: 2 transformer calls per step; the unconditional one reuses the conditional one's entry.
    assert cache.stats.misses == STEPS and cache.stats.hits == STEPS
    second = _render(pipe, kwargs)
    assert cache.stats.misses == STEPS and cache.stats.hits == 3 * STEPS
    assert cache.stats.probe_failures == 0
    assert torch.equal(first, reference) and torch.equal(second, reference)
    disable_modulator_cache(pipe)


def test_batch_one_pipelines_key_expanded_scalar_timesteps():
    """Batch-1 pipelines pass ``t.expand(1)`` (stride 0): keyed like the plain tensor."""
    t = torch.tensor(500.0)
    assert make_key(t.expand(1)) == make_key(torch.tensor([500.0]))
    assert make_key(t.expand(1, 1)) == make_key(torch.tensor([[500.0]]))

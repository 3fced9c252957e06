"""Pipelines from tiny random components: two renders, the second replays every modulator.

No downloads and no text encoders: PixArt, SD3 and Flux get precomputed prompt embeddings.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    PixArtAlphaPipeline,
    StableDiffusion3Pipeline,
)
from diffusers_tiny_models import make_dit, make_flux, make_pixart, make_sd3, randomize
from fusion_diffusers import disable_modulator_cache, enable_modulator_cache, verify_equivalence
from fusion_diffusers.families import unwrap_compiled

STEPS = 3


def tiny_vae(latent_channels: int) -> AutoencoderKL:
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=8, shift_factor=0.0,
    )
    return vae.eval()


def _gen():
    return torch.Generator().manual_seed(0)


def _dit_pipe():
    transformer = randomize(make_dit(), 0).eval()
    return DiTPipeline(transformer=transformer, vae=tiny_vae(4), scheduler=DDIMScheduler()), {
        "class_labels": [3, 7],
        "guidance_scale": 4.0,
    }


def _pixart_pipe():
    transformer = randomize(make_pixart(additional=False), 0).eval()
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(4), transformer=transformer,
                               scheduler=DDIMScheduler())
    g = torch.Generator().manual_seed(1)
    return pipe, {
        "prompt_embeds": torch.randn(1, 5, 12, generator=g),
        "prompt_attention_mask": torch.ones(1, 5, dtype=torch.long),
        "negative_prompt_embeds": torch.randn(1, 5, 12, generator=g),
        "negative_prompt_attention_mask": torch.ones(1, 5, dtype=torch.long),
        "negative_prompt": None,
        "use_resolution_binning": False,
        "height": 8,
        "width": 8,
        "guidance_scale": 4.5,
    }


def _sd3_pipe():
    transformer = randomize(make_sd3(dual=True), 0).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(4),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        text_encoder_3=None, tokenizer_3=None,
    )
    g = torch.Generator().manual_seed(1)
    return pipe, {
        "prompt_embeds": torch.randn(1, 5, 12, generator=g),
        "negative_prompt_embeds": torch.randn(1, 5, 12, generator=g),
        "pooled_prompt_embeds": torch.randn(1, 10, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(1, 10, generator=g),
        "height": 8,
        "width": 8,
        "guidance_scale": 5.0,
    }


def _flux_pipe():
    transformer = randomize(make_flux(guidance=True), 0).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(2), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, transformer=transformer,
    )
    g = torch.Generator().manual_seed(1)
    return pipe, {
        "prompt_embeds": torch.randn(1, 5, 12, generator=g),
        "pooled_prompt_embeds": torch.randn(1, 10, generator=g),
        "height": 8,
        "width": 8,
        "guidance_scale": 3.5,
    }


PIPES = {"dit": _dit_pipe, "pixart": _pixart_pipe, "sd3": _sd3_pipe, "flux": _flux_pipe}


def _render(pipe, kwargs):
    with torch.no_grad():
        return pipe(**kwargs, num_inference_steps=STEPS, generator=_gen(), output_type="pt").images


@pytest.mark.parametrize("name", list(PIPES))
def test_second_render_replays_every_modulator_bit_equal(name):
    pipe, kwargs = PIPES[name]()
    reference = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe)
    first = _render(pipe, kwargs)
    assert cache.stats.misses == STEPS and cache.stats.hits == 0
    # The pipeline's end-of-call maybe_free_model_hooks() reset reached the hook (a render-start
    # probe is now pending, also for non-CacheMixin transformers) and the table survived it.
    assert cache.core._probe_pending
    assert cache.stats.entries == STEPS
    second = _render(pipe, kwargs)
    assert cache.stats.hits == STEPS and cache.stats.misses == STEPS
    assert cache.stats.probes >= 1 and cache.stats.probe_failures == 0  # render-start probe ran
    assert torch.equal(first, reference) and torch.equal(second, reference)
    disable_modulator_cache(pipe)
    assert not hasattr(pipe.transformer, "_fusion_added_reset_stateful_cache")


def test_pipeline_reset_keeps_table_for_cachemixin_models():
    pipe, kwargs = _flux_pipe()
    cache = enable_modulator_cache(pipe)
    _render(pipe, kwargs)
    pipe.maybe_free_model_hooks()  # what every pipeline __call__ ends with
    assert cache.stats.entries == STEPS


def test_new_class_labels_miss_and_stay_exact():
    pipe, kwargs = _dit_pipe()
    with pytest.raises(TypeError):
        enable_modulator_cache(object())
    report = verify_equivalence(pipe, **{**kwargs, "class_labels": [1, 2]}, num_inference_steps=2)
    assert report.bit_equal and report.hits == 2 and report.misses == 2


def test_unwrap_compiled_returns_inner_module():
    model = make_dit()
    assert unwrap_compiled(torch.compile(model)) is model

"""**HunyuanVideo FramePack** (``HunyuanVideoFramepackTransformer3DModel``; arXiv 2504.12626): the
HunyuanVideo transformer with history-latent and image-projection embedders added on the token
side; its modulators are HunyuanVideo's (``time_text_embed(t, pooled, guidance)``, the dual and
single blocks' norms, ``norm_out``, the token refiner's timestep MLP), computed the same way
(:mod:`.hunyuan_video`) and keyed the same way. The history latents, their indices and the image
embeddings feed tokens only and are not part of the key. Refused like HunyuanVideo for
``image_condition_type="token_replace"``.

Source: diffusers 0.42.1 ``models/transformers/transformer_hunyuan_video_framepack.py``.
"""

from __future__ import annotations

from diffusers import HunyuanVideoFramepackTransformer3DModel

from .base import Family
from .hunyuan_video import (
    REFINER_SITE,
    adjust_values,
    block_sites,
    check_hunyuan_video,
    compute_hunyuan_video,
    model_sites_of,
)

__all__ = ["FAMILY"]

FAMILY = Family(
    name="hunyuan_video_framepack",
    model_class=HunyuanVideoFramepackTransformer3DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_text_embed.timestep_embedder", "time_text_embed.text_embedder", REFINER_SITE,
                 "norm_out.linear"),
    block_sites=block_sites,
    conditioning=("pooled_projections", "guidance"),
    lora_scale_kwarg="attention_kwargs",
    compute=compute_hunyuan_video,
    check=check_hunyuan_video,
    adjust_values=adjust_values,
    model_sites_of=model_sites_of,
    dtype_args=("encoder_hidden_states",),
)

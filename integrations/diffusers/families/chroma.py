"""**Chroma** (``ChromaTransformer2DModel``, diffusers ``transformer_chroma.py``; a pruned FLUX.1):
all modulators come from one *distilled guidance layer* — ``time_text_embed(1000·t)`` builds
``[timestep ⊕ guidance(0)] ⊕ mod_proj`` rows and ``distilled_guidance_layer`` (an MLP
approximator) maps them to every block's shift/scale/gate at once. Blocks and ``norm_out`` only
slice that tensor, so both modules are model-level sites and the entries depend on ``t`` alone
(shared by every prompt, and by the conditional and unconditional CFG passes).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import ChromaTransformer2DModel
from diffusers.models.transformers.transformer_chroma import (
    ChromaAdaLayerNormContinuousPruned,
    ChromaAdaLayerNormZeroPruned,
    ChromaAdaLayerNormZeroSinglePruned,
    ChromaApproximator,
    ChromaCombinedTimestepTextProjEmbeddings,
    ChromaSingleTransformerBlock,
    ChromaTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, module_reason, no_block_sites

__all__ = ["FAMILY"]


def _chroma_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_text_embed", ChromaCombinedTimestepTextProjEmbeddings),
        module_reason(model, "distilled_guidance_layer", ChromaApproximator),
        module_reason(model, "norm_out", ChromaAdaLayerNormContinuousPruned),
        blocks_reason(
            model,
            "transformer_blocks",
            ChromaTransformerBlock,
            {"norm1": ChromaAdaLayerNormZeroPruned, "norm1_context": ChromaAdaLayerNormZeroPruned},
        ),
        blocks_reason(model, "single_transformer_blocks", ChromaSingleTransformerBlock,
                      {"norm": ChromaAdaLayerNormZeroSinglePruned}),
    ]
    reason = next((r for r in reasons if r is not None), None)
    if reason is None:
        for i, blk in enumerate(model.transformer_blocks):
            if blk.norm1.emb is not None or blk.norm1_context.emb is not None:
                return f"transformer_blocks.{i} norms carry their own embedder"
    return reason


def _chroma_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # ChromaTransformer2DModel.forward: `timestep.to(hidden dtype) * 1000`, then the two modules.
    timestep = cond.timestep.to(cond.hidden_dtype) * 1000
    input_vec = model.time_text_embed(timestep)
    return {"time_text_embed": input_vec, "distilled_guidance_layer": model.distilled_guidance_layer(input_vec)}


FAMILY = Family(
    name="chroma",
    model_class=ChromaTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_text_embed", "distilled_guidance_layer"),
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg="joint_attention_kwargs",
    compute=_chroma_compute,
    check=_chroma_check,
)

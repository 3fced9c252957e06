"""**Wan 2.1 / 2.2** (``WanTransformer3DModel``; arXiv 2503.20314 §3.1): one shared time MLP
``condition_embedder.time_embedder`` (t → temb) and one shared projection
``condition_embedder.time_proj`` (SiLU(temb) → 6·D) feed every block; each block adds its own
learned ``scale_shift_table`` (a shared time projection plus per-block tables, see
:mod:`.patterns`), and the output stage adds the model's ``scale_shift_table`` to ``temb``.

Wan 2.2 TI2V passes *per-token* timesteps (``timestep`` of shape ``(batch, seq_len)``, first-frame
tokens at t = 0): the whole tensor — shape and bits — is the key, and the sites are computed with
the same ``unflatten`` the model uses, so such calls are exact too (one entry per distinct
per-token schedule step). The modulators also depend on the dtype of ``encoder_hidden_states``
(``temb.type_as(encoder_hidden_states)``), which is keyed; the prompt content is not
(CFG's conditional and unconditional passes share an entry).

Source: diffusers 0.42.1 ``models/transformers/transformer_wan.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import WanTransformer3DModel
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.transformers.transformer_wan import (
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import no_block_sites, shared_time_projection

__all__ = ["FAMILY"]

SITES = ("condition_embedder.time_embedder", "condition_embedder.time_proj")


def check_condition_embedder(model: nn.Module, embedder_cls: type) -> str | None:
    emb = model.condition_embedder
    if type(emb) is not embedder_cls:
        return f"condition_embedder is a {type(emb).__name__}, expected {embedder_cls.__name__}"
    if type(emb.time_embedder) is not TimestepEmbedding:
        return f"condition_embedder.time_embedder is a {type(emb.time_embedder).__name__}, expected TimestepEmbedding"
    return None


def check_wan_layout(model: nn.Module, embedder_cls: type, block_cls: type) -> str | None:
    reason = check_condition_embedder(model, embedder_cls)
    if reason is not None:
        return reason
    for i, blk in enumerate(model.blocks):
        if type(blk) is not block_cls:
            return f"blocks.{i} is a {type(blk).__name__}, expected {block_cls.__name__}"
    return None


def _wan_check(model: nn.Module) -> str | None:
    return check_wan_layout(model, WanTimeTextImageEmbedding, WanTransformerBlock)


def compute_wan(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    """The sites of ``WanTransformer3DModel.forward`` (also ChronoEdit's, which copies it)."""
    # A (batch, seq_len) timestep is flattened and the embedder unflattens its sinusoidal
    # projection back; the time embedder's dtype is read with
    # `next(iter(time_embedder.parameters())).dtype`.
    emb = model.condition_embedder
    timestep = cond.timestep
    seq_len = None
    if timestep.ndim == 2:
        seq_len = timestep.shape[1]
        timestep = timestep.flatten()
    ted = next(iter(emb.time_embedder.parameters())).dtype
    out = shared_time_projection(emb, timestep, cond.values["encoder_hidden_states_dtype"], ted, seq_len)
    return {f"condition_embedder.{k}": v for k, v in out.items()}


FAMILY = Family(
    name="wan",
    model_class=WanTransformer3DModel,
    block_lists=("blocks",),
    model_sites=SITES,
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=compute_wan,
    check=_wan_check,
    dtype_args=("encoder_hidden_states",),
)

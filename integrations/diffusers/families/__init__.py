"""Per-model-class descriptions of where diffusers DiTs compute their adaLN modulators.

A *family* names, for one exact diffusers transformer class, every module whose output is a pure
function of ``(timestep, conditioning, weights)`` — the *modulator sites* — and how to compute all
of them at once from the model's forward arguments. Everything else in the integration (the slots
that replay cached tensors, the cache key, the ``mods=None`` block patcher) is driven by this
table, so supporting a new model means adding one module here (a :class:`Family` named ``FAMILY``),
listing it in :data:`FAMILIES` and proving it bit-exact in the tests.

One module per family (diffusers 0.42.1 sources; the papers are cited in each module):
:mod:`.dit`, :mod:`.pixart`, :mod:`.sd3`, :mod:`.flux`, :mod:`.auraflow`, :mod:`.sana`; image:
:mod:`.qwen_image`, :mod:`.flux2`, :mod:`.z_image`, :mod:`.chroma`, :mod:`.hidream`,
:mod:`.lumina2`, :mod:`.cogview4`, :mod:`.hunyuan_dit`, :mod:`.krea2`, :mod:`.longcat_image`,
:mod:`.bria`, :mod:`.bria_fibo`, :mod:`.ovis_image`, :mod:`.qwen_image21`, :mod:`.cogview3plus`,
:mod:`.glm_image`, :mod:`.ernie_image`, :mod:`.omnigen`, :mod:`.hunyuan_image`,
:mod:`.nucleusmoe_image`; video and audio-video: :mod:`.wan`, :mod:`.wan_vace`, :mod:`.chronoedit`,
:mod:`.skyreels_v2`, :mod:`.hunyuan_video`, :mod:`.hunyuan_video15`, :mod:`.ltx`, :mod:`.ltx2`,
:mod:`.minimax_h3`, :mod:`.cogvideox`, :mod:`.sana_video`, :mod:`.mochi`, :mod:`.allegro`,
:mod:`.latte`, :mod:`.consisid`, :mod:`.hunyuan_video_framepack`, :mod:`.easyanimate`; shared
computations in :mod:`.patterns`, the :class:`Family` type in :mod:`.base`.

Every model class not listed here — and every subclass of a listed class, whose ``forward`` may
differ — is refused with :class:`UnsupportedModelError` naming the class.

Example:
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10)
    >>> fam = resolve_family(m)
    >>> fam.name, site_paths(m, fam)[:2]
    ('dit', ['proj_out_1', 'transformer_blocks.0.norm1.emb'])
"""

from __future__ import annotations

from torch import nn

from . import (
    allegro,
    auraflow,
    bria,
    bria_fibo,
    chroma,
    chronoedit,
    cogvideox,
    cogview3plus,
    cogview4,
    consisid,
    dit,
    easyanimate,
    ernie_image,
    flux,
    flux2,
    glm_image,
    hidream,
    hunyuan_dit,
    hunyuan_image,
    hunyuan_video,
    hunyuan_video15,
    hunyuan_video_framepack,
    krea2,
    latte,
    longcat_image,
    ltx,
    ltx2,
    lumina2,
    minimax_h3,
    mochi,
    nucleusmoe_image,
    omnigen,
    ovis_image,
    pixart,
    qwen_image,
    qwen_image21,
    sana,
    sana_video,
    sd3,
    skyreels_v2,
    wan,
    wan_vace,
    z_image,
)
from .base import CallConditioning, ComputeFn, Family, UnsupportedModelError

__all__ = [
    "CallConditioning",
    "ComputeFn",
    "FAMILIES",
    "Family",
    "UnsupportedModelError",
    "block_paths",
    "resolve_family",
    "site_paths",
    "unwrap_compiled",
]

#: Every supported class → its family.
_IMAGE = (
    dit, pixart, sd3, flux, auraflow, sana,
    qwen_image, flux2, z_image, chroma, hidream, lumina2, cogview4, hunyuan_dit, krea2,
    longcat_image, bria, bria_fibo, ovis_image, qwen_image21, cogview3plus, glm_image, ernie_image, omnigen,
    hunyuan_image, nucleusmoe_image,
)
_VIDEO = (
    wan, wan_vace, chronoedit, skyreels_v2, hunyuan_video, hunyuan_video15, ltx, ltx2, minimax_h3, cogvideox,
    sana_video, mochi, allegro, latte, consisid, hunyuan_video_framepack, easyanimate,
)
FAMILIES: dict[type, Family] = {mod.FAMILY.model_class: mod.FAMILY for mod in (*_IMAGE, *_VIDEO)}


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a whole-model ``torch.compile`` wrapper (or ``model`` itself)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def resolve_family(model: nn.Module) -> Family:
    """The :class:`Family` of ``model`` or :class:`UnsupportedModelError` naming its class.

    Only exact classes are accepted: a subclass may override ``forward`` and compute its
    modulators differently, which the integration cannot prove it handles.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a diffusers transformer (torch.nn.Module), got {type(model).__name__}")
    model = unwrap_compiled(model)
    fam = FAMILIES.get(type(model))
    if fam is None:
        supported = ", ".join(sorted(c.__name__ for c in FAMILIES))
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported by the modulator cache (supported classes: {supported}); "
            "refusing rather than caching a layout that has not been proven bit-exact"
        )
    reason = fam.check(model)
    if reason is not None:
        raise UnsupportedModelError(f"{type(model).__name__} has an unsupported layout: {reason}")
    return fam


def block_paths(model: nn.Module, family: Family) -> list[str]:
    """Dotted paths of every block of ``model`` (``"transformer_blocks.0"``, …) in call order."""
    return [f"{name}.{i}" for name in family.block_lists for i in range(len(getattr(model, name)))]


def site_paths(model: nn.Module, family: Family) -> list[str]:
    """Dotted paths of every modulator site: model-level sites first, then blocks in order."""
    paths = list(family.model_sites if family.model_sites_of is None else family.model_sites_of(model))
    if family.dynamic_model_sites is not None:
        paths.extend(family.dynamic_model_sites(model))
    for bpath in block_paths(model, family):
        block = model.get_submodule(bpath)
        paths.extend(f"{bpath}.{rel}" for rel in family.block_sites(block))
    return paths

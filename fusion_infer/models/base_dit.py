"""A small rectified-flow base DiT over log-mel latents, built from the control head's block family.

The base model is a :class:`~fusion_infer.models.control_head.ControlHead` whose output has as many
channels as its input: the same ``latent_proj``, :class:`~fusion_infer.models.timestep_embedding.TimestepEmbedder`,
adaLN-zero blocks (DiT, Peebles & Xie 2023 §3.2) and adaptive final layer, so the ``mods=None``
protocol, :meth:`compute_modulators` and the
:class:`~fusion_infer.cache.time_conditioning.TimeConditioningCache` apply to it unchanged (docs/design.md §3).

It predicts the rectified-flow velocity (Liu et al. 2023, "Flow straight and fast", Eq. 1;
Esser et al. 2024, SD3 §2): with ``x_t = (1 − t)·x_0 + t·ε`` (``t = 0`` clean, ``t = 1`` noise, the
convention of LatCH's rectified-flow port) the target is ``v = ε − x_0``, and the clean estimate is
``x̂_0 = x_t − t·v̂`` (:meth:`BaseDiT.clean_estimate`).

Example:
    >>> import torch
    >>> from fusion_infer.models.base_dit import BaseDiT, base_dit_config
    >>> model = BaseDiT(base_dit_config(in_channels=8, dim=32, depth=1, heads=2, freq_dim=32))
    >>> x = torch.randn(2, 8, 16)
    >>> model(x, 0.5).shape  # velocity, same shape as x
    torch.Size([2, 8, 16])
    >>> torch.equal(model.clean_estimate(x, 0.5), x - 0.5 * model(x, 0.5))
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from .control_head import ControlHead, ControlHeadConfig

__all__ = ["BaseDiT", "base_dit_config"]


def base_dit_config(**overrides: Any) -> ControlHeadConfig:
    """The demo-sized base-model config (≈ 0.9 M parameters over ``[64, 256]`` latents).

    Defaults: ``in_channels = out_channels = 64``, ``dim = 128``, ``depth = 4``, ``heads = 4``,
    ``freq_dim = 128``. ``out_channels`` follows ``in_channels`` unless given; giving a different
    value raises (a velocity has the latent's shape).

    Example:
        >>> base_dit_config(dim=64).out_channels
        64
    """
    fields = {"in_channels": 64, "dim": 128, "depth": 4, "heads": 4, "freq_dim": 128}
    fields.update(overrides)
    fields.setdefault("out_channels", fields["in_channels"])
    return ControlHeadConfig(**fields)


class BaseDiT(ControlHead):
    """Rectified-flow velocity model ``(x_t [B, C, T], t) → v̂ [B, C, T]`` (a ControlHead with
    ``out_channels == in_channels``).

    Args:
        config: a :class:`ControlHeadConfig` with ``out_channels == in_channels`` (default
            :func:`base_dit_config`).
        **overrides: field overrides on top of ``config``.

    Raises:
        ValueError: ``out_channels != in_channels``.

    Example:
        >>> BaseDiT(dim=32, depth=1, heads=2, freq_dim=32).config.out_channels
        64
    """

    def __init__(self, config: ControlHeadConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = base_dit_config(**overrides)
        elif isinstance(config, ControlHeadConfig) and overrides:
            config = dataclasses.replace(config, **overrides)
        if isinstance(config, ControlHeadConfig) and config.out_channels != config.in_channels:
            raise ValueError(
                "BaseDiT predicts a velocity of the latent's shape: config.out_channels must equal "
                f"in_channels ({config.in_channels}), got {config.out_channels}"
            )
        super().__init__(config)

    def clean_estimate(self, x: Tensor, t: float | Tensor, *, cond: Tensor | None = None) -> Tensor:
        """``x̂_0 = x_t − t·v̂(x_t, t)`` (``t`` a float or ``[B]`` tensor)."""
        v = self(x, t, cond=cond)
        if isinstance(t, Tensor) and t.dim() == 1:
            t = t.to(v)[:, None, None]
        return x - t * v

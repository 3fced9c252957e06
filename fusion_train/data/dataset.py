"""``ReferenceData``: latents, control targets, split and statistics in one container.

Both the music21 reference data (:func:`fusion_train.data.build_reference_data`) and the synthetic
generator (:func:`fusion_train.data.synthetic_data`) return this type, so training code and tests
are written once.

Example:
    >>> from fusion_train.data import synthetic_data
    >>> data = synthetic_data(8, frames=32, seed=0)
    >>> data.latents.shape, data.controls.shape
    (torch.Size([8, 64, 32]), torch.Size([8, 5, 32]))
    >>> latents, controls = data.split("val")
    >>> bool(set(data.pieces_in("val")).isdisjoint(data.pieces_in("train")))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fusion_infer.controls.features import ControlFeatureExtractor
from fusion_infer.controls.mel_bands import ControlBand, MelSpec

__all__ = ["SPLITS", "ReferenceData"]

SPLITS = ("train", "val")


@dataclass
class ReferenceData:
    """Excerpts on the latent frame grid.

    Attributes:
        latents: standardised log-mel latents ``[N, n_mels, T]`` (``(dB − latent_mean)/latent_std``).
        controls: control targets ``[N, C, T]`` in physical units (dB; flux in dB/frame), channels
            named by ``control_names``. Use :meth:`standardize_controls` for training targets.
        control_names: channel names, e.g. ``rms_energy_bass … spectral_flux``.
        piece_ids: the source piece of every excerpt (length N).
        train_index, val_index: excerpt indices of each split (disjoint *by piece*).
        latent_mean, latent_std: per-mel-bin stats ``[n_mels]`` from the train split only (dB).
        control_mean, control_std: per-channel stats ``[C]`` from the train split only.
        spec, bands, db_floor: the analysis that produced the data (needed to read controls back
            out of latents, see :meth:`control_extractor`).
        source: ``"music21"`` or ``"synthetic"``; ``cache_status``: ``"hit"``, ``"built"``,
            ``"rebuilt: <reason>"`` or ``"uncached"``; ``rendered_pieces``: how many pieces were
            rendered by this call (0 on a cache hit); ``cache_folder``: where the cached data set
            lives (``None`` for uncached data).
        extras: source-specific tensors (the synthetic data's analytic ground truth).
        info: JSON-friendly description (config, skipped pieces, timings).
    """

    latents: torch.Tensor
    controls: torch.Tensor
    control_names: tuple[str, ...]
    piece_ids: tuple[str, ...]
    train_index: torch.Tensor
    val_index: torch.Tensor
    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    control_mean: torch.Tensor
    control_std: torch.Tensor
    spec: MelSpec
    bands: tuple[ControlBand, ...]
    db_floor: float
    source: str
    cache_status: str = "uncached"
    rendered_pieces: int = 0
    cache_folder: str | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def _index(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.train_index if split == "train" else self.val_index

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents, controls)`` of ``"train"`` or ``"val"``."""
        index = self._index(split)
        return self.latents[index], self.controls[index]

    def pieces_in(self, split: str) -> list[str]:
        """Sorted distinct piece ids in a split."""
        return sorted({self.piece_ids[i] for i in self._index(split).tolist()})

    def destandardize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Standardised latents ``[..., n_mels, T]`` back to log-mel dB."""
        mean = self.latent_mean.to(latents)[:, None]
        return latents * self.latent_std.to(latents)[:, None] + mean

    def standardize_controls(self, controls: torch.Tensor) -> torch.Tensor:
        """Controls ``[..., C, T]`` to zero-mean unit-variance per channel (train stats)."""
        return (controls - self.control_mean.to(controls)[:, None]) / self.control_std.to(controls)[
            :, None
        ]

    def destandardize_controls(self, controls: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`standardize_controls`."""
        return controls * self.control_std.to(controls)[:, None] + self.control_mean.to(controls)[
            :, None
        ]

    def summary(self) -> str:
        """A few lines describing the data (sizes, split, frame grid, control ranges, cache).

        Example:
            >>> from fusion_train.data import synthetic_data
            >>> print(synthetic_data(4, frames=16).summary().splitlines()[0])
            synthetic: 4 excerpts × [64, 16] at 21.53 Hz (0.74 s); train 3 / val 1 excerpts
        """
        n_mels, frames = self.latents.shape[1:]
        lines = [
            f"{self.source}: {len(self)} excerpts × [{n_mels}, {frames}] at "
            f"{self.spec.frame_rate:.2f} Hz ({frames / self.spec.frame_rate:.2f} s); "
            f"train {self.train_index.numel()} / val {self.val_index.numel()} excerpts",
            f"pieces: {len(self.pieces_in('train'))} train, {len(self.pieces_in('val'))} val; "
            f"cache: {self.cache_status}" + (f" ({self.cache_folder})" if self.cache_folder else ""),
        ]
        for c, name in enumerate(self.control_names):
            values = self.controls[:, c]
            lines.append(
                f"  {name:<16} mean {float(values.mean()):7.2f}  std {float(values.std()):6.2f}  "
                f"range [{float(values.min()):.1f}, {float(values.max()):.1f}]"
            )
        return "\n".join(lines)

    def control_extractor(self) -> ControlFeatureExtractor:
        """A :class:`ControlFeatureExtractor` that reads these controls from *standardised* latents."""
        return ControlFeatureExtractor(
            self.spec, self.bands, self.db_floor, self.latent_mean, self.latent_std
        )


def split_stats(values: torch.Tensor, index: torch.Tensor, min_std: float = 1.0):
    """Per-channel mean and std of ``values[index]`` (``[N, C, T]``) over excerpts and frames.

    The std is floored at ``min_std`` (1 dB by default): a channel that (nearly) never moves in the
    train split, e.g. a mel bin above every partial of a small slice, would otherwise turn a
    validation excerpt with energy there into values in the tens of thousands.
    """
    if index.numel() == 0:
        raise ValueError("cannot compute statistics of an empty split")
    chosen = values[index].to(torch.float64)
    mean = chosen.mean(dim=(0, 2))
    std = chosen.std(dim=(0, 2), unbiased=False).clamp_min(min_std)
    return mean.to(torch.float32), std.to(torch.float32)

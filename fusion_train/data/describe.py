"""A JSON description of a data set, enough to build it again (stored in checkpoints).

:func:`train_head` records ``describe_data(data)`` in every checkpoint it writes
(``metadata["extra"]["data"]``), and ``fusion-train eval`` rebuilds exactly that data with
:func:`data_from_description` unless told otherwise, so a head is evaluated on the data it was
trained on by default.

* music21 reference data: ``{"source": "music21", "config": ReferenceDataConfig.to_dict(), …}``
* synthetic data: ``{"source": "synthetic", "n": …, "frames": …, "seed": …, …}`` (the keyword
  arguments of :func:`~fusion_train.data.synthetic_data`; the default mel analysis is assumed)

Example:
    >>> from fusion_train.data import synthetic_data
    >>> desc = describe_data(synthetic_data(4, frames=16, seed=3))
    >>> desc["source"], desc["n"], desc["frames"], desc["seed"]
    ('synthetic', 4, 16, 3)
    >>> bool((data_from_description(desc).latents == synthetic_data(4, frames=16, seed=3).latents).all())
    True
"""

from __future__ import annotations

import os
from typing import Any

from .dataset import ReferenceData

__all__ = ["data_from_description", "describe_data", "summarise_description"]

_SYNTHETIC_KEYS = ("n", "frames", "seed", "active_prob", "level_db", "val_fraction")


def describe_data(data: ReferenceData) -> dict[str, Any]:
    """What :func:`data_from_description` needs to rebuild ``data`` (plus its size, for messages)."""
    common = {"excerpts": len(data), "control_names": list(data.control_names),
              "frames": int(data.latents.shape[-1])}
    if data.source == "music21" and "config" in data.info:
        return {"source": "music21", "config": dict(data.info["config"]), **common}
    if data.source == "synthetic" and all(k in data.info for k in _SYNTHETIC_KEYS):
        return {"source": "synthetic", **common, **{k: data.info[k] for k in _SYNTHETIC_KEYS}}
    return {"source": data.source, **common}  # not rebuildable: recorded for the record only


def data_from_description(
    desc: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int = 1,
) -> ReferenceData:
    """Build the data set ``desc`` describes (music21 data comes from the cache when present).

    Raises ``ValueError`` naming the source when the description cannot be rebuilt.
    """
    source = desc.get("source") if isinstance(desc, dict) else None
    if source == "music21" and isinstance(desc.get("config"), dict):
        from .reference import _config_from_dict, build_reference_data

        return build_reference_data(_config_from_dict(desc["config"]), cache_dir=cache_dir,
                                    progress=progress, workers=workers)
    if source == "synthetic" and all(k in desc for k in _SYNTHETIC_KEYS):
        from .synthetic import synthetic_data

        return synthetic_data(int(desc["n"]), frames=int(desc["frames"]), seed=int(desc["seed"]),
                              active_prob=float(desc["active_prob"]), level_db=tuple(desc["level_db"]),
                              val_fraction=float(desc["val_fraction"]))
    raise ValueError(f"cannot rebuild data from the description {desc!r} (source {source!r}); "
                     "pass the data options (--synthetic N or --pieces …) explicitly")


def summarise_description(desc: dict[str, Any]) -> str:
    """One line for messages: ``music21 (200 pieces × 4 excerpts × 256 frames, seed 0)``."""
    source = desc.get("source", "?")
    if source == "music21" and "config" in desc:
        c = desc["config"]
        return (f"music21 ({c['n_pieces']} pieces × {c['excerpts_per_piece']} excerpts × "
                f"{c['frames']} frames, seed {c['seed']})")
    if source == "synthetic" and "n" in desc:
        return f"synthetic ({desc['n']} excerpts × {desc['frames']} frames, seed {desc['seed']})"
    return f"{source} ({desc.get('excerpts', '?')} excerpts)"

"""Per-piece render cache: an interrupted reference-data build resumes where it stopped.

Rendering a piece is a pure function of the piece id and the render settings (every
:class:`~fusion_train.data.ReferenceDataConfig` field except ``n_pieces`` and ``collections``,
which only choose *which* pieces are rendered), the data format version and the music21 version.
Each rendered piece is written to ``<root>/reference_data/pieces/<settings hash>/<piece hash>.safetensors``
as soon as it is done (atomically: temp file + ``os.replace``), so Ctrl-C during a 200-piece build
keeps every finished piece, and a later build of the same settings — or a larger slice — renders
only what is missing. A piece file that does not load is rendered again. The assembled data set
(``data.safetensors`` + manifest) is still what training reads; these files only speed up builds
and can be deleted at any time.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> save_piece(folder, "bach/x.mxl", {"skipped": "too short"})
    >>> load_piece(folder, "bach/x.mxl")
    {'skipped': 'too short'}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import atomic_write

__all__ = ["load_piece", "piece_cache_folder", "save_piece"]

_ARRAYS = ("latents", "controls", "starts")
_EXCLUDED = ("n_pieces", "collections")


def piece_cache_folder(config_dict: dict, root: Path, version: int, music21_version: str) -> Path:
    """The folder holding the rendered pieces for these render settings."""
    settings = {k: v for k, v in config_dict.items() if k not in _EXCLUDED}
    payload = {"version": version, "config": settings, "music21": music21_version}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return Path(root) / "reference_data" / "pieces" / digest[:20]


def _piece_path(folder: Path, piece_id: str) -> Path:
    return Path(folder) / (hashlib.sha256(piece_id.encode()).hexdigest()[:24] + ".safetensors")


def save_piece(folder: str | os.PathLike, piece_id: str, result: dict[str, Any]) -> None:
    """Store one :func:`~fusion_train.data.reference._render_piece` result (or its skip reason)."""
    from safetensors.torch import save_file

    if "skipped" in result:
        tensors = {"empty": torch.zeros(0)}
        meta = {"piece": piece_id, "skipped": str(result["skipped"])}
    else:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(result[k])) for k in _ARRAYS}
        meta = {"piece": piece_id, "tempo_qpm": result["tempo_qpm"], "transpose": int(result["transpose"])}
    header = {"piece": json.dumps(meta)}
    atomic_write(_piece_path(Path(folder), piece_id), lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_piece(folder: str | os.PathLike, piece_id: str) -> dict[str, Any] | None:
    """A stored result for ``piece_id``, or None when there is none or it does not load."""
    from safetensors import safe_open

    path = _piece_path(Path(folder), piece_id)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["piece"])
            if meta.get("piece") != piece_id:  # a hash collision or a foreign file
                return None
            if "skipped" in meta:
                return {"skipped": meta["skipped"]}
            out: dict[str, Any] = {k: f.get_tensor(k).numpy() for k in _ARRAYS}
    except Exception:  # noqa: BLE001 - an unreadable piece file is simply rendered again
        return None
    out["tempo_qpm"] = meta["tempo_qpm"]
    out["transpose"] = meta["transpose"]
    return out

"""The music21 reference data: real scores, our synthesiser, log-mel latents, control targets.

Pipeline per piece (all randomness from ``numpy.random.default_rng([seed, hash(piece)])``, so a
piece renders identically whatever else is selected and however many workers run):

1. parse the score (:mod:`fusion_train.data.corpus`); tempo from its metronome mark, else uniform
   in ``tempo_range``; transpose by a random whole number of semitones in ``±transpose``;
2. performance: a random timbre per voice (:func:`fusion_train.data.synth.random_timbre`), a
   per-voice gain (−6…0 dB), a slow "phrasing" gain curve (three random cosines, periods 4–30 s,
   up to about ±8 dB), ±1.5 dB per-note jitter and, with probability 0.35, the lowest voice
   doubled an octave below at −6 dB (an organ's 16' stop), so that loudness and band balance
   actually vary;
3. ``excerpts_per_piece`` windows of ``frames`` frames (stratified random starts over the piece),
   rendered with ``n_fft/2`` samples of real context on each side, then scaled per piece so the
   loudest excerpt peaks at a random level between −18 and −1 dBFS;
4. latents = log-mel in dB (:mod:`fusion_train.data.mel`), targets = band RMS dB + flux
   (:mod:`fusion_train.data.controls`), both on the same frames.

Pieces are taken round-robin from the configured corpus collections (each ordered by a seeded
hash), skipping pieces that fail to parse or are shorter than an excerpt; the skipped ones and the
reason are listed in ``data.info["skipped"]``. The split is by piece: pieces are ranked by a
seeded hash and the first ``max(1, round(val_fraction·n))`` go to validation, so no piece has
excerpts in both splits. Standardisation statistics come from the train split only.

Example (needs the ``data`` extra; renders two pieces into a temporary cache):
    >>> import tempfile
    >>> cfg = ReferenceDataConfig(n_pieces=2, excerpts_per_piece=1, frames=64)
    >>> data = build_reference_data(cfg, cache_dir=tempfile.mkdtemp(), progress=False)  # doctest: +SKIP
    >>> data.latents.shape  # doctest: +SKIP
    torch.Size([2, 64, 64])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fusion_infer.controls.features import control_feature_names
from fusion_infer.controls.mel_bands import (
    DEFAULT_CONTROL_BANDS,
    DEFAULT_DB_FLOOR,
    ControlBand,
    MelSpec,
    band_mel_weights,
)
from fusion_infer.files import atomic_write

from . import corpus
from .cache import read_manifest, resolve_cache_root, write_manifest
from .controls import audio_control_targets
from .dataset import ReferenceData, split_stats
from .mel import log_mel, samples_for_frames
from .piece_cache import load_piece, piece_cache_folder, save_piece
from .synth import NoteEvent, random_timbre, render_notes

__all__ = [
    "DATA_FORMAT_VERSION",
    "ReferenceDataConfig",
    "build_reference_data",
    "reference_cache_folder",
    "split_pieces",
]

logger = logging.getLogger(__name__)

#: Bump whenever rendering, analysis or the file layout changes: old caches are then rebuilt.
DATA_FORMAT_VERSION = 1
_DATA_FILE = "data.safetensors"


@dataclass(frozen=True)
class ReferenceDataConfig:
    """What to render. Every field is part of the cache key.

    Example:
        >>> cfg = ReferenceDataConfig(n_pieces=8)
        >>> cfg.mel_spec().frame_rate > 21.5, round(cfg.excerpt_seconds, 2)
        (True, 11.89)
    """

    n_pieces: int = 200
    excerpts_per_piece: int = 4
    frames: int = 256
    n_mels: int = 64
    sample_rate: int = 22050
    hop: int = 1024
    n_fft: int = 2048
    mel_scale: str = "htk"
    seed: int = 0
    val_fraction: float = 0.1
    collections: tuple[str, ...] = corpus.DEFAULT_COLLECTIONS
    bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS
    db_floor: float = DEFAULT_DB_FLOOR
    tempo_range: tuple[float, float] = (60.0, 110.0)
    transpose: int = 5

    def __post_init__(self) -> None:
        for name in ("n_pieces", "excerpts_per_piece", "frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0):
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        if self.val_fraction > 0 and self.n_pieces < 2:
            raise ValueError("n_pieces must be >= 2 when val_fraction > 0 (the split is by piece)")
        if isinstance(self.collections, str) or not self.collections:
            raise TypeError(
                f"collections must be a non-empty tuple of corpus folder names, got {self.collections!r}"
            )
        lo, hi = self.tempo_range
        if not 20.0 <= lo <= hi <= 300.0:
            raise ValueError(f"tempo_range must satisfy 20 <= low <= high <= 300, got {self.tempo_range}")
        if not (isinstance(self.transpose, int) and 0 <= self.transpose <= 12):
            raise ValueError(f"transpose must be an int in [0, 12], got {self.transpose!r}")
        if not math.isfinite(self.db_floor):
            raise ValueError(f"db_floor must be finite, got {self.db_floor!r}")
        spec = self.mel_spec()  # validates sample_rate/n_fft/hop/n_mels/mel_scale
        band_mel_weights(spec, self.bands)  # every band needs a mel bin

    def mel_spec(self) -> MelSpec:
        """The :class:`MelSpec` of the latents."""
        return MelSpec(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop=self.hop,
            n_mels=self.n_mels,
            mel_scale=self.mel_scale,
        )

    @property
    def excerpt_seconds(self) -> float:
        """Seconds spanned by one excerpt's frame centres plus one hop, ``frames·hop/sr``."""
        return self.frames * self.hop / self.sample_rate

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        out = asdict(self)
        out["collections"] = list(self.collections)
        out["tempo_range"] = list(self.tempo_range)
        return out

    def config_hash(self, music21_version: str) -> str:
        """SHA-256 over the format version, this config and the corpus (music21) version."""
        payload = {"version": DATA_FORMAT_VERSION, "config": self.to_dict(), "music21": music21_version}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _stable_int(*parts: object) -> int:
    """A 63-bit integer from SHA-256 of the parts (stable across processes, unlike ``hash``)."""
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def split_pieces(piece_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split *by piece*: ``(train_pieces, val_pieces)``, disjoint, order-independent.

    Pieces are ranked by ``sha256(seed, "split", piece)``; the first
    ``max(1, round(val_fraction·n))`` (0 when ``val_fraction == 0``) are validation.

    Example:
        >>> train, val = split_pieces(["a", "b", "c", "d"], 0.25, seed=0)
        >>> len(train), len(val), set(train).isdisjoint(val)
        (3, 1, True)
    """
    unique = sorted(set(piece_ids))
    if val_fraction <= 0:
        return unique, []
    n_val = max(1, round(val_fraction * len(unique)))
    if n_val >= len(unique):
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training piece among {len(unique)} pieces"
        )
    ranked = sorted(unique, key=lambda p: _stable_int(seed, "split", p))
    val = sorted(ranked[:n_val])
    return [p for p in unique if p not in set(val)], val


def _candidate_order(pieces: Sequence[str], collections: Sequence[str], seed: int) -> list[str]:
    """Round-robin over collections, each ordered by a seeded hash."""
    queues = []
    for collection in collections:
        members = [p for p in pieces if p.split("/", 1)[0] == collection]
        queues.append(sorted(members, key=lambda p: _stable_int(seed, "select", p)))
    order: list[str] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        order.extend(q[rank] for q in queues if rank < len(q))
    return order


def _performance_notes(notes: Sequence[NoteEvent], n_voices: int, rng: np.random.Generator):
    """Per-voice gains, the phrasing curve, per-note jitter and the optional sub-octave doubling."""
    voice_gain_db = rng.uniform(-6.0, 0.0, n_voices)
    periods = rng.uniform(4.0, 30.0, 3)
    depths = rng.uniform(1.0, 3.5, 3)
    offsets = rng.uniform(0.0, 2 * np.pi, 3)
    jitter_db = rng.uniform(-1.5, 1.5, len(notes))
    mean_pitch = [
        np.mean([n.pitch for n in notes if n.voice == v] or [np.inf]) for v in range(n_voices)
    ]
    lowest = int(np.argmin(mean_pitch))
    sub_octave = bool(rng.random() < 0.35)
    out = []
    for note, jitter in zip(notes, jitter_db):
        phrasing = float(np.sum(depths * np.cos(2 * np.pi * note.onset / periods + offsets)))
        gain_db = voice_gain_db[note.voice] + phrasing + jitter
        amp = note.amplitude * 10.0 ** (gain_db / 20.0)
        out.append(NoteEvent(note.onset, note.duration, note.pitch, amp, note.voice))
        if sub_octave and note.voice == lowest and note.pitch - 12 >= 21:
            out.append(NoteEvent(note.onset, note.duration, note.pitch - 12, amp * 0.5, note.voice))
    return out


def _render_piece(piece_id: str, config_dict: dict) -> dict:
    """Render one piece's excerpts; returns arrays or ``{"skipped": reason}``. Runs in workers."""
    config = _config_from_dict(config_dict)
    rng = np.random.default_rng([config.seed, _stable_int("piece", piece_id)])
    tempo = float(rng.uniform(*config.tempo_range))
    try:
        parsed = corpus.parse_piece(piece_id, tempo)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure just skips the piece
        return {"skipped": f"parse failed: {type(exc).__name__}: {exc}"[:300]}
    shift = int(rng.integers(-config.transpose, config.transpose + 1))
    notes = [
        NoteEvent(n.onset, n.duration, n.pitch + shift, n.amplitude, n.voice) for n in parsed.notes
    ]
    timbres = {v: random_timbre(rng) for v in range(parsed.n_voices)}
    notes = _performance_notes(notes, parsed.n_voices, rng)

    spec = config.mel_spec()
    excerpt_s = config.excerpt_seconds
    available = parsed.duration_s - excerpt_s
    if available < 0:
        return {"skipped": f"shorter than one excerpt ({parsed.duration_s:.1f}s < {excerpt_s:.1f}s)"}
    k = config.excerpts_per_piece
    starts = [(i + rng.random()) / k * available for i in range(k)]
    n_samples = samples_for_frames(spec, config.frames)
    context_s = (spec.n_fft // 2) / spec.sample_rate
    audio = np.stack(
        [
            render_notes(notes, timbres, s - context_s, n_samples, spec.sample_rate, phase_seed=rng.integers(2**31))
            for s in starts
        ]
    )
    peak = float(np.abs(audio).max())
    if peak <= 0:
        return {"skipped": "silent excerpts"}
    level_db = rng.uniform(-18.0, -1.0)
    audio *= np.float32(10.0 ** (level_db / 20.0) / peak)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic in the main process and in workers
    try:
        wave = torch.from_numpy(audio)
        latents = log_mel(wave, spec)
        controls = audio_control_targets(wave, spec, config.bands, config.db_floor)
    finally:
        torch.set_num_threads(threads)
    return {
        "latents": latents.numpy(),
        "controls": controls.numpy(),
        "starts": np.asarray(starts, dtype=np.float64),
        "tempo_qpm": parsed.tempo_qpm,
        "transpose": shift,
    }


def _render_piece_cached(piece_id: str, config_dict: dict, folder: str) -> dict:
    """:func:`_render_piece` through the per-piece cache (:mod:`fusion_train.data.piece_cache`)."""
    cached = load_piece(folder, piece_id)
    if cached is not None:
        cached["from_cache"] = True
        return cached
    result = _render_piece(piece_id, config_dict)
    save_piece(folder, piece_id, result)
    return result


def _config_from_dict(d: dict) -> ReferenceDataConfig:
    d = dict(d)
    d["collections"] = tuple(d["collections"])
    d["tempo_range"] = tuple(d["tempo_range"])
    d["bands"] = tuple(ControlBand(**b) for b in d["bands"])
    return ReferenceDataConfig(**d)


def reference_cache_folder(config: ReferenceDataConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will hold) this configuration's cache."""
    music21 = corpus.import_music21()
    digest = config.config_hash(music21.__version__)
    return resolve_cache_root(cache_dir) / "reference_data" / digest[:20]


def _worker_init() -> None:
    torch.set_num_threads(1)


def _render_all(config: ReferenceDataConfig, progress: bool, workers: int, pieces_folder: Path):
    from tqdm.auto import tqdm

    candidates = _candidate_order(
        corpus.list_corpus_pieces(config.collections), config.collections, config.seed
    )
    accepted: list[tuple[str, dict]] = []
    skipped: list[dict] = []
    config_dict = config.to_dict()
    bar = tqdm(total=config.n_pieces, desc="rendering pieces", unit="piece", disable=not progress)
    pool = (
        ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init)
        if workers > 1
        else None
    )
    reused = 0
    try:
        cursor = 0
        while len(accepted) < config.n_pieces and cursor < len(candidates):
            # Ask for what is still missing (+ a little slack for skips); accept in candidate order
            # so the selection does not depend on the number of workers.
            want = config.n_pieces - len(accepted)
            batch = candidates[cursor : cursor + want + (want // 8 + 1 if pool else 0)]
            cursor += len(batch)
            folder = str(pieces_folder)
            if pool is None:
                results = (_render_piece_cached(p, config_dict, folder) for p in batch)
            else:
                results = pool.map(_render_piece_cached, batch, [config_dict] * len(batch),
                                   [folder] * len(batch))
            for piece_id, result in zip(batch, results):
                if len(accepted) >= config.n_pieces:
                    break
                reused += bool(result.pop("from_cache", False))
                if "skipped" in result:
                    skipped.append({"piece": piece_id, "reason": result["skipped"]})
                    continue
                accepted.append((piece_id, result))
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if len(accepted) < config.n_pieces:
        raise ValueError(
            f"n_pieces={config.n_pieces} but only {len(accepted)} usable pieces exist in "
            f"collections {list(config.collections)} ({len(skipped)} skipped)"
        )
    return accepted, skipped, reused


def _assemble(config: ReferenceDataConfig, accepted, skipped) -> tuple[dict, dict]:
    piece_list = [p for p, _ in accepted]
    train_pieces, val_pieces = split_pieces(piece_list, config.val_fraction, config.seed)
    val_set = set(val_pieces)
    latents = torch.from_numpy(np.concatenate([r["latents"] for _, r in accepted]))
    controls = torch.from_numpy(np.concatenate([r["controls"] for _, r in accepted]))
    piece_index = torch.repeat_interleave(
        torch.arange(len(accepted)), torch.tensor([len(r["starts"]) for _, r in accepted])
    )
    is_val = torch.tensor([piece_list[i] in val_set for i in piece_index.tolist()])
    train_index = (~is_val).nonzero().flatten()
    val_index = is_val.nonzero().flatten()
    latent_mean, latent_std = split_stats(latents, train_index)
    control_mean, control_std = split_stats(controls, train_index)
    tensors = {
        "latents_db": latents.contiguous(),
        "controls": controls.contiguous(),
        "piece_index": piece_index,
        "excerpt_start_s": torch.from_numpy(np.concatenate([r["starts"] for _, r in accepted])),
        "train_index": train_index,
        "val_index": val_index,
        "latent_mean": latent_mean,
        "latent_std": latent_std,
        "control_mean": control_mean,
        "control_std": control_std,
    }
    info = {
        "config": config.to_dict(),
        "pieces": piece_list,
        "train_pieces": train_pieces,
        "val_pieces": val_pieces,
        "skipped": skipped,
        "tempo_qpm": {p: r["tempo_qpm"] for p, r in accepted},
        "transpose": {p: r["transpose"] for p, r in accepted},
        "control_names": list(control_feature_names(config.bands)),
    }
    return tensors, info


def _to_reference_data(config: ReferenceDataConfig, tensors: dict, info: dict, **status) -> ReferenceData:
    latent_mean, latent_std = tensors["latent_mean"], tensors["latent_std"]
    latents = (tensors["latents_db"] - latent_mean[:, None]) / latent_std[:, None]
    pieces = info["pieces"]
    return ReferenceData(
        latents=latents,
        controls=tensors["controls"],
        control_names=tuple(info["control_names"]),
        piece_ids=tuple(pieces[i] for i in tensors["piece_index"].tolist()),
        train_index=tensors["train_index"],
        val_index=tensors["val_index"],
        latent_mean=latent_mean,
        latent_std=latent_std,
        control_mean=tensors["control_mean"],
        control_std=tensors["control_std"],
        spec=config.mel_spec(),
        bands=config.bands,
        db_floor=config.db_floor,
        source="music21",
        extras={"excerpt_start_s": tensors["excerpt_start_s"]},
        info=info,
        **status,
    )


def build_reference_data(
    config: ReferenceDataConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int = 1,
) -> ReferenceData:
    """Build (or load from the cache) the music21 reference data.

    Args:
        config: what to render (default :class:`ReferenceDataConfig()`: 200 pieces × 4 excerpts).
        cache_dir: cache root (default ``$FUSION_CACHE_DIR``, ``$XDG_CACHE_HOME/fusion`` or
            ``~/.cache/fusion``); the data lives in ``<root>/reference_data/<hash>/``.
        progress: show a tqdm bar while rendering.
        workers: processes used for rendering (default 1). Results are bit-identical for any
            value. Workers are started with ``spawn`` (fork is unsafe once torch has threads), so
            a script that passes ``workers > 1`` needs the usual ``if __name__ == "__main__":``
            guard, and each worker pays a few seconds of start-up: worth it for the full build,
            not for a small slice.

    A complete, intact cache is loaded without rendering (``cache_status == "hit"``); a missing,
    partial or corrupt one is rebuilt (``"built"`` / ``"rebuilt: <reason>"``).

    Example:
        >>> data = build_reference_data(ReferenceDataConfig(n_pieces=8))  # doctest: +SKIP
        >>> data.latents.shape  # doctest: +SKIP
        torch.Size([32, 64, 256])
    """
    config = ReferenceDataConfig() if config is None else config
    if not isinstance(config, ReferenceDataConfig):
        raise TypeError(f"config must be a ReferenceDataConfig, got {type(config).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    music21 = corpus.import_music21()
    digest = config.config_hash(music21.__version__)
    folder = resolve_cache_root(cache_dir) / "reference_data" / digest[:20]

    status = "built"
    if folder.exists():
        try:
            manifest = read_manifest(folder, DATA_FORMAT_VERSION, digest)
            tensors = load_file(str(folder / _DATA_FILE))
            return _to_reference_data(config, tensors, manifest["info"], cache_status="hit",
                                      cache_folder=str(folder))
        except Exception as exc:  # noqa: BLE001 - whatever makes a cache unreadable, rebuild it
            status = f"rebuilt: {exc}"
            logger.warning("reference data cache at %s is unusable (%s); rebuilding", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)

    started = time.perf_counter()
    pieces_folder = piece_cache_folder(config.to_dict(), resolve_cache_root(cache_dir), DATA_FORMAT_VERSION,
                                       music21.__version__)
    accepted, skipped, reused = _render_all(config, progress, workers, pieces_folder)
    tensors, info = _assemble(config, accepted, skipped)
    info["build_seconds"] = round(time.perf_counter() - started, 2)
    info["music21_version"] = music21.__version__
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / _DATA_FILE, lambda tmp: save_file(tensors, str(tmp)))
    write_manifest(folder, DATA_FORMAT_VERSION, digest, [_DATA_FILE], info=info)
    return _to_reference_data(
        config, tensors, info, cache_status=status, rendered_pieces=len(accepted) + len(skipped) - reused,
        cache_folder=str(folder),
    )


"""Real scores from the corpus that ships inside the ``music21`` wheel (never the network).

``music21`` is an optional dependency (the ``data`` extra); it is imported lazily and a clear
error says how to install it. Pieces are identified by their path relative to the corpus root
(e.g. ``bach/bwv10.7.mxl``), which is stable across machines and is what the train/validation
split and the cache manifest record.

Score → notes: ties are merged, every part becomes a voice, chords become several notes,
dynamics markings (``p``, ``f``, …) scale the notes after them by their ``volumeScalar``, and the
first metronome mark (if any) sets the tempo; otherwise the caller's tempo is used. Repeats are
not expanded. Files are parsed with ``forceSource=True, storePickle=False`` so nothing is read
from or written to music21's pickle cache.

Example (needs the ``data`` extra):
    >>> pieces = list_corpus_pieces(("bach",))  # doctest: +SKIP
    >>> pieces[0]  # doctest: +SKIP
    'bach/bwv1.6.mxl'
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .synth import NoteEvent

__all__ = [
    "DEFAULT_COLLECTIONS",
    "ParsedPiece",
    "import_music21",
    "list_corpus_pieces",
    "parse_piece",
]

#: Corpus folders used by default: 4-part Bach chorales, Monteverdi madrigals, Palestrina mass
#: movements (polyphony) and Ryan's Mammoth Collection fiddle tunes (monophonic melody).
DEFAULT_COLLECTIONS: tuple[str, ...] = ("bach", "monteverdi", "palestrina", "ryansMammoth")

# Formats that hold notes (``.rntxt`` holds Roman-numeral analyses, not a performance).
_SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".abc")

_INSTALL_HINT = (
    "the music21 corpus is needed for the reference data; install it with "
    "`pip install fusion-dit[data]` (or `pip install music21`). "
    "`fusion_train.data.synthetic_data` needs no extra."
)


def import_music21() -> ModuleType:
    """Import ``music21`` or raise ``ImportError`` telling the user to install the ``data`` extra."""
    try:
        return importlib.import_module("music21")
    except ImportError as exc:  # pragma: no cover - exercised via monkeypatch in tests
        raise ImportError(_INSTALL_HINT) from exc


def _corpus_root() -> Path:
    music21 = import_music21()
    return Path(music21.__file__).resolve().parent / "corpus"


def list_corpus_pieces(collections: Sequence[str] = DEFAULT_COLLECTIONS) -> list[str]:
    """Sorted piece ids (paths relative to the corpus root) in the given corpus folders.

    Raises ``ValueError`` for a folder the installed corpus does not have.
    """
    root = _corpus_root()
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    pieces: list[str] = []
    for collection in collections:
        folder = root / collection
        if collection not in available:
            raise ValueError(
                f"unknown corpus collection {collection!r}; the installed music21 corpus has "
                f"{available}"
            )
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in _SCORE_SUFFIXES:
                pieces.append(path.relative_to(root).as_posix())
    return pieces


@dataclass(frozen=True)
class ParsedPiece:
    """A score reduced to timed notes: ``notes`` in seconds, ``tempo_qpm`` used, ``n_voices``."""

    piece_id: str
    notes: tuple[NoteEvent, ...]
    tempo_qpm: float
    n_voices: int

    @property
    def duration_s(self) -> float:
        """End of the last written note in seconds (releases not included)."""
        return max((n.onset + n.duration for n in self.notes), default=0.0)


def parse_piece(piece_id: str, default_tempo_qpm: float) -> ParsedPiece:
    """Parse a corpus piece into notes; ``default_tempo_qpm`` applies when it has no tempo mark.

    Raises ``ValueError`` when the file holds several pieces (an Opus) or no notes.
    """
    music21 = import_music21()
    path = _corpus_root() / piece_id
    if not path.is_file():
        raise ValueError(f"piece {piece_id!r} is not in the installed music21 corpus")
    converter = music21.converter.Converter()
    converter.parseFile(path, forceSource=True, storePickle=False)
    score = converter.stream
    if isinstance(score, music21.stream.Opus):
        raise ValueError(f"{piece_id!r} is an Opus (several pieces in one file)")
    score.stripTies(inPlace=True)  # in place: a copy costs more than the parse

    tempo = float(default_tempo_qpm)
    marks = list(score.flatten().getElementsByClass(music21.tempo.MetronomeMark))
    for mark in marks:
        qpm = mark.getQuarterBPM()
        if qpm and 20.0 <= qpm <= 300.0:
            tempo = float(qpm)
            break
    seconds_per_quarter = 60.0 / tempo

    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    notes: list[NoteEvent] = []
    for voice, part in enumerate(parts):
        flat = part.flatten()
        dynamics = sorted(
            (float(d.offset), float(d.volumeScalar))
            for d in flat.getElementsByClass(music21.dynamics.Dynamic)
            if d.volumeScalar is not None
        )
        for element in flat.notes:
            quarters = float(element.duration.quarterLength)
            if quarters <= 0:  # grace notes
                continue
            offset = float(element.offset)
            level = 0.7  # mezzo-forte-ish when no marking precedes the note
            for dyn_offset, scalar in dynamics:
                if dyn_offset <= offset:
                    level = scalar
            for pitch in element.pitches:
                notes.append(
                    NoteEvent(
                        onset=offset * seconds_per_quarter,
                        duration=quarters * seconds_per_quarter,
                        pitch=float(pitch.ps),
                        amplitude=level,
                        voice=voice,
                    )
                )
    if not notes:
        raise ValueError(f"{piece_id!r} contains no notes")
    notes.sort(key=lambda n: (n.onset, n.voice, n.pitch))
    return ParsedPiece(piece_id, tuple(notes), tempo, len(parts))

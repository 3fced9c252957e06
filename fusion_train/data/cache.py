"""On-disk cache of the reference data: location, atomic writes, manifest and validation.

Location (first that is set): the ``cache_dir`` argument, ``$FUSION_CACHE_DIR``,
``$XDG_CACHE_HOME/fusion``, ``~/.cache/fusion``. Each configuration lives in its own folder
``<root>/reference_data/<config hash>/`` holding ``data.safetensors`` and ``manifest.json``.

The manifest is written last and is the commit point: it records a format version, the config
hash and, for every data file, its size and SHA-256. A folder is trusted only when the manifest
parses, its version and hash match, and every file's size and checksum match; otherwise the
folder is rebuilt (a crash mid-build, a truncated or edited file, a stale format). Every file is
written with :func:`fusion_infer.files.atomic_write` (temporary file in the same folder, fsync,
rename), so a failed write never leaves a half-written file under the real name.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> resolve_cache_root(root) == root
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fusion_infer.files import atomic_write

__all__ = [
    "MANIFEST_NAME",
    "CacheInvalid",
    "file_sha256",
    "read_manifest",
    "resolve_cache_root",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fusion-reference-data"


class CacheInvalid(Exception):
    """A cache folder that must be rebuilt; the message says why."""


def resolve_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$FUSION_CACHE_DIR``, ``$XDG_CACHE_HOME/fusion``, ``~/.cache/fusion``."""
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
        return Path(cache_dir).expanduser()
    if os.environ.get("FUSION_CACHE_DIR"):
        return Path(os.environ["FUSION_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fusion"
    return Path.home() / ".cache" / "fusion"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, version: int, config_hash: str, files: list[str], **info: Any) -> dict:
    """Checksum ``files`` (names inside ``folder``) and atomically write the manifest; return it."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "config_hash": config_hash,
        "files": {
            name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
            for name in files
        },
        **info,
    }
    atomic_write(folder / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_manifest(folder: Path, version: int, config_hash: str) -> dict:
    """Return the folder's manifest if the folder is complete and intact, else raise :class:`CacheInvalid`."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise CacheInvalid("no manifest (new or partially written cache)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheInvalid(f"unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CacheInvalid("manifest is not a fusion reference-data manifest")
    if manifest.get("version") != version:
        raise CacheInvalid(f"format version {manifest.get('version')} != {version}")
    if manifest.get("config_hash") != config_hash:
        raise CacheInvalid("config hash mismatch")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CacheInvalid("manifest lists no files")
    for name, entry in files.items():
        file = folder / name
        if not file.is_file():
            raise CacheInvalid(f"missing file {name}")
        try:
            if file.stat().st_size != entry["bytes"]:
                raise CacheInvalid(f"{name} has {file.stat().st_size} bytes, manifest says {entry['bytes']}")
            if file_sha256(file) != entry["sha256"]:
                raise CacheInvalid(f"{name} checksum mismatch (corrupt file)")
        except (KeyError, TypeError) as exc:
            raise CacheInvalid(f"malformed manifest entry for {name}") from exc
    return manifest

"""Cache location, atomic writes and manifest validation."""

import json
import os
from pathlib import Path

import pytest

from fusion_infer.files import atomic_write
from fusion_train.data.cache import (
    CacheInvalid,
    read_manifest,
    resolve_cache_root,
    write_manifest,
)


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSION_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_root() == tmp_path / "home" / ".cache" / "fusion"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_root() == tmp_path / "xdg" / "fusion"
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_root() == tmp_path / "env"
    assert resolve_cache_root(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(TypeError, match="cache_dir must be a path"):
        resolve_cache_root(3)


def test_failed_write_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "data.bin"
    atomic_write(target, b"old contents")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"new but incomp")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no temp file left


def test_failed_rename_leaves_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    atomic_write(target, b"old")

    def broken_replace(src, dst):
        raise PermissionError("rename refused")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def _folder_with_manifest(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"0123456789")
    write_manifest(tmp_path, 3, "hash", ["a.bin"], info={"x": 1})
    return tmp_path


def test_manifest_round_trip(tmp_path):
    folder = _folder_with_manifest(tmp_path)
    manifest = read_manifest(folder, 3, "hash")
    assert manifest["info"] == {"x": 1} and manifest["files"]["a.bin"]["bytes"] == 10


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "manifest.json").unlink(), "no manifest"),
        (lambda f: (f / "manifest.json").write_text("{not json"), "unreadable manifest"),
        (lambda f: (f / "a.bin").unlink(), "missing file a.bin"),
        (lambda f: (f / "a.bin").write_bytes(b"01234"), "bytes"),
        (lambda f: (f / "a.bin").write_bytes(b"0123456788"), "checksum mismatch"),
    ],
)
def test_manifest_detects_damage(tmp_path, damage, reason):
    folder = _folder_with_manifest(tmp_path)
    damage(folder)
    with pytest.raises(CacheInvalid, match=reason):
        read_manifest(folder, 3, "hash")


def test_manifest_detects_version_and_hash_mismatch(tmp_path):
    folder = _folder_with_manifest(tmp_path)
    with pytest.raises(CacheInvalid, match="format version"):
        read_manifest(folder, 4, "hash")
    with pytest.raises(CacheInvalid, match="config hash"):
        read_manifest(folder, 3, "other")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = "something-else"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheInvalid, match="not a fusion"):
        read_manifest(folder, 3, "hash")

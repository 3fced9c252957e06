"""fusion_infer.files.atomic_write: umask mode, kill -9 mid-write, stale temps, full disk, errors."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fusion_infer import files
from fusion_infer.files import TEMP_SUFFIX, atomic_write, remove_stale_temps, temp_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o000, 0o666)])
@pytest.mark.parametrize("kind", ["bytes", "str", "callable"])
def test_final_mode_follows_the_umask(tmp_path, umask, mask, expected, kind):
    umask(mask)
    content = {"bytes": b"abc", "str": "abc", "callable": lambda tmp: tmp.write_bytes(b"abc")}[kind]
    target = tmp_path / "out.bin"
    atomic_write(target, content)
    assert _mode(target) == expected  # mkstemp would give 0o600 whatever the umask
    atomic_write(target, content)  # replacing an existing file: same rule
    assert _mode(target) == expected


def test_safetensors_writer_gets_the_umask_mode_too(tmp_path, umask):
    import torch
    from safetensors.torch import load_file, save_file

    umask(0o022)
    target = tmp_path / "w.safetensors"
    atomic_write(target, lambda tmp: save_file({"w": torch.arange(4.0)}, str(tmp)))
    assert _mode(target) == 0o644
    assert torch.equal(load_file(str(target))["w"], torch.arange(4.0))


def test_contents_types_and_folder_creation(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    assert atomic_write(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write(target, bytearray(b"\x00\x01"))
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, memoryview(b"xyz"))
    assert target.read_bytes() == b"xyz"
    assert sorted(p.name for p in target.parent.iterdir()) == ["c.txt"]


def test_bad_content_type_is_refused_before_touching_anything(tmp_path):
    target = tmp_path / "x"
    target.write_bytes(b"old")
    with pytest.raises(TypeError, match="content must be bytes, str or a callable"):
        atomic_write(target, 42)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_directory_target_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write(tmp_path / "d", b"x")


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_full_disk_in_os_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    atomic_write(target, b"old contents")
    real_write = os.write
    calls = {"n": 0}

    def write_then_enospc(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:3])  # a short write first, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write_then_enospc)
    with pytest.raises(OSError) as info:
        atomic_write(target, b"new contents that do not fit")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    msg = str(info.value)
    assert str(target) in msg and "previous file is unchanged" in msg and "full" in msg
    assert target.read_bytes() == b"old contents"
    assert _only(tmp_path) == ["data.bin"]


def test_full_disk_in_a_write_callable_keeps_the_previous_file(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    atomic_write(target, b"old")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_write(target, writer)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert _only(tmp_path) == ["ckpt.safetensors"]


def test_oserror_subclass_is_kept(tmp_path, monkeypatch):
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError, match="could not write"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert _only(tmp_path) == ["f"]


@pytest.mark.parametrize("exc", [ValueError("bad tensor"), KeyboardInterrupt()])
def test_any_error_in_the_writer_removes_the_temp(tmp_path, exc):
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old"
    assert _only(tmp_path) == ["f"]


def test_symlink_is_replaced_not_followed(tmp_path):
    real = tmp_path / "real"
    real.write_bytes(b"keep me")
    link = tmp_path / "link"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert real.read_bytes() == b"keep me"


_CHILD = textwrap.dedent(
    """
    import importlib.util
    import sys
    from pathlib import Path

    # Load the module by path: the writer under test, without importing torch for the package.
    spec = importlib.util.spec_from_file_location("files_under_test", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    atomic_write = module.atomic_write

    target = Path(sys.argv[1])
    chunk = b"n" * (1 << 20)

    def writer(tmp):
        with open(tmp, "wb") as f:
            for i in range(10_000):  # far more than the parent waits for: it is killed mid-write
                f.write(chunk)
                f.flush()
                if i == 3:
                    print("writing", flush=True)

    atomic_write(target, writer)
    """
)


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX))


def _kill_mid_write(target: Path) -> int:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(target), files.__file__], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child has written 4 MiB of the temp file
        assert line.strip() == b"writing", line
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return child.pid


def test_kill_9_mid_write_keeps_the_old_file_and_the_next_write_removes_the_stale_temp(tmp_path):
    target = tmp_path / "head.safetensors"
    atomic_write(target, b"old weights")
    pid = _kill_mid_write(target)
    assert target.read_bytes() == b"old weights"  # the reader never sees the half-written file
    stale = _temps(tmp_path)
    assert len(stale) == 1 and f".{pid}." in stale[0].name
    assert stale[0].stat().st_size >= 4 << 20
    # A second writer of the same target removes the first one's temp before it starts; killed
    # too, it leaves only its own. The next successful write removes that one.
    pid2 = _kill_mid_write(target)
    stale = _temps(tmp_path)
    assert len(stale) == 1 and f".{pid2}." in stale[0].name
    assert target.read_bytes() == b"old weights"
    atomic_write(target, b"new weights")
    assert target.read_bytes() == b"new weights"
    assert _only(tmp_path) == ["head.safetensors"]


def test_stale_cleanup_spares_live_writers_other_targets_and_foreign_files(tmp_path):
    target = tmp_path / "t.bin"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / temp_name("t.bin", pid=sleeper.pid, token="0")
        mine = tmp_path / temp_name("t.bin", token="in-flight")  # this process: maybe another thread
        other_target = tmp_path / temp_name("u.bin", pid=2**22 + 12345, token="0")
        foreign = [tmp_path / ".t.bin.tmp", tmp_path / f".t.bin.x.y{TEMP_SUFFIX}", tmp_path / "t.bin.bak"]
        dead = tmp_path / temp_name("t.bin", pid=_dead_pid(), token="7")
        for p in (live, mine, other_target, dead, *foreign):
            p.write_bytes(b"?")
        removed = remove_stale_temps(target)
        assert removed == [dead]
        for p in (live, mine, other_target, *foreign):
            assert p.exists(), p.name
    finally:
        sleeper.kill()
        sleeper.wait()


def test_temps_of_another_host_are_never_judged(tmp_path, monkeypatch):
    target = tmp_path / "t.bin"
    dead_pid = _dead_pid()
    p = tmp_path / temp_name("t.bin", pid=dead_pid, token="0")
    p.write_bytes(b"?")
    monkeypatch.setattr(files, "_host_tag", lambda: "ffffffff")  # as seen from another machine
    assert remove_stale_temps(target) == []
    assert p.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid (until the kernel reuses it)


def test_temp_names_are_recognisable_and_bounded():
    long = "x" * 250
    name = temp_name(long)
    assert len(name.encode()) < 255
    assert re.fullmatch(r"\.x{160}\.[0-9a-f]{8}\.\d+\.[0-9a-f-]+\.fusion-tmp", name)


def test_concurrent_threads_writing_one_target(tmp_path):
    target = tmp_path / "shared.txt"
    payloads = [(str(i) * 50_000) for i in range(8)]
    errors: list[BaseException] = []

    def work(text: str) -> None:
        try:
            for _ in range(5):
                atomic_write(target, text)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_text() in payloads  # one complete payload, never a mix
    assert _only(tmp_path) == ["shared.txt"]


def test_no_other_atomic_write_implementation_in_the_project():
    """One helper: no mkstemp/os.replace/Path.replace-based writer anywhere else in the sources."""
    pattern = re.compile(r"mkstemp|os\.replace\(|\.replace\(path\)|os\.rename\(")
    offenders = []
    for folder in ("fusion_infer", "fusion_train", "integrations", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "fusion_infer" / "files.py":
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "use fusion_infer.files.atomic_write instead:\n" + "\n".join(offenders)



@pytest.mark.parametrize("name", ["fusion_infer.files", "fusion_infer.bounded_json", "fusion_infer.checkpoint"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

"""Atomic file writes: the one helper every file the project writes goes through.

:func:`atomic_write` replaces ``path`` with new contents so that a reader sees either the old
file or the complete new one, never a half-written file, whatever happens to the writer:

1. Stale temporary files left by earlier writers of the *same target* that died without cleaning
   up (``kill -9``, power loss) are removed first. Temporary names are recognisable,
   ``.{name}.{host}.{pid}.{token}.fusion-tmp``; one is removed only when it was made on this host
   by a process that no longer exists (``os.kill(pid, 0)`` fails with ``ProcessLookupError``), so
   a concurrent writer's temporary file is never touched. (POSIX only: on Windows, where probing
   a pid with ``os.kill`` would terminate it, stale temporaries are kept.)
2. The new contents go to a fresh temporary file in the destination folder (``O_CREAT|O_EXCL``,
   mode ``0o666`` filtered by the process umask — the mode a plain ``open(path, "w")`` would
   give, not ``tempfile.mkstemp``'s ``0o600``).
3. The temporary file is flushed to disk (``fsync``), renamed over ``path`` (``os.replace``,
   atomic on POSIX within one file system), and the folder is fsynced so the rename itself
   survives a crash (POSIX ``fsync(2)``: "calling fsync() on the file does not necessarily ensure
   that the entry in the directory containing the file has also reached disk").
4. On *any* error (including ``KeyboardInterrupt``) the temporary file is removed and ``path``
   keeps its previous contents. An ``OSError`` (a full disk, a quota, a permission) is re-raised
   with the same errno and type, and a message naming ``path`` and saying that the previous
   file is unchanged.

``path`` itself is replaced: when it is a symbolic link, the link is replaced by a regular file
(the file it pointed to is untouched).

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "notes.txt", "hello\\n").read_text()
    'hello\\n'
    >>> _ = atomic_write(folder / "blob.bin", b"\\x00\\x01")
    >>> _ = atomic_write(folder / "data.bin", lambda tmp: tmp.write_bytes(b"via a callable"))
    >>> sorted(p.name for p in folder.iterdir())
    ['blob.bin', 'data.bin', 'notes.txt']
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "atomic_write", "remove_stale_temps", "temp_name"]

#: Suffix of every temporary file :func:`atomic_write` creates.
TEMP_SUFFIX = ".fusion-tmp"

Content = bytes | bytearray | memoryview | str | Callable[[Path], object]

_COUNTER = itertools.count()
_COUNTER_LOCK = threading.Lock()
# The longest target-name prefix kept in a temporary name: a temp name must stay under NAME_MAX
# (255 bytes on common file systems) while still identifying its target.
_MAX_NAME_PART = 160


def _host_tag() -> str:
    """Eight hex digits identifying this host (temps on a shared folder are only judged locally)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _name_part(target_name: str) -> str:
    return target_name[:_MAX_NAME_PART]


def temp_name(target_name: str, pid: int | None = None, token: str | None = None) -> str:
    """The temporary file name used while writing ``target_name`` (a bare file name, no folder).

    Example:
        >>> temp_name("best.safetensors", pid=42, token="0").endswith(".42.0.fusion-tmp")
        True
    """
    if pid is None:
        pid = os.getpid()
    if token is None:
        with _COUNTER_LOCK:
            token = f"{next(_COUNTER)}-{threading.get_ident() & 0xFFFF:x}"
    return f".{_name_part(target_name)}.{_host_tag()}.{pid}.{token}{TEMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we wrote: never judge it dead
    if os.name == "nt":
        # On Windows os.kill(pid, 0) *terminates* the process (TerminateProcess): never probe;
        # stale temporaries are then kept rather than risked.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # cannot tell: keep the file
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` left by dead writers on this host; return what was removed.

    Only names of the form :func:`temp_name` for this very target, this host and a pid that is
    neither this process nor alive are removed; anything else in the folder is left alone.

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> remove_stale_temps(folder / "x.bin")
        []
    """
    path = Path(path)
    prefix = f".{_name_part(path.name)}.{_host_tag()}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    me = os.getpid()
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        rest = name[len(prefix):-len(TEMP_SUFFIX)]
        pid_text, _, token = rest.partition(".")
        if not pid_text.isdigit() or not token or "." in token:
            continue
        pid = int(pid_text)
        if pid == me or _pid_alive(pid):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass  # another writer cleaned it first
        except OSError:
            pass  # not ours to insist on; the write itself must not fail over a stale temp
    return removed


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        # Some file systems refuse fsync on a folder. The rename has happened and the data is on
        # disk, so reporting "could not write" now would be false; durability is best effort here.
        pass
    finally:
        os.close(fd)


def _explain(exc: OSError, path: Path) -> OSError:
    """The same errno and OSError subclass, with a message naming ``path``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"{reason} (the disk or quota is full)"
    message = f"could not write {path}: {reason}; the previous file is unchanged"
    if exc.errno is not None:
        # OSError(errno, message) returns the errno's subclass (PermissionError, …), as the cause had.
        return OSError(exc.errno, message)
    try:
        return type(exc)(message)
    except Exception:  # an OSError subclass with another constructor
        return OSError(message)


def atomic_write(path: str | os.PathLike, content: Content, *, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``content``; return ``path`` as a :class:`~pathlib.Path`.

    Args:
        path: the destination file. Its folder is created if missing.
        content: ``bytes`` (or any bytes-like object), ``str`` (encoded with ``encoding``), or a
            callable ``write(tmp_path)`` that writes the file at ``tmp_path`` (a
            :class:`~pathlib.Path` that already exists, empty; it may also replace that file, the
            umask mode is restored afterwards) by name — for
            writers that need a path, such as ``safetensors.torch.save_file`` or
            ``Figure.savefig(tmp_path, format="png")``.
        encoding: text encoding for ``str`` content.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        OSError: writing failed (same errno and subclass as the cause, message naming ``path``);
            the previous file is unchanged and no temporary file is left.
        TypeError: ``content`` is none of the above.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "out" / "report.md"
        >>> atomic_write(p, "# report\\n") == p
        True
    """
    if isinstance(content, str):
        data: bytes | bytearray | memoryview | None = content.encode(encoding)
        write_fn = None
    elif isinstance(content, (bytes, bytearray, memoryview)):
        data, write_fn = content, None
    elif callable(content):
        data, write_fn = None, content
    else:
        raise TypeError(
            f"content must be bytes, str or a callable write(tmp_path), got {type(content).__name__}"
        )
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path}: it is a directory")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _explain(exc, path) from exc
    remove_stale_temps(path)
    tmp = folder / temp_name(path.name)
    try:
        # 0o666 & ~umask: the kernel applies the umask at creation, like open(path, "w") does.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise _explain(exc, path) from exc
    try:
        try:
            # The kernel applied the umask at creation: this is the mode the file must end with.
            mode = os.fstat(fd).st_mode & 0o7777
            if data is not None:
                _write_all(fd, data)
                os.fsync(fd)
        finally:
            os.close(fd)
        if write_fn is not None:
            write_fn(tmp)
            # Some writers replace the file rather than write into it (safetensors' save_file
            # leaves it 0o600): restore the umask mode.
            if os.stat(tmp).st_mode & 0o7777 != mode:
                os.chmod(tmp, mode)
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.fsync(fd)  # the data is on disk before the rename makes it visible
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _explain(exc, path) from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(folder)
    return path


def _unlink_quietly(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # the original error is the one to report

"""Writing output files safely: the one helper every file the project writes goes through, and file locks.

DESIGN.md ("Writing files and paths"): a path the user types is theirs, so nothing here confines paths; safety
comes from how a file is written. :func:`write_file` opens a unique temporary file beside the target with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (a link planted at any name is never followed, two writers never share a
temporary file), writes, fsyncs and renames it over the target with ``os.replace``: a reader, or a process killed
mid-write, sees the old file or the new one, never half of one. The temporary file's name holds its writer's host
and pid, so that the next write to the same target removes what a killed writer left behind. :class:`FileLock`
guards a file that one process owns while it runs (a checkpoint) and names its holder to anyone refused.

It lives at the bottom of the layers (plain Python, no framework) so that spec files can use it as well as the
trainer, the report and the CLI.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import IO, Any, Callable

Content = bytes | str | Callable[[IO[bytes]], Any]
"""What :func:`write_file` writes: bytes, text (UTF-8), or a function that writes into a binary file object."""

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMPORARY_ATTEMPTS = 100


def write_file(path: str | os.PathLike[str], content: Content, *, overwrite: bool = True) -> Path:
    """Writes ``content`` to ``path`` atomically and durably, through a unique temporary file in its directory.

    Missing parent directories are made, as for every output of the CLI. ``overwrite=False`` refuses an existing
    target with FileExistsError (a command checks ``--force`` before any work; this is the last guard). A symlink
    *at* ``path`` is replaced by the new file, never written through. On any error (a full disk, say) the temporary
    file is removed and the previous target is left as it was; temporary files of ``path`` that killed writers
    left behind are removed before writing.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; give a file name")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    descriptor, temporary = _create_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode("utf-8") if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    _fsync_directory(path.parent)
    return path


def _writer_prefix(path: Path) -> str:
    """``.NAME.HOST.`` for the temporary files of ``path`` written on this host; HOST is 8 hex digits of a hash of
    the host name (a name of fixed length and alphabet, short enough beside a long target name)."""
    host = hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f".{path.name}.{host}."


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file named ``.NAME.HOST.PID.RANDOM.tmp`` beside ``path``, created by this call and by no one
    else (RANDOM is 12 hex digits)."""
    prefix = f"{_writer_prefix(path)}{os.getpid()}."
    for _ in range(_TEMPORARY_ATTEMPTS):
        temporary = path.with_name(f"{prefix}{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temporary, _OPEN_FLAGS, 0o666), temporary
        except FileExistsError:
            continue  # a name someone else holds (or planted): draw another
    raise FileExistsError(f"cannot create a temporary file beside {path}: {_TEMPORARY_ATTEMPTS} names were taken")


def _remove_stale_temporaries(path: Path) -> None:
    """Removes the temporary files of ``path`` that writers killed mid-write on this host left behind.

    A file is removed only when all of these hold: its name is exactly ``.NAME.HOST.PID.RANDOM.tmp`` for this
    target and this host (a writer on another host sharing the directory has PIDs this host cannot check), it is a
    regular file (a link or a directory at such a name is left alone, and ``unlink`` never follows a link), and
    no process with that PID is alive. The names are listed before the PIDs are checked, so a listed file's writer
    existed before the check: a live writer always passes it, and a dead writer's PID reused by another process
    only keeps its leftover until a later write. Anything this cleanup cannot do is no reason to fail the write.
    """
    pattern = re.compile(rf"{re.escape(_writer_prefix(path))}([1-9][0-9]{{0,9}})\.[0-9a-f]{{12}}\.tmp")
    try:
        with os.scandir(path.parent) as entries:
            leftovers = [(entry.path, int(match[1])) for entry in entries if (match := pattern.fullmatch(entry.name))]
    except OSError:
        return
    for leftover, pid in leftovers:
        try:
            is_file = stat.S_ISREG(os.lstat(leftover).st_mode)
        except OSError:
            continue
        if is_file and not _process_alive(pid):
            _unlink_quietly(Path(leftover))


def _process_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (signal 0 checks without sending anything); in doubt,
    alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists, owned by someone else
        return True
    return True


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: Path) -> None:
    """Makes the rename durable; some file systems cannot open a directory for that, which is not an error."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def check_output(
    path: str | os.PathLike[str], *, flag: str, force: bool, directory: bool | None = False
) -> Path:
    """Refuses, before any work, an output the command could not write: an existing file without ``force``, a
    file where a directory is wanted (``directory=True``) or a directory where a file is (``False``; ``None``
    takes either), or a parent that is not a directory.

    Any location is allowed: a path the user types is theirs. Returns the path as typed (``~`` expanded).
    """
    path = Path(path).expanduser()
    if directory is True and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path} must be a directory")
    if directory is False and path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a directory; give a file name")
    if not force and not path.is_dir() and os.path.lexists(path):
        raise FileExistsError(f"{flag} {path} exists; pass --force to overwrite it")
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise NotADirectoryError(f"{flag} {path}: {parent} is not a directory")
            break
    return path


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it (host and pid)."""


class FileLock:
    """An exclusive lock on ``PATH.lock`` that names its holder, for a file one process owns while it runs.

    The lock is a ``flock`` on the lock file, so the operating system releases it when the holder dies, however it
    dies: no stale lock to clean up after a kill. The file holds the holder's host and pid, which a refused
    process reads into its message. On release the file is removed (and a process that opened the removed file
    in the meantime notices and retries on the new one).
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str = "file") -> None:
        self.target = Path(path)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.what = what
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises :class:`LockHeldError` naming the process that holds it."""
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise LockHeldError(
                    f"{self.what} {self.target} is in use by {holder} (lock file {self.path}); wait for it to "
                    "finish or stop it, then run this command again"
                ) from None
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)  # the holder removed the file between our open and our lock: lock the new one
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, holder, 0)
        self._descriptor = descriptor

    def release(self) -> None:
        """Removes the lock file and lets the lock go (a no-op when not held)."""
        if self._descriptor is None:
            return
        _unlink_quietly(self.path)
        os.close(self._descriptor)  # closing the last descriptor releases the flock
        self._descriptor = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(descriptor: int) -> str:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "another process"
    return f"process {holder['pid']} on host {holder.get('host', '?')}"


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        status = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (status.st_dev, status.st_ino) == (opened.st_dev, opened.st_ino)

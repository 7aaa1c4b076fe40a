"""Writing files safely: every file whetstone writes appears whole or not at all, and a folder can be
owned by one process at a time.

:func:`atomic_write` is the only way the project writes a file (checkpoints, history, plots, NIR, ONNX,
JSON reports): the bytes go to a temporary file in the same folder, are flushed to disk, and only then
renamed over the destination. A crash, a signal or a full disk leaves the previous file (or nothing)
and no temporary file, and a full disk is reported in one line: ``no space left on device writing FILE``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FolderInUseError", "FolderLock", "OutputError", "Terminated", "atomic_write", "sigterm_raises"]

log = logging.getLogger(__name__)
_UMASK = os.umask(0o022)  # read the process's umask (there is no other way), then put it back
os.umask(_UMASK)


class OutputError(OSError):
    """A file could not be written (no space, no permission, ...); the message is one line."""


def _explain(error: OSError, path: Path) -> OutputError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(error.errno, f"no space left on device writing {path}")
    reason = error.strerror or str(error)
    return OutputError(error.errno, f"cannot write {path}: {reason}")


def atomic_write(path: str | os.PathLike, data: bytes | str, replace: bool = True) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temporary file in the same folder,
    renamed into place once complete and flushed to disk; returns the path. With ``replace=False`` a file
    that exists at ``path`` by then (written meanwhile by another process, say) is never replaced: the
    write fails instead, so two writers of one path cannot both report success.

    A symbolic link at ``path`` is followed (the file it points to is written; the link stays), and a device
    or pipe there (``/dev/stdout``) is written to directly.

    Raises :class:`OutputError` (one line, naming the file) when the folder is missing or unwritable or
    the disk is full; the previous file at ``path``, if any, is then untouched and no temporary file is
    left behind, also when the write is interrupted by a signal.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    if path.exists() and not path.is_file():  # a device or a pipe (/dev/stdout), links followed: a stream
        try:
            with path.open("wb") as stream:
                stream.write(payload)
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
        return path
    if path.is_symlink():  # a link is followed, never replaced: the file it points to is written
        path = path.resolve()
    temporary: str | None = None
    _remove_orphans(path)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.fchmod(handle, 0o666 & ~_UMASK)  # the mode an ordinary open() would give, not mkstemp's 0600
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(temporary, path)
        else:  # a hard link is created only where no file is: atomic "create, never replace"
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise _appeared(path) from None
            except OSError as error:  # a file system without hard links: check, then rename (a narrow race)
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if path.exists():
                    raise _appeared(path) from None
                os.replace(temporary, path)
            else:
                os.unlink(temporary)
        temporary = None
        with contextlib.suppress(OSError):  # make the rename itself durable (best effort)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        raise _explain(error, path) from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return path


def _appeared(path: Path) -> OutputError:
    return OutputError(errno.EEXIST, f"cannot write {path}: a file appeared there meanwhile (another process?); it was "
                       "left as it is")  # fmt: skip


def _remove_orphans(path: Path) -> None:
    """Remove the temporary files of earlier writes of ``path`` whose process is gone (killed with SIGKILL or
    by a power cut mid-write: nothing else can stop the cleanup). Their names carry the writer's process id;
    a live writer's file is left alone."""
    with contextlib.suppress(OSError):
        for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            pid = orphan.name[len(path.name) + 2 :].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    orphan.unlink()


@contextlib.contextmanager
def scratch_folder(kind: str) -> Iterator[Path]:
    """A temporary folder for a consumer's files (``whetstone-KIND-PID-...`` in the system's temporary
    directory), removed on exit; the folders of earlier processes killed before they could remove theirs
    (SIGKILL) are removed first."""
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for orphan in root.glob(f"whetstone-{glob.escape(kind)}-*-*"):
            pid = orphan.name[len(f"whetstone-{kind}-") :].split("-", 1)[0]
            if orphan.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(orphan, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"whetstone-{kind}-{os.getpid()}-") as folder:
        yield Path(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class FolderInUseError(ValueError):
    """Another running process owns the folder."""


class FolderLock:
    """Exclusive ownership of a folder by this process, through an advisory lock (``flock``) on a lock
    file inside it.

    The operating system drops the lock when its holder exits, however it exits, so a lock file left by
    a killed process is stale and simply taken over (and said so in the log). The file names the holder
    (process id, host, start time) for the message another process gets.
    """

    def __init__(self, folder: str | os.PathLike, name: str = ".whetstone.lock") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._handle: int | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> FolderLock:
        """Take the lock; :class:`FolderInUseError` if a live process holds it."""
        if self._handle is not None:
            return self
        while True:
            try:
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise _explain(error, self.path) from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(handle, 256).decode(errors="replace").strip() or "another process"
                os.close(handle)
                raise FolderInUseError(
                    f"{self.folder} is in use by {holder}; wait for it to finish (or stop it) before using this folder"
                ) from None
            if self._still_linked(handle):
                break
            os.close(handle)  # the holder we waited behind removed the file: lock the new one
        previous = os.read(handle, 256).decode(errors="replace").strip()
        if previous:
            log.info("took over the stale lock of %s in %s (that process is gone)", previous, self.folder)
        os.lseek(handle, 0, os.SEEK_SET)
        os.ftruncate(handle, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(handle, f"process {os.getpid()} on {socket.gethostname()} (since {started})".encode())
        self._handle = handle
        return self

    def _still_linked(self, handle: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Give the lock up and remove the lock file."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        os.close(self._handle)
        self._handle = None

    def __enter__(self) -> FolderLock:  # noqa: PYI034 - not meant to be subclassed
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (see :func:`sigterm_raises`)."""


#: SIGTERMs received inside :func:`sigterm_raises` whose exception may not have unwound anything yet.
_pending: list[int] = []


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` if a SIGTERM arrived whose exception was swallowed: Python ignores an
    exception raised in a ``__del__`` or a weakref callback (garbage collection can run one anywhere), so a
    long loop calls this at safe points (the trainer, after every batch)."""
    if _pending:
        raise Terminated(f"terminated by signal {_pending[-1]}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) instead of killing
    the process outright, so it unwinds like Ctrl-C: temporary files are removed, the last complete
    checkpoint stays. A signal whose exception was swallowed on the way (see :func:`raise_if_terminated`)
    is raised when the block ends. Only in the main thread (elsewhere signals cannot be handled); restored
    after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _pending.append(signum)
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    _pending.clear()
    try:
        yield
        raise_if_terminated()
    finally:
        _pending.clear()
        signal.signal(signal.SIGTERM, previous)

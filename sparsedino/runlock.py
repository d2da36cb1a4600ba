"""One writer per output folder: an advisory lock that a second ``train`` / ``reproduce`` refuses to share.

The lock is ``fcntl.flock`` on ``<folder>/.sparsedino.lock``, which holds the owner's pid and command for
the message a second process prints. The operating system releases it when the owner exits, however it
exits (``kill -9`` included), so a stale lock file never blocks a later run. Platforms without ``fcntl``
run unlocked.

A run that fails before writing anything leaves no trace: on release, a lock file that is the folder's only
entry is removed (while still locked), and so is the folder when the lock created it. A process that opened
the lock file just before it was removed notices on acquiring it (the path no longer names its file) and
retries on the new file, so two processes never both hold the lock.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

from sparsedino.errors import OutputError, describe_os_error

LOCK_NAME = ".sparsedino.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``fd`` (a released lock file may have been removed)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class FolderInUseError(OutputError):
    """Another process holds the lock of the output folder."""


class RunLock:
    """Exclusive lock of an output folder for the lifetime of a ``with`` block (or until :meth:`release`).

    Args:
        folder: the output folder (created if missing).
        what: how the user named the folder in messages (``"--out"``, ``"run.output_dir"``).

    Raises:
        FolderInUseError: from :meth:`acquire` when another process holds the lock; the message names its pid.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "output folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None
        self._created_folder = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> RunLock:
        if fcntl is None or self._fd is not None:
            return self
        self._created_folder = not self.folder.exists()
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise OutputError(describe_os_error(err, self.path)) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown pid"
                os.close(fd)
                raise FolderInUseError(
                    f"{self.what} {str(self.folder)!r} is in use by another sparsedino process ({holder}); "
                    "wait for it to finish or choose another folder"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its previous owner removed the file after we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:3])}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if [entry.name for entry in os.scandir(self.folder)] == [LOCK_NAME]:
                self.path.unlink()  # nothing was written: leave no trace (removed while still locked)
                if self._created_folder:
                    self.folder.rmdir()
        except OSError:  # the folder changed under us: keep what is there
            pass
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A crash (or ``kill -9``) at any moment leaves either the previous file or the new one, never a
half-written file. Every writer in the package that produces a result or checkpoint goes through here.

- Written files get the permissions a plain ``open`` would give (``0666`` minus the umask), not the
  ``0600`` of ``tempfile``, so results in a shared folder stay readable by the group.
- A temporary file orphaned by a ``kill -9`` is named ``.<target>.<random>.tmp``;
  :func:`remove_stale_temps` clears them when a run resumes (under the run's lock, see ``runlock.py``).
- A write that fails because the disk is full or the folder is not writable raises
  :class:`~sparsedino.errors.OutputError` naming the file; :func:`check_output_dir` and
  :func:`check_output_file` find the same problems before any work starts.
- Files that belong together (a weights file and its metadata sidecar) are written with
  :func:`atomic_files`, whole folders with :func:`atomic_directory` (a new tree) or :func:`staged_directory`
  (new entries of an existing folder, swapped in only when all were written).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from sparsedino.errors import NO_SPACE, NOT_WRITABLE, OutputError, describe_os_error

TEMP_SUFFIX = ".tmp"
MIN_FREE_BYTES = 1 << 20  # an output folder with less free space than this is reported as full
_UMASK_LOCK = threading.Lock()


def _file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open()`` gives a new file."""
    with _UMASK_LOCK:  # the umask can only be read by setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _as_output_error(err: OSError, path: Path) -> OSError:
    """An :class:`OutputError` naming ``path`` for "disk full" / "not writable"; other errors unchanged."""
    if isinstance(err, OutputError) or err.errno not in NO_SPACE + NOT_WRITABLE:
        return err
    return OutputError(err.errno, describe_os_error(err, path), str(path))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit fsync it and rename it onto ``path``.

    Args:
        path: final destination; its parent folder is created if needed.
        mode: ``"w"`` for text or ``"wb"`` for bytes.
        encoding: text encoding (ignored in binary mode).

    Yields:
        The open temporary file. If the block raises, the temporary file is removed and ``path`` is untouched.

    Raises:
        OutputError: the folder cannot be created or written, or the disk is full.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _as_output_error(err, path) from err
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and _as_output_error(err, path) is not err:
            raise _as_output_error(err, path) from err
        raise


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary files next to each of ``paths``; on a clean exit they are fsynced and renamed onto their
    targets in the order given (put the file that must never be missing its partner last).

    Yields:
        The temporary paths, in the order of ``paths``, for the caller to write. If the block raises, all
        are removed and every target is untouched.

    Raises:
        OutputError: a folder cannot be created or written, or the disk is full.
    """
    targets = [Path(path) for path in paths]
    temps: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
            os.fchmod(fd, _file_mode())
            os.close(fd)
            temps.append(Path(tmp_name))
        yield list(temps)
        for tmp in temps:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        for tmp, path in zip(temps, targets):
            os.replace(tmp, path)
    except BaseException as err:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if isinstance(err, OSError):
            culprit = Path(err.filename) if isinstance(err.filename, str) else targets[0]
            if _as_output_error(err, culprit) is not err:
                raise _as_output_error(err, culprit) from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (keys kept in insertion order)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=True) + "\n")


class _Writer:
    """A file wrapper that keeps the ``OSError`` of a failed write (torch.save may report it as a RuntimeError)."""

    def __init__(self, handle: IO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save(obj: Any, handle: IO) -> None:
    """``torch.save`` into an open binary file; a failed write raises its ``OSError`` (e.g. disk full)."""
    writer = _Writer(handle)
    try:
        torch.save(obj, writer)
    except RuntimeError:
        if writer.error is not None:
            raise writer.error from None
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        torch_save(obj, handle)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder`` (not recursive).

    Call it only while no other process writes to ``folder`` (e.g. holding its :class:`RunLock`).

    Returns:
        The removed paths.
    """
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Check, without creating anything, that ``path`` can become (or is) a writable output folder.

    Args:
        path: the folder.
        what: how the user named it in messages, e.g. ``"--out"`` or ``"run.output_dir"``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OutputError: ``path`` (or a parent) is a file, the nearest existing folder is not writable, or its
            file system has less than 1 MiB free ("no space left on device").
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" (its parent {str(existing)!r} is a file)"
        raise OutputError(f"{what} {str(path)!r} is not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{what} {str(path)!r}: folder {str(existing)!r} is not writable (permission denied)"
        )
    usage = shutil.disk_usage(existing)
    if usage.total > 0 and usage.free < MIN_FREE_BYTES:  # (some network mounts report 0 / 0: no verdict)
        raise OutputError(f"{what} {str(path)!r}: no space left on device")
    return path


class OutputExistsError(OutputError, FileExistsError):
    """An output folder holds files and replacing it was not asked for."""


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Check, without creating anything, that ``path`` can be written as a file (see :func:`check_output_dir`).

    Raises:
        OutputError: ``path`` is an existing folder, or its folder cannot be written.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a folder; give a file name")
    check_output_dir(path.parent, what)
    return path


def check_replaceable_dir(path: str | os.PathLike, what: str) -> Path:
    """Check that folder ``path`` can be built elsewhere and swapped in (see :func:`atomic_directory`).

    Raises:
        OutputError: ``path`` is a file, or it is the working folder or one of its parents (renaming it
            would pull the working folder from under this process), or its folder is not writable.
    """
    path = Path(path).expanduser()
    resolved = path.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutputError(
            f"{what} {str(path)!r} is the working folder (or holds it) and cannot be replaced; "
            "give a new or empty sub-folder instead"
        )
    return check_output_dir(path, what)


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build new entries of folder ``path`` in a hidden staging folder; swap them in only on success.

    The staging folder is ``path/.partial-<pid>`` when ``path`` exists (on its file system, whether
    ``path`` is a link or a mount point, so every rename is atomic), else ``.<name>.partial-<pid>`` beside
    it. On a clean exit each staged entry replaces the entry of the same name in ``path`` (a folder is
    swapped whole: old tree renamed aside, new one renamed in, old one removed), folders first, then files
    in name order; entries of ``path`` the block did not write are kept. When ``path`` did not exist, the
    staging folder simply becomes it. If the block raises, ``path`` is untouched. Call it holding the
    folder's :class:`~sparsedino.runlock.RunLock`: staging folders left by killed runs are removed.

    Yields:
        The staging folder to fill.
    """
    final = Path(path).resolve()
    inside = final.is_dir()
    prefix = ".partial-" if inside else f".{final.name}.partial-"
    where = final if inside else final.parent
    tmp = where / f"{prefix}{os.getpid()}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        for stale in where.glob(f"{prefix}*"):  # left by a killed run (the lock keeps live ones out)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:  # whatever the reason, nothing was written: the output location is at fault
        raise OutputError(describe_os_error(err, tmp)) from err
    try:
        yield tmp
        if not inside:
            os.replace(tmp, final)
            return
        entries = sorted(tmp.iterdir(), key=lambda entry: (not entry.is_dir(), entry.name))
        for entry in entries:
            target = final / entry.name
            if entry.is_dir() and target.exists():
                trash = final / f".{entry.name}.old-{os.getpid()}"
                os.replace(target, trash)
                os.replace(entry, target)
                shutil.rmtree(trash)
            else:
                os.replace(entry, target)
        tmp.rmdir()
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and _as_output_error(err, final) is not err:
            raise _as_output_error(err, final) from err
        raise


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, overwrite: bool = False, what: str = "output folder"
) -> Iterator[Path]:
    """Build a folder under a hidden temporary name next to ``path``, then swap it onto ``path``.

    Args:
        path: the final folder; it must not exist or be empty unless ``overwrite``.
        overwrite: replace an existing non-empty ``path`` (its old content is removed after the swap).
        what: how messages name ``path`` (an argument or option name).

    Yields:
        The temporary folder to fill. If the block raises, it is removed and ``path`` is untouched.

    Raises:
        OutputExistsError: ``path`` holds files and ``overwrite`` is false (raised before any work); a
            ``FileExistsError``.
        OutputError: ``path`` is a file or the working folder (see :func:`check_replaceable_dir`).
    """
    path = Path(path)
    check_replaceable_dir(path, what)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{path} exists and is not empty (pass overwrite=True / --overwrite to replace it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():  # empty, or overwrite: move the old tree aside, swap in the new one, drop the old
            trash = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A crash (or ``kill -9``) at any moment leaves either the previous file or the new one, never a
half-written file. Every writer in the package that produces a result or checkpoint goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit fsync it and rename it onto ``path``.

    Args:
        path: final destination; its parent folder is created if needed.
        mode: ``"w"`` for text or ``"wb"`` for bytes.
        encoding: text encoding (ignored in binary mode).

    Yields:
        The open temporary file. If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a hidden temporary name next to ``path``, then swap it onto ``path``.

    Args:
        path: the final folder; it must not exist or be empty unless ``overwrite``.
        overwrite: replace an existing non-empty ``path`` (its old content is removed after the swap).

    Yields:
        The temporary folder to fill. If the block raises, it is removed and ``path`` is untouched.

    Raises:
        FileExistsError: ``path`` holds files and ``overwrite`` is false (raised before any work).
    """
    import shutil

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
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

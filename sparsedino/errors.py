"""User errors: bad input the user can fix, reported as one line and exit code 2 by every command.

Every error caused by what the user gave us (a config key or value, a dataset folder, an image or mask file,
a checkpoint, an output folder, an environment variable) is a :class:`UserError`; its message names the
culprit and says what was expected. :func:`run_command` turns it into ``prog: error: message`` on stderr
and exit code 2. Anything else is a bug (or a failure we did not foresee) and keeps its traceback (exit 1),
so it can be reported and fixed.

The subclasses keep the built-in base a caller would catch (``ValueError``, ``FileNotFoundError``,
``OSError``), so code written against those still works.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

# ``OSError.errno`` values that mean the output location, not the program, is at fault.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, output folder, environment); the message says which."""


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong (or a command-line option); the message says which and what was
    expected. Also importable from :mod:`sparsedino.config`, which raises most of them."""


class DataError(UserError, ValueError):
    """A dataset file (image, mask, list) is unreadable or holds values outside the dataset's format."""


class MissingDataError(UserError, FileNotFoundError):
    """A dataset folder or file the user pointed to does not exist."""


class OutputError(UserError, OSError):
    """An output folder or file cannot be written (not a folder, no permission, no space left)."""


def describe_os_error(err: OSError, path: object) -> str:
    """A short reason for an ``OSError`` raised while writing ``path`` ("no space left on device", ...)."""
    if err.errno in NO_SPACE:
        return f"cannot write {str(path)!r}: no space left on device"
    if err.errno in NOT_WRITABLE:
        return f"cannot write {str(path)!r}: permission denied or read-only file system ({err.strerror})"
    return f"cannot write {str(path)!r}: {err.strerror or err}"


def one_line(err: BaseException) -> str:
    """The error's message on one line.

    An exception re-raised by a ``DataLoader`` worker carries the worker's traceback in its message; only
    the original message (its last line, without the ``module.Class: `` prefix) is kept.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        name = type(err).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's body; a :class:`UserError` (or a full disk) becomes one line on stderr and exit code 2.

    Args:
        prog: the command's name as typed, e.g. ``"sparsedino eval knn"``.
        body: the command's work; returns its exit code (None = 0).

    Returns:
        The body's exit code, or 2 for a user error. Any other exception propagates with its traceback.
    """
    try:
        return int(body() or 0)
    except UserError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        print(f"{prog}: error: {describe_os_error(err, err.filename or 'output')}", file=sys.stderr)
        return 2

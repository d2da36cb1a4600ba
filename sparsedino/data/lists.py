"""Reading the text files of dataset layouts (split lists, class names) with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from sparsedino.errors import DataError


def read_lines(path: Path, reader: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped.

    Args:
        path: the list file.
        reader: the dataset's name for messages (``"VOC"``, ``"DAVIS"``).

    Raises:
        DataError: naming the file when it cannot be read or is not UTF-8 text (a binary file, a list
            saved in another encoding), with the offending byte position.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{reader}: {path} is not UTF-8 text (byte {err.start}: {err.reason}); save the list as UTF-8"
        ) from err
    except OSError as err:
        raise DataError(f"{reader}: cannot read {path}: {err.strerror or err}") from err
    return [line.strip() for line in text.splitlines() if line.strip()]

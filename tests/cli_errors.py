"""What the tests read of a command's failure: its one-line error on stderr, with no traceback."""

from __future__ import annotations


def error_line(capsys, prog: str) -> str:
    """The command's one-line error (progress bars may precede it on stderr; no traceback may)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    return lines[0]

"""The ``SPARSEDINO_*`` environment variables, checked when a command starts.

A misspelt value would otherwise surface only at the first entmax call (after a whole training arm) or
silently turn the C kernels off (an unusable cache folder); a misspelt *name* would be ignored without a
word. Every command checks them first.

========================  =====================================================================
variable                  meaning
========================  =====================================================================
SPARSEDINO_COMPILE        ``auto`` (default), ``0`` / ``1``: native kernels and torch.compile
SPARSEDINO_CACHE          folder of the built C kernels (default ``~/.cache/sparsedino``)
SPARSEDINO_MALLOC_TUNING  ``0`` turns off the CPU allocator tuning of ``allocator.py`` (default on)
========================  =====================================================================
"""

from __future__ import annotations

import difflib
import os

from sparsedino.atomic import check_output_dir
from sparsedino.attention.compiled import compile_mode
from sparsedino.attention.native import find_compiler
from sparsedino.errors import ConfigError

PREFIX = "SPARSEDINO_"
KNOWN = ("SPARSEDINO_COMPILE", "SPARSEDINO_CACHE", "SPARSEDINO_MALLOC_TUNING")


def check_variable_names(environ: dict[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` for a ``SPARSEDINO_*`` variable that is not one of :data:`KNOWN`,
    naming it, the known ones and the closest spelling."""
    environ = os.environ if environ is None else environ
    unknown = sorted(name for name in environ if name.upper().startswith(PREFIX) and name not in KNOWN)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name.upper(), KNOWN, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"environment variable {name} is not a sparsedino setting (known: {', '.join(KNOWN)}){hint}"
        )


def check_environment() -> None:
    """Raise :class:`ConfigError` naming the variable when a ``SPARSEDINO_*`` setting is unusable."""
    check_variable_names()
    try:
        mode = compile_mode()
    except ValueError as err:
        raise ConfigError(f"environment variable {err}") from err
    if mode == "1" and find_compiler() is None:
        raise ConfigError(
            "environment variable SPARSEDINO_COMPILE=1 asks for compiled kernels, but no C compiler was found "
            "($CC, cc, gcc or clang on PATH); install one, or set SPARSEDINO_COMPILE=auto to run the same "
            "attention as tensor ops"
        )
    tuning = os.environ.get("SPARSEDINO_MALLOC_TUNING")
    if tuning is not None and tuning.strip() not in ("0", "1"):
        raise ConfigError(f"environment variable SPARSEDINO_MALLOC_TUNING must be 0 or 1, got {tuning!r}")
    cache = os.environ.get("SPARSEDINO_CACHE")
    if cache is not None:
        if not cache.strip():
            raise ConfigError(
                "environment variable SPARSEDINO_CACHE is set but empty; unset it or give a folder"
            )
        check_output_dir(cache, "environment variable SPARSEDINO_CACHE")

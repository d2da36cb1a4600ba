"""The ``SPARSEDINO_*`` environment variables, checked when a command starts.

A misspelt value would otherwise surface only at the first entmax call (after a whole training arm) or
silently turn the C kernels off (an unusable cache folder); every command checks them first.

======================  =====================================================================
variable                meaning
======================  =====================================================================
SPARSEDINO_COMPILE      ``auto`` (default), ``0`` / ``1``: native kernels and torch.compile
SPARSEDINO_CACHE        folder of the built C kernels (default ``~/.cache/sparsedino``)
======================  =====================================================================
"""

from __future__ import annotations

import os

from sparsedino.config import ConfigError


def check_environment() -> None:
    """Raise :class:`ConfigError` naming the variable when a ``SPARSEDINO_*`` setting is unusable."""
    from sparsedino.atomic import check_output_dir
    from sparsedino.attention.compiled import compile_mode

    try:
        compile_mode()
    except ValueError as err:
        raise ConfigError(f"environment variable {err}") from err
    cache = os.environ.get("SPARSEDINO_CACHE")
    if cache is not None:
        if not cache.strip():
            raise ConfigError(
                "environment variable SPARSEDINO_CACHE is set but empty; unset it or give a folder"
            )
        check_output_dir(cache, "environment variable SPARSEDINO_CACHE")

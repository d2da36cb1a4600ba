"""Process-wide allocator tuning for the ``sparsedino`` commands (glibc on Linux only).

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves every allocation above its mmap threshold
(a few MB) with a fresh ``mmap`` and returns it with ``munmap`` on free, so each new large temporary pays
a page fault per 4 KB page on first touch. Attention at 785 tokens allocates tens of MB per call; on the
virtual machines measured here those faults doubled the time of SDPA, of our entmax attention and tripled
that of the tiled path (``benchmarks/README.md``). Keeping freed memory in the heap for reuse removes them.
The cost: the process keeps its peak heap size until it exits, as GPU caching allocators do.

Only the command-line entry point calls :func:`keep_freed_memory` (it owns its process); a library user
can call it too. ``SPARSEDINO_MALLOC_TUNING=0`` disables it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds so large freed blocks are reused instead of unmapped.

    Args:
        mmap_threshold: allocations below this size come from the heap (reusable) instead of ``mmap``.
        trim_threshold: free heap memory above this size is returned to the OS.

    Returns:
        True when the settings were applied (glibc found and both calls accepted), else False.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("SPARSEDINO_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    return _applied

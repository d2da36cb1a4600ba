"""Reused buffers for the attention op's large CPU temporaries (scores / probabilities and their gradients).

Why: glibc serves every allocation above its mmap threshold (at most 32 MB, often much less) with a fresh
``mmap`` and returns it on free, so each new large tensor pays one page fault per 4 KB page on first
touch. At 785 tokens the op's (B, H, N, N) temporaries are ~100 MB each; on the virtual machines measured
here the faults cost as much as the arithmetic, more so under load. The op therefore takes these buffers
from this pool and gives them back when done, so its speed does not depend on the allocator (nor on
``sparsedino.allocator.keep_freed_memory``). Only CPU buffers of at least ``MIN_BYTES`` are pooled; other
requests are plain allocations.

A buffer saved for backward is given back at the end of backward. Each handed-out buffer carries a lease
number: a backward that finds its buffer leased again since (``retain_graph=True`` and a later forward)
recomputes the probabilities instead of reading the reused buffer. Idle buffers are kept until
:func:`release` (or up to ``MAX_IDLE_BYTES``), as a caching allocator would.

Pooled buffers are normal tensors even when taken under ``torch.inference_mode()`` (an inference tensor,
or a view made in inference mode, cannot be written outside it), and the pool keeps the flat buffer it
allocated (the base of the caller's view), so a call in inference mode and a later one outside share buffers.
"""

from __future__ import annotations

import itertools
import math
import threading

import torch
from torch import Tensor

__all__ = ["MAX_IDLE_BYTES", "MIN_BYTES", "Lease", "give", "idle_bytes", "release", "take", "valid"]

MIN_BYTES = 1 << 20
MAX_IDLE_BYTES = 4 << 30

Lease = tuple[int, int]  # (buffer id, lease number); (0, 0) for unpooled tensors

_lock = threading.Lock()
_idle: dict[tuple[torch.dtype, int], list[Tensor]] = {}  # (dtype, numel) -> idle flat buffers
_leases: dict[int, int] = {}  # buffer id -> its current lease number (unique over the process)
_idle_ids: set[int] = set()
_counter = itertools.count(1)


def _key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def take(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Lease]:
    """A tensor of ``shape`` (uninitialised) and its lease; pooled when on CPU and large."""
    numel = math.prod(shape)
    if device.type != "cpu" or numel * torch.finfo(dtype).bits // 8 < MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device), (0, 0)
    with _lock:
        free = _idle.get((dtype, numel))
        flat = free.pop() if free else None
        if flat is None:
            with torch.inference_mode(False):  # a normal tensor: writable in and outside inference mode
                flat = torch.empty(numel, dtype=dtype)
        key = _key(flat)
        _idle_ids.discard(key)
        lease = _leases[key] = next(_counter)
    return flat.view(shape), (key, lease)


def valid(t: Tensor, lease: Lease) -> bool:
    """Whether ``t`` still holds what was written under ``lease`` (not handed out again since)."""
    return lease[0] == 0 or _leases.get(lease[0]) == lease[1]


def give(t: Tensor, lease: Lease) -> None:
    """Return a buffer from :func:`take` (no-op for unpooled tensors, stale leases or repeated calls)."""
    if lease[0] == 0:
        return
    with _lock:
        if _leases.get(lease[0]) != lease[1] or lease[0] in _idle_ids:
            return
        flat = t if t._base is None else t._base  # the flat buffer take() allocated (a view may be flagged)
        if idle_bytes() + flat.numel() * flat.element_size() > MAX_IDLE_BYTES:
            _leases.pop(lease[0], None)  # dropped: freed when its last user lets go
            return
        _idle_ids.add(lease[0])
        _idle.setdefault((flat.dtype, flat.numel()), []).append(flat)


def idle_bytes() -> int:
    """Bytes held by idle pooled buffers."""
    return sum(b.numel() * b.element_size() for bufs in _idle.values() for b in bufs)


def release() -> None:
    """Free every idle buffer (buffers in use return to the pool when given back)."""
    with _lock:
        for bufs in _idle.values():
            for b in bufs:
                _leases.pop(_key(b), None)
        _idle.clear()
        _idle_ids.clear()

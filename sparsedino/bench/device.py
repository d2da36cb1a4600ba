"""What the benchmarks do differently on a GPU: the one place with CUDA-only code.

Timing needs a device synchronisation, peak memory comes from CUDA's allocator counters (CPU: from
``torch.profiler`` memory events), SDPA is pinned to its flash kernel, and the environment record adds the
GPU's name and the versions of CUDA, Triton and adasplash.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["gpu_environment", "held_bytes", "peak_bytes", "sdpa_flash", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trace_events(prof) -> list[dict]:
    """The profiler's trace events (its trace can be exported once)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            return json.load(fh)["traceEvents"]


def _memory(events: list[dict]) -> list[tuple[float, int, int]]:
    """``(time, bytes, total allocated)`` of the memory events, in time order."""
    memory = [e for e in events if e.get("name") == "[memory]"]
    return sorted((e["ts"], e["args"]["Bytes"], e["args"]["Total Allocated"]) for e in memory)


def _relative(events: list[tuple[float, int, int]], until: float = float("inf")) -> tuple[int, int]:
    """(peak, last) total allocated up to ``until``, above what was live before the first event.

    The profiler's running total also counts earlier profiled allocations freed while it was off, so the
    baseline is taken from the first event itself.
    """
    if not events:
        return 0, 0
    base = events[0][2] - events[0][1]
    totals = [total - base for ts, _, total in events if ts <= until]
    return max([0, *totals]), (totals[-1] if totals else 0)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated while running ``fn`` above the bytes live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return _relative(_memory(_trace_events(prof)))[0]


def held_bytes(fn: Callable[[], Any], device: torch.device, cleanup: Callable[[], Any] = lambda: None) -> int:
    """Bytes still allocated after ``fn()`` returns while its result is alive (e.g. a forward's output and
    everything kept for its backward, however it is kept). ``cleanup`` runs after the result is dropped."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device) - before
        del result
        cleanup()
        return held
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        with record_function("held_bytes: result complete"):
            pass
        del result  # freed while profiling, so later measurements start balanced
        cleanup()
    events = _trace_events(prof)
    mark = min(e["ts"] for e in events if e.get("name") == "held_bytes: result complete")
    return _relative(_memory(events), until=mark)[1]


@contextlib.contextmanager
def sdpa_flash(device: torch.device) -> Iterator[str]:
    """Pin SDPA to the flash kernel on CUDA (an error if it cannot run); yields the kernel's name."""
    if device.type != "cuda":
        yield "sdpa (cpu)"
        return
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        yield "sdpa flash"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_environment(device: torch.device) -> dict[str, Any]:
    """GPU name, memory and the CUDA / Triton / adasplash versions (empty on CPU except the versions)."""
    info: dict[str, Any] = {"triton": _version("triton"), "adasplash": _version("adasplash")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info

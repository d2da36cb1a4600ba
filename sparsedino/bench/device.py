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

__all__ = ["gpu_environment", "peak_bytes", "sdpa_flash", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated while running ``fn`` above the bytes live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals])


@contextlib.contextmanager
def sdpa_flash(device: torch.device) -> Iterator[str]:
    """Pin SDPA to the flash kernel on CUDA (an error if it cannot run); yields the kernel's name."""
    if device.type != "cuda":
        yield "sdpa (cpu)"
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

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

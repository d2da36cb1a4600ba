"""Attention paths of ``sparsedino bench gpu``: each one forced in turn, timed, and checked for exactness.

Paths (the ``path`` field of the JSON rows):

* ``sdpa``: PyTorch's SDPA softmax, pinned to the flash kernel on CUDA (the baseline of every ratio);
* ``adasplash``: our entmax-1.5 through the adasplash kernels (``sparsedino.attention.backends``);
* ``compiled``: our portable entmax-1.5 with compilation forced on (``torch.compile`` of the tensor-op
  solver on CUDA; the row-fused C kernels on CPU);
* ``eager``: the same portable path without any compiler.

Exactness: output and q/k/v gradients against float64 attention computed on the same (rounded) inputs
(exact entmax-1.5 for the entmax paths, softmax for SDPA), as the largest absolute error relative to the
largest magnitude of the reference.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from sparsedino.attention import attention, backends, compiled, parse_normalizer
from sparsedino.attention.gradients import TINY
from sparsedino.bench.device import peak_bytes, sdpa_flash, synchronize

PATHS = ("sdpa", "adasplash", "compiled", "eager")
# Largest relative error of out / dq / dk / dv accepted per input dtype. float32 is the exactness check
# proper (the kernels agree with float64 to ~1e-6); bfloat16 / float16 allow for the rounding of the
# probabilities and of each product to the input dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4e-2, torch.float16: 6e-3}


@contextlib.contextmanager
def forced(path: str, device: torch.device) -> Iterator[Callable[..., torch.Tensor]]:
    """Yield ``fn(q, k, v)`` running attention through ``path`` only (RuntimeError if it cannot)."""
    enabled = backends.ENABLED
    try:
        if path == "sdpa":
            with sdpa_flash(device):
                yield F.scaled_dot_product_attention
            return
        backends.ENABLED = path == "adasplash"
        compiled.set_compile(path != "eager")
        if path == "adasplash":

            def run(q, k, v):
                if not backends.adasplash_usable(q, k, v, parse_normalizer("entmax15")):
                    raise RuntimeError(
                        f"the adasplash path cannot run on {q.device.type} with dtype {q.dtype} and shape "
                        f"{tuple(q.shape)} (it needs CUDA and `pip install adasplash==0.2.2`)"
                    )
                return attention(q, k, v, "entmax15")

            yield run
        else:
            yield lambda q, k, v: attention(q, k, v, "entmax15")
    finally:
        backends.ENABLED = enabled
        compiled.set_compile(None)  # back to the SPARSEDINO_COMPILE policy


def _inputs(shape, dtype, device, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # scores of std ~1.4 at the default scale: sparse rows like a trained ViT's
    return [(torch.randn(shape, generator=gen) * 1.2).to(device=device, dtype=dtype) for _ in range(3)]


def time_path(fn, shape, dtype, device, repeats: int, warmup: int) -> dict[str, Any]:
    """Median fwd+bwd time (ms) and peak memory (MB) of ``fn`` on random inputs of ``shape``."""
    q, k, v = (t.requires_grad_() for t in _inputs(shape, dtype, device))
    grad_out = torch.randn(shape, device=device, dtype=dtype)

    def fwd_bwd():
        fn(q, k, v).backward(grad_out)
        q.grad = k.grad = v.grad = None

    for _ in range(warmup):  # includes compilation
        fwd_bwd()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fwd_bwd()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"fwd_bwd_ms": statistics.median(times), "peak_mb": peak_bytes(fwd_bwd, device) / 2**20}


def _reference(path: str, q, k, v, grad_out) -> list[torch.Tensor]:
    """float64 output and q/k/v gradients on the same values (entmax-1.5 exact, or softmax for SDPA)."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    with forced("eager", q.device):
        if path == "sdpa":
            scores = leaves[0] @ leaves[1].transpose(-2, -1) * q.shape[-1] ** -0.5
            out = torch.softmax(scores, dim=-1) @ leaves[2]
        else:
            out = attention(*leaves, "entmax15")
    out.backward(grad_out.double())
    return [out.detach(), *(t.grad for t in leaves)]


def exactness(path: str, fn, shape, dtype, device) -> dict[str, Any]:
    """Relative errors of ``fn`` against float64 and whether they are finite and within ``TOLERANCE``."""
    q, k, v = (t.requires_grad_() for t in _inputs(shape, dtype, device, seed=1))
    grad_out = torch.randn(shape, device=device, dtype=dtype)
    out = fn(q, k, v)
    out.backward(grad_out)
    got = [out.detach(), q.grad, k.grad, v.grad]
    ref = _reference(path, q, k, v, grad_out)
    errors = [float((g.double() - r).abs().max() / r.abs().max().clamp_min(TINY)) for g, r in zip(got, ref)]
    finite = all(bool(g.isfinite().all()) for g in got)
    tol = TOLERANCE[dtype]
    return {
        "out_err": errors[0],
        "grad_err": errors[1:],
        "tolerance": tol,
        "finite": finite,
        "ok": finite and max(errors) <= tol,
    }

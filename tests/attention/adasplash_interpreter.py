"""Run adasplash's Triton kernels on CPU tensors under Triton's interpreter (a worker for test_adasplash.py).

Run as a script in a fresh process: it sets ``TRITON_INTERPRET=true`` before Triton or adasplash are
imported (the string ``true``: adasplash turns its autotuning off for ``"1"``, which leaves its autotuned
kernels without their block sizes) and ``ADASPLASH_TEST_FAST_AUTOTUNE=1``, then installs test-only shims:

* adasplash builds its block-index tensors on ``"cuda"`` by default: they are built on the mask's device;
* a bounds checker: every unmasked load and store of a kernel must fall inside one of the tensors passed to
  that kernel, otherwise :class:`OutOfBounds` is raised (on CPU an out-of-bounds store corrupts the heap);
* the interpreter evaluates a ``tl.reduce`` with a user combine function one element at a time in Python;
  adasplash's bitwise-or reduction is evaluated with numpy instead (same result, ~2x faster kernels).

adasplash's non-causal attention kernel uses no libdevice function, so none is shimmed (its causal "v2"
kernel and row op use ``float2int_rd``, ``popc``, ``fast_powf`` and ``isinf``, which the interpreter lacks;
sparsedino calls neither).

Usage: ``python adasplash_interpreter.py CASES.json RESULTS.json``. Each case runs ``attention()`` on CPU
through the adasplash path (``backends.DEVICE_TYPES`` extended with "cpu") and through the portable exact
path in float64, and records the largest errors of the output and the q/k/v gradients, or the error raised.
A case with ``"direct": true`` instead calls adasplash itself with the given ``varlen`` choice, bypassing
our layout (to show what the bounds checker catches).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "true"
os.environ["ADASPLASH_TEST_FAST_AUTOTUNE"] = "1"

import json
import sys
import time
import traceback
import warnings

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16}


class OutOfBounds(AssertionError):
    """A kernel touched memory outside every tensor it was given."""


def install_shims() -> list[dict]:
    """Install the shims (module docstring); returns the list that records each adasplash call."""
    import adasplash
    import adasplash.adasplash_block_mask as block_mask
    from triton.runtime import interpreter

    build_indices = block_mask.compute_bidxs_and_cubcounts

    def indices_on_mask_device(bmask, *args, device="cuda", **kwargs):
        return build_indices(bmask, *args, device=bmask.device, **kwargs)

    block_mask.compute_bidxs_and_cubcounts = indices_on_mask_device

    reduce_impl = interpreter.ReduceOps.apply_impl

    def apply_impl(self, inputs):
        if self.combine_fn is block_mask._or_combine:
            data = np.bitwise_or.reduce(inputs[0].handle.data, axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(data, inputs[0].dtype)
        return reduce_impl(self, inputs)

    interpreter.ReduceOps.apply_impl = apply_impl

    # Bounds checker: the storages of the current kernel's tensor arguments are the valid ranges.
    ranges: list[tuple[int, int]] = []
    kernel = [""]
    init_args = interpreter.GridExecutor._init_args_hst

    def init_args_recording(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        ranges.clear()
        kernel[0] = self.fn.__name__
        for arg in [*args_hst, *kwargs_hst.values()]:
            if isinstance(arg, torch.Tensor):
                storage = arg.untyped_storage()
                ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        return args_hst, kwargs_hst

    interpreter.GridExecutor._init_args_hst = init_args_recording
    builder = interpreter.interpreter_builder
    load, store = type(builder).create_masked_load, type(builder).create_masked_store

    def check(ptrs, mask, what: str) -> None:
        active = ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)]
        if active.size == 0:
            return
        size = np.dtype(interpreter._get_np_dtype(ptrs.get_element_ty())).itemsize
        inside = np.zeros(active.shape, dtype=bool)
        for lo, hi in ranges:
            inside |= (active >= lo) & (active + size <= hi)
        if not inside.all():
            raise OutOfBounds(
                f"{kernel[0]}: {what} of {int((~inside).sum())} elements outside every tensor argument"
            )

    def checked_load(ptrs, mask, other, *args):
        check(ptrs, mask, "load")
        return load(builder, ptrs, mask, other, *args)

    def checked_store(ptrs, value, mask, *args):
        check(ptrs, mask, "store")
        return store(builder, ptrs, value, mask, *args)

    builder.create_masked_load = checked_load
    builder.create_masked_store = checked_store

    calls: list[dict] = []
    kernel_entry = adasplash.adasplash

    def recording(q, k, v, **kwargs):
        varlen = kwargs.get("varlen")
        calls.append({"shape": list(q.shape), "varlen": None if varlen is None else varlen.tolist()})
        return kernel_entry(q, k, v, **kwargs)

    adasplash.adasplash = recording
    return calls


def _inputs(case: dict) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(case.get("seed", 0))
    shape = (case["b"], case["h"], case["n"], case["d"])
    # scores of std ~1.5 at the default scale: sparse rows like a trained ViT's
    return [torch.randn(shape, generator=gen, dtype=torch.float64) * 1.2 for _ in range(3)]


def _run(q, k, v, grad_out, normalizer, scale):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    from sparsedino.attention import attention

    out = attention(q, k, v, normalizer, scale=scale)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def _max_errors(got, ref) -> list[float]:
    """Largest absolute error of each tensor, relative to the largest magnitude of its reference."""
    return [float((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-12)) for g, r in zip(got, ref)]


def run_case(case: dict, calls: list[dict]) -> dict:
    """One case: adasplash path vs the exact portable path (float64), or a direct adasplash call."""
    from sparsedino.attention import backends

    dtype = DTYPES[case.get("dtype", "float32")]
    q, k, v = _inputs(case)
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(q.shape, generator=gen, dtype=torch.float64)
    start = time.perf_counter()
    calls.clear()
    if case.get("direct"):
        import adasplash

        varlen = torch.full((case["b"],), case["n"], dtype=torch.int32) if case["varlen"] else None
        qd, kd, vd = (t.to(dtype).requires_grad_() for t in (q, k, v))
        out = adasplash.adasplash(qd, kd, vd, alpha=case["alpha"], is_causal=False, varlen=varlen)
        out.backward(grad_out.to(dtype))
        return {"seconds": time.perf_counter() - start}
    scale = case.get("scale")
    backends.DEVICE_TYPES = ("cuda", "cpu")
    got = _run(q.to(dtype), k.to(dtype), v.to(dtype), grad_out.to(dtype), case["alpha"], scale)
    seconds = time.perf_counter() - start
    adasplash_calls = list(calls)
    backends.DEVICE_TYPES = ("cuda",)
    # exact entmax in float64 on the same (rounded) inputs, and our portable path in the case's dtype
    rounded = [t.to(dtype).double() for t in (q, k, v)]
    ref = _run(*rounded, grad_out.to(dtype).double(), case["alpha"], scale)
    portable = _run(*(t.to(dtype) for t in rounded), grad_out.to(dtype), case["alpha"], scale)
    return {
        "seconds": seconds,
        "calls": adasplash_calls,
        "errors": _max_errors(got, ref),
        "portable_errors": _max_errors(portable, ref),
        "finite": all(bool(t.isfinite().all()) for t in got),
    }


def main(argv: list[str]) -> int:
    with open(argv[0]) as fh:
        cases = json.load(fh)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # log2(0) of masked-out scores
    calls = install_shims()
    results = {}
    for case in cases:
        try:
            results[case["id"]] = run_case(case, calls)
        except Exception as err:  # recorded per case; the test decides whether it was expected
            cause = err
            while cause.__cause__ is not None:  # the interpreter wraps kernel errors
                cause = cause.__cause__
            results[case["id"]] = {
                "error": type(cause).__name__,
                "message": str(cause)[:500],
                "traceback": traceback.format_exc()[-2000:],
            }
    with open(argv[1], "w") as fh:
        json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

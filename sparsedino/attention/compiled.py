"""One switch for the natively compiled entmax kernels, with a clean eager fallback.

Two kinds of compiled code speed up the sort-free entmax-1.5 solver (a few dependent passes per row):

* on CPU, row-fused C kernels (:mod:`sparsedino.attention.native`), built once in ~1 s with the system C
  compiler and cached on disk: each row is solved while it sits in L1 cache;
* elsewhere (e.g. CUDA without adasplash), ``torch.compile`` of the tensor-op solver, once per input shape
  (``dynamic=False``: static shapes give the fastest kernels; ~10-20 s the first time per shape).

Policy (env ``SPARSEDINO_COMPILE`` or :func:`set_compile`):

* ``"auto"`` (default): use compiled code when it works. A failure to build (typically: no C/C++ compiler)
  emits one warning for torch.compile (the C kernels silently fall back) and later calls run eagerly.
  Results are identical either way; eager is roughly 2-5x slower on the normaliser itself.
* ``"0"``: never compile (what the test-suite uses).
* ``"1"``: always compile; an error if torch.compile is impossible.

Calls made while a torch.compile of the *caller* is being traced run the plain function, so an outer
``torch.compile(model)`` simply inlines it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo
from torch import Tensor

from sparsedino.attention import native

__all__ = ["call", "compile_mode", "entmax15_backend", "native_allowed", "set_compile"]

_override: bool | None = None
_broken: str | None = None  # reason compilation was given up in "auto" mode
_cache: dict[str, Callable[..., Any]] = {}
# Per-function cap on distinct shapes compiled; beyond it dynamo runs the function eagerly.
CACHE_SIZE_LIMIT = 16


def set_compile(enabled: bool | None) -> None:
    """Force compilation on (``True``), off (``False``), or back to the env / "auto" policy (``None``)."""
    global _override, _broken
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_compile expects True, False or None, got {enabled!r}")
    _override = enabled
    _broken = None


def compile_mode() -> str:
    """The effective policy: "0", "1" or "auto"."""
    if _override is not None:
        return "1" if _override else "0"
    value = os.environ.get("SPARSEDINO_COMPILE", "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "false", "no", "off"):
        return "0"
    if value in ("1", "true", "yes", "on"):
        return "1"
    raise ValueError(f"SPARSEDINO_COMPILE must be 'auto', '0' or '1', got {value!r}")


def native_allowed() -> bool:
    """Whether natively compiled kernels may run now (policy not "0", and not inside a torch.compile trace)."""
    return compile_mode() != "0" and not torch.compiler.is_compiling()


def entmax15_backend(x: Tensor, dim: int, scale: float, eager_block: int, last_dim_only: bool = False) -> str:
    """Which entmax-1.5 row kernels run on ``x`` (the row level of the table in
    :mod:`sparsedino.attention.dispatch`).

    Returns:
        ``"native"``: the C kernels (CPU float32/float64, ``scale > 0``, non-empty, policy allows native
        code, the library built; ``last_dim_only``: the backward kernel also needs ``dim`` last);
        ``"eager"``: tensor ops over cache-sized row blocks (CPU, more than ``2 * eager_block`` elements in
        several rows, no C kernels); ``"compiled"``: the tensor-op solver through :func:`call` (torch.compile
        by the policy, eager when it is off).
    """
    cpu = x.device.type == "cpu"
    if (
        cpu
        and x.dtype in (torch.float32, torch.float64)
        and scale > 0
        and x.numel() > 0
        and native_allowed()
        and native.available()
        and (not last_dim_only or dim in (-1, x.dim() - 1))
    ):
        return "native"
    if (
        cpu
        and x.numel() > 2 * eager_block
        and x.numel() > x.shape[dim]
        and not (native_allowed() and native.available())
    ):
        return "eager"
    return "compiled"


def _compiled(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if name not in _cache:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, CACHE_SIZE_LIMIT)
        _cache[name] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _cache[name]


def call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)``, compiled according to the policy; ``name`` keys the compiled-function cache."""
    global _broken
    mode = compile_mode()
    if (
        mode == "0"
        or (mode == "auto" and _broken is not None)
        or torch.compiler.is_compiling()
        or any(isinstance(a, torch.Tensor) and a.is_meta for a in args)  # shapes only: nothing to speed up
    ):
        return fn(*args)
    try:
        return _compiled(name, fn)(*args)
    except Exception as err:  # inductor raises many types (no compiler, codegen, ...)
        if mode == "1":
            raise RuntimeError(
                f"SPARSEDINO_COMPILE=1 but torch.compile of {name!r} failed ({type(err).__name__}: {err}). "
                "Install a C++ compiler (e.g. gcc) or set SPARSEDINO_COMPILE=0/auto."
            ) from err
        _broken = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"sparsedino: torch.compile unavailable ({_broken.splitlines()[0][:200]}); entmax attention runs "
            "eagerly (same results, ~2x slower). Set SPARSEDINO_COMPILE=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return fn(*args)

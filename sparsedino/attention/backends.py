"""Optional GPU backend: ``adasplash`` (Triton flash-style alpha-entmax attention), used only when usable.

The switch (:func:`adasplash_usable`): the package is importable, the tensors are on a device type in
``DEVICE_TYPES`` (CUDA), the normaliser is an entmax with ``1 < alpha <= 2`` (the range adasplash's solver
supports), no attention mask, no dropout, q/k/v of one shape with head dim 16, 32, 64, 128 or 256 (its
kernels' sizes), and a gradient for q whenever k or v need one (adasplash keeps its backward state only when
q requires grad). Everything else takes the portable path. ``ENABLED = False`` forces the portable path.

How a call is laid out (:func:`launch_plan`). We call adasplash's non-causal kernel (``adasplash(...,
is_causal=False)`` dispatches to its block-mask "v1" kernel), whose passes index memory in fixed blocks
without bounds masks unless ``varlen`` is given; measured under Triton's interpreter with a bounds checker
(``tests/attention/test_adasplash.py``):

* the backward pre-pass reads and writes 128-row blocks: without ``varlen`` a length below 128 reads past
  ``out``/``grad_out`` and writes past its own buffer (heap corruption on CPU, silent on a GPU);
* the threshold pass marks active blocks in a mask with ``ceil(L / 16)`` columns but writes 4 columns per
  64-row block, where ``L`` is the longest ``varlen`` entry: unless ``L`` is a multiple of 64 (or leaves
  fewer than 16 rows in its last 64-row block) the last write lands past the mask.

So a power-of-two length >= 128 runs as is; any other length is zero-padded to a multiple of 64 with
``varlen`` giving the true length, and when padding was needed one all-padding batch element of the full
padded length is appended, which makes ``L`` the padded length (its output is discarded; it costs one
batch element of work). ``varlen`` masks every load and store of the padded rows, so results equal those
on the unpadded input.

``DEVICE_TYPES`` is also the test seam: the test-suite adds ``"cpu"`` to run this very path on CPU tensors
under Triton's interpreter. adasplash's separate row op (``triton_entmax``) is not used here (its float16
backward fails in ``tl.sqrt``, which accepts only float32/float64).
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsedino.attention.normalizers import Normalizer

__all__ = ["DEVICE_TYPES", "ENABLED", "LaunchPlan", "adasplash_attention", "adasplash_usable", "launch_plan"]

ENABLED = True
# Device types dispatched to adasplash (tests add "cpu" to run it under Triton's interpreter).
DEVICE_TYPES: tuple[str, ...] = ("cuda",)
HEAD_DIMS = (16, 32, 64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Row blocks of adasplash's kernels that the layout must respect (see the module docstring).
THRESHOLD_BLOCK = 64
PREPASS_BLOCK = 128
_available: bool | None = None


class LaunchPlan(NamedTuple):
    """How one sequence length is handed to adasplash.

    Attributes:
        length: Token length of the tensors passed (>= the true length; zero padding after it).
        varlen: Whether the true length is passed as ``varlen``.
        extra_batch: Whether one all-padding batch element of ``length`` tokens is appended.
    """

    length: int
    varlen: bool
    extra_batch: bool


def launch_plan(n: int) -> LaunchPlan:
    """The in-bounds layout for sequence length ``n`` (see the module docstring for why)."""
    if n >= PREPASS_BLOCK and n & (n - 1) == 0:
        return LaunchPlan(n, varlen=False, extra_batch=False)
    padded = -(-n // THRESHOLD_BLOCK) * THRESHOLD_BLOCK
    return LaunchPlan(padded, varlen=True, extra_batch=padded != n)


def _installed() -> bool:
    global _available
    if _available is None:
        _available = importlib.util.find_spec("adasplash") is not None
    return _available


def adasplash_usable(
    q: Tensor, k: Tensor, v: Tensor, spec: Normalizer, dtype: torch.dtype | None = None
) -> bool:
    """Whether the adasplash kernel can run these inputs (the one switch; never on CPU in production).

    Args:
        q: Queries (B, H, N, D).
        k: Keys.
        v: Values.
        spec: The normaliser.
        dtype: The dtype q, k, v are cast to before the kernel runs (autocast's), or None: as they are.
    """
    if not (ENABLED and q.device.type in DEVICE_TYPES and _installed()):
        return False
    if not 1.0 < spec.alpha <= 2.0:  # (softmax is alpha 1)
        return False
    if q.shape != k.shape or k.shape != v.shape or q.shape[-1] not in HEAD_DIMS or q.shape[2] == 0:
        return False
    if dtype is None and not q.dtype == k.dtype == v.dtype:
        return False
    if (q.dtype if dtype is None else dtype) not in DTYPES:
        return False
    grads = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
    return q.requires_grad or not grads


def adasplash_attention(q: Tensor, k: Tensor, v: Tensor, spec: Normalizer, scale: float) -> Tensor:
    """alpha-entmax attention (B, H, N, D) through adasplash, laid out by :func:`launch_plan`."""
    from adasplash import adasplash  # optional dependency (Triton kernels), imported only when it runs

    alpha = spec.alpha
    # adasplash applies the standard 1/sqrt(d) scale inside its kernels; fold any other scale into q.
    default = q.shape[-1] ** -0.5
    if scale != default:
        q = q * (scale / default)
    b, _, n, _ = q.shape
    plan = launch_plan(n)
    if not plan.varlen:
        return adasplash(q.contiguous(), k.contiguous(), v.contiguous(), alpha=alpha, is_causal=False)
    pad = (0, 0, 0, plan.length - n, 0, 0, 0, int(plan.extra_batch))  # tokens, then one batch element
    qp, kp, vp = (F.pad(t, pad).contiguous() for t in (q, k, v))
    lengths = torch.full((qp.shape[0],), n, dtype=torch.int32, device=q.device)
    lengths[b:] = plan.length  # the appended element (if any) spans the padded length
    out = adasplash(qp, kp, vp, alpha=alpha, is_causal=False, varlen=lengths)
    return out[:b, :, :n]

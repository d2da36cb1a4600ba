"""What every sparse attention module shares: its normaliser, and the choice of how to attend.

:class:`SparseCore` is mixed into :class:`~sparsedino.attention.SparseAttention` (timm's ``Attention``
layout) and into the converted timm families (:mod:`sparsedino.attention.families`). Each module computes
its own q, k, v and score bias exactly as the timm module it replaces does (RoPE, relative position bias,
qk-norm, ...) and hands them to :meth:`SparseCore._attend`, the one place that picks the path:

* probabilities materialised (unfused mode, attention dropout while training, learned alpha, a
  :func:`~sparsedino.attention.collect_attention` recorder, hooks on ``attn_drop``) -> :func:`attention_map`
  -> ``attn_drop`` -> ``@ v``, so hooks on ``attn_drop`` see the maps, as with timm's unfused attention;
* softmax -> ``F.scaled_dot_product_attention`` with the arguments timm passes (bit for bit timm's output);
* otherwise the fused sparse op :func:`sparse_attention` (no (B, H, N, N) map is kept unless needed).

The module functions below are torch.fx leaves (one graph node each, ``<module path>.attention_map`` /
``<module path>.sparse_attention``): they validate inputs and pick kernels in Python, which tracing cannot
follow. Under TorchScript they run :mod:`sparsedino.attention.scripted` (plain tensor ops).

A module parses its normaliser once, when it is set (:attr:`SparseCore.normalizer`), and keeps the
:class:`~sparsedino.attention.normalizers.Normalizer` plus two plain copies that TorchScript reads: the
canonical name and whether it is softmax. The fx leaves take the name: an fx graph stores their arguments
as constants in its code, and TorchScript (which also compiles traced graphs) cannot compile the
dataclass; the op they call maps the canonical name back to its value (a cached lookup).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from sparsedino.attention import scripted
from sparsedino.attention.adaptive import adaptive_attention_probs, bounded_alpha
from sparsedino.attention.normalizers import (
    Normalizer,
    canonical_alpha,
    check_scale,
    normalize,
    parse_normalizer,
)
from sparsedino.attention.ops import attention, attention_probs
from sparsedino.attention.precision import compute_dtype

__all__ = [
    "SparseCore",
    "attention_map",
    "score_map",
    "self_attn_mask",
    "softmax_attention",
    "sparse_attention",
]

# torch.fx leaves of the learned-alpha path (graph nodes ``*attn.bounded_alpha`` / ``*attn.adaptive_attention_probs``)
torch.fx.wrap("bounded_alpha")
torch.fx.wrap("adaptive_attention_probs")


@torch.fx.wrap
@register_notrace_function
def attention_map(
    q: Tensor, k: Tensor, normalizer: str, scale: float, attn_mask: Tensor | None = None
) -> Tensor:
    """The materialised probabilities (B, H, N, M) of a sparse attention module (canonical ``normalizer``).

    A leaf for torch.fx, so the map is one graph node named ``<module path>.attention_map``: use
    ``timm.utils.AttentionExtract(model, names=["*attn.attention_map"])`` on a model whose attention is
    materialised (``fused_attn=False``, as timm's own ``Attention`` needs for fx extraction).
    """
    if torch.jit.is_scripting():
        return scripted.attention_probs(q, k, normalizer, scale, attn_mask)
    return attention_probs(q, k, normalizer, scale, attn_mask)


@torch.fx.wrap
@register_notrace_function
def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalizer: str,
    scale: float,
    attn_mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The fused path: :func:`~sparsedino.attention.ops.attention`, (B, H, N, Dv).

    A leaf for torch.fx (one graph node ``<module path>.sparse_attention``), as SDPA is in timm's
    ``Attention``: the op validates its inputs and picks a kernel in Python, which tracing cannot follow.
    """
    if torch.jit.is_scripting():
        return torch.matmul(scripted.attention_probs(q, k, normalizer, scale, attn_mask), v)
    return attention(q, k, v, normalizer, scale, attn_mask, chunk_size=chunk_size)


@torch.fx.wrap
@register_notrace_function
def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, attn_mask: Tensor | None = None
) -> Tensor:
    """Softmax attention through SDPA, called as timm calls it, (B, H, N, Dv).

    ``scale=None`` when ``scale`` is the default ``head_dim ** -0.5``, so outputs match timm's bit for bit.
    A leaf for torch.fx (graph node ``<module path>.softmax_attention``): the comparison reads the head
    dimension of ``q``, which is not a concrete number while tracing.
    """
    sdpa_scale: float | None = None if scale == q.shape[-1] ** -0.5 else scale
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=sdpa_scale)


@torch.fx.wrap
@register_notrace_function
def score_map(scores: Tensor, normalizer: str) -> Tensor:
    """``normalizer`` applied to ready-made scores (B, H, N, M), in float32, returned in their dtype.

    For attention whose scores are not ``scale * q k^T + bias`` (CaiT's talking heads mix them across heads).
    """
    if torch.jit.is_scripting():
        return scripted.probs(scores, canonical_alpha(normalizer))
    return normalize(scores.to(compute_dtype(scores)), normalizer).to(scores.dtype)


@torch.fx.wrap
@register_notrace_function
def self_attn_mask(q: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor | None:
    """``attn_mask`` combined with a causal mask when ``is_causal`` (an fx leaf: it branches on inputs)."""
    if not is_causal:
        return attn_mask
    n = q.shape[-2]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if attn_mask is None:
        return causal
    if attn_mask.dtype == torch.bool:
        return attn_mask & causal
    return attn_mask.masked_fill(~causal, float("-inf"))


class SparseCore:
    """Normaliser state and path choice shared by every sparse attention module (a mixin for ``nn.Module``).

    Expects the timm attention attributes ``scale``, ``fused_attn`` and ``attn_drop``; adds ``normalizer``
    (canonical name, settable and validated), ``chunk_size`` and the recorder of
    :func:`~sparsedino.attention.collect_attention`. The parsed value is ``_spec``
    (a :class:`~sparsedino.attention.normalizers.Normalizer`, for eager code: TorchScript skips it).
    """

    __jit_unused_properties__ = ("normalizer",)  # TorchScript reads ``_normalizer`` (the setter validates)

    @property
    def normalizer(self) -> str:
        """Canonical normaliser name; settable (validated) at any time, e.g. to compare softmax and entmax."""
        return self._normalizer

    @normalizer.setter
    def normalizer(self, value: str | float | Normalizer) -> None:
        spec = parse_normalizer(value)
        self._spec = spec
        # Plain attributes, which TorchScript reads: the canonical name and the answer to "softmax?".
        self._normalizer = spec.name
        self._softmax = spec.is_softmax

    @classmethod
    def from_timm(cls, module: nn.Module, normalizer: str | float | Normalizer, scale: float | None = None):
        """Convert the timm module ``module`` in place: the same object, parameters, buffers and hooks.

        Its class becomes ``cls``, a subclass of its own class whose ``forward`` computes the same scores
        (as ``torch.nn.utils.parametrize`` swaps a module's class); every timm method keeps working.
        ``normalizer`` and ``scale`` are checked before the module is touched.
        """
        spec, scale = parse_normalizer(normalizer), check_scale(scale)
        module.__class__ = cls
        module._init_sparse(spec, scale)
        return module

    def _init_sparse(self, spec: Normalizer, scale: float | None) -> None:
        """The sparse state on a converted module (``scale``: checked, or None to keep the module's)."""
        self.normalizer = spec
        if scale is not None:
            self.scale = scale
        self.chunk_size = None
        self._recorder = None

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, normalizer={self.normalizer!r}, scale={self.scale:.4g}"

    def _needs_probs(self) -> bool:
        """Whether the computation itself needs the probabilities (dropout on them, or unfused mode)."""
        return not self.fused_attn or (self.training and self.attn_drop.p > 0.0)

    def _observed(self) -> bool:
        """Whether someone records the probabilities (:func:`collect_attention`, hooks on ``attn_drop``)."""
        return self._recorder is not None or bool(
            self.attn_drop._forward_hooks or self.attn_drop._forward_pre_hooks
        )

    def _record(self, probs: Tensor) -> None:
        if self._recorder is not None:
            self._recorder.append(probs.detach().float())

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        alpha: Tensor | None = None,
    ) -> Tensor:
        """Attention output (B, H, N, Dv) of q (B, H, N, D), k (B, H, M, D), v (B, H, M, Dv).

        Args:
            q: Queries, after the module's own norms / rotary embedding.
            k: Keys, likewise.
            v: Values.
            attn_mask: Bool (True = attend) or additive float (e.g. a relative position bias), broadcastable
                to (B, H, N, M), as for SDPA.
            is_causal: Also mask future keys (combined with ``attn_mask``).
            alpha: Learned per-head alphas (H,) (``SparseAttention(learn_alpha=True)``), else None.
        """
        attn_mask = self_attn_mask(q, attn_mask, is_causal)
        materialise = self._needs_probs() or alpha is not None  # learned alpha: bisection on the map
        if not torch.jit.is_scripting():  # TorchScript has no hooks or recorders
            materialise = materialise or self._observed()
        if materialise:
            if alpha is not None and not torch.jit.is_scripting():  # (H,) learned alphas win
                probs = adaptive_attention_probs(q, k, bounded_alpha(alpha), self.scale, attn_mask)
            else:
                probs = attention_map(q, k, self._normalizer, self.scale, attn_mask)  # (B, H, N, M)
            if not torch.jit.is_scripting():
                self._record(probs)
            return torch.matmul(self.attn_drop(probs), v)
        if self._softmax:
            return softmax_attention(q, k, v, self.scale, attn_mask)
        return sparse_attention(q, k, v, self._normalizer, self.scale, attn_mask, self.chunk_size)

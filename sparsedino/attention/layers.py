"""``SparseAttention``: a drop-in timm ``attn_layer`` with a switchable normaliser, plus model converters.

* ``timm.create_model("vit_small_patch16_224", attn_layer=SparseAttention)`` builds a ViT with entmax-1.5
  attention; parameter names are those of timm's ``Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``norm``,
  ``gate``, ``proj``), so state dicts are interchangeable.
* :func:`sparsify` converts the attention modules of an existing timm ViT in place (reusing its parameters).
* :func:`collect_attention` records the probability maps of every layer during a forward pass.

When probabilities are materialised they go through the ``attn_drop`` module, so forward hooks on it (e.g.
``timm.utils.AttentionExtract(model, method="hook")``) see the entmax maps; for torch.fx extraction they are
the graph node ``*attn.attention_map`` (see :func:`attention_map`). They are materialised whenever
such a hook is registered, inside :func:`collect_attention`, when attention dropout is active, or when
``fused_attn`` is False; otherwise the fast path runs (SDPA for softmax, the fused sparse op otherwise).

torch.fx traces the module with default settings: the fused op and the maps are leaf functions (graph nodes
``*attn.sparse_attention`` / ``*attn.attention_map``), so input validation and dispatch stay in eager Python.
Under TorchScript both leaves run :mod:`sparsedino.attention.scripted` (plain tensor ops; no autograd.Function).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from timm.layers import Attention, register_notrace_function, use_fused_attn
from torch import Tensor, nn

from sparsedino.attention import hf_detect, scripted
from sparsedino.attention.adaptive import adaptive_attention_probs, alpha_parameter, bounded_alpha
from sparsedino.attention.normalizers import Normalizer, check_scale, normalizer_name, parse_normalizer
from sparsedino.attention.ops import attention, attention_probs

__all__ = [
    "SparseAttention",
    "attention_map",
    "collect_attention",
    "make_attn_layer",
    "sparse_attention",
    "sparsify",
]

# torch.fx leaves of the learned-alpha path (graph nodes ``*attn.bounded_alpha`` / ``*attn.adaptive_attention_probs``)
torch.fx.wrap("bounded_alpha")
torch.fx.wrap("adaptive_attention_probs")


class SparseAttention(nn.Module):
    """Multi-head self-attention with a softmax / entmax / sparsemax normaliser (timm ``Attention`` layout).

    Args:
        dim: Token dimension.
        num_heads: Number of heads.
        attn_head_dim: Head dimension (default ``dim // num_heads``).
        dim_out: Output dimension (default ``dim``).
        qkv_bias: Bias in the qkv projection.
        qk_norm: Normalise q and k per head with ``norm_layer``.
        scale_norm: Normalise the attention output with ``norm_layer`` before the projection.
        proj_bias: Bias in the output projection.
        gated: Sigmoid gate on the attention output (timm's ``gated`` option).
        attn_drop: Dropout on the attention probabilities.
        proj_drop: Dropout after the projection.
        norm_layer: Norm constructor for ``qk_norm`` / ``scale_norm``.
        normalizer: A :class:`~sparsedino.attention.normalizers.Normalizer` or any spelling it parses.
        scale: Score scale (default ``head_dim ** -0.5``). Entmax is not scale invariant: it sets sparsity.
        chunk_size: Query block size for the memory-bounded path (None = automatic, 0 = never).
        learn_alpha: Learn the entmax alpha of each head (parameter ``alpha`` (H,), starting at the
            normaliser's alpha, used clamped into (1, 2]; see :mod:`sparsedino.attention.adaptive`). The
            probabilities are then always materialised (alpha-entmax by bisection).
        device: Parameter device.
        dtype: Parameter dtype.
    """

    __jit_unused_properties__ = ("normalizer",)  # TorchScript reads ``_normalizer`` (the setter validates)

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_head_dim: int | None = None,
        dim_out: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        gated: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        normalizer: str | float | Normalizer = "entmax15",
        scale: float | None = None,
        chunk_size: int | None = None,
        learn_alpha: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        scale = check_scale(scale)
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        dim_out = dim_out or dim
        if attn_head_dim is None:
            if dim % num_heads != 0:
                raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
            attn_head_dim = dim // num_heads
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("norm_layer must be given when qk_norm or scale_norm is True")
        self.num_heads = num_heads
        self.head_dim = attn_head_dim
        self.attn_dim = num_heads * attn_head_dim
        self.scale = attn_head_dim**-0.5 if scale is None else float(scale)
        self.fused_attn = use_fused_attn()
        self.normalizer = normalizer
        self.chunk_size = chunk_size
        self._recorder: list[Tensor] | None = None

        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(attn_head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(attn_head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias, **dd) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.register_parameter(
            "alpha", alpha_parameter(num_heads, normalizer, **dd) if learn_alpha else None
        )

    @property
    def normalizer(self) -> str:
        """Canonical normaliser name; settable (validated) at any time, e.g. to compare softmax and entmax."""
        return self._normalizer

    @normalizer.setter
    def normalizer(self, value: str | float | Normalizer) -> None:
        spec = parse_normalizer(value)
        # Plain attributes, which TorchScript reads: the canonical name and the answer to "softmax?".
        self._normalizer = spec.name
        self._softmax = spec.is_softmax

    @classmethod
    def from_timm(
        cls, attn: nn.Module, normalizer: str | float | Normalizer = "entmax15", scale: float | None = None
    ):
        """Wrap an existing timm ``Attention`` (its submodules are reused, not copied)."""
        scale = check_scale(scale)
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_heads = attn.num_heads
        new.head_dim = attn.head_dim
        new.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        new.scale = float(attn.scale if scale is None else scale)
        new.fused_attn = bool(getattr(attn, "fused_attn", True))
        new.normalizer = normalizer
        new.chunk_size = None
        new._recorder = None
        for name in ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop"):
            setattr(new, name, getattr(attn, name))
        new.gate = getattr(attn, "gate", None)
        new.register_parameter("alpha", None)
        new.train(attn.training)
        return new

    def extra_repr(self) -> str:
        learned = ", learn_alpha=True" if self.alpha is not None else ""
        return f"num_heads={self.num_heads}, normalizer={self.normalizer!r}, scale={self.scale:.4g}{learned}"

    def _needs_probs(self) -> bool:
        """Whether the computation itself needs the probabilities (dropout on them, or unfused mode)."""
        return not self.fused_attn or (self.training and self.attn_drop.p > 0.0)

    def _observed(self) -> bool:
        """Whether someone records the probabilities (:func:`collect_attention`, hooks on ``attn_drop``)."""
        return self._recorder is not None or bool(
            self.attn_drop._forward_hooks or self.attn_drop._forward_pre_hooks
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Self-attention over tokens ``x`` (B, N, C); ``attn_mask`` bool (True = attend) or additive float."""
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = _self_attn_mask(q, attn_mask, is_causal)

        materialise = self._needs_probs() or self.alpha is not None  # learned alpha: bisection on the map
        if not torch.jit.is_scripting():  # TorchScript has no hooks or recorders
            materialise = materialise or self._observed()
        if materialise:
            if self.alpha is not None and not torch.jit.is_scripting():  # (H,) learned alphas win
                probs = adaptive_attention_probs(q, k, bounded_alpha(self.alpha), self.scale, attn_mask)
            else:
                probs = attention_map(q, k, self._normalizer, self.scale, attn_mask)  # (B, H, N, N)
            if not torch.jit.is_scripting() and self._recorder is not None:
                self._recorder.append(probs.detach().float())
            x = self.attn_drop(probs) @ v
        elif self._softmax:
            # scale=None when default, so outputs match timm's Attention bit for bit
            scale: float | None = None if self.scale == self.head_dim**-0.5 else self.scale
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        else:
            x = sparse_attention(q, k, v, self._normalizer, self.scale, attn_mask, self.chunk_size)

        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)  # (B, N, H * D)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def make_attn_layer(
    normalizer: str | float | Normalizer = "entmax15",
    scale: float | None = None,
    chunk_size: int | None = None,
) -> type[SparseAttention]:
    """A ``SparseAttention`` subclass with other defaults, for ``timm.create_model(..., attn_layer=...)``.

    timm instantiates ``attn_layer`` itself (it must be a class, not a ``functools.partial``), e.g.
    ``timm.create_model("vit_small_patch16_224", attn_layer=make_attn_layer("sparsemax"))``.
    """
    name = normalizer_name(normalizer)

    class _Configured(SparseAttention):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("normalizer", name)
            kwargs.setdefault("scale", scale)
            kwargs.setdefault("chunk_size", chunk_size)
            super().__init__(*args, **kwargs)

    _Configured.__name__ = _Configured.__qualname__ = f"SparseAttention_{name.replace('.', '_')}"
    return _Configured


@torch.fx.wrap
@register_notrace_function
def attention_map(
    q: Tensor, k: Tensor, normalizer: str, scale: float, attn_mask: Tensor | None = None
) -> Tensor:
    """The materialised probabilities (B, H, N, N) of :class:`SparseAttention` (canonical ``normalizer``).

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
    """The fused path of :class:`SparseAttention`: :func:`~sparsedino.attention.ops.attention`, (B, H, N, Dv).

    A leaf for torch.fx (one graph node ``<module path>.sparse_attention``), as SDPA is in timm's
    ``Attention``: the op validates its inputs and picks a kernel in Python, which tracing cannot follow.
    """
    if torch.jit.is_scripting():
        return torch.matmul(scripted.attention_probs(q, k, normalizer, scale, attn_mask), v)
    return attention(q, k, v, normalizer, scale, attn_mask, chunk_size=chunk_size)


@torch.fx.wrap
@register_notrace_function
def _self_attn_mask(q: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor | None:
    """``attn_mask`` combined with a causal mask when ``is_causal`` (an fx leaf: it branches on inputs)."""
    if not is_causal:
        return attn_mask
    n = q.shape[-2]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return causal if attn_mask is None else _combine_masks(attn_mask, causal)


def _combine_masks(attn_mask: Tensor, causal: Tensor) -> Tensor:
    if attn_mask.dtype == torch.bool:
        return attn_mask & causal
    return attn_mask.masked_fill(~causal, float("-inf"))


def sparsify(
    model: nn.Module, normalizer: str | float | Normalizer = "entmax15", scale: float | None = None
) -> nn.Module:
    """Switch every attention of a timm ViT to ``normalizer``, in place; the state dict is unchanged.

    timm ``Attention`` modules (plain, DINOv2-style with layer scale, register variants) are replaced by
    :class:`SparseAttention` sharing their parameters; existing ``SparseAttention`` modules are re-set.
    Works in both directions (``sparsify(model, "softmax")`` gives back the original function).

    Args:
        model: A timm ViT (or any module containing timm ``Attention`` / ``SparseAttention``).
        normalizer: Target normaliser.
        scale: New score scale for every layer; None keeps each layer's scale.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: bad normaliser name, a scale that is not a finite number > 0, or no convertible
            attention module in ``model``.
        TypeError: an attention module of a type that cannot be converted (e.g. timm's ``DiffAttention``),
            or a scale that is not a number.
    """
    scale = check_scale(scale)
    if hf_detect.contains_transformers_model(model):  # a transformers model, or a module holding one
        from sparsedino.attention import hf  # optional dependency (transformers), already imported here

        return hf.sparsify_transformers(model, normalizer, scale)
    name = normalizer_name(normalizer)
    converted = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, SparseAttention):
                child.normalizer = name
                if scale is not None:
                    child.scale = float(scale)
                converted += 1
            elif type(child) is Attention:
                setattr(parent, child_name, SparseAttention.from_timm(child, name, scale))
                converted += 1
            elif child_name == "attn" and hasattr(child, "qkv"):
                raise TypeError(
                    f"sparsify: cannot convert attention module {full!r} of type {type(child).__name__} "
                    "(only timm.layers.Attention and SparseAttention are supported)"
                )
    if converted == 0:
        raise ValueError(f"sparsify: no timm Attention module found in {type(model).__name__}")
    return model


@contextlib.contextmanager
def collect_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record the attention probabilities of every ``SparseAttention`` in ``model``.

    Inside the context each layer materialises its probabilities and appends them, detached, float32,
    shape (B, H, N, N) (N includes [CLS] and register tokens), in forward order::

        with collect_attention(model) as maps:
            model(x)
        assert len(maps) == depth

    Raises:
        ValueError: the model has no ``SparseAttention`` (call ``sparsify(model, "softmax")`` first to keep
            softmax and still record maps).
    """
    if hf_detect.contains_transformers_model(model):  # a transformers model, or a module holding one
        from sparsedino.attention import hf  # optional dependency (transformers), already imported here

        with hf.collect_transformers_attention(model) as maps:
            yield maps
        return
    layers = [m for m in model.modules() if isinstance(m, SparseAttention)]
    if not layers:
        raise ValueError(
            f"collect_attention: {type(model).__name__} has no SparseAttention module; convert it with "
            "sparsedino.attention.sparsify(model, normalizer) first (normalizer='softmax' keeps softmax)"
        )
    maps: list[Tensor] = []
    previous = [m._recorder for m in layers]
    for m in layers:
        m._recorder = maps
    try:
        yield maps
    finally:
        for m, prev in zip(layers, previous):
            m._recorder = prev

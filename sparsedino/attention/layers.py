"""``SparseAttention``: a drop-in timm ``attn_layer`` with a switchable normaliser.

``timm.create_model("vit_small_patch16_224", attn_layer=SparseAttention)`` builds a ViT with entmax-1.5
attention; parameter names are those of timm's ``Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``norm``,
``gate``, ``proj``), so state dicts are interchangeable. :func:`~sparsedino.attention.sparsify` converts
the attention of an existing timm model (this class for timm's ``Attention``, :mod:`.families` for the
others) and :func:`~sparsedino.attention.collect_attention` records the maps (:mod:`.convert`).

:func:`enable_learned_alpha` gives the layers of a model a learned alpha per head (the kernels are in
:mod:`sparsedino.attention.adaptive`) and :func:`learned_alphas` reads them back.

When probabilities are materialised they go through the ``attn_drop`` module, so forward hooks on it (e.g.
``timm.utils.AttentionExtract(model, method="hook")``) see the entmax maps; for torch.fx extraction they are
the graph node ``*attn.attention_map`` (see :func:`~sparsedino.attention.core.attention_map`). They are
materialised whenever such a hook is registered, inside ``collect_attention``, when attention dropout is
active, or when ``fused_attn`` is False; otherwise the fast path runs (SDPA for softmax, the fused sparse op
otherwise). The choice is :meth:`~sparsedino.attention.core.SparseCore._attend`, shared with the families.

torch.fx traces the module with default settings: the fused op and the maps are leaf functions (graph nodes
``*attn.sparse_attention`` / ``*attn.attention_map``), so input validation and dispatch stay in eager Python.
Under TorchScript both leaves run :mod:`sparsedino.attention.scripted` (plain tensor ops; no autograd.Function).
"""

from __future__ import annotations

import torch
from timm.layers import use_fused_attn
from torch import Tensor, nn

from sparsedino.attention.adaptive import alpha_parameter, used_alphas
from sparsedino.attention.core import SparseCore, attention_map, sparse_attention
from sparsedino.attention.normalizers import Normalizer, check_scale, parse_normalizer

__all__ = [
    "SparseAttention",
    "attention_map",
    "enable_learned_alpha",
    "learned_alphas",
    "make_attn_layer",
    "sparse_attention",
]


class SparseAttention(SparseCore, nn.Module):
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
        scale = check_scale(scale)
        self.scale = attn_head_dim**-0.5 if scale is None else scale
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
            "alpha", alpha_parameter(num_heads, self._spec, **dd) if learn_alpha else None
        )

    @classmethod
    def from_timm(
        cls, attn: nn.Module, normalizer: str | float | Normalizer = "entmax15", scale: float | None = None
    ):
        """Wrap an existing timm ``Attention`` (its submodules are reused, not copied)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_heads = attn.num_heads
        new.head_dim = attn.head_dim
        new.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        scale = check_scale(scale)
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
        return super().extra_repr() + learned

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Self-attention over tokens ``x`` (B, N, C); ``attn_mask`` bool (True = attend) or additive float."""
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        q, k = self.q_norm(q), self.k_norm(k)
        x = self._attend(q, k, v, attn_mask, is_causal, self.alpha)  # (B, H, N, D)

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
    spec = parse_normalizer(normalizer)

    class _Configured(SparseAttention):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("normalizer", spec)
            kwargs.setdefault("scale", scale)
            kwargs.setdefault("chunk_size", chunk_size)
            super().__init__(*args, **kwargs)

    _Configured.__name__ = _Configured.__qualname__ = f"SparseAttention_{spec.name.replace('.', '_')}"
    return _Configured


def enable_learned_alpha(model: nn.Module) -> nn.Module:
    """Give every :class:`~sparsedino.attention.SparseAttention` of ``model`` a learned alpha per head.

    The parameter is named ``alpha`` (state-dict key ``<block>.attn.alpha``, shape (H,)) and starts at
    the module's normaliser alpha; modules that already learn alpha keep theirs. Being 1-D it gets no
    weight decay from :func:`sparsedino.train.schedules.param_groups`.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: ``model`` has no SparseAttention, or one of them uses softmax.
    """
    layers = [m for m in model.modules() if isinstance(m, SparseAttention)]
    if not layers:
        raise ValueError(f"enable_learned_alpha: {type(model).__name__} has no SparseAttention module")
    for m in layers:
        if m.alpha is None:
            w = m.qkv.weight
            m.alpha = alpha_parameter(m.num_heads, m._spec, device=w.device, dtype=w.dtype)
    return model


def learned_alphas(model: nn.Module) -> list[list[float]] | None:
    """The alpha each head uses, per attention layer in module order ([[block 0 heads], ...]), or None.

    None when no layer of ``model`` learns alpha.
    """
    found = [m.alpha for m in model.modules() if isinstance(m, SparseAttention) and m.alpha is not None]
    if not found:
        return None
    return [used_alphas(raw) for raw in found]

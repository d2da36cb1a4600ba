"""Exact, fast sparse attention (entmax-1.5, alpha-entmax, sparsemax) for timm Vision Transformers.

Public API::

    entmax15, entmax_bisect, sparsemax                  # normalisers (exact, autograd, -inf -> 0)
    attention(q, k, v, normalizer="entmax15", ...)      # (B, H, N, D) attention, softmax -> SDPA
    SparseAttention, make_attn_layer                    # timm ``attn_layer``
    sparsify(model, normalizer, pools=False)          # any timm ViT family, in place (table: convert.py)
    collect_attention(model), converted_modules(model)
    Normalizer, parse_normalizer                        # the normaliser as a value (any spelling -> one)
    normalizer_name, validate_normalizer, set_compile

Which kernel runs for which normaliser and backend (SDPA, adasplash, the fused op whole or tiled; native C,
eager row blocks, torch.compile) is stated in one table: :mod:`sparsedino.attention.dispatch`.

Importing this package registers ``vit_{tiny,small,base}_patch16_224_entmax15`` and
``vit_small_patch8_224_entmax15`` with timm.
"""

from sparsedino.attention import timm_models  # noqa: F401  (registers the timm model names)
from sparsedino.attention.compiled import compile_mode, set_compile
from sparsedino.attention.convert import ConvertedModule, collect_attention, converted_modules, sparsify
from sparsedino.attention.entmax import entmax15, entmax_bisect, sparsemax
from sparsedino.attention.layers import SparseAttention, make_attn_layer
from sparsedino.attention.normalizers import (
    Normalizer,
    normalize,
    normalizer_name,
    parse_normalizer,
    validate_normalizer,
)
from sparsedino.attention.ops import attention, attention_probs

__all__ = [
    "ConvertedModule",
    "Normalizer",
    "SparseAttention",
    "attention",
    "attention_probs",
    "collect_attention",
    "compile_mode",
    "converted_modules",
    "entmax15",
    "entmax_bisect",
    "make_attn_layer",
    "normalize",
    "normalizer_name",
    "parse_normalizer",
    "set_compile",
    "sparsemax",
    "sparsify",
    "validate_normalizer",
]

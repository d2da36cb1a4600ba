"""timm's attention modules beyond ``Attention``, each with a sparse normaliser (converted in place by ``sparsify``).

Each class subclasses the timm class it converts, reproduces that module's scores (RoPE, relative position
biases, windows, qk-norm, bias layouts) and attends through :class:`~sparsedino.attention.core.SparseCore`.
Which timm type becomes which class is one table: ``SPARSE_TYPES`` in :mod:`sparsedino.attention.convert`.
"""

from sparsedino.attention.families.cait import SparseClassAttn, SparseTalkingHeadAttn
from sparsedino.attention.families.pools import SparseAttentionPoolLatent, SparseAttentionPoolPrr
from sparsedino.attention.families.relpos import (
    SparseBeitAttention,
    SparseRelPosAttention,
    SparseSamAttention,
)
from sparsedino.attention.families.rope import SparseAttentionRope, SparseEvaAttention

__all__ = [
    "SparseAttentionPoolLatent",
    "SparseAttentionPoolPrr",
    "SparseAttentionRope",
    "SparseBeitAttention",
    "SparseClassAttn",
    "SparseEvaAttention",
    "SparseRelPosAttention",
    "SparseSamAttention",
    "SparseTalkingHeadAttn",
]

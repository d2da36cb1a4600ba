"""sparsedino: Vision Transformers with sparse entmax-1.5 attention for better dense features.

Importing the package registers the sparse timm model names (e.g. ``vit_small_patch16_224_entmax15``)
so that ``timm.create_model`` can build them.
"""

from sparsedino import attention  # noqa: F401  (registers timm model names on import)

__version__ = "0.1.0"

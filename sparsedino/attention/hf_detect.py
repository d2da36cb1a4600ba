"""Is this a Hugging Face transformers model? Answered without importing transformers.

:func:`~sparsedino.attention.sparsify` and :func:`~sparsedino.attention.collect_attention` ask this first, so
the core package (and every timm model) works where transformers is not installed. A ``PreTrainedModel``
can only exist once ``transformers.modeling_utils`` has been imported, so when that module is not in
``sys.modules`` the answer is no, and nothing is imported to find out.
"""

from __future__ import annotations

import sys

from torch import nn

__all__ = ["contains_transformers_model", "is_transformers_model", "transformers_models"]


def _pretrained_model_class() -> type | None:
    """transformers' ``PreTrainedModel`` if transformers' modelling code is already imported, else None."""
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    return getattr(modeling_utils, "PreTrainedModel", None)


def is_transformers_model(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers ``PreTrainedModel`` (never imports transformers)."""
    cls = _pretrained_model_class()
    return cls is not None and isinstance(module, cls)


def contains_transformers_model(module: nn.Module) -> bool:
    """Whether ``module`` is, or has among its submodules, a transformers ``PreTrainedModel``."""
    cls = _pretrained_model_class()
    return cls is not None and any(isinstance(m, cls) for m in module.modules())


def transformers_models(module: nn.Module) -> list[nn.Module]:
    """The outermost ``PreTrainedModel`` s in ``module`` (``module`` itself if it is one), in module order.

    A model nested in another (e.g. DINOv2's encoder, itself a ``PreTrainedModel`` sharing the model's config)
    is left out: transformers' ``set_attn_implementation`` on the outer model reaches it.
    """
    cls = _pretrained_model_class()
    if cls is None:
        return []
    found: list[nn.Module] = []
    stack = [module]
    while stack:
        m = stack.pop()
        if isinstance(m, cls):
            found.append(m)
        else:
            stack.extend(reversed(list(m.children())))
    return found

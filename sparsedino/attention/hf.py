"""Sparse attention in Hugging Face transformers: our normalisers as ``attn_implementation`` names.

Importing this module registers ``"entmax15"`` and ``"sparsemax"`` with transformers' attention registry
(``AttentionInterface``, plus the matching ``AttentionMaskInterface`` entry), so that any model that routes
its attention through the registry (ViT, DeiT, DINOv2, DINOv2 with registers, DINOv3-ViT, ...) accepts them::

    import sparsedino.attention.hf  # registers attn_implementation="entmax15" and "sparsemax"
    model = AutoModel.from_pretrained(folder, attn_implementation="entmax15")  # or from_config(...)
    model.set_attn_implementation("sparsemax")
    name = register_transformers_attention("entmax-1.25")  # any alpha > 1 -> "entmax1.25"

:func:`sparsedino.attention.sparsify` and :func:`sparsedino.attention.collect_attention` hand a transformers
model (or any module holding one) to :func:`sparsify_transformers` / :func:`collect_transformers_attention`,
which register what they need themselves.

The registered function computes the scores exactly as transformers' eager path does (``scaling``, the
additive ``attention_mask``) and normalises them with the exact op: :func:`~sparsedino.attention.ops.attention`
(fused, never materialising the probabilities) unless ``output_attentions=True``, attention dropout
(training, the module's ``dropout``) or :func:`collect_transformers_attention` needs them; then
:func:`~sparsedino.attention.ops.attention_probs`, dropout and ``P @ V``, returning the weights after dropout as
eager does. Output layout (B, N, H, D), as transformers' sdpa and eager functions return it. The mask entry is
transformers' own ``eager_mask`` (0 / dtype-min additive masks, causal masks never skipped), so no ``is_causal``
shortcut is needed. transformers 5.x has no head mask any more (ViT-family models pass only the attention
mask, dropout and ``scaling``); softcapping, position biases, attention sinks and grouped-query attention
are refused with an error rather than computed differently from eager.

Requires transformers >= 5.18 (the first release in which all five ViT families above pass ``**kwargs``,
hence ``output_attentions``, down to the attention function); see ``pyproject.toml``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsedino.attention.hf_detect import (
    contains_transformers_model,
    is_transformers_model,
    transformers_models,
)
from sparsedino.attention.normalizers import Normalizer, check_scale, parse_normalizer
from sparsedino.attention.ops import attention, attention_probs

try:  # the optional dependency this module exists for (``pip install 'sparsedino[hf]'``)
    import transformers
    from packaging.version import Version
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask
except ImportError as error:
    raise ImportError(
        "sparsedino.attention.hf needs Hugging Face transformers >= 5.18: pip install 'sparsedino[hf]'"
    ) from error

if Version(transformers.__version__).release < (5, 18):
    raise ImportError(
        f"sparsedino.attention.hf needs transformers >= 5.18, found {transformers.__version__} "
        "(older releases do not pass output_attentions to the attention function, and 4.x passes the head "
        "mask where the attention mask goes): pip install 'sparsedino[hf]'"
    )

__all__ = [
    "STANDARD_NAMES",
    "collect_transformers_attention",
    "contains_transformers_model",
    "is_transformers_model",
    "register_transformers_attention",
    "sparsify_transformers",
]

# Registered when this module is imported; other alphas on demand (register_transformers_attention).
STANDARD_NAMES = ("entmax15", "sparsemax")
# Softmax through our function: only collect_transformers_attention routes models here, to record maps.
_SOFTMAX_NAME = "sparsedino_softmax"
# transformers' own implementations, all dense softmax; flash-attention names and kernels contain "flash".
_SOFTMAX_IMPLEMENTATIONS = frozenset({"eager", "sdpa", "flex_attention", "paged|eager"})
# Keyword arguments some transformers models pass that change the scores or the normaliser (eager applies them).
_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux")
# Model attribute holding [(config, implementation)] to give back on sparsify(model, "softmax").
_PREVIOUS_ATTR = "_sparsedino_previous_attn_implementation"

# The normaliser of our softmax function (registered as _SOFTMAX_NAME by collect_transformers_attention).
_SOFTMAX = parse_normalizer("softmax")
_REGISTERED: dict[str, Normalizer] = {}  # attn_implementation name -> its normaliser
_RECORDERS: dict[
    int, list[Tensor]
] = {}  # id(attention module) -> the list collect_transformers_attention fills


def _check_call(spec: Normalizer, query: Tensor, key: Tensor, kwargs: dict) -> None:
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(
                f"attn_implementation={spec.name!r} (sparsedino) does not support transformers' {name!r} argument; "
                "use attn_implementation='eager' for this model"
            )
    if query.shape[1] != key.shape[1]:
        raise ValueError(
            f"attn_implementation={spec.name!r} (sparsedino) does not support grouped-query attention "
            f"({query.shape[1]} query heads, {key.shape[1]} key/value heads)"
        )


def _attention_function(spec: Normalizer) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The function transformers calls for ``attn_implementation=<name of spec>``."""

    def sparse_attention_forward(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention of ``module`` on (B, H, N, D) inputs -> output (B, N, H, D) and the weights or None."""
        _check_call(spec, query, key, kwargs)
        maps = _RECORDERS.get(id(module))
        dropout_active = module.training and dropout > 0.0
        if kwargs.get("output_attentions") or dropout_active or maps is not None:
            probs = attention_probs(query, key, spec, scaling, attention_mask)  # (B, H, N, M)
            if maps is not None:
                maps.append(probs.detach().float())
            weights = F.dropout(probs, p=dropout, training=module.training)  # as eager: weights after dropout
            out = torch.matmul(weights, value)
        else:
            weights = None
            out = attention(query, key, value, spec, scaling, attention_mask)  # (B, H, N, D)
        return out.transpose(1, 2).contiguous(), weights  # (B, N, H, D)

    sparse_attention_forward.__qualname__ = f"sparse_attention_forward[{spec.name}]"
    return sparse_attention_forward


def _register(spec: Normalizer) -> str:
    name = _SOFTMAX_NAME if spec.is_softmax else spec.name
    if name not in _REGISTERED:
        AttentionInterface.register(name, _attention_function(spec))
        AttentionMaskInterface.register(
            name, eager_mask
        )  # without it transformers would drop attention masks
        _REGISTERED[name] = spec
    return name


def register_transformers_attention(normalizer: str | float | Normalizer) -> str:
    """Register a sparse normaliser as a transformers ``attn_implementation``; returns the name to pass.

    The name is the normaliser's canonical name (``"entmax15"``, ``"sparsemax"``, ``"entmax1.25"``), so any
    spelling :func:`~sparsedino.attention.normalizers.parse_normalizer` accepts works. Registering twice is
    a no-op. ``"entmax15"`` and ``"sparsemax"`` are registered when this module is imported.

    Raises:
        ValueError: an unknown normaliser, or softmax (transformers' own ``"sdpa"`` / ``"eager"`` are softmax).
    """
    spec = parse_normalizer(normalizer)
    if spec.is_softmax:
        raise ValueError(
            "register_transformers_attention: softmax is transformers' own attention "
            "(attn_implementation='sdpa' or 'eager'); give a sparse normaliser such as 'entmax15'"
        )
    return _register(spec)


def _checked_models(model: nn.Module, caller: str) -> list[nn.Module]:
    """The outermost ``PreTrainedModel`` s of ``model``, each able to switch its attention implementation."""
    models = transformers_models(model)
    if not models:
        raise ValueError(f"{caller}: no transformers PreTrainedModel in {type(model).__name__}")
    for m in models:
        for sub in m.modules():
            if is_transformers_model(sub) and not sub._can_set_attn_implementation():
                raise TypeError(
                    f"{caller}: {type(sub).__name__} does not route its attention through transformers' "
                    "AttentionInterface, so its normaliser cannot be switched"
                )
    return models


def _configs(model: nn.Module) -> list:
    """Every config of the transformers models in ``model`` and their sub-configs (each once, in order)."""
    found: dict[int, object] = {}
    stack = [sub.config for sub in reversed(list(model.modules())) if is_transformers_model(sub)]
    while stack:
        config = stack.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        stack.extend(getattr(config, key) for key in config.sub_configs if getattr(config, key) is not None)
    return list(found.values())


def _is_softmax_implementation(name: str | None) -> bool:
    return name is None or name in _SOFTMAX_IMPLEMENTATIONS or "flash" in name


def _remember_implementation(model: nn.Module) -> None:
    """Keep the implementations transformers chose for ``model`` (not ours), for ``sparsify(model, "softmax")``."""
    current = [
        (c, c._attn_implementation) for c in _configs(model) if c._attn_implementation not in _REGISTERED
    ]
    if current:  # else the model already runs ours: keep what was remembered before (if anything)
        setattr(model, _PREVIOUS_ATTR, current)


def _restore_implementation(model: nn.Module) -> None:
    """Give back the remembered implementations; configs still on ours get transformers' default."""
    for config, name in model.__dict__.pop(_PREVIOUS_ATTR, []):
        config._attn_implementation_internal = name
    default = model.get_correct_attn_implementation(None)  # "sdpa", or "eager" where sdpa cannot run
    for config in _configs(model):
        if config._attn_implementation in _REGISTERED:
            config._attn_implementation_internal = default


def _set_scale(models: list[nn.Module], scale: float) -> None:
    """Set the score scale of every attention module (transformers passes ``module.scaling`` to the function)."""
    scale = check_scale(scale)
    layers = [sub for m in models for sub in m.modules() if isinstance(getattr(sub, "scaling", None), float)]
    if not layers:
        raise ValueError("sparsify: no attention module with a float `scaling` attribute to set the scale of")
    for layer in layers:
        layer.scaling = float(scale)


def sparsify_transformers(
    model: nn.Module, normalizer: str | float | Normalizer = "entmax15", scale: float | None = None
) -> nn.Module:
    """Switch the attention of every transformers model in ``model`` to ``normalizer``, in place.

    Sets the attention implementation (``set_attn_implementation``, which reaches sub-models and sub-configs)
    to the registered name of ``normalizer``; ``"softmax"`` gives back the implementation each config had
    before the first sparsify (transformers' default, sdpa or eager, for a model loaded with ours). Parameters
    and the state dict are untouched.

    Args:
        model: A transformers ``PreTrainedModel``, or any module with one among its submodules.
        normalizer: Target normaliser (any spelling :func:`~sparsedino.attention.normalizers.parse_normalizer`
            accepts).
        scale: New score scale for every attention module (their ``scaling`` attribute, which every
            implementation uses, softmax included); None keeps each module's scale.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: bad normaliser or scale, or no transformers model in ``model``.
        TypeError: a transformers model whose attention does not go through transformers' registry.
    """
    spec = parse_normalizer(normalizer)
    models = _checked_models(model, "sparsify")
    if scale is not None:
        _set_scale(models, scale)
    for m in models:
        if spec.is_softmax:
            _restore_implementation(m)
        else:
            name = _register(spec)
            _remember_implementation(m)
            m.set_attn_implementation(name)
    return model


@contextlib.contextmanager
def collect_transformers_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record the attention probabilities of every layer of the transformers models in ``model``.

    Inside the context each attention call appends its probabilities (before dropout), detached, float32,
    shape (B, H, N, N) (N includes [CLS] and register tokens), in forward order, whatever the normaliser:
    layers on transformers' own softmax (sdpa, eager, flash, flex) run through sparsedino's softmax for the
    duration (the same function, materialised) and get their implementation back on exit::

        with collect_transformers_attention(model) as maps:
            model(pixel_values)
        assert len(maps) == model.config.num_hidden_layers

    Raises:
        ValueError: no transformers model in ``model``, or an attention implementation that is neither
            transformers' softmax nor ours (its normaliser is unknown).
        TypeError: a transformers model whose attention does not go through transformers' registry.
    """
    routed = []  # (config, implementation) sent through our softmax while recording
    for m in _checked_models(model, "collect_attention"):
        for config in _configs(m):
            name = config._attn_implementation
            if name in _REGISTERED:
                continue
            if not _is_softmax_implementation(name):
                raise ValueError(
                    f"collect_attention: unknown attention implementation {name!r} in {type(m).__name__} "
                    "(recording works for transformers' softmax implementations and sparsedino's)"
                )
            routed.append((config, name))
    softmax_name = _register(_SOFTMAX) if routed else None
    maps: list[Tensor] = []
    previous = [(id(sub), _RECORDERS.get(id(sub))) for sub in model.modules()]
    for config, _ in routed:
        config._attn_implementation_internal = softmax_name
    for key, _ in previous:
        _RECORDERS[key] = maps
    try:
        yield maps
    finally:
        for config, name in routed:
            config._attn_implementation_internal = name
        for key, prev in previous:
            if prev is None:
                _RECORDERS.pop(key, None)
            else:
                _RECORDERS[key] = prev


for _name in STANDARD_NAMES:
    register_transformers_attention(_name)

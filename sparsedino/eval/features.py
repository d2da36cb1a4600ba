"""Frozen ViT features: [CLS] and patch tokens of chosen blocks, batched, cached on disk.

Works on any timm ``VisionTransformer`` (ours, official DINO weights loaded into timm, timm models): it uses
``forward_intermediates`` with the prefix tokens, takes [CLS] as the first prefix token and drops register
tokens. Whether the final LayerNorm is applied to the intermediates is an explicit argument (DINO's linear
probe applies it to every block used; timm's default does not) and is recorded in ``FeatureSet.norm``.

Cache: a safetensors file whose metadata stores the full key (model weights fingerprint, dataset
fingerprint, layers, norm, ...). A file whose key differs is a miss and is overwritten; files are written
atomically, so an interrupted extraction never leaves a truncated cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sparsedino.atomic import atomic_write_bytes
from sparsedino.config import resolve_device
from sparsedino.models.layout import token_layout

CACHE_FORMAT = "sparsedino-features-v1"
# An attribute that evaluation-time edits of a model's features set (e.g. diagnose/injection.py): part of the
# cache key, so edited features never collide with clean ones.
FEATURE_EDIT_ATTR = "sparsedino_feature_edit"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class FeatureSet:
    """Features of a whole dataset.

    Attributes:
        cls: (N, L, C) [CLS] token of each requested block (mean of patch tokens if the model has no [CLS]).
        patches: (N, L, h, w, C) patch tokens, or None when not requested.
        pooled: (N, L, C) average of the patch tokens of each block (DINO's "avgpool" input).
        labels: (N,) class ids, (N, H, W) uint8 masks (255 = ignore), or None (what the loader yields second).
        layers: absolute block indices (0-based), in the order of dimension L.
        norm: whether the final LayerNorm was applied to every block's tokens.
        meta: extraction details (model fingerprint, timing, cache status, cls source).
    """

    cls: torch.Tensor
    patches: torch.Tensor | None
    pooled: torch.Tensor
    labels: torch.Tensor | None
    layers: tuple[int, ...]
    norm: bool
    meta: dict = field(default_factory=dict)

    def layer(self, block: int) -> int:
        """Position in dimension L of absolute (or negative, relative to the model depth) block ``block``."""
        depth = self.meta.get("depth")
        absolute = block + depth if block < 0 and depth is not None else block
        if absolute not in self.layers:
            raise KeyError(f"block {block} was not extracted (have {list(self.layers)})")
        return self.layers.index(absolute)


def resolve_layers(model: torch.nn.Module, layers: Sequence[int]) -> tuple[int, ...]:
    """Absolute 0-based block indices for ``layers`` (negative = from the end), checked against the depth."""
    depth = len(model.blocks)
    resolved = []
    for layer in layers:
        absolute = layer + depth if layer < 0 else layer
        if not 0 <= absolute < depth:
            raise ValueError(f"block index {layer} out of range for a model with {depth} blocks")
        resolved.append(absolute)
    return tuple(resolved)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's parameter names, shapes and values (16 hex chars): the cache's model key."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(type(model).__name__.encode())
    edit = getattr(model, FEATURE_EDIT_ATTR, None)
    if edit:
        digest.update(f"edit:{edit}".encode())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of a dataset's identity (16 hex chars): the cache's data key.

    File-backed readers are identified by their file list (``samples`` / ``pairs``) and transform;
    ``Subset`` by its indices and parent; in-memory ``TensorDataset`` by its tensors' bytes; any other
    dataset by its type, length, transform and the content of its first and last items.
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{type(dataset).__name__}:{len(dataset)}".encode())
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # torch Subset
        digest.update(repr(list(dataset.indices)).encode())
        digest.update(dataset_fingerprint(dataset.dataset).encode())
        return digest.hexdigest()
    known = False
    for attr in ("samples", "pairs"):
        items = getattr(dataset, attr, None)
        if items is not None:
            digest.update(repr([tuple(map(str, item)) for item in items]).encode())
            known = True
    for tensor in getattr(dataset, "tensors", ()):
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        known = True
    digest.update(repr(getattr(dataset, "transform", None)).encode())
    if not known and len(dataset):
        for index in {0, len(dataset) - 1}:
            for part in dataset[index]:
                if isinstance(part, torch.Tensor):
                    digest.update(part.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
                else:
                    digest.update(repr(part).encode())
    return digest.hexdigest()


def feature_cache_path(cache_dir: str | Path, tag: str, key: dict) -> Path:
    """``cache_dir/<tag>-<hash of key>.safetensors``: one file per (model, data, layers, ...) combination."""
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    return Path(cache_dir) / f"{tag}-{digest}.safetensors"


def _split_tokens(model: torch.nn.Module, out, grid: tuple[int, int]):
    """(spatial (B, hw, C), prefix (B, P, C) | None) -> (cls (B, C), patches (B, h, w, C), cls source)."""
    spatial, prefix = out if isinstance(out, tuple) else (out, None)
    batch = spatial.shape[0]
    patches = spatial.reshape(batch, grid[0], grid[1], spatial.shape[-1])  # (B, h, w, C)
    if prefix is not None and token_layout(model).has_class_token:
        return prefix[:, 0], patches, "cls_token"  # registers (prefix[:, 1:]) are dropped
    return spatial.mean(1), patches, "mean_of_patches"


def forward_tokens(
    model: torch.nn.Module, images: torch.Tensor, layers: Sequence[int], norm: bool
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """[CLS] and patch tokens of absolute blocks ``layers`` for one batch (no grad bookkeeping here).

    Args:
        model: a timm ViT.
        images: (B, 3, H, W); H and W should be multiples of the patch size (the remainder is dropped).
        layers: absolute block indices (see :func:`resolve_layers`).
        norm: apply the final norm to each block's tokens.

    Returns:
        ``cls`` (B, L, C), ``patches`` (B, L, h, w, C) and where [CLS] came from (``"cls_token"`` or
        ``"mean_of_patches"`` for models without a class token).
    """
    grid = model.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
    outs = model.forward_intermediates(
        images,
        indices=list(layers),
        norm=norm,
        return_prefix_tokens=True,
        output_fmt="NLC",
        intermediates_only=True,
        stop_early=True,
    )
    per_layer = [_split_tokens(model, out, grid) for out in outs]
    cls = torch.stack([c for c, _, _ in per_layer], 1)  # (B, L, C)
    patches = torch.stack([p for _, p, _ in per_layer], 1)  # (B, L, h, w, C)
    return cls, patches, per_layer[0][2]


@torch.no_grad()  # not inference_mode: probes train on these tensors afterwards
def _extract(model, loader, layers, norm, with_patches, device, dtype, progress, desc):
    cls_parts, patch_parts, pooled_parts, label_parts = [], [], [], []
    cls_source, seen, start = "cls_token", 0, time.perf_counter()
    for images, *rest in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        cls, patches, cls_source = forward_tokens(model, images.to(device, non_blocking=True), layers, norm)
        cls_parts.append(cls.to("cpu", dtype))
        pooled_parts.append(patches.mean((2, 3)).to("cpu", dtype))  # (B, L, C)
        if with_patches:
            patch_parts.append(patches.to("cpu", dtype))
        if rest:
            target = torch.as_tensor(rest[0])
            if target.dim() > 1 and target.min() >= 0 and target.max() <= 255:
                target = target.to(torch.uint8)  # masks: 8x smaller than int64 in memory and cache
            label_parts.append(target)
        seen += images.shape[0]
    seconds = time.perf_counter() - start
    labels = None
    if label_parts:
        shapes = {tuple(t.shape[1:]) for t in label_parts}
        if len(shapes) > 1:
            raise ValueError(f"targets of different shapes {sorted(shapes)}: use a fixed-size transform")
        labels = torch.cat(label_parts)
    timing = {
        "images": seen,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / max(seconds, 1e-9), 2),
    }
    return (
        torch.cat(cls_parts),
        torch.cat(patch_parts) if with_patches else None,
        torch.cat(pooled_parts),
        labels,
        {"timing": timing, "cls_source": cls_source},
    )


def _load_cache(path: Path, key: dict) -> FeatureSet | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:  # reads the header only
            metadata = handle.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT or json.loads(metadata.get("key", "null")) != key:
            return None
        tensors = load_file(str(path))
    except (OSError, ValueError, json.JSONDecodeError, SafetensorError):
        return None  # unreadable or foreign file: treat as a miss and overwrite it
    meta = json.loads(metadata["meta"])
    meta["cache"] = {"status": "hit", "path": str(path)}
    return FeatureSet(
        cls=tensors["cls"],
        patches=tensors.get("patches"),
        pooled=tensors["pooled"],
        labels=tensors.get("labels"),
        layers=tuple(key["layers"]),
        norm=bool(key["norm"]),
        meta=meta,
    )


def _save_cache(path: Path, key: dict, fs: FeatureSet) -> None:
    tensors = {"cls": fs.cls.contiguous(), "pooled": fs.pooled.contiguous()}
    if fs.patches is not None:
        tensors["patches"] = fs.patches.contiguous()
    if fs.labels is not None:
        tensors["labels"] = fs.labels.contiguous()
    metadata = {"format": CACHE_FORMAT, "key": json.dumps(key, sort_keys=True), "meta": json.dumps(fs.meta)}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def extract_features(
    model: torch.nn.Module,
    loader: DataLoader,
    layers: Sequence[int] = (-1,),
    norm: bool = True,
    with_patches: bool = True,
    cache_path: str | Path | None = None,
    cache_key: dict | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Run the frozen ``model`` over ``loader`` and collect [CLS] / patch tokens of the chosen blocks.

    Args:
        model: a timm ViT (any number of prefix/register tokens; ``dynamic_img_size`` for odd resolutions).
        loader: yields ``(images (B, 3, H, W), targets)`` (targets: class ids or fixed-size masks) or images.
        layers: block indices, negative from the end (``(-4, -3, -2, -1)`` = last four).
        norm: apply the model's final norm to every block's tokens (DINO protocols) or not (raw residual).
        with_patches: keep patch tokens (memory: N x L x h x w x C values).
        cache_path: safetensors file to reuse / write; None disables caching.
        cache_key: extra entries for the cache key (e.g. the checkpoint path); the key always contains the
            model weights' fingerprint, the dataset's fingerprint, layers, norm, with_patches and dtype.
        device: where to run the model (default: the model's device).
        dtype: storage dtype of the features (float16 halves memory and cache size).
        progress: show a tqdm bar.
        desc: label of the progress bar.

    Returns:
        A :class:`FeatureSet`; ``meta["cache"]["status"]`` is ``"hit"``, ``"miss"`` or ``"disabled"``.
    """
    abs_layers = resolve_layers(model, layers)
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    key = None
    if cache_path is not None:
        key = {
            "model": model_fingerprint(model),
            "data": dataset_fingerprint(loader.dataset),
            "layers": list(abs_layers),
            "norm": bool(norm),
            "with_patches": bool(with_patches),
            "dtype": str(dtype),
            "extra": cache_key or {},
        }
        cached = _load_cache(Path(cache_path), key)
        if cached is not None:
            return cached
    cls, patches, pooled, labels, info = _extract(
        model, loader, abs_layers, norm, with_patches, device, dtype, progress, desc
    )
    layout = token_layout(model)
    meta = {
        **info,
        "depth": layout.depth,
        "norm": "final LayerNorm applied to every block" if norm else "raw block outputs (no final norm)",
        "num_prefix_tokens": layout.num_prefix_tokens,
        "num_registers": layout.num_registers,
        "cache": {"status": "disabled"},
    }
    fs = FeatureSet(cls, patches, pooled, labels, abs_layers, bool(norm), meta)
    if cache_path is not None:
        fs.meta["cache"] = {"status": "miss", "path": str(cache_path)}
        _save_cache(Path(cache_path), key, fs)
    return fs


def extract_for_protocol(
    model: torch.nn.Module,
    dataset: Dataset,
    fcfg,
    layers: Sequence[int],
    norm: bool,
    tag: str,
    with_patches: bool = False,
    cache_extra: dict | None = None,
) -> FeatureSet:
    """Build the loader and cache path from a :class:`sparsedino.eval.settings.FeatureSettings` and extract.

    Args:
        fcfg: feature settings (batch size, workers, device, storage dtype, cache folder or "" for none).
        tag: short name of the split (``"train"``, ``"val"``) used in the cache file name and progress bar.
    """
    device = resolve_device(fcfg.device)
    loader = DataLoader(dataset, batch_size=fcfg.batch_size, shuffle=False, num_workers=fcfg.num_workers)
    if fcfg.dtype not in STORAGE_DTYPES:
        raise ValueError(f"features.dtype must be one of {sorted(STORAGE_DTYPES)}, got {fcfg.dtype!r}")
    dtype = STORAGE_DTYPES[fcfg.dtype]
    cache_path = None
    if fcfg.cache_dir:
        abs_layers = resolve_layers(model, layers)
        name_key = {
            "tag": tag,
            "layers": list(abs_layers),
            "norm": norm,
            "patches": with_patches,
            "model": model_fingerprint(model),
            "data": dataset_fingerprint(dataset),
            "dtype": fcfg.dtype,
        }
        cache_path = feature_cache_path(fcfg.cache_dir, tag, name_key)
    return extract_features(
        model,
        loader,
        layers=layers,
        norm=norm,
        with_patches=with_patches,
        cache_path=cache_path,
        cache_key=cache_extra,
        device=device,
        dtype=dtype,
        desc=f"features[{tag}]",
    )

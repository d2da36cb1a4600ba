"""``hf:FOLDER`` backbones: a transformers ViT-like encoder behind the part of timm's ViT interface we use.

:class:`HFBackbone` keeps the transformers model as its child ``hf`` (so its state dict, attention
implementation and ``collect_attention`` support stay transformers') and offers what the protocols and the
diagnostics read: ``blocks`` (the depth), ``patch_embed.patch_size`` / ``dynamic_feat_size``,
``num_prefix_tokens``, ``num_reg_tokens``, ``has_class_token``, ``norm`` (the final LayerNorm),
``pretrained_cfg`` (image mean / std), ``forward_intermediates`` (from ``output_hidden_states=True``) and
``forward_features``.

Model types are read from ``config.json`` and must be in the table of :mod:`sparsedino.models.hf_config`,
which also gives the image statistics when the folder has no ``preprocessor_config.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sparsedino.models.checkpoint import BackboneInfo
from sparsedino.models.formats import CheckpointError, fingerprint
from sparsedino.models.hf_config import HF_FAMILIES, HFFamily, image_stats, read_hf_config
from sparsedino.models.spec import BackboneSpec

__all__ = ["HFBackbone", "load_hf_backbone"]

_UNUSED_PREFIXES = ("pooler.",)  # modules the adapter never runs: their weights may be missing


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class PatchGrid:
    """The ``patch_embed`` attributes our code reads (timm's ``PatchEmbed``), for a transformers model."""

    def __init__(self, patch_size: tuple[int, int], img_size: tuple[int, int]) -> None:
        self.patch_size = patch_size
        self.img_size = img_size
        self.grid_size = self.dynamic_feat_size(img_size)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (h, w) of an input (H, W): the patch convolution drops a partial last patch."""
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]


def _take_indices(depth: int, indices: int | Sequence[int] | None) -> list[int]:
    """Blocks to return, in block order: the last ``n`` for an int, all for None (timm's convention)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"cannot take the last {indices} of {depth} blocks")
        return list(range(depth - indices, depth))
    absolute = set()
    for index in indices:
        if not -depth <= int(index) < depth:
            raise ValueError(f"block index {index} out of range for a model with {depth} blocks")
        absolute.add(int(index) % depth)
    return sorted(absolute)


class HFBackbone(nn.Module):
    """A transformers ViT-like encoder with the subset of timm's ``VisionTransformer`` interface we use.

    Args:
        model: the transformers base model (``ViTModel``, ``Dinov2Model``, ``DINOv3ViTModel``, ...).
        family: its entry of :data:`HF_FAMILIES`.
        mean, std: the image statistics its inputs are normalised with.
    """

    dynamic_img_size = True  # every family interpolates (or rotates) positions for any input size

    def __init__(
        self, model: nn.Module, family: HFFamily, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.hf = model
        self.family = family
        config = model.config
        self.num_reg_tokens = int(getattr(config, "num_register_tokens", 0) or 0)
        self.has_class_token = True
        self.num_prefix_tokens = 1 + family.extra_prefix + self.num_reg_tokens
        self.embed_dim = self.num_features = int(config.hidden_size)
        img_size = _pair(config.image_size)
        self.patch_embed = PatchGrid(_pair(config.patch_size), img_size)
        self.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std), "input_size": (3, *img_size)}

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer layers (not re-registered: the state dict keeps transformers' names)."""
        for path in self.family.layers:
            module: Any = self.hf
            for part in path.split("."):
                module = getattr(module, part, None)
            if isinstance(module, nn.ModuleList):
                return module
        raise AttributeError(
            f"{type(self.hf).__name__} has no block list at {' or '.join(self.family.layers)}"
        )

    @property
    def norm(self) -> nn.Module:
        """The final LayerNorm (applied to every token, as timm's ``norm``)."""
        return getattr(self.hf, self.family.norm)

    def _hidden_states(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(embeddings, output of block 0, ..., output of the last block), each (B, N, C) before the norm."""
        extra = {"interpolate_pos_encoding": True} if self.family.interpolate else {}
        out = self.hf(pixel_values=x, output_hidden_states=True, return_dict=True, **extra)
        return out.hidden_states

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's ``forward_intermediates``: the outputs of the chosen blocks, split into patches and prefix.

        Args:
            x: (B, 3, H, W) images.
            indices: blocks (negative from the end), the last n for an int, all for None.
            return_prefix_tokens: pair each block's patches with its prefix tokens (B, P, C).
            norm: apply the final LayerNorm to each block's tokens.
            stop_early: accepted for timm compatibility; every block runs (transformers has no early exit).
            output_fmt: ``"NLC"`` (B, h*w, C) or ``"NCHW"`` (B, C, h, w) patch tokens.
            intermediates_only: return only the list, else ``(final normed tokens, list)``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = _take_indices(len(self.blocks), indices)
        hidden = self._hidden_states(x)
        grid = self.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
        out = []
        for i in take:
            tokens = self.norm(hidden[i + 1]) if norm else hidden[i + 1]
            prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]
            if output_fmt == "NCHW":  # (B, h*w, C) -> (B, C, h, w)
                patches = patches.reshape(patches.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
            out.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return out
        return self.norm(hidden[-1]), out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens of the last block after the final norm (transformers' ``last_hidden_state``)."""
        return self.norm(self._hidden_states(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) normed [CLS] token (timm's ``num_classes=0`` output)."""
        return self.forward_features(x)[:, 0]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report: problems are raised as one line by the caller instead."""
    from transformers.utils import logging as hf_logging  # optional dependency: only hf: folders need it

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _folder_fingerprint(folder: Path) -> str:
    """Fingerprint of the config and weight files (a cache key; the folder's other files do not matter)."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json"
    )
    digest = hashlib.sha256("".join(f"{p.name}:{fingerprint(p)}" for p in files).encode())
    return digest.hexdigest()[:16]


def load_hf_backbone(spec: BackboneSpec) -> tuple[HFBackbone, BackboneInfo]:
    """Load ``spec``'s transformers folder (``local_files_only``, float32) into an :class:`HFBackbone`.

    Raises:
        CheckpointError: transformers is missing, the folder is not a ViT-like model, its weights are
            missing some of the model's tensors or have other shapes (named).
    """
    where = f"hf:{spec.path}"
    config = read_hf_config(spec.path, where)
    try:
        from transformers import AutoModel  # optional dependency: only hf: folders need it
    except ImportError as err:
        raise CheckpointError(f"{where}: reading a transformers folder needs transformers installed") from err
    try:
        with _quiet_transformers():
            model, report = AutoModel.from_pretrained(
                str(spec.path), local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True,
                dtype=torch.float32,
            )  # fmt: skip
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{where}: transformers cannot load it ({str(err).splitlines()[0]})") from err
    missing = sorted(k for k in report["missing_keys"] if not k.startswith(_UNUSED_PREFIXES))
    mismatched = sorted(f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in report["mismatched_keys"])
    if missing or mismatched:
        parts = [f"missing keys ({len(missing)}): {', '.join(missing[:5])}"] if missing else []
        parts += [f"shapes differ ({len(mismatched)}): {'; '.join(mismatched[:5])}"] if mismatched else []
        raise CheckpointError(f"{where}: its weights do not fit its config.json: {', '.join(parts)}")
    family = HF_FAMILIES[config["model_type"]]
    backbone = HFBackbone(model, family, *image_stats(spec.path, family)).eval()
    return backbone, BackboneInfo(
        source="transformers",
        arch=str(config["model_type"]),
        patch_size=backbone.patch_embed.patch_size[0],
        embed_dim=backbone.embed_dim,
        depth=len(backbone.blocks),
        num_heads=int(model.config.num_attention_heads),
        num_registers=backbone.num_reg_tokens,
        normalizer="softmax",
        epoch=None,
        path=str(spec.path),
        sha256=_folder_fingerprint(spec.path),
        spec=str(spec),
    )

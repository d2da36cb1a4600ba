"""One pass over a segmentation dataset computing every diagnostic per block.

Per batch, a single ``forward_intermediates`` of the backbone (inside ``collect_attention``) yields the
tokens and the attention probabilities of every block; each diagnostic of the table
:data:`~sparsedino.diagnose.steps.DIAGNOSTICS` keeps what it needs of them (``steps.py``). Per block only
running statistics and a few sampled tokens are kept (memory does not grow with the image size beyond one
batch), except for the dense probe and DSE, which keep the patch features of their images in float16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from sparsedino.attention import collect_attention
from sparsedino.config import ConfigError, config_to_dict
from sparsedino.diagnose import diffusion
from sparsedino.diagnose.batches import ResizeCollate
from sparsedino.diagnose.masks import image_labels, patch_foreground, pure_background
from sparsedino.diagnose.scores import SCORES
from sparsedino.diagnose.settings import DiagnoseConfig
from sparsedino.diagnose.steps import DIAGNOSTICS, HIST_EDGES, BatchView, BlockStats, Finish, block_view
from sparsedino.errors import DataError
from sparsedino.models.layout import TokenLayout, token_layout


def resolve_layers(layers: Sequence[int] | None, depth: int) -> list[int]:
    """Block indices (negative counted from the end) -> sorted unique non-negative indices; empty = all.

    Raises:
        ValueError: naming the index if it is outside ``[-depth, depth)``.
    """
    if not layers:
        return list(range(depth))
    out = set()
    for i in layers:
        if not -depth <= int(i) < depth:
            raise ConfigError(f"layer index {i} is out of range for a model with {depth} blocks")
        out.add(int(i) % depth)
    return sorted(out)


def validate_model(model: torch.nn.Module, cfg: DiagnoseConfig) -> None:
    """Check that ``model`` can be diagnosed with ``cfg`` (raises ConfigError / ValueError naming the problem).

    It must be a timm ViT with ``forward_intermediates``, an ``img_size`` multiple of its patch size, and
    either ``dynamic_img_size`` or a native input size equal to ``img_size``.
    """
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{type(model).__name__} is not a timm VisionTransformer (no forward_intermediates)")
    patch = tuple(model.patch_embed.patch_size)
    if cfg.img_size % patch[0] or cfg.img_size % patch[1]:
        raise ConfigError(f"img_size={cfg.img_size} is not a multiple of the model's patch size {patch}")
    native = getattr(model.patch_embed, "img_size", None)
    if not getattr(model, "dynamic_img_size", False) and native and tuple(native) != (cfg.img_size,) * 2:
        raise ConfigError(
            f"the model takes {tuple(native)} inputs only (built without dynamic_img_size); set "
            f"img_size={native[0]} or rebuild it with dynamic_img_size=True"
        )
    resolve_layers(list(cfg.layers), len(model.blocks))


def _choose(candidates: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Up to k random indices where ``candidates`` (M,) is True."""
    idx = candidates.nonzero().flatten()
    return idx[torch.randperm(len(idx), generator=gen)[:k]]


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class _Run:
    """What one pass keeps besides the blocks' stats: labels, the dense probe's masks, the figures' images."""

    def __init__(self, cfg: DiagnoseConfig, layout: TokenLayout, grid: tuple, patch: tuple, device) -> None:
        self.cfg, self.layout, self.grid, self.patch, self.device = cfg, layout, grid, patch, device
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the label probe's patch samples
        self.labels: list[torch.Tensor] = []
        self.probe_masks: list[
            torch.Tensor
        ] = []  # uint8 masks of the dense probe's images only (bounded memory)
        self.examples: dict[str, list[torch.Tensor]] = {"images": [], "masks": [], "fg": []}
        self.fg_patches = 0
        self.seen = 0

    def batch(self, images: torch.Tensor, masks: torch.Tensor) -> BatchView:
        """Record a batch's labels and masks, sample its label-probe patches; its :class:`BatchView`."""
        cfg, B = self.cfg, images.shape[0]
        fg2d, valid2d, _ = patch_foreground(masks, self.grid, cfg.fg_threshold)
        fg, valid = fg2d.flatten(1), valid2d.flatten(1)  # (B, M)
        pure_bg = pure_background(masks, self.grid).flatten(1)  # (B, M): no object and no 255 pixel
        self.labels.append(image_labels(masks))
        self.fg_patches += int(fg.sum())
        n_probe = max(0, min(B, cfg.dense_probe.max_images - self.seen)) if cfg.dense_probe.enabled else 0
        n_dse = max(0, min(B, cfg.dse.max_images - self.seen)) if cfg.dse.enabled else 0
        if n_probe:
            self.probe_masks.append(masks[:n_probe].to(torch.uint8))  # labels are 0..254 and 255
        k = cfg.patches_per_image
        picks = [(_choose(pure_bg[i], k, self.gen), _choose(fg[i], k, self.gen)) for i in range(B)]
        n_fig = max(0, min(B, cfg.n_figure_images - self.seen))
        if n_fig:
            self.examples["images"].append(images[:n_fig].cpu())
            self.examples["masks"].append(masks[:n_fig])
            self.examples["fg"].append(fg2d[:n_fig])
        view = BatchView(cfg, self.layout, self.grid, self.patch, fg.to(self.device), valid.to(self.device),
                         picks, self.seen, n_probe, n_dse, n_fig)  # fmt: skip
        self.seen += B
        return view


def _forward_blocks(model: torch.nn.Module, images: torch.Tensor, layers: list[int], num_prefix: int):
    """``[(raw (B, M, C), prefix (B, P, C) or None, attn (B, H, N, N))]`` of each block in ``layers``."""
    with collect_attention(model) as maps:
        inter = model.forward_intermediates(images, indices=layers, norm=False, output_fmt="NLC",
                                            intermediates_only=True, return_prefix_tokens=True, stop_early=True)  # fmt: skip
    if not num_prefix:  # timm returns bare patch tokens when there is no prefix token
        inter = [(x, None) for x in inter]
    return [(raw, prefix, maps[b]) for b, (raw, prefix) in zip(layers, inter)]


def _block_scores(acc: BlockStats, finish: Finish) -> dict[str, Any]:
    """Every diagnostic's scores of one block; a score undefined for this model (no [CLS]) is None."""
    res: dict[str, Any] = {}
    for diagnostic in DIAGNOSTICS:
        res.update(diagnostic.scores(acc, finish))
    cfg = finish.cfg
    for key in SCORES:  # every score is reported; None = undefined for this model (e.g. no [CLS])
        if (cfg.dense_probe.enabled or not key.startswith("probe.")) and (
            cfg.dse.enabled or not key.startswith("dse.")
        ):
            res.setdefault(key, None)
    return {k: _nan_to_none(v) if not isinstance(v, list) else v for k, v in res.items()}


def _data_summary(run: _Run, n_images: int, labels: torch.Tensor) -> dict[str, Any]:
    """The ``data`` section of the results: the images, the model's token layout, the labels seen."""
    layout, grid = run.layout, run.grid
    return {
        "n_images": n_images,
        "img_size": run.cfg.img_size,
        "grid": list(grid),
        "patch_size": list(run.patch),
        "num_prefix_tokens": layout.num_prefix_tokens,
        "num_registers": layout.num_registers,
        "has_cls": layout.has_class_token,
        "image_mean": list(layout.mean),
        "image_std": list(layout.std),
        "foreground_patch_share": run.fg_patches / (n_images * grid[0] * grid[1]),
        "n_labelled_images": int((labels >= 0).sum()),
        "n_image_classes": int(labels[labels >= 0].unique().numel()),
    }


def run_diagnostics(
    model: torch.nn.Module,
    dataset: Dataset,
    layers: Sequence[int] | None = None,
    cfg: DiagnoseConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute every diagnostic of ``docs/diagnostics.md`` for the chosen blocks of a timm ViT.

    Args:
        model: a timm ``VisionTransformer`` whose attention modules are ``SparseAttention`` (any normaliser).
        dataset: items ``(image (3, H, W) normalised float, mask (H, W) int64, 255 = ignore)``, attribute
            ``num_classes`` (for the dense probe).
        layers: block indices; None or empty = ``cfg.layers`` or all blocks.
        cfg: options; defaults of :class:`DiagnoseConfig` when None.
        progress: show a tqdm bar.

    Returns:
        ``{"config", "data", "layers", "blocks": {str(block): {score: value}}, "histograms", "examples"}``;
        everything but ``examples`` (tensors for the figures) is JSON-serialisable.
    """
    cfg = cfg if cfg is not None else DiagnoseConfig()
    layers = resolve_layers(list(layers or cfg.layers), len(model.blocks))
    n_images = min(cfg.n_images, len(dataset))
    if n_images == 0:
        raise DataError("the dataset to diagnose is empty")
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    validate_model(model, cfg)
    model = model.eval().to(device)
    patch = tuple(model.patch_embed.patch_size)
    grid = (
        tuple(model.patch_embed.dynamic_feat_size((cfg.img_size, cfg.img_size)))
        if hasattr(model.patch_embed, "dynamic_feat_size")
        else tuple(model.patch_embed.grid_size)
    )
    layout = token_layout(model)  # patches = the tokens after [CLS] and the registers
    loader = DataLoader(Subset(dataset, range(n_images)), batch_size=cfg.batch_size, shuffle=False,
                        collate_fn=ResizeCollate(cfg.img_size))  # fmt: skip
    run = _Run(cfg, layout, grid, patch, device)
    blocks = {b: BlockStats() for b in layers}
    with torch.no_grad():
        for images, masks in tqdm(loader, desc="diagnose", disable=not progress, unit="batch"):
            batch = run.batch(images, masks)
            outputs = _forward_blocks(model, images.to(device), layers, layout.num_prefix_tokens)
            for b, (raw, prefix, attn) in zip(layers, outputs):
                view = block_view(batch, model, raw, prefix, attn)
                for diagnostic in DIAGNOSTICS:  # each keeps what it needs of this block's batch
                    diagnostic.add(blocks[b], view)
    labels = torch.cat(run.labels)
    masks_probe = torch.cat(run.probe_masks).long() if run.probe_masks else None
    finish = Finish(cfg, labels, diffusion.split_images(labels, 0.5), masks_probe, dataset, layout.has_class_token,
                    device)  # fmt: skip
    results = {
        str(b): _block_scores(acc, finish)
        for b, acc in tqdm(blocks.items(), desc="probes", disable=not progress, unit="block")
    }
    examples = {k: torch.cat(v) if v else None for k, v in run.examples.items()}
    examples["maps"] = {b: {k: torch.cat(v) for k, v in acc.maps.items()} for b, acc in blocks.items()}
    return {
        "config": config_to_dict(cfg),
        "data": _data_summary(run, n_images, labels),
        "layers": layers,
        "blocks": results,
        "histograms": {
            "edges_log10_ratio": HIST_EDGES.tolist(),
            **{str(b): acc.hist.tolist() for b, acc in blocks.items()},
        },
        "examples": {**examples, "mean": layout.mean, "std": layout.std},  # to draw the images
    }

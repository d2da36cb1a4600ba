"""One pass over a segmentation dataset computing every diagnostic per block.

Per batch, a single ``forward_intermediates`` of the backbone (inside ``collect_attention``) yields the
tokens and the attention probabilities of every block. Per block we keep only running statistics and a
few sampled tokens (memory does not grow with the image size beyond one batch), except for the dense
probe, which keeps the patch features of the diagnosed images in float16.
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
from sparsedino.diagnose import alignment, attention_stats, diffusion, norms, registers
from sparsedino.diagnose.batches import ResizeCollate
from sparsedino.diagnose.dense_probe import dense_probe_scores
from sparsedino.diagnose.dse import dse_scores
from sparsedino.diagnose.masks import image_labels, patch_foreground, pure_background
from sparsedino.diagnose.pca import pca_rgb
from sparsedino.diagnose.scores import SCORES
from sparsedino.diagnose.settings import DiagnoseConfig
from sparsedino.errors import DataError
from sparsedino.models.layout import token_layout

# histogram of log10(norm / image median) per block: 0.1x .. 100x the median
HIST_EDGES = torch.linspace(-1.0, 2.0, 61)


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


class _Block:
    """Running statistics of one block."""

    def __init__(self) -> None:
        self.lists: dict[str, list[torch.Tensor]] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.hist = torch.zeros(len(HIST_EDGES) - 1)
        self.tokens: dict[str, list[torch.Tensor]] = {"bg": [], "fg": [], "cls": []}
        self.probe_feats: list[torch.Tensor] = []
        self.probe_cls: list[torch.Tensor] = []
        self.dse_feats: list[torch.Tensor] = []  # patch features of the first dse.max_images images

    def add(self, name: str, values: torch.Tensor) -> None:
        self.lists.setdefault(name, []).append(values.detach().float().cpu().flatten())

    def add_sum(self, name: str, values: torch.Tensor) -> None:
        """Accumulate (sum, count) per head of a (B, H, Q) tensor, ignoring NaN."""
        v = values.detach().float()
        ok = ~torch.isnan(v)
        s = torch.stack([torch.where(ok, v, 0).sum((0, 2)), ok.sum((0, 2)).float()]).cpu()
        self.sums[name] = self.sums.get(name, 0) + s

    def mean(self, name: str) -> float | None:
        if name not in self.lists:
            return None
        v = torch.cat(self.lists[name])
        v = v[~torch.isnan(v)]
        return float(v.mean()) if v.numel() else None

    def head_means(self, name: str) -> list[float]:
        s = self.sums[name]
        return (s[0] / s[1].clamp_min(1)).tolist()


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


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
    depth = len(model.blocks)
    layers = resolve_layers(list(layers or cfg.layers), depth)
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
    num_prefix, has_cls = layout.num_prefix_tokens, layout.has_class_token
    loader = DataLoader(
        Subset(dataset, range(n_images)),
        batch_size=cfg.batch_size,
        shuffle=False,
        collate_fn=ResizeCollate(cfg.img_size),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    blocks = {b: _Block() for b in layers}
    probe_masks: list[torch.Tensor] = []  # uint8 masks of the dense probe's images only (bounded memory)
    all_labels: list[torch.Tensor] = []
    fg_patches = 0
    examples = {"images": [], "masks": [], "fg": [], "maps": {b: {} for b in layers}}
    seen = 0
    with torch.no_grad():
        for images, masks in tqdm(loader, desc="diagnose", disable=not progress, unit="batch"):
            images = images.to(device)
            B = images.shape[0]
            fg2d, valid2d, _ = patch_foreground(masks, grid, cfg.fg_threshold)
            fg, valid = fg2d.flatten(1), valid2d.flatten(1)  # (B, M)
            pure_bg = pure_background(masks, grid).flatten(1)  # (B, M): no object and no 255 pixel
            fg_d, valid_d = fg.to(device), valid.to(device)
            all_labels.append(image_labels(masks))
            fg_patches += int(fg.sum())
            n_probe = max(0, min(B, cfg.dense_probe.max_images - seen)) if cfg.dense_probe.enabled else 0
            n_dse = max(0, min(B, cfg.dse.max_images - seen)) if cfg.dse.enabled else 0
            if n_probe:
                probe_masks.append(masks[:n_probe].to(torch.uint8))  # labels are 0..254 and 255
            picks = [
                (
                    _choose(pure_bg[i], cfg.patches_per_image, gen),
                    _choose(fg[i], cfg.patches_per_image, gen),
                )
                for i in range(B)
            ]
            n_fig = max(0, min(B, cfg.n_figure_images - seen))
            with collect_attention(model) as maps:
                inter = model.forward_intermediates(
                    images,
                    indices=layers,
                    norm=False,
                    output_fmt="NLC",
                    intermediates_only=True,
                    return_prefix_tokens=True,
                    stop_early=True,
                )
            if n_fig:
                examples["images"].append(images[:n_fig].cpu())
                examples["masks"].append(masks[:n_fig])
                examples["fg"].append(fg2d[:n_fig])
            if not num_prefix:  # timm returns bare patch tokens when there is no prefix token
                inter = [(x, None) for x in inter]
            for b, (raw, prefix) in zip(layers, inter):  # raw (B, M, C), prefix (B, P, C) or None
                acc = blocks[b]
                attn = maps[b]  # (B, H, N, N)
                feats = torch.cat([prefix, raw], 1) if prefix is not None else raw
                if cfg.final_norm:
                    feats = model.norm(feats)
                feats = feats.float()
                patches, cls = feats[:, num_prefix:], (feats[:, 0] if has_cls else None)  # (B, M, C), (B, C)
                # 1. token norms (residual stream, no final norm)
                n = norms.token_norms(raw)  # (B, M)
                out = norms.outlier_mask(n, cfg.outlier_ratio)
                for key, val in norms.per_image_norm_scores(n, fg_d, valid_d).items():
                    acc.add(f"norm.{key}", val)
                acc.add("_norm_all", n)
                acc.add("_outlier", out)
                acc.add("_outlier_bg", out & valid_d & ~fg_d)
                acc.add("_outlier_fg", out & fg_d)
                ratio = (n / n.median(1, keepdim=True).values.clamp_min(1e-12)).log10().clamp(-1, 2)
                acc.hist += torch.histc(ratio.cpu(), bins=len(HIST_EDGES) - 1, min=-1.0, max=2.0)
                # 2. attention statistics
                acc.add_sum("entropy", attention_stats.attention_entropy(attn, num_prefix))
                acc.add_sum("support", attention_stats.support_size(attn, num_prefix).float())
                acc.add_sum("zero_share", attention_stats.zero_share(attn, num_prefix)[..., None])
                acc.add_sum(
                    "distance", attention_stats.mean_attention_distance(attn, num_prefix, grid, patch)
                )
                if layout.num_registers:  # 2b. register tokens, apart from the patches
                    registers.add_block(acc, prefix, n, attn, layout)
                if has_cls:
                    cls_attn = attention_stats.cls_patch_attention(attn, num_prefix)  # (B, M)
                    acc.add("attn.cls_fg_mass", attention_stats.cls_foreground_mass(cls_attn, fg_d, valid_d))
                    chance = (fg_d & valid_d).sum(1) / valid_d.sum(1).clamp_min(1)
                    acc.add("attn.cls_fg_chance", torch.where(valid_d.any(1), chance.float(), float("nan")))
                    # 3. foreground alignment
                    kept = alignment.cls_attention_mask(cls_attn, cfg.cls_mass_keep)
                    acc.add("align.cls_attn_iou", alignment.foreground_iou(kept, fg_d, valid_d))
                    # ... and per head, as DINO's attention figures threshold each head's map
                    heads = attention_stats.cls_patch_attention(attn, num_prefix, per_head=True)  # (B, H, M)
                    kept_h = alignment.cls_attention_mask(heads, cfg.cls_mass_keep)
                    iou_h = alignment.foreground_iou(kept_h, fg_d[:, None], valid_d[:, None])  # (B, H)
                    acc.add_sum("cls_attn_iou_head", iou_h[..., None])
                    # 4b. cosine to [CLS]
                    cos_fg, cos_bg = diffusion.cls_cosine(patches, cls, fg_d, valid_d)
                    acc.add("diffusion.cos_fg", cos_fg)
                    acc.add("diffusion.cos_bg", cos_bg)
                pca_fg = torch.stack([torch.stack(alignment.pca_foreground_mask(p, grid)) for p in patches])
                iou_pred = alignment.foreground_iou(pca_fg[:, 0], fg_d, valid_d)
                iou_other = alignment.foreground_iou(pca_fg[:, 1], fg_d, valid_d)
                acc.add("align.pca_iou", iou_pred)
                acc.add("align.pca_iou_oracle", torch.fmax(iou_pred, iou_other))
                # 4a. sampled tokens for the label probe
                for i, (bg_idx, fg_idx) in enumerate(picks):
                    owner = torch.full((1,), seen + i, dtype=torch.long)
                    acc.tokens["bg"].append((patches[i, bg_idx.to(device)].cpu(), owner.expand(len(bg_idx))))
                    acc.tokens["fg"].append((patches[i, fg_idx.to(device)].cpu(), owner.expand(len(fg_idx))))
                    if has_cls:
                        acc.tokens["cls"].append((cls[i : i + 1].cpu(), owner))
                # 5. features for the dense probe
                if n_probe:
                    acc.probe_feats.append(patches[:n_probe].reshape(n_probe, *grid, -1).half().cpu())
                    if has_cls:
                        acc.probe_cls.append(cls[:n_probe].half().cpu())
                if n_dse:  # 7. features for DSE (dse.py)
                    acc.dse_feats.append(patches[:n_dse].half().cpu())
                # 6. maps for the figures
                if n_fig:
                    ex = examples["maps"][b]
                    ex.setdefault("norm", []).append(n[:n_fig].reshape(n_fig, *grid).cpu())
                    ex.setdefault("pca", []).append(
                        torch.stack([pca_rgb(p, grid) for p in patches[:n_fig]]).cpu()
                    )
                    if has_cls:
                        ex.setdefault("cls_attn", []).append(cls_attn[:n_fig].reshape(n_fig, *grid).cpu())
            seen += B
    labels = torch.cat(all_labels)
    masks_probe = torch.cat(probe_masks).long() if probe_masks else None
    train_images = diffusion.split_images(labels, 0.5)
    results = {}
    for b, acc in tqdm(blocks.items(), desc="probes", disable=not progress, unit="block"):
        results[str(b)] = _finalise_block(
            acc, cfg, labels, train_images, masks_probe, dataset, has_cls, device
        )
    examples = {**_cat_examples(examples), "mean": layout.mean, "std": layout.std}  # to draw the images
    return {
        "config": config_to_dict(cfg),
        "data": {
            "n_images": n_images,
            "img_size": cfg.img_size,
            "grid": list(grid),
            "patch_size": list(patch),
            "num_prefix_tokens": num_prefix,
            "num_registers": layout.num_registers,
            "has_cls": has_cls,
            "image_mean": list(layout.mean),
            "image_std": list(layout.std),
            "foreground_patch_share": fg_patches / (n_images * grid[0] * grid[1]),
            "n_labelled_images": int((labels >= 0).sum()),
            "n_image_classes": int(labels[labels >= 0].unique().numel()),
        },
        "layers": layers,
        "blocks": results,
        "histograms": {
            "edges_log10_ratio": HIST_EDGES.tolist(),
            **{str(b): acc.hist.tolist() for b, acc in blocks.items()},
        },
        "examples": examples,
    }


def _finalise_block(
    acc: _Block,
    cfg: DiagnoseConfig,
    labels: torch.Tensor,
    train_images: torch.Tensor,
    masks: torch.Tensor | None,
    dataset: Dataset,
    has_cls: bool,
    device: torch.device,
) -> dict[str, Any]:
    n_all = torch.cat(acc.lists["_norm_all"])
    out = torch.cat(acc.lists["_outlier"]).bool()
    n_out = int(out.sum())
    res: dict[str, Any] = {
        "norm.median": float(n_all.median()),
        "norm.mean": float(n_all.mean()),
        "norm.p99": float(torch.quantile(n_all[: 2**24], 0.99)),
        "norm.max_over_median": acc.mean("norm.max_over_median"),
        "norm.outlier_share": float(out.float().mean()),
        "norm.outlier_on_background": float(torch.cat(acc.lists["_outlier_bg"]).sum()) / n_out
        if n_out
        else None,
        "norm.outlier_on_foreground": float(torch.cat(acc.lists["_outlier_fg"]).sum()) / n_out
        if n_out
        else None,
        "norm.fg_over_bg": acc.mean("norm.fg_over_bg"),
    }
    entropy = acc.head_means("entropy")
    support = acc.head_means("support")
    distance = acc.head_means("distance")
    res.update(
        {
            "attn.entropy": sum(entropy) / len(entropy),
            "attn.zero_share": sum(acc.head_means("zero_share")) / len(entropy),
            "attn.support": sum(support) / len(support),
            "attn.distance_px": sum(distance) / len(distance),
            "attn.distance_px_per_head": distance,
            "attn.support_per_head": support,
            "attn.cls_fg_mass": acc.mean("attn.cls_fg_mass"),
            "attn.cls_fg_chance": acc.mean("attn.cls_fg_chance"),
            "align.cls_attn_iou": acc.mean("align.cls_attn_iou"),
            **_per_head_iou(acc),
            "align.pca_iou": acc.mean("align.pca_iou"),
            "align.pca_iou_oracle": acc.mean("align.pca_iou_oracle"),
            "diffusion.cos_fg": acc.mean("diffusion.cos_fg"),
            "diffusion.cos_bg": acc.mean("diffusion.cos_bg"),
        }
    )
    tokens = {g: torch.cat([t for t, _ in v]) for g, v in acc.tokens.items() if v}
    owners = {g: torch.cat([o for _, o in v]) for g, v in acc.tokens.items() if v}
    probe = diffusion.patch_label_probe(
        tokens, owners, labels, train_images, cfg.label_probe_iterations, cfg.label_probe_weight_decay
    )
    res.update({f"diffusion.{k}": v for k, v in probe.items()})
    res.update(registers.finalise(acc))
    if cfg.dense_probe.enabled and acc.probe_feats and masks is not None:
        feats = torch.cat(acc.probe_feats)
        cls = torch.cat(acc.probe_cls) if has_cls else None
        res.update(dense_probe_scores(feats, cls, masks, dataset, cfg.dense_probe, device))
    if acc.dse_feats:
        res.update(dse_scores(torch.cat(acc.dse_feats), cfg.dse))
    for key in SCORES:  # every score is reported; None = undefined for this model (e.g. no [CLS])
        if (cfg.dense_probe.enabled or not key.startswith("probe.")) and (
            cfg.dse.enabled or not key.startswith("dse.")
        ):
            res.setdefault(key, None)
    return {k: _nan_to_none(v) if not isinstance(v, list) else v for k, v in res.items()}


def _per_head_iou(acc: _Block) -> dict[str, Any]:
    """Per-head [CLS]-attention mask IoU (each head's map thresholded) and its mean over heads."""
    if "cls_attn_iou_head" not in acc.sums:
        return {}
    per_head = acc.head_means("cls_attn_iou_head")
    return {
        "align.cls_attn_iou_heads": sum(per_head) / len(per_head),
        "align.cls_attn_iou_per_head": per_head,
    }


def _cat_examples(ex: dict) -> dict:
    out = {k: torch.cat(v) if v else None for k, v in ex.items() if k != "maps"}
    out["maps"] = {b: {k: torch.cat(v) for k, v in d.items()} for b, d in ex["maps"].items()}
    return out

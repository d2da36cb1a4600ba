"""The table of diagnostics the runner computes per block: what each keeps from a batch, what it reports.

A :class:`Diagnostic` has two small functions. ``add`` takes one batch of one block (a :class:`BlockView`:
the block's tokens and attention, the batch's foreground masks and sampled patches) and accumulates into
the block's :class:`BlockStats` (running lists and per-head sums, a few sampled tokens, float16 features
for the probes); ``scores`` turns the block's stats into its entries of ``metrics.json`` once every batch
is seen. :data:`DIAGNOSTICS` lists them in the order their scores are reported; ``runner.py`` loops over
it. The definitions of the scores are in ``docs/diagnostics.md`` and in the modules each step calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from sparsedino.diagnose import alignment, attention_stats, diffusion, norms, registers
from sparsedino.diagnose.dense_probe import dense_probe_scores
from sparsedino.diagnose.dse import dse_scores
from sparsedino.diagnose.pca import pca_rgb
from sparsedino.diagnose.settings import DiagnoseConfig
from sparsedino.models.layout import TokenLayout

# histogram of log10(norm / image median) per block: 0.1x .. 100x the median
HIST_EDGES = torch.linspace(-1.0, 2.0, 61)


class BlockStats:
    """Running statistics of one block."""

    def __init__(self) -> None:
        self.lists: dict[str, list[torch.Tensor]] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.hist = torch.zeros(len(HIST_EDGES) - 1)
        self.tokens: dict[str, list[torch.Tensor]] = {"bg": [], "fg": [], "cls": []}
        self.probe_feats: list[torch.Tensor] = []
        self.probe_cls: list[torch.Tensor] = []
        self.dse_feats: list[torch.Tensor] = []  # patch features of the first dse.max_images images
        self.maps: dict[str, list[torch.Tensor]] = {}  # the figures' per-image maps

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


@dataclass
class BatchView:
    """One batch of images, as every block sees it.

    Attributes:
        cfg: the options.
        layout: the model's token layout; grid: (h, w) patches; patch: patch size (pixels).
        fg, valid: (B, M) foreground / labelled patches, on the model's device.
        picks: per image, the sampled (pure background, foreground) patch indices of the label probe.
        seen: images of the earlier batches (the first image's index in the dataset).
        n_probe, n_dse, n_fig: how many images of this batch the dense probe, DSE and figures keep.
    """

    cfg: DiagnoseConfig
    layout: TokenLayout
    grid: tuple[int, int]
    patch: tuple[int, int]
    fg: torch.Tensor
    valid: torch.Tensor
    picks: list[tuple[torch.Tensor, torch.Tensor]]
    seen: int
    n_probe: int
    n_dse: int
    n_fig: int


@dataclass
class BlockView:
    """One block's outputs on one batch.

    Attributes:
        batch: the batch.
        raw: (B, M, C) patch tokens on the residual stream (no final norm); prefix: (B, P, C) or None.
        attn: (B, H, N, N) attention probabilities, N = P + M.
        patches: (B, M, C) float patch features (final norm applied when ``cfg.final_norm``).
        cls: (B, C) [CLS] features like ``patches``, or None without a [CLS] token.
        norms: (B, M) L2 norms of ``raw``.
        cls_attn: (B, M) [CLS]-to-patch attention (mean over heads), or None without a [CLS] token.
    """

    batch: BatchView
    raw: torch.Tensor
    prefix: torch.Tensor | None
    attn: torch.Tensor
    patches: torch.Tensor
    cls: torch.Tensor | None
    norms: torch.Tensor
    cls_attn: torch.Tensor | None


def block_view(batch: BatchView, model: torch.nn.Module, raw, prefix, attn) -> BlockView:
    """The :class:`BlockView` of one block's ``forward_intermediates`` output and attention maps."""
    layout = batch.layout
    feats = torch.cat([prefix, raw], 1) if prefix is not None else raw
    if batch.cfg.final_norm:
        feats = model.norm(feats)
    feats = feats.float()
    P, has_cls = layout.num_prefix_tokens, layout.has_class_token
    return BlockView(
        batch=batch,
        raw=raw,
        prefix=prefix,
        attn=attn,
        patches=feats[:, P:],
        cls=feats[:, 0] if has_cls else None,
        norms=norms.token_norms(raw),
        cls_attn=attention_stats.cls_patch_attention(attn, P) if has_cls else None,
    )


@dataclass
class Finish:
    """What the scores of a block need besides its stats.

    Attributes:
        cfg: the options.
        labels: (n,) image labels (-1 = none); train_images: (n,) bool, the label probe's training images.
        masks: (n_probe, H, W) int64 masks of the dense probe's images, or None.
        dataset: the diagnosed dataset (``num_classes``); has_cls: the model has a [CLS] token.
        device: where the probes train.
    """

    cfg: DiagnoseConfig
    labels: torch.Tensor
    train_images: torch.Tensor
    masks: torch.Tensor | None
    dataset: Dataset
    has_cls: bool
    device: torch.device


@dataclass(frozen=True)
class Diagnostic:
    """One row of :data:`DIAGNOSTICS`: a name, what it keeps from each block-batch, what it reports."""

    name: str
    add: Callable[[BlockStats, BlockView], None]
    scores: Callable[[BlockStats, Finish], dict[str, Any]]


def _add_norms(acc: BlockStats, v: BlockView) -> None:
    """Token norms on the residual stream (no final norm), their outliers and their histogram."""
    fg, valid, n = v.batch.fg, v.batch.valid, v.norms
    out = norms.outlier_mask(n, v.batch.cfg.outlier_ratio)
    for key, val in norms.per_image_norm_scores(n, fg, valid).items():
        acc.add(f"norm.{key}", val)
    acc.add("_norm_all", n)
    acc.add("_outlier", out)
    acc.add("_outlier_bg", out & valid & ~fg)
    acc.add("_outlier_fg", out & fg)
    ratio = (n / n.median(1, keepdim=True).values.clamp_min(1e-12)).log10().clamp(-1, 2)
    acc.hist += torch.histc(ratio.cpu(), bins=len(HIST_EDGES) - 1, min=-1.0, max=2.0)


def _norm_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    n_all = torch.cat(acc.lists["_norm_all"])
    out = torch.cat(acc.lists["_outlier"]).bool()
    n_out = int(out.sum())
    return {
        "norm.median": float(n_all.median()),
        "norm.mean": float(n_all.mean()),
        "norm.p99": float(torch.quantile(n_all[: 2**24], 0.99)),
        "norm.max_over_median": acc.mean("norm.max_over_median"),
        "norm.outlier_share": float(out.float().mean()),
        "norm.outlier_on_background": float(torch.cat(acc.lists["_outlier_bg"]).sum()) / n_out if n_out else None,
        "norm.outlier_on_foreground": float(torch.cat(acc.lists["_outlier_fg"]).sum()) / n_out if n_out else None,
        "norm.fg_over_bg": acc.mean("norm.fg_over_bg"),
    }  # fmt: skip


def _add_attention(acc: BlockStats, v: BlockView) -> None:
    """Attention statistics per head, and [CLS]'s attention mass on the foreground."""
    attn, P, batch = v.attn, v.batch.layout.num_prefix_tokens, v.batch
    acc.add_sum("entropy", attention_stats.attention_entropy(attn, P))
    acc.add_sum("support", attention_stats.support_size(attn, P).float())
    acc.add_sum("zero_share", attention_stats.zero_share(attn, P)[..., None])
    acc.add_sum("distance", attention_stats.mean_attention_distance(attn, P, batch.grid, batch.patch))
    if v.cls_attn is not None:
        fg, valid = batch.fg, batch.valid
        acc.add("attn.cls_fg_mass", attention_stats.cls_foreground_mass(v.cls_attn, fg, valid))
        chance = (fg & valid).sum(1) / valid.sum(1).clamp_min(1)
        acc.add("attn.cls_fg_chance", torch.where(valid.any(1), chance.float(), float("nan")))


def _attention_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    entropy = acc.head_means("entropy")
    support = acc.head_means("support")
    distance = acc.head_means("distance")
    return {
        "attn.entropy": sum(entropy) / len(entropy),
        "attn.zero_share": sum(acc.head_means("zero_share")) / len(entropy),
        "attn.support": sum(support) / len(support),
        "attn.distance_px": sum(distance) / len(distance),
        "attn.distance_px_per_head": distance,
        "attn.support_per_head": support,
        "attn.cls_fg_mass": acc.mean("attn.cls_fg_mass"),
        "attn.cls_fg_chance": acc.mean("attn.cls_fg_chance"),
    }


def _add_alignment(acc: BlockStats, v: BlockView) -> None:
    """Foreground IoU of the [CLS]-attention mask (mean map and per head) and of the PCA mask."""
    fg, valid, cfg = v.batch.fg, v.batch.valid, v.batch.cfg
    if v.cls_attn is not None:
        kept = alignment.cls_attention_mask(v.cls_attn, cfg.cls_mass_keep)
        acc.add("align.cls_attn_iou", alignment.foreground_iou(kept, fg, valid))
        # ... and per head, as DINO's attention figures threshold each head's map
        P = v.batch.layout.num_prefix_tokens
        heads = attention_stats.cls_patch_attention(v.attn, P, per_head=True)  # (B, H, M)
        kept_h = alignment.cls_attention_mask(heads, cfg.cls_mass_keep)
        iou_h = alignment.foreground_iou(kept_h, fg[:, None], valid[:, None])  # (B, H)
        acc.add_sum("cls_attn_iou_head", iou_h[..., None])
    grid = v.batch.grid
    pca_fg = torch.stack([torch.stack(alignment.pca_foreground_mask(p, grid)) for p in v.patches])
    iou_pred = alignment.foreground_iou(pca_fg[:, 0], fg, valid)
    iou_other = alignment.foreground_iou(pca_fg[:, 1], fg, valid)
    acc.add("align.pca_iou", iou_pred)
    acc.add("align.pca_iou_oracle", torch.fmax(iou_pred, iou_other))


def _alignment_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    per_head = {}  # each head's [CLS]-attention map thresholded, and the mean over heads
    if "cls_attn_iou_head" in acc.sums:
        heads = acc.head_means("cls_attn_iou_head")
        per_head = {"align.cls_attn_iou_heads": sum(heads) / len(heads), "align.cls_attn_iou_per_head": heads}
    return {
        "align.cls_attn_iou": acc.mean("align.cls_attn_iou"),
        **per_head,
        "align.pca_iou": acc.mean("align.pca_iou"),
        "align.pca_iou_oracle": acc.mean("align.pca_iou_oracle"),
    }


def _add_cosine(acc: BlockStats, v: BlockView) -> None:
    """Cosine of foreground and background patches to [CLS]."""
    if v.cls is not None:
        cos_fg, cos_bg = diffusion.cls_cosine(v.patches, v.cls, v.batch.fg, v.batch.valid)
        acc.add("diffusion.cos_fg", cos_fg)
        acc.add("diffusion.cos_bg", cos_bg)


def _cosine_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    return {
        "diffusion.cos_fg": acc.mean("diffusion.cos_fg"),
        "diffusion.cos_bg": acc.mean("diffusion.cos_bg"),
    }


def _add_label_tokens(acc: BlockStats, v: BlockView) -> None:
    """The sampled background / foreground patches (and [CLS]) of each image, for the label probe."""
    device = v.patches.device
    for i, (bg_idx, fg_idx) in enumerate(v.batch.picks):
        owner = torch.full((1,), v.batch.seen + i, dtype=torch.long)
        acc.tokens["bg"].append((v.patches[i, bg_idx.to(device)].cpu(), owner.expand(len(bg_idx))))
        acc.tokens["fg"].append((v.patches[i, fg_idx.to(device)].cpu(), owner.expand(len(fg_idx))))
        if v.cls is not None:
            acc.tokens["cls"].append((v.cls[i : i + 1].cpu(), owner))


def _label_probe_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    tokens = {g: torch.cat([t for t, _ in v]) for g, v in acc.tokens.items() if v}
    owners = {g: torch.cat([o for _, o in v]) for g, v in acc.tokens.items() if v}
    cfg = f.cfg
    probe = diffusion.patch_label_probe(
        tokens, owners, f.labels, f.train_images, cfg.label_probe_iterations, cfg.label_probe_weight_decay
    )
    return {f"diffusion.{k}": v for k, v in probe.items()}


def _add_registers(acc: BlockStats, v: BlockView) -> None:
    """Register tokens, apart from the patches (``registers.py``)."""
    if v.batch.layout.num_registers:
        registers.add_block(acc, v.prefix, v.norms, v.attn, v.batch.layout)


def _register_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    return registers.finalise(acc)


def _add_probe_features(acc: BlockStats, v: BlockView) -> None:
    """float16 patch features (and [CLS]) of the dense probe's images."""
    n = v.batch.n_probe
    if n:
        acc.probe_feats.append(v.patches[:n].reshape(n, *v.batch.grid, -1).half().cpu())
        if v.cls is not None:
            acc.probe_cls.append(v.cls[:n].half().cpu())


def _dense_probe_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    if not (f.cfg.dense_probe.enabled and acc.probe_feats and f.masks is not None):
        return {}
    feats = torch.cat(acc.probe_feats)
    cls = torch.cat(acc.probe_cls) if f.has_cls else None
    return dense_probe_scores(feats, cls, f.masks, f.dataset, f.cfg.dense_probe, f.device)


def _add_dse_features(acc: BlockStats, v: BlockView) -> None:
    """float16 patch features of DSE's images (``dse.py``)."""
    if v.batch.n_dse:
        acc.dse_feats.append(v.patches[: v.batch.n_dse].half().cpu())


def _dse_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    return dse_scores(torch.cat(acc.dse_feats), f.cfg.dse) if acc.dse_feats else {}


def _add_figure_maps(acc: BlockStats, v: BlockView) -> None:
    """Norm, PCA and [CLS]-attention maps of the figures' images."""
    n, grid = v.batch.n_fig, v.batch.grid
    if not n:
        return
    acc.maps.setdefault("norm", []).append(v.norms[:n].reshape(n, *grid).cpu())
    acc.maps.setdefault("pca", []).append(torch.stack([pca_rgb(p, grid) for p in v.patches[:n]]).cpu())
    if v.cls_attn is not None:
        acc.maps.setdefault("cls_attn", []).append(v.cls_attn[:n].reshape(n, *grid).cpu())


def _no_scores(acc: BlockStats, f: Finish) -> dict[str, Any]:
    return {}


# In the order their scores appear in metrics.json (docs/diagnostics.md numbers the same groups).
DIAGNOSTICS: tuple[Diagnostic, ...] = (
    Diagnostic("token norms", _add_norms, _norm_scores),
    Diagnostic("attention statistics", _add_attention, _attention_scores),
    Diagnostic("foreground alignment", _add_alignment, _alignment_scores),
    Diagnostic("cosine to [CLS]", _add_cosine, _cosine_scores),
    Diagnostic("background label probe", _add_label_tokens, _label_probe_scores),
    Diagnostic("register tokens", _add_registers, _register_scores),
    Diagnostic("dense probe", _add_probe_features, _dense_probe_scores),
    Diagnostic("DSE", _add_dse_features, _dse_scores),
    Diagnostic("figure maps", _add_figure_maps, _no_scores),
)

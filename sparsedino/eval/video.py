"""Video object segmentation by label propagation: DINO's DAVIS-2017 protocol, nothing trained.

The protocol of facebookresearch/dino ``eval_video_segmentation.py`` (defaults there = defaults here):

1. Frames are resized (bilinear) so the short side is 480 px and the long side is the proportional length
   rounded down to a multiple of 64 (854x480 -> 832x480); ImageNet-normalised with DINO's video-script
   std (0.228, 0.224, 0.225).
2. Patch tokens of the last block after the final norm ([CLS] dropped), L2-normalised.
3. The first frame's annotation, resized (nearest) to the patch grid and one-hot encoded, is the label of
   the first context frame. Each later frame is labelled from a context of the first frame and the 7
   previous frames (their *soft* propagated labels, at patch resolution).
4. Affinity of a target patch to a context patch: ``exp(cos / 0.1)``, zero outside a (2*12+1)^2 patch
   window around the target's position (0 = no window). For every target patch, only context patches
   whose affinity reaches its 5th largest over all context frames keep it (ties kept); the kept
   affinities are normalised to sum to 1 and average the context labels.
5. The soft labels are upsampled by the patch size (bilinear), min-max normalised per object channel,
   arg-maxed, and resized (nearest) to the original frame size. The first frame's prediction is its
   annotation.

Scores are the DAVIS benchmark's J and F (:mod:`sparsedino.eval.davis_metrics`). One deviation: where an
upsampled channel is constant, DINO's min-max division is 0/0 (NaN); here such a channel is left as is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from sparsedino.atomic import atomic_open
from sparsedino.data.davis import DavisDataset, DavisError, DavisSequence
from sparsedino.data.palettes import voc_palette
from sparsedino.eval.davis_metrics import evaluate_sequence, summarize
from sparsedino.eval.features import forward_tokens, resolve_layers
from sparsedino.eval.video_checks import check_sequences, frame_size
from sparsedino.models.layout import token_layout

VIDEO_MEAN = (0.485, 0.456, 0.406)
VIDEO_STD = (0.228, 0.224, 0.225)  # eval_video_segmentation.py's values (0.228, not ImageNet's 0.229)


def prepare_frame(
    rgb: np.ndarray, size: tuple[int, int], patch_size: int, mean=VIDEO_MEAN, std=VIDEO_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h*p, w*p) normalised float: resized to ``size`` (bilinear, no antialiasing,
    as OpenCV's ``resize``), then cropped to whole patches (what the patch convolution sees anyway)."""
    image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)[None]
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=False)
    grid = (size[0] // patch_size * patch_size, size[1] // patch_size * patch_size)
    image = image[0, :, : grid[0], : grid[1]]
    return (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def labels_at_grid(
    mask: np.ndarray, size: tuple[int, int], patch_size: int, num_objects: int
) -> torch.Tensor:
    """First-frame labels: the id mask resized (nearest) to the patch grid, one-hot: (K = N + 1, h, w)."""
    grid = (size[0] // patch_size, size[1] // patch_size)
    small = np.asarray(Image.fromarray(mask).resize((grid[1], grid[0]), Image.NEAREST)).astype(np.int64)
    return F.one_hot(torch.from_numpy(small), num_objects + 1).permute(2, 0, 1).float()


def neighbourhood(height: int, width: int, radius: int) -> torch.Tensor | None:
    """(hw, hw) 0/1 matrix: 1 where two patches are at most ``radius`` apart on both axes (None if 0)."""
    if radius <= 0:
        return None
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
    return near.float()


def propagate_step(
    target: torch.Tensor,
    context: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    topk: int = 5,
    window: torch.Tensor | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Soft labels of one frame from its context frames.

    Args:
        target: (hw, C) L2-normalised patch features of the frame to label.
        context: (n, hw, C) L2-normalised features of the context frames.
        labels: (n, K, hw) soft labels of the context frames.
        temperature: affinity is ``exp(cos / temperature)``.
        topk: keep, per target patch, the context patches whose affinity reaches its k-th largest.
        window: (hw, hw) spatial mask from :func:`neighbourhood`, or None for no restriction.
        chunk: target patches per block (bounds the (n*hw, chunk) affinity matrix).

    Returns:
        (K, hw) soft labels.
    """
    n, hw, dim = context.shape
    keys = context.reshape(n * hw, dim)
    sources = labels.permute(1, 0, 2).reshape(labels.shape[1], n * hw)  # (K, n*hw)
    out = []
    for start in range(0, target.shape[0], chunk):
        cos = keys @ target[start : start + chunk].T  # (n*hw, q)
        if window is not None:  # the same window for every context frame
            cos.view(n, hw, -1).masked_fill_(window[:, start : start + chunk] == 0, float("-inf"))
        # the k-th largest affinity is that of the k-th largest cosine (exp is increasing): select on the
        # cosines, which float32 keeps apart even where exp(cos / T) rounds them to one value
        kth = torch.topk(cos, min(topk, cos.shape[0]), dim=0).values[-1]  # (q,) k-th largest per target
        drop = cos < kth  # ties with the k-th value are kept, as in the reference
        # exp(cos / T) divided by its largest value per target, computed as exp((cos - max) / T) <= 1: the
        # same weights after normalisation, without overflow at small T (exp(1 / 0.005) is inf in float32)
        aff = cos.sub_(cos.amax(0, keepdim=True)).div_(temperature).exp_().masked_fill_(drop, 0.0)
        out.append(sources @ aff.div_(aff.sum(0, keepdim=True)))
    return torch.cat(out, 1)


def propagate_labels(
    features: torch.Tensor,
    first_labels: torch.Tensor,
    temperature: float = 0.1,
    topk: int = 5,
    n_last_frames: int = 7,
    size_mask_neighborhood: int = 12,
    chunk: int = 4096,
) -> list[torch.Tensor]:
    """Carry the first frame's labels through a video.

    Args:
        features: (T, h, w, C) patch features of every frame (normalised here).
        first_labels: (K, h, w) labels of frame 0 (one-hot of its annotation).
        temperature, topk: see :func:`propagate_step`.
        n_last_frames: previous frames kept as context besides the first one.
        size_mask_neighborhood: spatial window radius in patches (0 = whole frame).
        chunk: target patches per affinity block.

    Returns:
        (K, h, w) soft labels of frames 1..T-1.
    """
    frames, height, width, dim = features.shape
    feats = F.normalize(features.reshape(frames, height * width, dim).float(), dim=-1)
    window = neighbourhood(height, width, size_mask_neighborhood)
    if window is not None:
        window = window.to(feats.device)
    first = first_labels.reshape(first_labels.shape[0], -1).to(feats.device)
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []  # (features, soft labels) of previous frames
    results = []
    for t in range(1, frames):
        context = torch.stack([feats[0]] + [f for f, _ in queue])
        labels = torch.stack([first] + [lab for _, lab in queue])
        soft = propagate_step(feats[t], context, labels, temperature, topk, window, chunk)
        queue = [*queue, (feats[t], soft)][-n_last_frames:] if n_last_frames > 0 else []
        results.append(soft.reshape(-1, height, width))
    return results


def labels_to_ids(soft: torch.Tensor, patch_size: int, out_size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) soft labels -> (H, W) uint8 ids: bilinear upsampling by the patch size, per-channel
    min-max normalisation, argmax, nearest resize to the original frame size."""
    up = F.interpolate(soft[None].float(), scale_factor=patch_size, mode="bilinear", align_corners=False)[0]
    low = up.amin((1, 2), keepdim=True)
    span = up.amax((1, 2), keepdim=True) - low
    scale = (up.amax((1, 2), keepdim=True) > 0) & (span > 0)  # DINO: channels with a positive max
    up = torch.where(scale, (up - low) / span.clamp_min(1e-12), up)
    ids = up.argmax(0).to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(ids).resize((out_size[1], out_size[0]), Image.NEAREST))


class BackboneFeatures:
    """Patch tokens of one block of a frozen ViT (DINO: the last block after the final norm).

    Args:
        model: a timm ViT with ``dynamic_img_size``.
        layer: block index (negative from the end).
        norm: apply the final norm.
        device: where to run the model.
    """

    def __init__(self, model: torch.nn.Module, layer: int = -1, norm: bool = True, device="cpu") -> None:
        self.model = model.eval().to(device)
        self.layer = resolve_layers(model, [layer])[0]
        self.norm = norm
        self.device = torch.device(device)
        layout = token_layout(model)
        self.patch_size = layout.patch_size[0]
        # DINO's script values for models trained on ImageNet's statistics, else the model's own
        self.mean, self.std = (VIDEO_MEAN, VIDEO_STD) if layout.imagenet_stats else (layout.mean, layout.std)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
        """(B, 3, H, W) frames -> (B, h, w, C) patch features (``masks`` unused)."""
        _, patches, _ = forward_tokens(self.model, images.to(self.device), [self.layer], self.norm)
        return patches[:, 0].float()


class OracleFeatures:
    """A reference: one-hot of each patch's majority ground-truth object (uses the target's labels).

    Propagation then labels every patch right, so its J&F is what perfect patch matching gives at this
    grid. It is not a strict ceiling: soft features can place object boundaries inside mixed patches
    after the bilinear upsampling, and a backbone can score slightly above it.
    """

    def __init__(self, patch_size: int, max_ids: int = 32) -> None:
        self.patch_size = patch_size
        self.max_ids = max_ids

    def __call__(self, images: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
        size, p = tuple(images.shape[-2:]), self.patch_size
        if int(masks.max()) >= self.max_ids:
            raise ValueError(f"oracle features hold ids below {self.max_ids}, got {int(masks.max())}")
        feats = []
        for mask in masks:
            full = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST)).astype(
                np.int64
            )
            onehot = F.one_hot(torch.from_numpy(full), self.max_ids).float()  # (H, W, ids)
            counts = onehot.reshape(size[0] // p, p, size[1] // p, p, -1).sum((1, 3))
            feats.append(F.one_hot(counts.argmax(-1), self.max_ids).float())
        return torch.stack(feats)


class ConstantFeatures:
    """The same feature for every patch: affinities carry no information, so each patch receives the
    average label of its spatial window in the context frames (the first-frame spatial prior). The
    floor any backbone should beat."""

    def __init__(self, patch_size: int) -> None:
        self.patch_size = patch_size

    def __call__(self, images: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
        size = images.shape[-2:]
        return torch.ones(images.shape[0], size[0] // self.patch_size, size[1] // self.patch_size, 1)


@dataclass
class SequenceResult:
    """Predicted id masks (T, H, W) and the ground truth of one sequence."""

    name: str
    pred: np.ndarray
    gt: np.ndarray


def segment_sequence(dataset: DavisDataset, seq: DavisSequence, extractor, cfg) -> SequenceResult:
    """Read a sequence, extract its features, propagate its first annotation and return id masks."""
    first = dataset.load_frame(seq, 0)
    height, width = first.shape[:2]
    size = frame_size(height, width, cfg.short_side, cfg.size_multiple)
    if min(size) < extractor.patch_size:
        raise ValueError(f"frames of {size} px are smaller than one {extractor.patch_size}-px patch")
    gt = np.stack([dataset.load_mask(seq, t, size=(height, width)) for t in range(len(seq))])
    features = []
    for start in range(0, len(seq), cfg.batch_size):
        images = []
        for t in range(start, min(start + cfg.batch_size, len(seq))):
            rgb = first if t == 0 else dataset.load_frame(seq, t)
            if rgb.shape[:2] != (height, width):
                raise DavisError(
                    f"DAVIS: sequence {seq.name!r}: frame {seq.frames[t]} is {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"the first frame is {width}x{height}"
                )
            stats = getattr(extractor, "mean", VIDEO_MEAN), getattr(extractor, "std", VIDEO_STD)
            images.append(prepare_frame(rgb, size, extractor.patch_size, *stats))
        features.append(extractor(torch.stack(images), gt[start : start + len(images)]).cpu())
    features = torch.cat(features)
    first_labels = labels_at_grid(gt[0], size, extractor.patch_size, seq.num_objects)
    soft = propagate_labels(
        features,
        first_labels,
        temperature=cfg.temperature,
        topk=cfg.topk,
        n_last_frames=cfg.n_last_frames,
        size_mask_neighborhood=cfg.size_mask_neighborhood,
        chunk=cfg.query_chunk,
    )
    pred = [gt[0]] + [labels_to_ids(s, extractor.patch_size, (height, width)) for s in soft]
    return SequenceResult(seq.name, np.stack(pred), gt)


def save_masks(result: SequenceResult, seq: DavisSequence, folder: Path) -> None:
    """Predicted masks as DAVIS result PNGs ``folder/<sequence>/<frame>.png`` (palette, atomic)."""
    palette = voc_palette()
    for t, ids in enumerate(result.pred):
        image = Image.fromarray(ids, "P")
        image.putpalette(palette)
        with atomic_open(folder / seq.name / f"{seq.frame_id(t)}.png", "wb") as handle:
            image.save(handle, format="PNG")


def build_davis(cfg) -> DavisDataset:
    """The DAVIS split named in a :class:`~sparsedino.eval.settings.VideoConfig`, every sequence checked
    (:func:`~sparsedino.eval.video_checks.check_sequences`) before any backbone runs."""
    dataset = DavisDataset(
        cfg.data_root, cfg.split, cfg.resolution, cfg.year, max_sequences=cfg.max_sequences
    )
    check_sequences(dataset)  # every file of every sequence, before any is segmented
    return dataset


def run_video(
    dataset: DavisDataset, extractor, cfg, masks_dir: str | Path | None = None, progress: bool = True
) -> dict:
    """Segment every sequence by label propagation and score it with J and F.

    Args:
        dataset: the DAVIS split (see :func:`build_davis`).
        extractor: :class:`BackboneFeatures` (the protocol) or :class:`OracleFeatures` (the upper bound).
        cfg: a :class:`~sparsedino.eval.settings.VideoConfig`.
        masks_dir: write the predicted masks there in the DAVIS results layout (None = do not write).
        progress: show a progress bar over sequences.

    Returns:
        The benchmark's global scores (``J&F-Mean``, ``J-Mean``, ...), per-sequence and per-object means,
        the protocol settings and the timing.
    """
    start = time.perf_counter()
    per_sequence, frames = {}, 0
    previous_threads = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        for seq in tqdm(dataset.sequences, desc="video", unit="seq", disable=not progress):
            result = segment_sequence(dataset, seq, extractor, cfg)
            if masks_dir is not None:
                save_masks(result, seq, Path(masks_dir))
            per_sequence[seq.name] = evaluate_sequence(result.gt, result.pred, seq.num_objects)
            frames += len(seq)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - start
    fps = round(frames / max(seconds, 1e-9), 2)
    table = summarize(per_sequence)
    return {
        "protocol": "video",
        "dataset": f"DAVIS[{dataset.split}]",
        "data_root": str(dataset.root),
        "features": type(extractor).__name__,
        "patch_size": extractor.patch_size,
        **{key: getattr(cfg, key) for key in SETTING_KEYS},
        "sequences": len(per_sequence),
        **table,
        "per_sequence": {
            name: {
                "J-Mean": float(np.mean([o["J_stats"]["mean"] for o in objs.values()])),
                "F-Mean": float(np.mean([o["F_stats"]["mean"] for o in objs.values()])),
                "objects": {
                    str(k): {"J": o["J_stats"]["mean"], "F": o["F_stats"]["mean"]} for k, o in objs.items()
                },
            }
            for name, objs in per_sequence.items()
        },
        "masks_dir": str(masks_dir) if masks_dir is not None else "",
        "speed": {"frames": frames, "seconds": round(seconds, 3), "frames_per_s": fps},
    }


SETTING_KEYS = ("short_side", "size_multiple", "layer", "norm", "temperature", "topk", "n_last_frames",
                "size_mask_neighborhood")  # fmt: skip

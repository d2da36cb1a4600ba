"""Sliding-window inference of a segmentation probe over full-resolution images (mmseg's "slide" mode).

Windows of ``crop`` x ``crop`` move with ``stride``; the last window of each row/column is shifted back to
end at the image border, so every pixel is covered and windows never hang outside the image. Overlapping
logits are averaged. Windows are zero-padded at the bottom/right to a multiple of the patch size (then
cropped back), so patch features line up with pixels. Averaged logits are upsampled to the mask size,
which may differ from the image size when the image was resized for inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from sparsedino.eval.features import forward_tokens
from sparsedino.eval.miou import ConfusionMatrix
from sparsedino.eval.seg_probe import probe_inputs


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``0, stride, ...`` with the last window ending at ``size``."""
    if size <= crop:
        return [0]
    count = (size - crop + stride - 1) // stride + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


@torch.inference_mode()
def window_logits(
    model: nn.Module, head: nn.Module, window: torch.Tensor, layers: Sequence[int], norm: bool, with_cls: bool
) -> torch.Tensor:
    """Probe logits (B, K, H, W) for image windows (B, 3, H, W) at pixel resolution."""
    patch = model.patch_embed.patch_size
    height, width = window.shape[-2:]
    pad_h, pad_w = (-height) % patch[0], (-width) % patch[1]
    padded = F.pad(window, (0, pad_w, 0, pad_h))
    cls, patches, _ = forward_tokens(model, padded, layers, norm)
    logits = head(probe_inputs(cls, patches, with_cls).permute(0, 3, 1, 2).float())  # (B, K, h, w)
    logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :height, :width]


@torch.inference_mode()
def sliding_window_logits(
    model: nn.Module,
    head: nn.Module,
    image: torch.Tensor,
    layers: Sequence[int],
    norm: bool,
    with_cls: bool,
    num_classes: int,
    crop: int,
    stride: int,
) -> torch.Tensor:
    """Averaged logits (K, H, W) of one image (3, H, W) covered by ``crop`` windows moved by ``stride``."""
    _, height, width = image.shape
    total = image.new_zeros(num_classes, height, width)
    count = image.new_zeros(1, height, width)
    for top in window_starts(height, crop, stride):
        for left in window_starts(width, crop, stride):
            window = image[:, top : top + crop, left : left + crop]
            total[:, top : top + crop, left : left + crop] += window_logits(
                model, head, window[None], layers, norm, with_cls
            )[0]
            count[:, top : top + crop, left : left + crop] += 1
    return total / count


@torch.inference_mode()
def sliding_window_miou(
    model: nn.Module,
    head: nn.Module,
    dataset: Dataset,
    layers: Sequence[int],
    norm: bool,
    with_cls: bool,
    num_classes: int,
    crop: int,
    stride: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    batch_size: int = 32,
) -> dict:
    """Confusion-matrix metrics of the probe over a whole dataset of ``(image, mask)`` at full resolution.

    Images no larger than the crop are a single window: consecutive ones of equal size are batched
    (``batch_size``), which is what makes small-image datasets (the embedded one) fast to evaluate.
    """
    head.eval()
    cm = ConfusionMatrix(num_classes)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def score(logits: torch.Tensor, mask: torch.Tensor) -> None:
        if logits.shape[-2:] != mask.shape[-2:]:  # image resized for inference: back to the label grid
            logits = F.interpolate(logits[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[
                0
            ]
        cm.update(logits.argmax(0).cpu(), mask)

    def flush() -> None:
        if pending:
            images = torch.stack([image for image, _ in pending]).to(device)
            for logits, (_, mask) in zip(window_logits(model, head, images, layers, norm, with_cls), pending):
                score(logits, mask)
            pending.clear()

    for index in tqdm(range(len(dataset)), desc="seg eval", unit="img", disable=not progress, leave=False):
        image, mask = dataset[index]
        if max(image.shape[-2:]) > crop:
            score(
                sliding_window_logits(
                    model, head, image.to(device), layers, norm, with_cls, num_classes, crop, stride
                ),
                mask,
            )
            continue
        if pending and (pending[0][0].shape != image.shape or len(pending) >= batch_size):
            flush()
        pending.append((image, mask))
    flush()
    return cm.compute()

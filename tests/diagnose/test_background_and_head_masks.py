"""Issue 12.3: pure-background patches exclude VOC's 255 band; [CLS]-attention IoU per head, as DINO draws it.

Reference for the per-head mask: facebookresearch/dino, visualize_attention.py: for each head, the
[CLS] -> patch attentions are sorted ascending, divided by their sum, cumulated, and the patches with
``cumval > 1 - threshold`` are kept (threshold 0.6: the patches holding 60 % of that head's mass).
"""

from __future__ import annotations

import torch

from sparsedino.attention import collect_attention
from sparsedino.config import load_config
from sparsedino.diagnose.masks import patch_foreground
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.diagnose.settings import DiagnoseConfig

from .conftest import SquaresDataset, make_vit

GRID, PATCH = 4, 8


class BandedSquares(SquaresDataset):
    """The squares dataset with VOC's convention: a 2-px 255 band drawn around every object."""

    def __init__(self, n: int = 24) -> None:
        super().__init__(n)
        for _, mask in self.items:
            obj = mask > 0
            grown = torch.nn.functional.max_pool2d(obj[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0
            mask[grown & ~obj] = 255


def _config(*extra: str) -> DiagnoseConfig:
    base = ["img_size=32", "n_images=24", "batch_size=8", "dense_probe.enabled=false"]
    return load_config(DiagnoseConfig, None, [*base, "label_probe_iterations=5", *extra])


def test_label_probe_background_patches_hold_no_object_and_no_255_pixel():
    data = BandedSquares()
    result = run_diagnostics(make_vit(), data, [-1], _config("patches_per_image=64"), progress=False)
    masks = torch.stack([m for _, m in data.items])  # (n, 32, 32)
    patches = masks.reshape(-1, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4).flatten(3)  # (n, 4, 4, 64)
    pure = (patches == 0).all(-1).sum().item()  # every patch is sampled: 64 per image > 16 patches
    objects = (patches > 0) & (patches != 255)
    band_only = (~objects.any(-1) & (patches == 0).any(-1) & (patches == 255).any(-1)).sum().item()
    assert band_only > 0  # background patches touching a band exist: the old rule sampled them
    block = result["blocks"][str(len(make_vit().blocks) - 1)]
    assert block["diffusion.n_train_bg"] + block["diffusion.n_test_bg"] == pure


def _dino_head_masks(cls_attn: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """DINO's visualize_attention thresholding of (B, heads, M) [CLS] -> patch attentions."""
    val, idx = torch.sort(cls_attn, dim=-1)
    val = val / val.sum(-1, keepdim=True)
    keep_sorted = torch.cumsum(val, dim=-1) > (1 - threshold)
    return torch.gather(keep_sorted, -1, torch.argsort(idx, dim=-1))


def test_cls_attention_iou_is_reported_per_head_as_dino_thresholds_each_head():
    data, model = BandedSquares(), make_vit()
    cfg = _config()
    block = run_diagnostics(model, data, [-1], cfg, progress=False)["blocks"][str(len(model.blocks) - 1)]
    images = torch.stack([i for i, _ in data.items])
    masks = torch.stack([m for _, m in data.items])
    with torch.no_grad(), collect_attention(model) as maps:
        model(images)
    attn = maps[len(model.blocks) - 1][:, :, 0, 1:]  # (n, heads, 16) [CLS] -> patches
    fg, valid, _ = patch_foreground(masks, (GRID, GRID), cfg.fg_threshold)
    fg, valid = fg.flatten(1)[:, None], valid.flatten(1)[:, None]  # (n, 1, 16)
    kept = _dino_head_masks(attn)
    inter, union = (kept & fg & valid).sum(-1).float(), ((kept | fg) & valid).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.nan)  # (n, heads)
    expected = torch.nanmean(iou, dim=0)
    per_head = torch.tensor(block["align.cls_attn_iou_per_head"], dtype=expected.dtype)
    torch.testing.assert_close(per_head, expected, atol=1e-6, rtol=0)
    assert abs(block["align.cls_attn_iou_heads"] - float(expected.mean())) < 1e-6
    assert block["align.cls_attn_iou"] is not None  # the head-averaged map's IoU, kept under its own key

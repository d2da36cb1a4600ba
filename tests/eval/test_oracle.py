"""The ceiling of the seg probe: ground-truth patch features through the same probe (eval/oracle.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from sparsedino.eval.oracle import patch_label_histograms, run_oracle_seg_probe
from sparsedino.eval.settings import SegConfig


def test_patch_histograms_by_hand():
    mask = torch.tensor([[0, 0, 1, 1],
                         [0, 255, 1, 2],
                         [255, 255, 2, 2],
                         [255, 255, 2, 2]])  # fmt: skip
    hist = patch_label_histograms(mask[None], patch=2, num_classes=3)
    assert hist.shape == (1, 2, 2, 3)
    assert torch.allclose(hist[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # 3 labelled pixels, all 0
    assert torch.allclose(hist[0, 0, 1], torch.tensor([0.0, 0.75, 0.25]))
    assert torch.equal(hist[0, 1, 0], torch.zeros(3))  # only ignore pixels
    assert torch.allclose(hist[0, 1, 1], torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="multiple of the patch"):
        patch_label_histograms(torch.zeros(1, 5, 4, dtype=torch.long), 2, 3)


class GridSquares:
    """A reader-like dataset: 32x32 masks with one class square on the 8-px grid (``load_raw`` + items)."""

    num_classes = 4
    class_names = ("background", "a", "b", "c")

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.masks = []
        for i in range(n):
            mask = np.zeros((32, 32), np.uint8)
            y, x = rng.integers(0, 3, 2) * 8
            mask[y : y + 16, x : x + 16] = i % 3 + 1
            self.masks.append(mask)
        self.transform = None

    def __len__(self) -> int:
        return len(self.masks)

    def load_raw(self, index: int):
        return Image.new("RGB", (32, 32)), self.masks[index]

    def __getitem__(self, index: int):
        image, mask = self.load_raw(index)
        tensor = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
        return self.transform(tensor, torch.from_numpy(mask)) if self.transform else (tensor, mask)


def test_oracle_reaches_the_ceiling_on_patch_aligned_masks():
    cfg = SegConfig(crop_size=32, eval_short_side=32, iters=300, batch_size=8, lr=5e-2, warmup_iters=10)
    result = run_oracle_seg_probe(GridSquares(24, 0), GridSquares(12, 1), patch_size=8, cfg=cfg)
    assert result["protocol"] == "oracle_linear_seg"
    assert result["miou"] > 0.97  # only bilinear upsampling at square borders can cost anything
    assert result["num_train_images"] == 24 and result["num_val_images"] == 12


def test_oracle_on_the_embedded_dataset_is_far_above_chance(synth_root):
    from sparsedino.data.segmentation import build_seg_dataset

    cfg = SegConfig(crop_size=32, eval_short_side=32, iters=200, batch_size=16, lr=1e-2, warmup_iters=10)
    train = build_seg_dataset("voc", synth_root, "train")
    val = build_seg_dataset("voc", synth_root, "val")
    result = run_oracle_seg_probe(train, val, patch_size=8, cfg=cfg)
    assert result["miou"] > 0.5 and set(result["per_class_iou"]) == set(train.class_names)

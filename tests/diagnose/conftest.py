"""Fixtures of the diagnostics tests: a tiny ViT and a tiny in-memory segmentation dataset whose
background carries no label information by construction."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from sparsedino.attention import sparsify

COLOURS = torch.tensor([[1.5, 1.5, 1.5], [2.0, -1.5, -1.5], [-1.5, 2.0, -1.5], [-1.5, -1.5, 2.0]])


class SquaresDataset(torch.utils.data.Dataset):
    """32x32 images: constant light-grey background, one 16x16 square of a class colour on the 8-px grid.

    The square never touches the top-left 8x8 patch, so that patch is background in every image.
    Items are ``(image (3, 32, 32), mask (32, 32))`` like the project's segmentation readers.
    """

    num_classes = 4
    class_names = ("background", "red", "green", "blue")
    ignore_index = 255

    def __init__(self, n: int = 48, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            label = i % 3 + 1
            y, x = (int(v) * 8 for v in torch.randint(0, 3, (2,), generator=g))
            if y == 0 and x == 0:
                x = 8
            image = COLOURS[0][:, None, None].repeat(1, 32, 32)
            mask = torch.zeros(32, 32, dtype=torch.long)
            image[:, y : y + 16, x : x + 16] = COLOURS[label][:, None, None]
            mask[y : y + 16, x : x + 16] = label
            self.items.append((image, mask))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def make_vit(normalizer: str = "entmax15", depth: int = 2, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=0,
                              dynamic_img_size=True)  # fmt: skip
    return sparsify(model, normalizer=normalizer).eval()


@pytest.fixture
def squares() -> SquaresDataset:
    return SquaresDataset()

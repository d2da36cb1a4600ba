"""Issue 12.10 (data): 16-bit images keep their intensities, decompression bombs are bad images."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from sparsedino.data.imagenet import ImageNetFolder
from sparsedino.data.voc import VOCSegmentation


def _png16(path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint16)).save(path, format="PNG")  # 16-bit grey


@pytest.mark.parametrize("value", [0, 32768, 65535])
def test_16_bit_png_keeps_its_intensity_in_every_reader(tmp_path, value):
    _png16(tmp_path / "train" / "a" / "img.png", value)
    assert Image.open(tmp_path / "train" / "a" / "img.png").mode.startswith("I")
    rgb = np.asarray(ImageNetFolder(tmp_path, "train").load_image(0))
    assert rgb.shape == (8, 8, 3) and np.all(rgb == round(value / 257))  # 16 -> 8 bits, not clipped to 255
    voc = tmp_path / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("x\n")
    _png16(voc / "JPEGImages" / "x.jpg", value)  # the reader decodes by content, whatever the suffix
    (voc / "SegmentationClass").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(voc / "SegmentationClass" / "x.png")
    image, _ = VOCSegmentation(voc, "train").load_raw(0)
    assert np.all(np.asarray(image) == round(value / 257))


def test_a_decompression_bomb_is_skipped_like_any_unreadable_image(tmp_path, monkeypatch):
    for i in range(3):
        path = tmp_path / "train" / "a" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        side = 64 if i == 1 else 8
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x limit: Pillow refuses it
    data = ImageNetFolder(tmp_path, "train", on_bad_image="skip")
    images = [data[i][0] for i in range(3)]
    assert all(img.size == (8, 8) for img in images)
    assert data.num_skipped == 1 and data.skipped_files[0].endswith("1.png")

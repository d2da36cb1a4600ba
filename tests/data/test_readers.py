"""VOC / ADE20K / Cityscapes readers on hand-built trees in the official layouts, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsedino.data.ade20k import ADE20KSegmentation
from sparsedino.data.cityscapes import CityscapesSegmentation
from sparsedino.data.segmentation import build_seg_dataset
from sparsedino.data.voc import VOCSegmentation


def test_voc_reads_palette_masks(voc_root):
    ds = VOCSegmentation(voc_root, "train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.ignore_index == 255
    image, mask = ds[0]
    assert image.shape == (3, 20, 30) and mask.shape == (20, 30) and mask.dtype == torch.int64
    assert mask[10, 10] == 15 and mask[4, 10] == 255 and mask[0, 0] == 0
    assert abs(float(image.mean())) < 1.5  # normalised, not 0-255


def test_voc_train_aug_uses_sbd_masks(voc_root):
    ds = build_seg_dataset("voc", voc_root, "train_aug")
    assert len(ds) == 3 and all(m.parent.name == "SegmentationClassAug" for _, m in ds.pairs)
    assert ds[2][1][10, 10] == 15


def test_ade20k_reduces_zero_label(ade_root):
    ds = ADE20KSegmentation(ade_root, "train")
    assert ds.num_classes == 150 and len(ds.class_names) == 150
    _, mask = ds[0]
    flat = mask.flatten()
    assert flat[0] == 255  # raw 0 -> ignore
    assert flat[1] == 0 and flat[150] == 149  # raw k -> k - 1
    assert len(build_seg_dataset("ade20k", ade_root / "ADEChallengeData2016", "val")) == 1


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root):
    ds = CityscapesSegmentation(cityscapes_root, "val")
    assert ds.num_classes == 19
    _, mask = ds[0]
    assert mask[0, 0] == 0  # road (id 7)
    assert mask[0, 1] == 255  # unlabeled (id 0)
    row = mask[1].tolist()  # ids 18..33
    expected = {18: 255, 19: 6, 20: 7, 21: 8, 26: 13, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18}
    for label_id, train_id in expected.items():
        assert row[label_id - 18] == train_id, label_id


def test_missing_files_are_named(voc_root):
    (voc_root / "VOC2012/JPEGImages/2007_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2007_000002\.jpg"):
        VOCSegmentation(voc_root, "train")
    with pytest.raises(FileNotFoundError, match="available splits"):
        VOCSegmentation(voc_root, "test")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        VOCSegmentation(voc_root / "nowhere", "train")


def test_size_mismatch_is_an_error(voc_root, writers):
    writers.save_mask(
        voc_root / "VOC2012/SegmentationClass/2007_000003.png", np.zeros((21, 30)), palette=True
    )
    ds = VOCSegmentation(voc_root, "val")
    with pytest.raises(ValueError, match=r"30x20 but its mask .*2007_000003.png is 30x21"):
        ds[0]


def test_bad_label_values_are_named(voc_root, ade_root, writers):
    mask = np.zeros((20, 30))
    mask[0, 0], mask[0, 1] = 21, 100
    writers.save_mask(voc_root / "VOC2012/SegmentationClass/2007_000003.png", mask, palette=True)
    with pytest.raises(ValueError, match=r"2007_000003.png has label values \[21, 100\].*0-20, 255"):
        VOCSegmentation(voc_root, "val")[0]
    path = ade_root / "ADEChallengeData2016/annotations/training/ADE_training_00000001.png"
    writers.save_mask(path, np.full((16, 16), 151))
    with pytest.raises(ValueError, match=r"\[151\]"):
        ADE20KSegmentation(ade_root, "train")[0]


def test_colour_mask_is_rejected(cityscapes_root, writers):
    path = cityscapes_root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    writers.save_rgb(path, np.zeros((8, 16, 3)))
    with pytest.raises(ValueError, match="mode 'RGB'"):
        CityscapesSegmentation(cityscapes_root, "train")[0]


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown segmentation dataset 'coco'"):
        build_seg_dataset("coco", ".", "train")

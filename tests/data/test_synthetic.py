"""The embedded dataset: deterministic per seed, official layouts, masks as documented, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import sparsedino.data.synthetic as synthetic
from sparsedino.data.command import main as data_main
from sparsedino.data.imagenet import ImageNetFolder
from sparsedino.data.segmentation import build_seg_dataset
from sparsedino.data.synthetic import class_pairs, make_scene, scene_rng, write_synthetic_dataset


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_synthetic_dataset(tmp_path / "a", n_train=6, n_val=3, size=32, seed=7, num_classes=4)
    write_synthetic_dataset(tmp_path / "b", n_train=6, n_val=3, size=32, seed=7, num_classes=4)
    write_synthetic_dataset(tmp_path / "c", n_train=6, n_val=3, size=32, seed=8, num_classes=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    masks = [
        np.asarray(Image.open(tmp_path / d / "VOC2012/SegmentationClass/synth_train_000000.png"))
        for d in "ac"
    ]
    assert not np.array_equal(*masks)


def test_layout_is_readable_by_the_readers(synth_root):
    meta = json.loads((synth_root / "meta.json").read_text())
    voc = build_seg_dataset("voc", synth_root, "train")
    assert len(voc) == 40 and voc.num_classes == 5 and voc.class_names[0] == "background"
    image, mask = voc[0]
    assert image.shape == (3, 32, 32) and image.dtype.is_floating_point
    assert mask.shape == (32, 32)
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    assert Image.open(voc.pairs[0][1]).mode == "P"  # palette PNG like VOC's SegmentationClass
    assert voc.pairs[0][0].suffix == ".jpg"
    folder = ImageNetFolder(synth_root / "imagenet", "val")
    assert folder.classes == meta["classes"]
    assert np.bincount(folder.targets, minlength=4).tolist() == meta["images_per_class"]["val"]


def test_scene_masks_labels_and_ignore_band():
    for index in range(20):
        scene = make_scene(scene_rng(0, "train", index), size=48, num_classes=6)
        values = set(np.unique(scene.mask).tolist())
        assert values <= set(range(7)) | {255}
        assert 0 in values and 255 in values  # background and a border band around objects
        assert scene.label + 1 in values  # the image-level label is an object that is present
        assert scene.image.shape == (48, 48, 3) and scene.image.dtype == np.uint8
        # the ignore band separates labels: no two 4-neighbours carry different non-ignore labels
        m = scene.mask
        for a, b in ((m[1:], m[:-1]), (m[:, 1:], m[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()


def test_classes_need_shape_and_texture():
    pairs = class_pairs(10)
    assert len(set(pairs)) == 10
    shapes = [s for s, _ in pairs]
    textures = [t for _, t in pairs]
    assert any(shapes.count(s) > 1 for s in shapes) and any(textures.count(t) > 1 for t in textures)
    with pytest.raises(ValueError, match="num_classes"):
        class_pairs(25)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.make_scene

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "out", n_train=5, n_val=2, size=32)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_and_refuses_to_clobber(tmp_path, capsys):
    out = tmp_path / "synth"
    assert data_main(["synth", "--out", str(out), "--n-train", "3", "--n-val", "2", "--size", "32"]) == 0
    assert len(list((out / "VOC2012/JPEGImages").glob("*.jpg"))) == 5
    assert (out / "VOC2012/ImageSets/Segmentation/val.txt").read_text().split() == [
        "synth_val_000000",
        "synth_val_000001",
    ]
    assert data_main(["synth", "--out", str(out), "--n-train", "3", "--n-val", "2"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert data_main(["nope"]) == 2


def test_difficulty_knobs():
    for index in range(10):
        scene = make_scene(scene_rng(1, "val", index), size=32, num_classes=4, max_objects=1, clutter=0.0)
        objects = set(np.unique(scene.mask).tolist()) - {0, 255}
        assert objects == {scene.label + 1}  # a single object, and it carries the image label
    with pytest.raises(ValueError, match="max_objects"):
        write_synthetic_dataset("unused", n_train=1, n_val=1, max_objects=0)


def test_class_colour_mode_ties_colour_to_class_and_keeps_clutter_grey():
    palette = synthetic.class_colours(6)
    assert len({tuple(np.round(c).astype(int)) for pair in palette for c in pair}) == 12  # all distinct
    for index in range(12):
        scene = make_scene(scene_rng(2, "train", index), size=48, num_classes=6, colours="class")
        image = scene.image.astype(np.float32)
        for label in set(np.unique(scene.mask).tolist()) - {0, 255}:
            pixels = image[scene.mask == label]
            # every object pixel is one of its class's two colours, up to jitter (+ rare overlap borders)
            dist = np.linalg.norm(pixels[:, None, :] - palette[label - 1][None], axis=-1).min(axis=1)
            assert np.median(dist) < 40, (index, label)
        background = image[scene.mask == 0]
        assert np.median(background.std(axis=1)) < 12  # grey clutter: channels agree up to pixel noise
    random_scene = make_scene(scene_rng(2, "train", 0), size=48, num_classes=6)
    assert np.median(random_scene.image[random_scene.mask == 0].astype(np.float32).std(axis=1)) > 12


def test_colour_mode_is_validated_and_recorded(tmp_path):
    with pytest.raises(ValueError, match="colours"):
        make_scene(scene_rng(0, "train", 0), colours="rainbow")
    with pytest.raises(ValueError, match="colours"):
        write_synthetic_dataset(tmp_path / "x", n_train=1, n_val=1, colours="rainbow")
    assert not (tmp_path / "x").exists()
    out = tmp_path / "cls"
    assert (
        data_main(["synth", "--out", str(out), "--n-train", "2", "--n-val", "1", "--colours", "class"]) == 0
    )
    assert json.loads((out / "meta.json").read_text())["colours"] == "class"


@pytest.mark.parametrize("colours", ["shared", "marker"])
def test_new_colour_modes_are_deterministic_and_keep_the_background_class_free(colours):
    for index in range(12):
        a = make_scene(scene_rng(3, "train", index), size=48, num_classes=6, colours=colours, colour_groups=3)
        b = make_scene(scene_rng(3, "train", index), size=48, num_classes=6, colours=colours, colour_groups=3)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert a.label + 1 in set(np.unique(a.mask).tolist())
        background = a.image[a.mask == 0].astype(np.float32)
        assert np.median(background.std(axis=1)) < 12  # grey clutter: no hue, so no class information


def test_shared_colours_tie_a_colour_pair_to_a_group_of_classes():
    palette = synthetic.class_colours(3)  # 6 classes in 3 colour groups: k and k + 3 share a pair
    same = 0
    for index in range(30):
        scene = make_scene(scene_rng(4, "train", index), size=48, num_classes=6, colours="shared",
                           colour_groups=3, same_group=1.0, max_objects=3)  # fmt: skip
        image = scene.image.astype(np.float32)
        labels = set(np.unique(scene.mask).tolist()) - {0, 255}
        for label in labels:
            pixels = image[scene.mask == label]
            dist = np.linalg.norm(pixels[:, None, :] - palette[(label - 1) % 3][None], axis=-1).min(axis=1)
            assert np.median(dist) < 40, (index, label)
        same += len({(label - 1) % 3 for label in labels}) == 1
    assert same == 30  # same_group=1: every image's objects come from one colour group


def test_marker_mode_puts_the_class_colour_only_near_the_object_centre():
    palette = synthetic.class_colours(6)
    shares, centre = [], []
    for index in range(20):
        scene = make_scene(scene_rng(5, "train", index), size=64, num_classes=6, colours="marker",
                           max_objects=1, clutter=0.0, marker_share=0.3)  # fmt: skip
        label = scene.label
        ys, xs = np.nonzero(scene.mask == label + 1)
        pixels = scene.image[ys, xs].astype(np.float32)
        near = np.linalg.norm(pixels[:, None, :] - palette[label][None], axis=-1).min(axis=1) < 40
        shares.append(near.mean())
        # class-coloured pixels sit closer to the object's centroid than the object's pixels on average
        dist = np.hypot(ys - ys.mean(), xs - xs.mean())
        centre.append(dist[near].mean() < dist.mean())
    # about marker_share of each object (random body colours rarely fall near a class colour)
    assert 0.2 < np.median(shares) < 0.45
    assert np.mean(centre) > 0.8

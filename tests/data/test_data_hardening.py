"""Issue 24, data: 32-bit images scaled as their type says (or refused), class folders that loop back or
cannot be read are errors, and the dataset writers refuse to replace the working folder."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from sparsedino.cli import main
from sparsedino.data.imagenet import ImageNetFolder
from sparsedino.data.images import BadImageError, load_rgb
from sparsedino.errors import DataError


def _tiff(path, array, mode):
    Image.fromarray(array, mode).save(path)
    assert Image.open(path).mode == mode
    return path


def test_a_float_tiff_in_0_1_is_scaled_to_8_bits_not_black(tmp_path):
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    rgb = np.asarray(load_rgb(_tiff(tmp_path / "f.tif", values, "F")))
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values * 255).astype(np.uint8))
    assert rgb.max() == 255  # Pillow's own convert("RGB") gives 0 and 1: a black image


def test_a_32_bit_integer_tiff_is_scaled_by_its_range(tmp_path):
    values = np.linspace(0, 2**31 - 1, 64).astype(np.int32).reshape(8, 8)  # Pillow writes it signed
    rgb = np.asarray(load_rgb(_tiff(tmp_path / "i.tif", values, "I")))
    np.testing.assert_array_equal(rgb[..., 1], np.rint(values / (2**31 - 1) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("values", "mode", "message"),
    [
        (np.full((8, 8), 3.5, np.float32), "F", r"values in \[3.5, 3.5\]"),
        (np.full((8, 8), np.nan, np.float32), "F", "only \\[0, 1\\] has a known scale"),
        (np.full((8, 8), -7, np.int32), "I", "negative values"),
        (np.arange(64, dtype=np.int32).reshape(8, 8) * 4, "I", "reach only 252"),  # 8-bit values widened
    ],
)
def test_32_bit_images_without_a_known_scale_are_refused_naming_the_file(tmp_path, values, mode, message):
    path = _tiff(tmp_path / "odd.tif", values, mode)
    with pytest.raises(BadImageError, match=rf"odd\.tif.*{message}"):
        load_rgb(path)


def _classes(root, names=("a", "b")):
    for name in names:
        (root / "train" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / name / "0.png")
    return root


@pytest.mark.parametrize("target", ["..", ".", "../.."])
def test_a_class_folder_linked_to_a_parent_is_refused(tmp_path, target):
    root = _classes(tmp_path / "data")
    os.symlink(target, root / "train" / "loop")
    with pytest.raises(DataError, match=r"train/loop' leads to .*link loop"):
        ImageNetFolder(root, "train")


def test_class_folders_that_are_the_same_folder_are_refused_but_links_elsewhere_work(tmp_path):
    root = _classes(tmp_path / "data")
    elsewhere = _classes(tmp_path / "other", names=("c",)) / "train" / "c"
    os.symlink(elsewhere, root / "train" / "c")  # e.g. a subset of ImageNet linked class by class
    assert ImageNetFolder(root, "train").classes == ["a", "b", "c"]
    os.symlink(root / "train" / "a", root / "train" / "a_again")
    with pytest.raises(DataError, match=r"'a' and 'a_again' .* same folder or nested"):
        ImageNetFolder(root, "train")


def test_an_unreadable_class_folder_is_an_error_not_a_dropped_class(tmp_path, monkeypatch):
    root = _classes(tmp_path / "data")
    locked = str(root / "train" / "b")
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path) == locked:  # what chmod 000 gives a user who is not root
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read folder '.*train/b' \(Permission denied\)"):
        ImageNetFolder(root, "train")


@pytest.mark.parametrize("command", ["synth", "synth-video"])
def test_writers_refuse_to_replace_the_working_folder(command, tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    assert main(["data", command, "--out", ".", "--overwrite", "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err and f"sparsedino data {command}: error: --out '.' is the working folder" in err
    )
    assert os.getcwd() == str(tmp_path) and (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--size", "100000"], "--size must be an integer in [16, 4096], got 100000"),
        (["--max-objects", "50"], "--max-objects must be an integer in [2, 8], got 50"),
        (["--clutter", "inf"], "--clutter must be a finite number in [0, 100], got inf"),
        (["--seed", "-1"], "--seed must be an integer in [0, "),
    ],
)
def test_synth_video_options_that_cannot_work_are_one_line_errors(extra, named, tmp_path, capsys):
    assert main(["data", "synth-video", "--out", str(tmp_path / "v"), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"sparsedino data synth-video: error: {named}" in err
    assert not (tmp_path / "v").exists()


def test_synth_video_refuses_a_file_or_an_unwritable_out(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert main(["data", "synth-video", "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a read-only folder gives non-root
    assert main(["data", "synth-video", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is not writable" in err and not (tmp_path / "new").exists()

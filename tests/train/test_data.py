"""ImageNetFolder, the multi-crop augmentation and the resumable sampler."""

from __future__ import annotations

import pytest
import torch

from sparsedino.data.imagenet import BadImageError, ImageNetFolder
from sparsedino.data.multicrop import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation
from sparsedino.train.data import MultiCropDataset, ResumableDistributedSampler


def test_folder_lists_sorted_classes_and_samples(image_root):
    ds = ImageNetFolder(image_root, "train")
    assert ds.classes == ["class0", "class1", "class2", "class3"]
    assert len(ds) == 32 and len(ds.samples) == 32
    image, label = ds[9]
    assert image.mode == "RGB" and label == 1


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageNetFolder(tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageNetFolder(tmp_path)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageNetFolder(tmp_path)
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageNetFolder(tmp_path, on_bad_image="ignore")


def test_bad_image_errors_or_is_skipped_and_counted(tmp_path, make_images):
    root = make_images(tmp_path, n_classes=1, per_class=2)
    (root / "train" / "class0" / "0_bad.png").write_bytes(b"\x89PNG garbage")
    strict = ImageNetFolder(root)
    bad_index = next(i for i, (p, _) in enumerate(strict.samples) if p.endswith("0_bad.png"))
    with pytest.raises(BadImageError, match=r"0_bad\.png"):
        strict[bad_index]
    lenient = ImageNetFolder(root, on_bad_image="skip")
    image, _ = lenient[bad_index]
    assert image.size == (40, 40) and lenient.num_skipped == 1
    assert lenient.skipped_files[0].endswith("0_bad.png")


def test_multicrop_shapes_and_seeded_reproducibility(image_root):
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_local=3)
    ds = MultiCropDataset(ImageNetFolder(image_root), aug, seed=5)
    crops, skipped = ds[3]
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3 and skipped == 0
    rng_before = torch.get_rng_state()
    again, _ = ds[3]
    assert torch.equal(torch.get_rng_state(), rng_before)  # augmentation leaves the global RNG alone
    assert all(torch.equal(a, b) for a, b in zip(crops, again))
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0][0], crops[0])  # a new epoch gives new crops


def test_multicrop_rejects_bad_scales():
    with pytest.raises(ValueError, match="local_scale"):
        MultiCropAugmentation(local_scale=(0.5, 0.1))


def test_photometric_knobs_switch_the_augmentations_off_and_on():
    from PIL import Image

    red = Image.new("RGB", (40, 40), (200, 30, 30))
    expected = (torch.tensor([200, 30, 30]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    gentle = MultiCropAugmentation(
        global_size=16, local_size=8, n_local=2, color_jitter=0.0, grayscale_p=0.0, solarize_p=0.0
    )
    dino = MultiCropAugmentation(global_size=16, local_size=8, n_local=2)
    torch.manual_seed(0)
    for _ in range(5):  # a uniform image survives crops, flips and blur unchanged when jitter is off
        for crop in gentle(red):
            assert torch.allclose(crop, expected[:, None, None].expand_as(crop), atol=1e-2)
    torch.manual_seed(0)
    changed = [not torch.allclose(c, expected[:, None, None].expand_as(c), atol=1e-2) for c in dino(red)]
    assert sum(changed) >= 2  # DINO's defaults jitter / gray / solarise most crops
    for kwargs, name in (
        ({"grayscale_p": 1.5}, "grayscale_p"),
        ({"solarize_p": -0.1}, "solarize_p"),
        ({"color_jitter": -1.0}, "color_jitter"),
        ({"blur_radius": (2.0, 1.0)}, "blur_radius"),
    ):
        with pytest.raises(ValueError, match=name):
            MultiCropAugmentation(**kwargs)


def test_sampler_is_rank_disjoint_and_resumes_mid_epoch(image_root):
    ds = ImageNetFolder(image_root)
    ranks = [ResumableDistributedSampler(ds, 2, r, seed=0) for r in range(2)]
    for s in ranks:
        s.set_position(epoch=3)
    full = [list(s) for s in ranks]
    assert not set(full[0]) & set(full[1]) and len(full[0]) == 16
    ranks[0].set_position(epoch=3, start_index=8)
    assert list(ranks[0]) == full[0][8:] and len(ranks[0]) == 8
    single = ResumableDistributedSampler(ds, 1, 0, seed=0)
    single.set_position(epoch=3)
    # the union of the two ranks' first batches of 4 is the single process's first batch of 8
    assert set(full[0][:4]) | set(full[1][:4]) == set(list(single)[:8])


def test_crops_do_not_depend_on_worker_count(image_root):
    import pickle

    from torch.utils.data import DataLoader

    folder = ImageNetFolder(image_root)
    pickle.loads(pickle.dumps(folder))  # spawn-started workers need a picklable dataset
    ds = MultiCropDataset(folder, MultiCropAugmentation(global_size=32, local_size=16, n_local=1), seed=1)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, num_workers=workers, generator=torch.Generator().manual_seed(0))
        batches.append(next(iter(loader))[0])
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_sample_crops_leave_the_global_rng_alone(image_root):
    # the per-sample seed goes to a forked CPU stream: drop path etc. keep their own sequence
    ds = MultiCropDataset(
        ImageNetFolder(image_root), MultiCropAugmentation(global_size=32, local_size=16), seed=1
    )
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = ds[3][0]
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(first, ds[3][0]))


def test_training_threads_leave_cores_to_loader_workers_and_are_restored():
    import os

    from sparsedino.train.data import main_process_threads

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with main_process_threads(torch.device("cpu"), workers=1):
        assert torch.get_num_threads() == max(1, cores - 1)
    assert torch.get_num_threads() == before
    with main_process_threads(torch.device("cpu"), workers=0):  # no workers: nothing changes
        assert torch.get_num_threads() == before
    with main_process_threads(torch.device("meta"), workers=2):  # off the CPU: nothing changes
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), main_process_threads(torch.device("cpu"), workers=64):
        assert torch.get_num_threads() == 1  # never below one thread
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == before  # restored after an error too

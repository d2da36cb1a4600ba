"""Training data: multi-crop dataset with per-sample seeds and a resumable distributed sampler.

Reproducibility for resume and for different process counts rests on two choices:
- the augmentation of sample ``i`` in epoch ``e`` is seeded from ``(seed, e, i)`` alone, so it does not
  depend on the rank, the worker or how many batches came before;
- the sampler's permutation depends on ``(seed, epoch)`` only and it can start at any position, so a
  mid-epoch resume skips consumed batches without loading them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sparsedino.data.imagenet import ImageNetFolder
from sparsedino.data.multicrop import MultiCropAugmentation
from sparsedino.train.settings import TrainConfig

_MIX = 1_000_003


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from (seed, epoch, sample index)."""
    return ((seed * _MIX + epoch) * _MIX + index) % (2**63 - 1)


class MultiCropDataset(Dataset):
    """Wrap an :class:`ImageNetFolder`: item ``i`` -> ``(list of crops, number of skipped files)``."""

    def __init__(self, folder: ImageNetFolder, augment: MultiCropAugmentation, seed: int) -> None:
        self.folder, self.augment, self.seed, self.epoch = folder, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        image, _, skipped = self.folder.fetch(index)
        # fork_rng: the augmentation draws from a private stream and leaves the global RNG untouched.
        # Only the CPU generator is seeded: torch.manual_seed also seeds every accelerator backend, which
        # costs ~2 ms per call (a stack trace each) and was a sixth of the CPU presets' step time.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            crops = self.augment(image)
        return crops, len(skipped)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``, drop_last) that can start mid-epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start_index`` samples of this rank."""
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)


class _WorkerSeeder:
    """``worker_init_fn`` seeding Python/NumPy/torch from (seed, epoch, rank, worker id)."""

    def __init__(self, seed: int, epoch: int, rank: int) -> None:
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def __call__(self, worker_id: int) -> None:
        value = sample_seed(self.seed, self.epoch, self.rank * 1024 + worker_id)
        random.seed(value)
        np.random.seed(value % 2**32)  # noqa: NPY002  (legacy global RNG used by third-party transforms)
        torch.manual_seed(value)


def build_dataset(cfg: TrainConfig) -> MultiCropDataset:
    """The image folder + multi-crop augmentation of ``cfg.data`` (errors name missing/empty folders)."""
    d = cfg.data
    folder = ImageNetFolder(d.path, split=d.split or None, on_bad_image=d.on_bad_image)
    augment = MultiCropAugmentation(
        global_size=d.global_crop_size,
        local_size=d.local_crop_size,
        global_scale=tuple(d.global_crops_scale),
        local_scale=tuple(d.local_crops_scale),
        n_local=d.local_crops_number,
        n_global=d.global_crops_number,
        color_jitter=d.color_jitter,
        grayscale_p=d.grayscale_prob,
        blur_radius=tuple(d.blur_radius),
        solarize_p=d.solarize_prob,
        gram_size=cfg.gram.teacher_crop_size if cfg.gram.enabled else 0,
        gram_no_distortions=cfg.gram.teacher_no_distortions,
    )
    return MultiCropDataset(folder, augment, cfg.run.seed)


def build_loader(
    dataset: MultiCropDataset, sampler: ResumableDistributedSampler, cfg: TrainConfig, epoch: int, rank: int
) -> DataLoader:
    """A DataLoader for one epoch (the sampler must already be positioned)."""
    dataset.set_epoch(epoch)
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size_per_gpu,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        worker_init_fn=_WorkerSeeder(cfg.run.seed, epoch, rank) if workers > 0 else None,
        # A private generator: creating the iterator must not consume the global RNG (resume exactness).
        generator=torch.Generator().manual_seed(sample_seed(cfg.run.seed, epoch, rank)),
        persistent_workers=False,
    )


@contextmanager
def main_process_threads(device: torch.device, workers: int) -> Iterator[None]:
    """While training on CPU with loader workers, give torch's intra-op threads only the cores they leave.

    Why: the multi-crop augmentation, not the model, is most of a small model's step; with as many
    intra-op threads as cores the main process competes with its own workers (2 cores, 2 workers, the
    cpu-long recipe: 0.44 s per step with 2 threads and no workers, 0.32 s with 1 thread and 2 workers).

    Args:
        device: the training device (nothing changes off the CPU or without workers).
        workers: ``data.num_workers``.
    """
    if device.type != "cpu" or workers == 0:
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, cores - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)

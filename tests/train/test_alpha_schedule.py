"""``model.alpha_warmup_*``: softmax at the start, the target alpha at the end, in training and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparsedino.attention import SparseAttention
from sparsedino.config import ConfigError
from sparsedino.train import load_train_config, run_training
from sparsedino.train.alpha_schedule import AlphaSchedule, alpha_schedule


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_schedule_starts_at_softmax_and_ends_at_the_target(shape):
    alphas = alpha_schedule(1.0, 1.5, warmup_epochs=3, iters_per_epoch=4, shape=shape)
    assert len(alphas) == 12 and alphas[0] == 1.0
    assert np.all(np.diff(alphas) > 0) and alphas[-1] < 1.5
    u = np.arange(12) / 12
    expected = u if shape == "linear" else (1 - np.cos(np.pi * u)) / 2
    np.testing.assert_allclose(alphas, 1.0 + 0.5 * expected)


class _Cfg:  # the two sections AlphaSchedule reads
    def __init__(self, **model):
        self.model = type("M", (), {"normalizer": "entmax15", "alpha_warmup_start": 1.0,
                                    "alpha_warmup_shape": "linear", **model})  # fmt: skip


def test_normalizer_is_softmax_first_bisection_between_and_exact_entmax15_after():
    sched = AlphaSchedule(_Cfg(alpha_warmup_epochs=2), iters_per_epoch=5)
    first, middle, last = sched.normalizer_at(0), sched.normalizer_at(5), sched.normalizer_at(10)
    assert first.is_softmax and first.name == "softmax"  # SDPA
    assert middle.kind == "bisect" and middle.alpha == pytest.approx(1.25)  # alpha-entmax by bisection
    assert (last.name, last.kind) == ("entmax15", "entmax15")  # the exact fused kernels from here on
    assert sched.normalizer_at(10_000) == last
    assert AlphaSchedule(_Cfg(alpha_warmup_epochs=0), 5).normalizer_at(0).name == "entmax15"  # no warmup


def test_bad_schedules_are_named(image_root, tmp_path, tiny_overrides):
    cases = {
        "model.normalizer=softmax": "needs a fixed entmax target",
        "model.learn_alpha=true": "needs a fixed entmax target",
        "model.alpha_warmup_start=1.5": r"alpha_warmup_start' must be in \[1, 1.5\)",
        "optim.epochs=1": "exceeds optim.epochs",
        "model.alpha_warmup_shape=step": "alpha_warmup_shape",
    }
    for extra, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_train_config(
                "dino_cpu_tiny", tiny_overrides(image_root, tmp_path, "model.alpha_warmup_epochs=2", extra)
            )


def test_training_moves_alpha_from_softmax_to_entmax15_per_iteration(image_root, tmp_path, tiny_overrides):
    out = tmp_path / "run"
    run_training(load_train_config("dino_cpu_tiny", tiny_overrides(
        image_root, out, "model.alpha_warmup_epochs=1", "optim.epochs=2", "run.max_iters_per_epoch=3",
        "run.checkpoint_every_epochs=1")))  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    alphas = [r["alpha"] for r in records if "alpha" in r]
    # one per step, as the canonical name holds it (6 significant digits: "entmax1.16667")
    assert alphas == pytest.approx([1.0, 1.0 + 0.5 / 3, 1.0 + 1.0 / 3, 1.5, 1.5, 1.5], abs=1e-5)
    normalizers = [
        torch.load(out / f"checkpoint_epoch000{e}.pth", weights_only=True)["sparsedino"]["normalizer"]
        for e in range(3)
    ]
    assert normalizers == ["softmax", "entmax15", "entmax15"]  # what load_backbone rebuilds at each point
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["model"]["normalizer"] == "entmax15"


def test_attention_layers_follow_the_schedule(image_root, tmp_path, tiny_overrides):
    from sparsedino.train.distributed import DistInfo
    from sparsedino.train.loop import Trainer

    cfg = load_train_config(
        "dino_cpu_tiny", tiny_overrides(image_root, tmp_path, "model.alpha_warmup_epochs=2")
    )
    trainer = Trainer(cfg, DistInfo())
    try:
        for step, name in ((0, "softmax"), (4, "entmax1.25"), (8, "entmax15")):
            trainer.alpha.apply(step, trainer.nets.student, trainer.nets.teacher)
            layers = [m for net in (trainer.nets.student, trainer.nets.teacher) for m in net.modules()
                      if isinstance(m, SparseAttention)]  # fmt: skip
            assert len(layers) == 6 and {m.normalizer for m in layers} == {name}
    finally:
        trainer.close()

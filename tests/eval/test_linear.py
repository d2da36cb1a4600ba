"""The linear grid trains every head on the same batches and picks the best on val."""

from __future__ import annotations

import torch

from sparsedino.eval.linear import linear_inputs, train_linear_grid


def _features(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=g)
    cls = torch.randn(n, 2, 8, generator=g) * 0.3
    cls[torch.arange(n), -1, labels] += 1.0  # the last block's [CLS] holds the class; the one before is noise
    pooled = torch.randn(n, 2, 8, generator=g)
    return cls, pooled, labels


def test_grid_reports_every_head_and_picks_best_on_val():
    train, val = _features(200, 0), _features(100, 1)
    lrs = [1e-6, 1.0]  # 1e-6 cannot move the heads in 3 epochs: it must lose
    out = train_linear_grid(
        *train,
        *val,
        num_classes=5,
        lrs=lrs,
        n_last_blocks=(1, 2),
        avgpool=(False, True),
        epochs=3,
        batch_size=32,
        progress=False,
    )
    assert len(out["grid"]) == 2 * 2 * 2
    best = out["best"]
    assert best["top1"] == max(e["top1"] for e in out["grid"])
    assert best["lr"] == 1.0 and best["top1"] > 80
    slow = [e["top1"] for e in out["grid"] if e["lr"] == 1e-6]
    assert max(slow) < best["top1"] - 20


def test_inputs_concatenate_last_blocks_and_pool():
    cls, pooled = torch.arange(24.0).reshape(1, 3, 8), -torch.arange(24.0).reshape(1, 3, 8)
    x = linear_inputs(cls, pooled, n_last_blocks=2, avgpool=True)
    assert x.shape == (1, 24)
    assert torch.equal(x[0, :16], cls[0, 1:].flatten()) and torch.equal(x[0, 16:], pooled[0, -1])

"""Chunked weighted k-NN equals a brute-force loop."""

from __future__ import annotations

import pytest
import torch

from sparsedino.eval.knn import knn_classify


def brute_force(train, train_labels, test, test_labels, k, T, num_classes):
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    top1 = top5 = 0
    for x, y in zip(test, test_labels):
        sims = [(float(x @ t), int(lab)) for t, lab in zip(train, train_labels)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, lab in sims[:k]:
            votes[lab] += torch.exp(torch.tensor(sim / T)).item()
        ranked = sorted(range(num_classes), key=lambda c: -votes[c])
        top1 += ranked[0] == int(y)
        top5 += int(y) in [c for c in ranked[:5] if votes[c] > 0]
    return 100 * top1 / len(test), 100 * top5 / len(test)


def test_matches_brute_force_across_chunks():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 16, generator=g)
    train_labels = torch.randint(0, 8, (120,), generator=g)
    test_labels = torch.randint(0, 8, (37,), generator=g)
    train = centers[train_labels] + 0.9 * torch.randn(120, 16, generator=g)
    test = centers[test_labels] + 0.9 * torch.randn(37, 16, generator=g)
    out = knn_classify(
        train, train_labels, test, test_labels, ks=(1, 10, 20), T=0.07, num_classes=8, chunk_size=10
    )
    for k in (1, 10, 20):
        top1, top5 = brute_force(train, train_labels, test, test_labels, k, 0.07, 8)
        assert out[f"k={k}"]["top1"] == pytest.approx(top1)
        assert out[f"k={k}"]["top5"] == pytest.approx(top5)
    assert 30 < out["k=20"]["top1"] < 100  # a non-trivial case


def test_k_larger_than_train_set_is_clipped_and_reported():
    feats = torch.eye(3)
    out = knn_classify(feats, torch.tensor([0, 1, 2]), feats, torch.tensor([0, 1, 2]), ks=(1, 200))
    assert out["k=1"]["top1"] == 100.0
    assert out["k=200"]["k"] == 3 and out["k=200"]["clipped_from"] == 200

"""DSE (Dai et al. 2025) against a direct implementation of its formula, k-means on known clusters, and the
diagnostics wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsedino.diagnose.dse import dse_from_clusters, dse_scores, effective_rank, kmeans
from sparsedino.diagnose.settings import DSESettings


def _direct(x, local_labels, group_labels, perm, s: DSESettings) -> dict[str, float]:
    """The formula term by term in NumPy float64, loops instead of batched tensor code."""
    x = np.asarray(x, dtype=np.float64)
    b, n, d = x.shape
    scale = np.mean(np.linalg.norm(x.reshape(-1, d) - x.reshape(-1, d).mean(0), axis=1))

    def radius(points):
        centred = points - points.mean(0)
        return np.linalg.svd(centred, compute_uv=False).sum() / math.sqrt(max(len(points) - 1, d))

    images = []
    for i in range(b):
        rs = [
            radius(x[i][local_labels[i] == c])
            for c in range(s.local_clusters)
            if (local_labels[i] == c).sum() >= 2
        ]
        if rs:
            images.append(np.mean(rs))
    batch, inter = [], []
    for g, labels in enumerate(group_labels):
        pts = x[g * s.group_images : (g + 1) * s.group_images].reshape(-1, d)
        labels = np.asarray(labels).reshape(-1)
        present = [c for c in range(s.global_clusters) if (labels == c).any()]
        batch += [radius(pts[labels == c]) for c in present if (labels == c).sum() >= 2]
        cents = {c: pts[labels == c].mean(0) for c in present}
        inter.append(
            np.mean(
                [
                    min(np.linalg.norm(p - cents[c]) for c in present if c != lab)
                    for p, lab in zip(pts, labels)
                ]
            )
        )
    ranks = []
    for j in range(n):
        m = np.stack([x[i, perm[i][j]] for i in range(b)])  # (B, d)
        sv = np.linalg.svd(m, compute_uv=False)
        p = sv / sv.sum() + 1e-12
        ranks.append(np.exp(-(p * np.log(p)).sum()) / min(b, d))
    m_inter, m_dim = np.mean(inter) / scale, np.mean(ranks)
    m_img, m_batch = np.mean(images) / scale, np.mean(batch) / scale
    return {"dse.score": m_inter - (m_batch + m_img) / 2 + s.dim_weight * m_dim, "dse.inter": m_inter,
            "dse.intra_image": m_img, "dse.intra_batch": m_batch, "dse.dim": m_dim}  # fmt: skip


def test_formula_equals_the_direct_implementation_on_small_inputs():
    gen = torch.Generator().manual_seed(0)
    s = DSESettings(local_clusters=3, global_clusters=4, group_images=2, dim_weight=0.7)
    x = torch.randn(5, 6, 4, generator=gen, dtype=torch.float64)
    local = torch.randint(3, (5, 6), generator=gen)
    groups = [
        torch.randint(4, (1, 12), generator=gen),
        torch.randint(4, (1, 12), generator=gen),
        torch.randint(4, (1, 6), generator=gen),
    ]  # fmt: skip  (the last group holds one image)
    perm = torch.stack([torch.randperm(6, generator=gen) for _ in range(5)])
    ours = dse_from_clusters(x, local, groups, perm, s)
    direct = _direct(x.numpy(), local.numpy(), [g.numpy() for g in groups], perm.numpy(), s)
    assert ours == pytest.approx(direct, rel=1e-9)


def _blobs(n_images=8, per_cluster=6, clusters=3, dim=5, spread=0.05, seed=0):
    """Images of ``clusters`` tight blobs each (the same blob centres in every image)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen) * 3
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    x = centres[labels] + spread * torch.randn(n_images, len(labels), dim, generator=gen)
    return x, labels


def test_kmeans_recovers_separated_clusters_and_dse_uses_them():
    x, labels = _blobs()
    found = kmeans(x, 3, 20, torch.Generator().manual_seed(1))  # (8, 18)
    for row in found:  # the same partition as the truth, up to the cluster numbering
        assert len({(int(a), int(b)) for a, b in zip(row, labels)}) == 3
    s = DSESettings(local_clusters=3, global_clusters=3, group_images=4, normalize=False)
    ours = dse_scores(x, s)
    truth = labels.repeat(8, 1)
    groups = [labels.repeat(4)[None], labels.repeat(4)[None]]
    gen = torch.Generator().manual_seed(s.seed)  # the same generator draws as dse_scores: k-means, then perm
    (
        kmeans(x, 3, 20, gen),
        kmeans(x[:4].reshape(1, -1, 5), 3, 20, gen),
        kmeans(x[4:].reshape(1, -1, 5), 3, 20, gen),
    )
    perm = torch.stack([torch.randperm(18, generator=gen) for _ in range(8)])
    assert ours == pytest.approx(
        _direct(x.numpy(), truth.numpy(), [g.numpy() for g in groups], perm.numpy(), s), rel=1e-6
    )


def test_structured_features_score_higher_than_noise():
    x, _ = _blobs(n_images=16, spread=0.3)
    s = DSESettings(global_clusters=6, group_images=8)
    structured, noise = dse_scores(x, s)["dse.score"], dse_scores(torch.randn_like(x), s)["dse.score"]
    assert structured > noise
    assert dse_scores(x[:1], s)["dse.score"] is None  # one image: undefined


def test_effective_rank_is_one_for_equal_singular_values_and_1_over_k_for_rank_one():
    assert float(effective_rank(torch.eye(4))) == pytest.approx(1.0)
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.ones(3))
    assert float(effective_rank(rank_one)) == pytest.approx(1 / 3, rel=1e-6)


def test_diagnostics_report_dse_per_block(squares):
    from sparsedino.diagnose.runner import run_diagnostics
    from sparsedino.diagnose.settings import DenseProbeSettings, DiagnoseConfig
    from tests.diagnose.conftest import make_vit

    cfg = DiagnoseConfig(n_images=16, img_size=32, batch_size=8, n_figure_images=0, label_probe_iterations=5,
                         dense_probe=DenseProbeSettings(enabled=False), dse=DSESettings(global_clusters=6))  # fmt: skip
    result = run_diagnostics(make_vit(), squares, cfg=cfg, progress=False)
    for block in result["blocks"].values():
        assert all(isinstance(block[k], float) for k in ("dse.score", "dse.inter", "dse.dim"))
    off = DiagnoseConfig(n_images=8, img_size=32, batch_size=8, n_figure_images=0, label_probe_iterations=5,
                         dense_probe=DenseProbeSettings(enabled=False), dse=DSESettings(enabled=False))  # fmt: skip
    assert not any(
        k.startswith("dse.")
        for b in run_diagnostics(make_vit(), squares, cfg=off, progress=False)["blocks"].values()
        for k in b
    )

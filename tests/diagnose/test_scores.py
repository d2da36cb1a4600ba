"""Pure-function diagnostics on hand-built tensors whose answer is known by construction."""

import math

import pytest
import torch

from sparsedino.diagnose import alignment, attention_stats, diffusion, masks, norms, pca


def test_patch_foreground_threshold_and_ignore():
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 3  # top-left patch fully foreground
    mask[0, 0, 2] = 5  # top-right patch: 1 of 4 pixels foreground (25 %)
    mask[0, 2:, :2] = 255  # bottom-left patch unlabelled
    mask[0, 2, 2:] = 255  # bottom-right: 2 ignored, 2 foreground -> 100 % of labelled
    mask[0, 3, 2:] = 7
    fg, valid, share = masks.patch_foreground(mask, (2, 2))
    assert fg[0].tolist() == [[True, False], [False, True]]
    assert valid[0].tolist() == [[True, True], [False, True]]
    assert share[0, 0, 1].item() == pytest.approx(0.25)
    assert masks.image_labels(mask).tolist() == [3]  # 4 pixels of class 3 > 2 of class 7 > 1 of 5
    assert masks.image_labels(torch.zeros(1, 4, 4, dtype=torch.long)).tolist() == [-1]


def test_injected_huge_norm_token_is_the_only_outlier():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 16, 8, generator=g)
    tokens[1, 5] *= 50.0  # the artifact
    n = norms.token_norms(tokens)
    out = norms.outlier_mask(n, ratio=4.0)
    assert out.sum() == 1 and out[1, 5]
    # scale-free: multiplying all activations by 1000 finds the same token
    assert torch.equal(norms.outlier_mask(norms.token_norms(tokens * 1000), 4.0), out)
    fg = torch.zeros(3, 16, dtype=torch.bool)
    fg[:, :4] = True  # token 5 is on background
    scores = norms.per_image_norm_scores(n, fg, torch.ones_like(fg))
    assert scores["max_over_median"][1] > 20 and scores["max_over_median"][[0, 2]].max() < 4
    assert scores["fg_over_bg"][1] < scores["fg_over_bg"][0]  # the artifact inflates the background mean


def test_norm_ratio_of_foreground_to_background():
    n = torch.tensor([[2.0, 2.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    fg = torch.tensor([[True, True, False, False], [True, True, True, True]])
    ratio = norms.per_image_norm_scores(n, fg, torch.ones_like(fg))["fg_over_bg"]
    assert ratio[0].item() == 2.0 and math.isnan(ratio[1].item())  # second image has no background


def _grid_attention(grid, rule):
    """(1, 1, 1 + hw, 1 + hw) attention from a rule(query_patch, key_patch) -> weight, + [CLS] row."""
    h, w = grid
    n = h * w
    a = torch.zeros(n + 1, n + 1)
    a[0, 1:] = 1.0 / n
    for q in range(n):
        for k in range(n):
            a[q + 1, k + 1] = rule(divmod(q, w), divmod(k, w))
    a[1:] /= a[1:].sum(-1, keepdim=True)
    return a[None, None]


def test_local_attention_has_small_mean_distance_and_identity_zero():
    grid, ps = (6, 6), 16
    identity = _grid_attention(grid, lambda q, k: float(q == k))
    d = attention_stats.mean_attention_distance(identity, 1, grid, ps)
    assert torch.allclose(d, torch.zeros_like(d))
    local = _grid_attention(grid, lambda q, k: float(max(abs(q[0] - k[0]), abs(q[1] - k[1])) <= 1))
    uniform = _grid_attention(grid, lambda q, k: 1.0)
    d_local = attention_stats.mean_attention_distance(local, 1, grid, ps).nanmean()
    d_uniform = attention_stats.mean_attention_distance(uniform, 1, grid, ps).nanmean()
    assert 0 < d_local <= math.sqrt(2) * ps  # neighbours are at most one diagonal step away
    assert d_uniform > 2 * d_local
    # two patches side by side, each attending only to the other: exactly one patch size apart
    pair = torch.tensor([[[[1.0, 0, 0], [0, 0, 1], [0, 1, 0]]]])
    assert attention_stats.mean_attention_distance(pair, 1, (1, 2), 8).flatten().tolist() == [8.0, 8.0]


def test_entropy_support_and_zero_share():
    grid = (4, 4)
    identity = _grid_attention(grid, lambda q, k: float(q == k))
    uniform = _grid_attention(grid, lambda q, k: 1.0)
    assert torch.allclose(attention_stats.attention_entropy(identity, 1), torch.zeros(1, 1, 16))
    assert torch.allclose(attention_stats.attention_entropy(uniform, 1), torch.full((1, 1, 16), math.log(16)))
    assert attention_stats.support_size(identity, 1).unique().tolist() == [1]
    assert attention_stats.support_size(uniform, 1).unique().tolist() == [16]
    assert attention_stats.zero_share(identity, 1).item() == pytest.approx(16 / 17)
    assert attention_stats.zero_share(uniform, 1).item() == pytest.approx(1 / 17)  # the [CLS] key


def test_cls_foreground_mass():
    attn = torch.zeros(1, 2, 5, 5)
    attn[0, :, 0, 1:3] = 0.25  # [CLS] puts half its mass on patches 0-1 ...
    attn[0, :, 0, 0] = 0.5  # ... and half on itself, which is not counted
    cls = attention_stats.cls_patch_attention(attn, 1)
    assert cls[0].tolist() == [0.5, 0.5, 0.0, 0.0]
    fg = torch.tensor([[True, False, False, False]])
    assert attention_stats.cls_foreground_mass(cls, fg, torch.ones_like(fg)).item() == pytest.approx(0.5)
    assert attention_stats.cls_foreground_mass(cls, ~fg, torch.ones_like(fg)).item() == pytest.approx(0.5)


def test_map_equal_to_mask_gives_iou_one():
    gt = torch.zeros(1, 16, dtype=torch.bool)
    gt[0, [5, 6, 9, 10]] = True
    # [CLS] attention equal to the (normalised) mask: the 60 % mass set is exactly the mask
    attn = gt.float() / gt.sum()
    kept = alignment.cls_attention_mask(attn, keep=0.6)
    assert torch.equal(kept, gt)
    assert alignment.foreground_iou(kept, gt).item() == 1.0
    assert alignment.foreground_iou(~gt, gt).item() == 0.0
    assert math.isnan(alignment.foreground_iou(torch.zeros_like(gt), torch.zeros_like(gt)).item())
    # ignored patches do not count
    pred = gt.clone()
    pred[0, 0] = True
    valid = torch.ones_like(gt)
    valid[0, 0] = False
    assert alignment.foreground_iou(pred, gt, valid).item() == 1.0


def test_cls_attention_mask_keeps_sixty_percent():
    attn = torch.tensor([0.5, 0.3, 0.1, 0.1])
    assert alignment.cls_attention_mask(attn, 0.6).tolist() == [True, True, False, False]
    assert alignment.cls_attention_mask(attn, 0.5).tolist() == [True, False, False, False]


@pytest.mark.parametrize("flip", [1.0, -1.0])
def test_pca_foreground_sign_is_resolved(flip):
    grid = (6, 6)
    g = torch.Generator().manual_seed(1)
    gt = torch.zeros(6, 6, dtype=torch.bool)
    gt[2:4, 1:5] = True  # object away from the border
    direction = torch.randn(16, generator=g)
    feats = 0.05 * torch.randn(36, 16, generator=g) + flip * gt.flatten()[:, None].float() * direction
    fg, other = alignment.pca_foreground_mask(feats, grid)
    assert torch.equal(fg, gt.flatten()) and torch.equal(other, ~gt.flatten())


def test_pca_rgb_range_and_explained_variance():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(20, 8, generator=g)
    rgb = pca.pca_rgb(feats, (4, 5))
    assert rgb.shape == (4, 5, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb.amax((0, 1)), torch.ones(3))
    scores, explained = pca.pca_project(feats, 3)
    assert scores.shape == (20, 3) and torch.all(explained[:-1] >= explained[1:])


def test_cls_cosine_copy_vs_independent():
    g = torch.Generator().manual_seed(3)
    cls = torch.randn(2, 32, generator=g)
    fg = torch.zeros(2, 10, dtype=torch.bool)
    fg[:, :3] = True
    copies = cls[:, None].expand(2, 10, 32)
    cos_fg, cos_bg = diffusion.cls_cosine(copies, cls, fg, torch.ones_like(fg))
    assert torch.allclose(cos_bg, torch.ones(2), atol=1e-5) and torch.allclose(
        cos_fg, torch.ones(2), atol=1e-5
    )
    orth = torch.randn(2, 10, 32, generator=g)
    orth -= (orth * cls[:, None]).sum(-1, keepdim=True) / cls.square().sum(-1)[:, None, None] * cls[:, None]
    _, cos_bg = diffusion.cls_cosine(orth, cls, fg, torch.ones_like(fg))
    assert cos_bg.abs().max() < 1e-4


def test_split_images_is_stratified():
    labels = torch.tensor([1, 1, 2, 2, 1, 2, 1, 2])
    train = diffusion.split_images(labels, 0.5)
    for c in (1, 2):
        assert train[labels == c].sum() == 2


def _diffusion_tokens(copy_cls: bool, n_images=60, per_image=4, classes=3, dim=16):
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(n_images) % classes + 1
    prototypes = 3 * torch.randn(classes + 1, dim, generator=g)
    cls = prototypes[labels] + 0.3 * torch.randn(n_images, dim, generator=g)
    owner = torch.arange(n_images).repeat_interleave(per_image)
    fg = prototypes[labels[owner]] + 0.5 * torch.randn(len(owner), dim, generator=g)  # object patches
    if copy_cls:  # background patches copy [CLS]
        bg = cls[owner] + 0.1 * torch.randn(len(owner), dim, generator=g)
    else:  # background patches see only themselves: label-independent texture
        bg = torch.randn(len(owner), dim, generator=g)
    tokens = {"bg": bg, "fg": fg, "cls": cls}
    owners = {"bg": owner, "fg": owner, "cls": torch.arange(n_images)}
    return tokens, owners, labels, diffusion.split_images(labels)


def test_background_probe_maximal_when_patches_copy_cls():
    res = diffusion.patch_label_probe(*_diffusion_tokens(copy_cls=True), iterations=50)
    assert res["acc_bg"] == 1.0 and res["acc_fg"] == 1.0 and res["acc_cls"] == 1.0
    assert res["chance_bg"] == pytest.approx(1 / 3, abs=0.05)
    assert res["diffusion_index"] == pytest.approx(1.0)


def test_background_probe_at_chance_when_patches_see_only_themselves():
    res = diffusion.patch_label_probe(*_diffusion_tokens(copy_cls=False), iterations=50)
    assert res["acc_fg"] == 1.0
    assert abs(res["acc_bg"] - res["chance_bg"]) < 0.2
    assert abs(res["diffusion_index"]) < 0.3

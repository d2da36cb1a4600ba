"""Semantic diffusion: how much image-level information sits in patches that should not carry it.

Two scores per block (features: block output, final norm applied when ``final_norm`` is set):

* **Background label probe.** A multinomial logistic regression predicts the image label (the dominant
  foreground class of the mask) from a *single* patch token. It is trained on tokens of half of the images
  and tested on tokens of the other half (split by image, stratified by label), separately for pure
  background patches (no foreground pixel at all), foreground patches (>= 50 % foreground) and the [CLS]
  token. ``chance`` is the accuracy of always predicting the most frequent training label. The
  **diffusion index** is ``(acc_bg - chance_bg) / (acc_fg - chance_fg)``: 0 when background patches know
  nothing about the class, 1 when they know as much as the object's own patches (None if foreground
  patches are themselves at chance).
* **Cosine to [CLS].** Mean cosine similarity between each patch token and the [CLS] token of its image,
  over foreground patches and over background patches (per image, then averaged over images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cls_cosine(
    patches: torch.Tensor, cls: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean cosine similarity of patch tokens to the [CLS] token, on foreground / background.

    Args:
        patches: (B, M, C) patch tokens; cls: (B, C) [CLS] tokens of the same block;
        fg / valid: (B, M) bool foreground / labelled patches (background = valid and not fg).

    Returns:
        cos_fg, cos_bg: (B,) float, NaN for an image without foreground (resp. background) patches.
    """
    cos = F.cosine_similarity(patches.float(), cls.float()[:, None], dim=-1)  # (B, M)
    bg = valid & ~fg

    def masked_mean(sel: torch.Tensor) -> torch.Tensor:
        n = sel.sum(-1)
        mean = (cos * sel).sum(-1) / n.clamp_min(1)
        return torch.where(n > 0, mean, torch.full_like(mean, float("nan")))

    return masked_mean(fg & valid), masked_mean(bg)


def split_images(labels: torch.Tensor, train_fraction: float = 0.5) -> torch.Tensor:
    """Stratified deterministic split of images into train (True) and test (False).

    Within each label, images are taken in order and assigned so that the running share of train images
    stays at ``train_fraction`` (image 1 -> train, image 2 -> test, ... for 0.5).

    Args:
        labels: (n,) int64 image labels (-1 = no label, never used).

    Returns:
        (n,) bool, True for training images.
    """
    train = torch.zeros_like(labels, dtype=torch.bool)
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero().flatten()
        for rank, i in enumerate(idx.tolist()):
            train[i] = math.ceil((rank + 1) * train_fraction) > math.ceil(rank * train_fraction)
    return train


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    iterations: int = 200,
    weight_decay: float = 1e-3,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted with full-batch L-BFGS.

    Features are standardised with the training mean and std; the loss is the mean cross-entropy plus
    ``weight_decay * ||W||^2``. Test labels unseen in training count as errors.

    Args:
        train_x: (n, C); train_y: (n,) int64; test_x: (m, C); test_y: (m,) int64.

    Returns:
        accuracy in [0, 1] (NaN if either set is empty).
    """
    if len(train_x) == 0 or len(test_x) == 0:
        return float("nan")
    classes = train_y.unique()  # sorted
    y = torch.searchsorted(classes, train_y)
    mean, std = train_x.float().mean(0), train_x.float().std(0, unbiased=False).clamp_min(1e-6)
    x = (train_x.float() - mean) / std
    xt = (test_x.float() - mean) / std
    if len(classes) == 1:
        return float((test_y == classes[0]).float().mean())
    with torch.enable_grad():
        linear = torch.nn.Linear(x.shape[1], len(classes))
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        opt = torch.optim.LBFGS(
            linear.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(linear(x), y) + weight_decay * linear.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        pred = classes[linear(xt).argmax(-1)]
    return float((pred == test_y).float().mean())


def majority_accuracy(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    """Chance level: accuracy on ``test_y`` of always predicting the most frequent label of ``train_y``."""
    if len(train_y) == 0 or len(test_y) == 0:
        return float("nan")
    return float((test_y == train_y.mode().values).float().mean())


def patch_label_probe(
    tokens: dict[str, torch.Tensor],
    owners: dict[str, torch.Tensor],
    labels: torch.Tensor,
    train_images: torch.Tensor,
    iterations: int = 200,
    weight_decay: float = 1e-3,
) -> dict[str, float | int | None]:
    """Image-label accuracy from single tokens of each group, and the diffusion index.

    Args:
        tokens: group name ("bg", "fg", "cls") -> (n_g, C) sampled tokens of one block.
        owners: group name -> (n_g,) int64 index of the image each token comes from.
        labels: (n_images,) int64 image labels (-1 = unlabelled image; its tokens are dropped).
        train_images: (n_images,) bool, True for images whose tokens train the probe.

    Returns:
        ``acc_<group>``, ``chance_<group>``, ``n_train_<group>``, ``n_test_<group>`` (token counts) for every
        group, and ``diffusion_index``
        ``= (acc_bg - chance_bg) / (acc_fg - chance_fg)`` (None when the denominator is <= 0 or missing).
    """
    out: dict[str, float | int | None] = {}
    for group, x in tokens.items():
        owner = owners[group]
        y = labels[owner]
        keep = y >= 0
        is_train = train_images[owner] & keep
        is_test = ~train_images[owner] & keep
        out[f"acc_{group}"] = linear_probe_accuracy(
            x[is_train], y[is_train], x[is_test], y[is_test], iterations, weight_decay
        )
        out[f"chance_{group}"] = majority_accuracy(y[is_train], y[is_test])
        out[f"n_train_{group}"], out[f"n_test_{group}"] = int(is_train.sum()), int(is_test.sum())
    index = None
    if "bg" in tokens and "fg" in tokens:
        gain_fg = out["acc_fg"] - out["chance_fg"]
        if gain_fg == gain_fg and gain_fg > 0:  # not NaN and positive
            index = (out["acc_bg"] - out["chance_bg"]) / gain_fg
    out["diffusion_index"] = index
    return out

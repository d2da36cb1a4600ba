"""Diagnostics of tiny ViTs whose behaviour is forced by construction (attention masks, hooks)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from sparsedino.config import load_config
from sparsedino.diagnose.runner import resolve_layers, run_diagnostics
from sparsedino.diagnose.settings import DiagnoseConfig

from .conftest import make_vit

GRID = 4  # 32 px images, 8 px patches
N = 1 + GRID * GRID


def config(*overrides: str) -> DiagnoseConfig:
    base = [
        "img_size=32",
        "batch_size=16",
        "n_images=48",
        "dense_probe.enabled=false",
        "label_probe_iterations=50",
    ]
    return load_config(DiagnoseConfig, None, base + list(overrides))


def force_attention(model, allowed: torch.Tensor):
    """Every block attends only along ``allowed`` (N, N) bool (rows = queries), via an additive mask."""
    bias = torch.zeros(N, N).masked_fill(~allowed, float("-inf"))
    model.forward_intermediates = functools.partial(model.forward_intermediates, attn_mask=bias)
    return model


def patch_rule(rule) -> torch.Tensor:
    allowed = torch.zeros(N, N, dtype=torch.bool)
    allowed[0] = True  # [CLS] sees everything
    for q in range(GRID * GRID):
        for k in range(GRID * GRID):
            allowed[q + 1, k + 1] = rule(divmod(q, GRID), divmod(k, GRID))
    return allowed


def test_resolve_layers():
    assert resolve_layers([], 4) == [0, 1, 2, 3]
    assert resolve_layers([-1, 0, 3], 4) == [0, 3]
    with pytest.raises(ValueError, match="layer index 7"):
        resolve_layers([7], 4)


@pytest.mark.slow
def test_attention_made_local_gives_small_mean_distance(squares):
    fast = config("n_images=16", "label_probe_iterations=5")
    self_only = run_diagnostics(force_attention(make_vit(), patch_rule(lambda q, k: q == k)), squares, None,
                                fast, progress=False)["blocks"]  # fmt: skip
    local = run_diagnostics(
        force_attention(make_vit(), patch_rule(lambda q, k: max(abs(q[0] - k[0]), abs(q[1] - k[1])) <= 1)),
        squares, None, fast, progress=False)["blocks"]  # fmt: skip
    free = run_diagnostics(make_vit(), squares, None, fast, progress=False)["blocks"]
    for b in ("0", "1"):
        assert self_only[b]["attn.distance_px"] == 0.0
        assert self_only[b]["attn.support"] == 1.0 and self_only[b]["attn.entropy"] == pytest.approx(
            0.0, abs=1e-6
        )
        assert 0 < local[b]["attn.distance_px"] <= 8 * math.sqrt(2)
        assert free[b]["attn.distance_px"] > local[b]["attn.distance_px"]


def sharpen(model, factor: float):
    """Scale the query/key/value weights: larger scores, so entmax reaches exact zeros at init."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(factor)
    return model


def test_softmax_has_no_zeros_entmax_has_some(squares):
    fast = config("n_images=16", "label_probe_iterations=5")
    soft = run_diagnostics(sharpen(make_vit("softmax"), 8), squares, [-1], fast, progress=False)["blocks"]
    sparse = run_diagnostics(sharpen(make_vit("entmax15"), 8), squares, [-1], fast, progress=False)["blocks"]
    soft, sparse = soft["1"], sparse["1"]
    assert soft["attn.zero_share"] == 0.0 and soft["attn.support"] == N
    assert sparse["attn.zero_share"] > 0.0 and sparse["attn.support"] < N
    assert 0 <= sparse["attn.entropy"] < soft["attn.entropy"] <= math.log(N)


def test_patches_copying_cls_diffuse_and_patches_seeing_themselves_do_not(squares):
    # copy: [CLS] sees all tokens (it learns the colour of the square), patches see only [CLS]
    copy = torch.zeros(N, N, dtype=torch.bool)
    copy[0], copy[1:, 0] = True, True
    copied = run_diagnostics(force_attention(make_vit(), copy), squares, [-1], config(), progress=False)
    isolated = run_diagnostics(force_attention(make_vit(), patch_rule(lambda q, k: q == k)), squares, [-1],
                               config(), progress=False)  # fmt: skip
    c, s = copied["blocks"]["1"], isolated["blocks"]["1"]
    assert c["diffusion.acc_fg"] > 0.9 and s["diffusion.acc_fg"] > 0.9  # object patches know their colour
    # background patches still carry their own position, so "copying" is not literal: index ~0.83 here
    assert c["diffusion.acc_bg"] > 0.8 and c["diffusion.diffusion_index"] > 0.7
    assert s["diffusion.acc_bg"] == pytest.approx(s["diffusion.chance_bg"], abs=0.1)  # none
    assert abs(s["diffusion.diffusion_index"]) < 0.15


def test_injected_huge_norm_token_is_found_as_background_outlier(squares):
    model = make_vit()

    def inject(module, inputs, output):  # token 1 = top-left patch, background in every image
        output = output.clone()
        output[:, 1] *= 100.0
        return output

    model.blocks[0].register_forward_hook(inject)
    res = run_diagnostics(model, squares, [0], config("outlier_ratio=4.0"), progress=False)["blocks"]["0"]
    assert res["norm.outlier_share"] == pytest.approx(1 / 16)
    assert res["norm.outlier_on_background"] == 1.0
    assert res["norm.max_over_median"] > 20
    clean = run_diagnostics(make_vit(), squares, [0], config("outlier_ratio=4.0"), progress=False)["blocks"][
        "0"
    ]
    assert clean["norm.outlier_share"] == 0.0 and clean["norm.outlier_on_background"] is None


@pytest.mark.parametrize(
    ("kwargs", "has_cls"), [({"reg_tokens": 2}, True), ({"class_token": False, "global_pool": "avg"}, False)]
)
def test_registers_and_models_without_cls(squares, kwargs, has_cls):
    from timm.models.vision_transformer import VisionTransformer

    from sparsedino.attention import sparsify

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                              dynamic_img_size=True, **kwargs)  # fmt: skip
    result = run_diagnostics(
        sparsify(model, "entmax15").eval(), squares, [-1], config("n_images=12"), progress=False
    )
    block = result["blocks"]["1"]
    assert result["data"]["num_prefix_tokens"] == model.num_prefix_tokens
    assert block["attn.distance_px"] > 0 and block["align.pca_iou"] is not None
    assert (block["align.cls_attn_iou"] is not None) == has_cls
    assert (block["diffusion.acc_cls"] is not None) == has_cls and block["diffusion.acc_bg"] is not None

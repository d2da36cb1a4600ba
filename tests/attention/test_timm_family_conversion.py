"""What ``sparsify`` does to a timm model besides the maps: pools, masks, scale, refusals, the list of
converted modules, hooks, timm's methods, pickling, features, TorchScript and the per-module options.

Models and oracle: ``family_models.py`` (timm's architectures shrunk, checked against timm's unfused
attention with the ``entmax`` package's normaliser).
"""

import math
import pickle

import entmax
import pytest
import timm
import torch
from timm.layers import Attention, AttentionPoolLatent, AttentionRope, DiffAttention, RotaryEmbeddingCat
from timm.layers.attention_pool import AttentionPoolPrr
from timm.models.eva import EvaAttention
from timm.utils import AttentionExtract

import sparsedino  # noqa: F401  (registers the timm names)
from sparsedino.attention import SparseAttention, collect_attention, converted_modules, sparsify
from sparsedino.attention.families import SparseEvaAttention

from .family_models import (
    SMALL,
    assert_blocks_match_oracle,
    random_images,
    small_model,
    softmax_replaced_by,
    unfused_copy,
)


def test_pools_are_converted_only_when_asked():
    model = small_model("siglip")
    x = random_images("siglip")
    with torch.no_grad():
        reference = model(x)
    oracle = unfused_copy(model)
    sparsify(model)
    assert type(model.attn_pool) is AttentionPoolLatent
    assert all(not c.path.startswith("attn_pool") for c in converted_modules(model))
    sparsify(model, pools=True)
    assert [c.path for c in converted_modules(model)][-1] == "attn_pool"
    assert isinstance(model.attn_pool, AttentionPoolLatent)  # converted in place: still timm's type
    assert_blocks_match_oracle(model, oracle, x, entmax.entmax15)
    sparsify(model, "softmax")  # re-sets every converted module, the pool included
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_parameter_free_prr_pool():
    model = small_model("vit", global_pool="prr")
    x = random_images("vit")
    oracle = unfused_copy(model)
    sparsify(model, pools=True)
    assert isinstance(model.attn_pool, AttentionPoolPrr) and model.attn_pool.normalizer == "entmax15"
    assert_blocks_match_oracle(model, oracle, x, entmax.entmax15)


def test_naflex_padding_masks_give_padded_keys_zero_weight():
    model = small_model("naflexvit")
    oracle = unfused_copy(model)
    n = 6  # a 2x3 grid of 16x16 patches, pre-patchified; the second image has 2 padded patches
    coord = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(3), indexing="ij"), -1).reshape(1, n, 2)
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, 4:] = False
    inputs = {
        "patches": torch.randn(2, n, 16 * 16 * 3),
        "patch_coord": coord.expand(2, -1, -1),
        "patch_valid": valid,
    }
    sparsify(model)
    assert_blocks_match_oracle(model, oracle, inputs, entmax.entmax15)
    with torch.no_grad(), collect_attention(model) as maps:
        model(inputs)
    prefix = model.embeds.num_prefix_tokens
    for m in maps:  # valid queries of image 1 give its padded keys exactly 0
        assert (m[1, :, : prefix + 4, prefix + 4 :] == 0).all()


def test_scale_override_and_validation():
    model = small_model("dinov3")
    oracle = unfused_copy(model)
    sparsify(model, "entmax15", scale=0.5)
    assert {c.scale for c in converted_modules(model)} == {0.5}
    for m in oracle.modules():
        if isinstance(m, EvaAttention):
            m.scale = 0.5  # timm's unfused path reads it
    assert_blocks_match_oracle(model, oracle, random_images("dinov3"), entmax.entmax15)
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            sparsify(model, "entmax15", scale=bad)
    for bad in (True, "0.5"):  # not numbers
        with pytest.raises(TypeError, match="scale must be a finite number > 0"):
            sparsify(model, "entmax15", scale=bad)
    assert {c.scale for c in converted_modules(model)} == {0.5}
    with pytest.raises(ValueError, match="scale"):
        SparseAttention(64, num_heads=4, scale=0.0)


def test_from_timm_checks_its_arguments_before_converting():
    module = small_model("dinov3").blocks[0].attn
    with pytest.raises(ValueError, match=r"invalid attention normalizer 'entmax0\.5'"):
        SparseEvaAttention.from_timm(module, "entmax0.5")
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        SparseEvaAttention.from_timm(module, "entmax15", scale=-1.0)
    assert type(module) is EvaAttention  # left as it was
    assert SparseEvaAttention.from_timm(module, "sparsemax", scale=0.25) is module
    assert (type(module), module.normalizer, module.scale) == (SparseEvaAttention, "sparsemax", 0.25)


def test_unknown_attention_raises_naming_path_and_type_and_changes_nothing():
    model = small_model("vit")
    model.blocks[1].attn = DiffAttention(64, num_heads=4)
    with pytest.raises(
        TypeError, match=r"'blocks\.1\.attn' of type timm\.layers\.diff_attention\.DiffAttention"
    ):
        sparsify(model)
    assert type(model.blocks[0].attn) is Attention  # nothing converted
    parallel = timm.create_model(
        "vit_base_patch16_xp_224", pretrained=False, depth=1, embed_dim=64, num_heads=4
    )
    with pytest.raises(TypeError, match=r"'blocks\.0' of type .*ParallelScalingBlock"):
        sparsify(parallel)

    class OwnAttention(Attention):  # a subclass may compute other scores: not silently converted
        pass

    model.blocks[1].attn = OwnAttention(64, num_heads=4)
    with pytest.raises(TypeError, match="OwnAttention"):
        sparsify(model)


def test_converted_modules_lists_paths_and_timm_types():
    model = sparsify(small_model("cait"), "sparsemax")
    rows = converted_modules(model)
    assert [(r.path, r.timm_type) for r in rows] == [
        ("blocks.0.attn", "timm.models.cait.TalkingHeadAttn"),
        ("blocks.1.attn", "timm.models.cait.TalkingHeadAttn"),
        ("blocks_token_only.0.attn", "timm.models.cait.ClassAttn"),
    ]
    assert {(r.normalizer, r.scale) for r in rows} == {("sparsemax", 16**-0.5)}
    assert rows[0].sparse_type == "sparsedino.attention.families.cait.SparseTalkingHeadAttn"
    assert "normalizer='sparsemax'" in repr(model.blocks[0].attn)


@pytest.mark.parametrize("family", ["dinov3", "sam"])
def test_hooks_on_attn_drop_see_the_maps(family):
    model = sparsify(small_model(family))
    x = random_images(family)
    with torch.no_grad():
        hooked = AttentionExtract(model, method="hook")(x)  # hooks on *attn.attn_drop
        with collect_attention(model) as maps:
            model(x)
    assert len(hooked) == 2
    for ours, theirs in zip(maps, hooked.values()):
        torch.testing.assert_close(theirs, ours)


def test_converted_module_keeps_timm_methods_pickles_and_trains_with_dropout():
    model = sparsify(small_model("dinov3", attn_drop_rate=0.5))
    model.set_input_size(img_size=48)  # timm's own method on the converted model (rope grid rebuilt)
    x = torch.randn(2, 3, 48, 48)
    copied = pickle.loads(pickle.dumps(model))
    assert type(copied.blocks[0].attn) is type(model.blocks[0].attn)
    with torch.no_grad():
        torch.testing.assert_close(copied(x), model(x), atol=0, rtol=0)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # dropout on the entmax probabilities


def test_features_after_sparsify_softmax_equal_timm():
    model = small_model("eva02")
    x = random_images("eva02")
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=2, intermediates_only=True)
        sparsify(model, "entmax15")
        sparse = model.forward_intermediates(x, indices=2, intermediates_only=True)
        sparsify(model, "softmax")
        after = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not torch.allclose(sparse[-1], before[-1])
    features = sparsify(
        timm.create_model(
            "eva02_tiny_patch14_224", features_only=True, out_indices=(0, 1), img_size=28, **SMALL
        )
    )
    assert [f.shape for f in features(x)] == [(2, 64, 2, 2)] * 2


@pytest.mark.parametrize("family", ["dinov3", "sam", "cait"])
def test_torchscript_of_a_converted_family(family):
    """Under TorchScript the converted modules run the plain-op path (sparsedino.attention.scripted)."""
    model = sparsify(small_model(family))
    x = random_images(family, batch=1)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=1e-4)


def _rope(grid: int, head_dim: int) -> torch.Tensor:
    return RotaryEmbeddingCat(head_dim, in_pixels=False, feat_shape=[grid, grid]).get_embed()  # (N, 2 * D)


@pytest.mark.parametrize(
    "build, inputs",
    [
        pytest.param(  # grouped-query heads, separate projections, qk-norm, gate, scale norm
            lambda: AttentionRope(
                64,
                num_heads=4,
                qkv_fused=False,
                num_kv_heads=2,
                qk_norm=True,
                scale_norm=True,
                gated=True,
                norm_layer=torch.nn.LayerNorm,
                num_prefix_tokens=2,
            ),
            lambda: ((torch.randn(2, 11, 64),), {"rope": _rope(3, 16)}),
            id="AttentionRope-gqa",
        ),
        pytest.param(  # separate projections (no key bias), gate, qk-norm, rotate_half, a bool mask
            lambda: EvaAttention(
                64,
                num_heads=4,
                qkv_fused=False,
                qk_norm=True,
                gated=True,
                rotate_half=True,
                norm_layer=torch.nn.LayerNorm,
            ),
            lambda: (
                (torch.randn(2, 10, 64),),
                {"rope": _rope(3, 16), "attn_mask": torch.rand(2, 1, 10, 10) > 0.3},
            ),
            id="EvaAttention-unfused-qkv-masked",
        ),
        pytest.param(  # EVA's bias added after the product
            lambda: EvaAttention(64, num_heads=4, qkv_bias_separate=True, norm_layer=torch.nn.LayerNorm),
            lambda: ((torch.randn(2, 10, 64),), {"rope": _rope(3, 16)}),
            id="EvaAttention-separate-bias",
        ),
        pytest.param(  # several latents, averaged; qk-norm
            lambda: AttentionPoolLatent(64, num_heads=4, latent_len=3, pool_type="avg", qk_norm=True),
            lambda: ((torch.randn(2, 9, 64),), {}),
            id="AttentionPoolLatent-3-latents",
        ),
    ],
)
def test_module_options_equal_the_oracle(build, inputs):
    """Options of timm's modules that the models above do not use, module by module."""
    module = build().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    oracle = unfused_copy(module)
    args, kwargs = inputs()
    with torch.no_grad():
        reference = module(*args, **kwargs)
    model = torch.nn.Sequential(module)  # sparsify converts children
    sparsify(model, "entmax15", pools=True)
    assert model[0] is module
    with torch.no_grad(), collect_attention(model) as maps:
        out = module(*args, **kwargs)
        with softmax_replaced_by(entmax.entmax15) as oracle_maps:
            expected = oracle(*args, **kwargs)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(maps[0], oracle_maps[0], atol=2e-5, rtol=1e-4)
    assert (maps[0] == 0).any()
    sparsify(model, "softmax")
    with torch.no_grad():
        assert torch.equal(module(*args, **kwargs), reference)

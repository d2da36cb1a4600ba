"""SparseAttention as a timm attn_layer, sparsify, collect_attention, AttentionExtract, registered models."""

import pytest
import timm
import torch
from timm.utils import AttentionExtract

import sparsedino  # noqa: F401  (registers the timm names)
from sparsedino.attention import SparseAttention, collect_attention, make_attn_layer, sparsify

TINY = dict(img_size=32, patch_size=16, embed_dim=48, depth=3, num_heads=3)


def _vit(name="vit_small_patch16_224", **kwargs):
    return timm.create_model(name, pretrained=False, **{**TINY, **kwargs}).eval()


def _sharpen(model, factor=30.0):
    """Scale q/k weights so attention is clearly sparse (random init gives near-uniform scores)."""
    for m in model.modules():
        if isinstance(m, SparseAttention):
            with torch.no_grad():
                m.qkv.weight[: 2 * m.attn_dim].mul_(factor)
    return model


def test_attn_layer_keeps_timm_parameter_names_and_state_dict():
    plain = _vit(qk_norm=True)
    sparse = _vit(qk_norm=True, attn_layer=SparseAttention)
    assert list(plain.state_dict()) == list(sparse.state_dict())
    sparse.load_state_dict(plain.state_dict(), strict=True)
    attn = sparse.blocks[0].attn
    assert attn.normalizer == "entmax15" and hasattr(attn, "fused_attn") and attn.scale == 16**-0.5


def test_sparsify_softmax_is_identical_to_original_and_state_dict_unchanged():
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    assert sparsify(model, "softmax") is model
    assert all(isinstance(b.attn, SparseAttention) for b in model.blocks)
    assert torch.equal(model(x), before)
    assert model.state_dict().keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    sparsify(model, "entmax15")
    assert all(b.attn.normalizer == "entmax15" for b in model.blocks)
    assert not torch.allclose(model(x), before)
    sparsify(model, "softmax")
    assert torch.equal(model(x), before)


def test_entmax_forward_matches_materialised_path_and_trains():
    model = _sharpen(_vit(attn_layer=SparseAttention))
    x = torch.randn(2, 3, 32, 32)
    fast = model(x)
    with collect_attention(model):
        slow = model(x)
    assert torch.allclose(fast, slow, atol=1e-5)
    model.train()
    model(x).sum().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )


def test_collect_attention_yields_depth_maps():
    model = _sharpen(_vit(attn_layer=SparseAttention))
    x = torch.randn(2, 3, 32, 32)
    with collect_attention(model) as maps:
        model(x)
    assert len(maps) == 3
    for m in maps:
        assert m.shape == (2, 3, 5, 5) and m.dtype == torch.float32 and not m.requires_grad
        assert torch.allclose(m.sum(-1), torch.ones(2, 3, 5), atol=1e-5)
    assert any((m == 0).any() for m in maps)
    model(x)
    assert len(maps) == 3  # nothing recorded after the context


def test_collect_attention_requires_sparse_attention():
    with pytest.raises(ValueError, match="sparsify"), collect_attention(_vit()):
        pass


def test_attention_extract_sees_entmax_maps():
    model = _sharpen(_vit(attn_layer=SparseAttention))
    out = AttentionExtract(model, method="hook")(torch.randn(2, 3, 32, 32))
    assert len(out) == 3
    for m in out.values():
        assert m.shape == (2, 3, 5, 5)
        assert torch.allclose(m.sum(-1), torch.ones(2, 3, 5), atol=1e-5)
    assert any((m == 0).any() for m in out.values())


def test_attention_extract_fx_finds_the_map_nodes():
    model = _sharpen(_vit(attn_layer=SparseAttention))
    x = torch.randn(2, 3, 32, 32)
    hooked = AttentionExtract(model, method="hook")(x)
    for m in model.modules():
        if isinstance(m, SparseAttention):
            m.fused_attn = False  # as for timm's Attention: fx extraction needs materialised maps
    extract = AttentionExtract(model, names=["*attn.attention_map"])  # default method: torch.fx
    assert extract.names == [f"blocks.{i}.attn.attention_map" for i in range(3)]
    traced = extract(x)
    for (name, fx_map), hook_map in zip(traced.items(), hooked.values()):
        assert torch.allclose(fx_map, hook_map, atol=1e-6), name
    assert any((m == 0).any() for m in traced.values())


def test_attn_dropout_applies_in_training():
    model = _vit(attn_layer=SparseAttention, attn_drop_rate=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(reg_tokens=4, no_embed_class=True, init_values=1e-5),  # DINOv2-with-registers style
        dict(class_token=True, init_values=1.0),  # DINOv2 style (layer scale)
    ],
)
def test_sparsify_register_and_dinov2_variants(kwargs):
    model = _vit(**kwargs)
    x = torch.randn(1, 3, 32, 32)
    before = model(x)
    state = model.state_dict()
    sparsify(model)
    assert model.state_dict().keys() == state.keys()
    n_tokens = 4 + model.num_prefix_tokens
    with collect_attention(model) as maps:
        model(x)
    assert len(maps) == 3 and maps[0].shape[-1] == n_tokens
    sparsify(model, "softmax")
    assert torch.equal(model(x), before)


@pytest.mark.slow
def test_real_dinov2_register_arch_is_sparsified():
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28).eval()
    sparsify(model, "entmax15")
    with collect_attention(model) as maps:
        model(torch.randn(1, 3, 28, 28))
    assert len(maps) == 12 and maps[0].shape == (1, 6, 9, 9)  # 4 patches + [CLS] + 4 registers


@pytest.mark.slow
def test_registered_entmax_models_load_plain_state_dict_strictly():
    for name in (
        "vit_tiny_patch16_224_entmax15",
        "vit_small_patch16_224_entmax15",
        "vit_small_patch8_224_entmax15",
        "vit_base_patch16_224_entmax15",
    ):
        assert name in timm.list_models("*entmax15")
    plain = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32)
    sparse = timm.create_model("vit_small_patch16_224_entmax15", img_size=32)
    sparse.load_state_dict(plain.state_dict(), strict=True)
    assert all(b.attn.normalizer == "entmax15" for b in sparse.blocks)
    assert sparse(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    other = timm.create_model(
        "vit_tiny_patch16_224_entmax15", img_size=32, normalizer="sparsemax", num_classes=0
    )
    assert other.blocks[0].attn.normalizer == "sparsemax"


def test_registered_models_refuse_pretrained():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("vit_small_patch16_224_entmax15", pretrained=True)


def test_make_attn_layer_and_normalizer_validation():
    model = _vit(attn_layer=make_attn_layer("sparsemax"))
    assert all(b.attn.normalizer == "sparsemax" for b in model.blocks)
    with pytest.raises(ValueError, match="'entmaks'"):
        sparsify(model, "entmaks")
    with pytest.raises(ValueError, match="'bogus'"):
        model.blocks[0].attn.normalizer = "bogus"
    with pytest.raises(ValueError, match="no timm Attention"):
        sparsify(torch.nn.Linear(3, 3))

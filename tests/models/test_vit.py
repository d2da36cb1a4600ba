"""build_vit and the DINO head: timm compatibility, registers, official head key layout."""

from __future__ import annotations

import pytest
import timm
import torch

from sparsedino.attention import SparseAttention
from sparsedino.models import ARCHS, DINOHead, MultiCropWrapper, build_vit


def test_pico_vit_is_timm_with_sparse_attention_and_dynamic_size():
    model = build_vit("vit_pico", patch_size=8, img_size=32, normalizer="entmax15").eval()
    attn = [m for m in model.modules() if isinstance(m, SparseAttention)]
    assert len(attn) == ARCHS["vit_pico"]["depth"]
    assert all(a.normalizer == "entmax15" for a in attn)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 48)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 48)  # local-crop size, interpolated pos_embed


def test_vit_small_state_dict_matches_timm_exactly():
    with torch.device("meta"):  # shapes only: skips the slow random init of 22M parameters
        ours = build_vit("vit_small", normalizer="softmax").state_dict()
        ref = timm.create_model("vit_small_patch16_224", num_classes=0, pretrained=False).state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_softmax_vit_gives_timm_outputs_with_same_weights():
    ours = build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax").eval()
    ref = timm.create_model(
        "vit_small_patch16_224", num_classes=0, img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3
    ).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_registers_sit_after_cls_without_position_embedding():
    model = build_vit("vit_pico", patch_size=8, img_size=32, num_registers=4)
    assert model.reg_token.shape == (1, 4, 48)
    assert model.pos_embed.shape == (1, 16, 48)
    assert model.num_prefix_tokens == 5
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 48)


def test_unknown_arch_and_normalizer_are_named():
    with pytest.raises(ValueError, match="vit_huge"):
        build_vit("vit_huge")
    with pytest.raises(ValueError, match="bogus"):
        build_vit("vit_pico", normalizer="bogus")


def test_head_uses_official_weight_norm_keys_and_loads_them():
    head = DINOHead(48, 64, hidden_dim=32, bottleneck_dim=16, norm_last_layer=False)
    state = head.state_dict()
    assert "last_layer.weight_g" in state and "last_layer.weight_v" in state
    assert not any("parametrizations" in k for k in state)
    other = DINOHead(48, 64, hidden_dim=32, bottleneck_dim=16)
    other.load_state_dict(state)
    x = torch.randn(3, 48)
    torch.testing.assert_close(other(x), head(x))


def test_norm_last_layer_freezes_the_magnitude_and_output_is_normalised_projection():
    head = DINOHead(48, 64, hidden_dim=32, bottleneck_dim=16, norm_last_layer=True)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    # with g = 1 every prototype row has unit norm, so |logit| <= 1 for the L2-normalised bottleneck.
    assert head(torch.randn(5, 48)).abs().max() <= 1.0 + 1e-5


def test_multicrop_wrapper_groups_resolutions_and_keeps_order():
    backbone = build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax").eval()
    head = DINOHead(48, 64, hidden_dim=32, bottleneck_dim=16).eval()
    wrapper = MultiCropWrapper(backbone, head)
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    calls = []
    handle = backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = wrapper(crops)
    handle.remove()
    assert calls == [4, 2] and out.shape == (6, 64)
    torch.testing.assert_close(out[4:], head(backbone(crops[2])), atol=1e-5, rtol=1e-5)

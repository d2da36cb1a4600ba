"""The registered ``*_entmax15`` names behave as timm ViTs do (the contracts of timm's tests/test_models.py).

Our names are full-size ViTs; numerical tests use ViT-Ti/16 at 32 px (4 patches) unless the cfg's size matters.
"""

import copy

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet

import sparsedino  # noqa: F401  (registers the timm names)
from sparsedino.attention import SparseAttention, entmax15, entmax_bisect, scripted, sparsemax, sparsify
from sparsedino.attention.archs import VIT_ARCHS
from sparsedino.attention.core import softmax_attention
from sparsedino.attention.layers import sparse_attention
from sparsedino.attention.timm_models import ENTMAX_ARCHS

NAMES = sorted(ENTMAX_ARCHS)
TINY = "vit_tiny_patch16_224_entmax15"


def _tiny(**kwargs) -> torch.nn.Module:
    return timm.create_model(TINY, img_size=32, **kwargs).eval()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", NAMES)
def test_registered_cfg_has_timm_vit_keys_and_no_weights(name):
    assert name in timm.list_models(name_matches_cfg=True)
    assert name not in timm.list_models(pretrained=True)
    assert timm.get_pretrained_cfg_value(name, "input_size") == (3, 224, 224)
    assert timm.get_pretrained_cfg_value(name, "fixed_input_size") is True
    plain = timm.get_pretrained_cfg(name.removesuffix("_entmax15")).to_dict()
    ours = timm.get_pretrained_cfg(name).to_dict()
    missing = {"first_conv", "classifier", "license", "crop_mode", "crop_pct", "interpolation", "mean"} - set(
        ours
    )
    assert not missing
    assert (ours["first_conv"], ours["classifier"]) == (plain["first_conv"], plain["classifier"])
    assert not (ours.get("url") or ours.get("hf_hub_id") or ours.get("file"))
    model = timm.create_model(name, device="meta")
    state = model.state_dict()
    assert f"{ours['first_conv']}.weight" in state and f"{ours['classifier']}.weight" in state
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)
    with pytest.raises(TypeError):
        timm.create_model(name, device="meta", not_a_model_arg=1)


@pytest.mark.parametrize("name", NAMES)
def test_architecture_from_the_table_is_timms(name):
    """Each name is built from the one architecture table, and that row is timm's architecture."""
    ours = timm.create_model(name, device="meta", num_classes=0)
    plain = timm.create_model(name.removesuffix("_entmax15"), device="meta", num_classes=0)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    arch = name.split("_patch")[0]
    assert ENTMAX_ARCHS[name] == {"patch_size": ours.patch_embed.patch_size[0], **VIT_ARCHS[arch]}
    assert (ours.embed_dim, len(ours.blocks), ours.blocks[0].attn.num_heads) == tuple(
        VIT_ARCHS[arch].values()
    )


@pytest.mark.parametrize("name", [TINY, "vit_small_patch8_224_entmax15"])  # both patch sizes
def test_meta_device_forward_and_backward_at_cfg_size(name):
    model = timm.create_model(name, device="meta")
    x = torch.randn(2, *model.pretrained_cfg["input_size"], device="meta")
    tokens = (224 // model.patch_embed.patch_size[0]) ** 2 + 1
    assert model.forward_features(x).shape == (2, tokens, model.embed_dim)
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.is_meta for p in model.parameters())


def test_forward_backward_at_cfg_size_matches_softmax_twin():
    torch.manual_seed(0)
    model = timm.create_model(TINY, num_classes=7).train()
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    out = model(x)
    assert out.shape == (1, 7) and torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    # same architecture as timm's plain ViT: with softmax the outputs are timm's
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=7).eval()
    plain.load_state_dict(model.state_dict())
    twin = timm.create_model(TINY, num_classes=7, normalizer="softmax").eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(twin(x), plain(x))


def test_features_only_with_out_indices_like_timm_vit():
    model = timm.create_model(TINY, img_size=32, features_only=True, out_indices=(1, -1)).eval()
    stock = timm.create_model("vit_tiny_patch16_224", img_size=32, features_only=True, out_indices=(1, -1))
    assert isinstance(model, FeatureGetterNet)
    assert model.feature_info.channels() == stock.feature_info.channels() == [192, 192]
    assert model.feature_info.reduction() == [16, 16]
    default = timm.create_model(TINY, img_size=32, features_only=True)
    assert (
        default.feature_info.out_indices
        == timm.create_model("vit_tiny_patch16_224", img_size=32, features_only=True).feature_info.out_indices
    )
    x = torch.randn(2, 3, 32, 32)
    full = _tiny()
    missing = full.load_state_dict(model.model.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]  # pruned by the getter
    with torch.no_grad():
        feats = model(x)
        taps = full.forward_intermediates(x, indices=[1, 11], intermediates_only=True)
    assert [f.shape for f in feats] == [(2, 192, 2, 2)] * 2
    for f, t in zip(feats, taps):
        torch.testing.assert_close(f, t)


def test_sparsify_keeps_features_only_wrapper_of_plain_vit():
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", img_size=32, features_only=True, out_indices=(2, 5))
    ours = timm.create_model(TINY, img_size=32, features_only=True, out_indices=(2, 5))
    ours.load_state_dict(plain.state_dict())
    sparsify(plain)
    assert isinstance(plain, FeatureGetterNet)
    assert sum(isinstance(m, SparseAttention) for m in plain.modules()) == 6  # blocks after 5 pruned
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(plain.eval()(x), ours.eval()(x)):
            torch.testing.assert_close(a, b)


def test_forward_intermediates_and_prune_intermediate_layers_contract():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(taps) == 12 and taps[0].shape == (2, 192, 2, 2)
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(pruned(x), expected)
    for i in (0, 5):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([i], prune_norm=True)
        assert len(pruned.blocks) == i + 1
        selected = pruned.train().forward_intermediates(x, indices=take, intermediates_only=True)
        torch.testing.assert_close(selected[0].detach(), taps[i])
        (selected[0].sum() + pruned.forward_features(x).sum()).backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None]


def test_fx_trace_with_default_settings_forward_and_backward():
    torch.manual_seed(0)
    model = _tiny(num_classes=5)
    assert all(m.fused_attn for m in model.modules() if isinstance(m, SparseAttention))
    traced = torch.fx.symbolic_trace(model)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert targets.count(sparse_attention) == 12  # the fused op is one node per block
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    model.train()(x).pow(2).mean().backward()
    eager = _grads(model)
    model.zero_grad()  # the traced module shares the parameters
    traced.train()(x).pow(2).mean().backward()
    assert _grads(traced).keys() == eager.keys()
    for n, g in _grads(traced).items():
        torch.testing.assert_close(g, eager[n], rtol=0, atol=0, msg=n)


def test_fx_trace_of_a_softmax_model_equals_timm():
    # sparsify(model, "softmax") keeps SDPA called as timm calls it; tracing must not need the head
    # dimension as a number (it once compared the scale with q.shape[-1] ** -0.5 on a traced value)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=5)
    reference = copy.deepcopy(model).eval()
    sparsify(model, "softmax").eval()
    traced = torch.fx.symbolic_trace(model)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert targets.count(softmax_attention) == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), reference(x), rtol=0, atol=0)


def test_eager_attention_still_validates_inputs():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="incompatible q/k/v shapes"):
        sparse_attention(q, torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 4), "entmax15", 0.5)


def test_torchscript_matches_eager_values_and_gradients():
    torch.manual_seed(0)
    model = _tiny(num_classes=5, depth=2)  # scripting cost grows with depth; two blocks show the contract
    script = torch.jit.script(model)
    torch.jit.script(model)  # scripting again works (nothing redefined)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(script(x), model(x), rtol=1e-5, atol=1e-5)
    model.train()(x).pow(2).mean().backward()
    eager = _grads(model)
    model.zero_grad()
    script.train()(x).pow(2).mean().backward()
    for n, g in _grads(model).items():
        torch.testing.assert_close(g, eager[n], rtol=1e-4, atol=1e-6, msg=n)


def test_torchscript_after_fx_trace():
    model = _tiny()
    x = torch.randn(1, 3, 32, 32)
    script = torch.jit.script(torch.fx.symbolic_trace(model))
    with torch.no_grad():
        torch.testing.assert_close(script(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "alpha, reference",
    [(1.5, entmax15), (2.0, sparsemax), (1.25, lambda s: entmax_bisect(s, 1.25))],
)
def test_scripted_probs_equal_eager_normalisers_with_masks(alpha, reference):
    scores = torch.randn(3, 7, 9, dtype=torch.float64) * 3
    scores[0, 1, 2:] = float("-inf")  # partly masked row
    scores[1, 2] = float("-inf")  # fully masked row: zeros, no NaN
    a = scores.clone().requires_grad_()
    b = scores.clone().requires_grad_()
    p_script = torch.jit.script(scripted.probs)(a, alpha)
    p_eager = reference(b)
    torch.testing.assert_close(p_script, p_eager, rtol=1e-6, atol=1e-9)
    assert (p_script == 0).any() and torch.equal(p_script[1, 2], torch.zeros(9, dtype=torch.float64))
    g = torch.randn_like(scores)
    (p_script * g).sum().backward()
    (p_eager * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)
    assert torch.isfinite(a.grad).all()

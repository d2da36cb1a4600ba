"""``sparsify`` / ``collect_attention`` on every timm ViT family, against timm's own modules.

The oracle is timm itself: a copy of the model taken before ``sparsify``, in timm's unfused mode
(``fused_attn=False``), whose ``scores.softmax(dim=-1)`` is replaced by the ``entmax`` package's normaliser.
So each block's reference output comes from the timm module's own scores (RoPE, relative position
biases, windows, qk-norm, bias layouts, talking heads), normalised by an independent implementation.

Models are timm's architectures with random weights, shrunk (depth 2, width 64, 4 heads, tiny images) and
re-drawn with a larger spread so that the entmax maps have exact zeros.
"""

import entmax
import pytest
import torch

import sparsedino  # noqa: F401  (registers the timm names)
from sparsedino.attention import collect_attention, converted_modules, sparsify

from .family_models import (
    FAMILIES,
    assert_blocks_match_oracle,
    random_images,
    small_model,
    softmax_replaced_by,
    unfused_copy,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_entmax_blocks_equal_the_oracle_and_softmax_gives_back_timm(family):
    model = small_model(family)
    x = random_images(family)
    with torch.no_grad():
        reference = model(x)
    oracle = unfused_copy(model)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    state = {k: v.clone() for k, v in model.state_dict().items()}

    assert sparsify(model, "entmax15") is model
    converted = {c.timm_type for c in converted_modules(model)}
    assert converted == {f"{t.__module__}.{t.__qualname__}" for t in FAMILIES[family][2]}
    assert params.keys() == dict(model.named_parameters()).keys()
    assert all(p is params[k] for k, p in model.named_parameters())  # reused, not copied
    assert all(b is buffers[k] for k, b in model.named_buffers())
    assert_blocks_match_oracle(model, oracle, x, entmax.entmax15)

    out = model(x)
    assert not torch.allclose(out, reference, atol=1e-3)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    sparsify(model, "softmax")
    with torch.no_grad():
        assert torch.equal(model(x), reference)  # SDPA with timm's arguments: bit for bit
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("family", FAMILIES)
def test_collect_attention_maps_are_the_oracle_maps(family):
    model = small_model(family)
    x = random_images(family)
    oracle = unfused_copy(model)
    sparsify(model, "entmax15", pools=True)  # every softmax of the oracle has its sparse twin
    with torch.no_grad():
        fused = model(x)
        with collect_attention(model) as maps:
            materialised = model(x)
        with softmax_replaced_by(entmax.entmax15) as oracle_maps:
            oracle(x)
    torch.testing.assert_close(materialised, fused, atol=1e-5, rtol=1e-5)
    assert len(maps) == len(oracle_maps) >= len(converted_modules(model))  # one map a call, forward order
    for ours, theirs in zip(maps, oracle_maps):
        assert ours.dtype == torch.float32 and not ours.requires_grad
        torch.testing.assert_close(
            ours, theirs.view_as(ours), atol=2e-5, rtol=1e-4
        )  # SAM's are (B * H, N, N)
        torch.testing.assert_close(ours.sum(-1), torch.ones(ours.shape[:-1]), atol=1e-5, rtol=0)
    assert all((m == 0).any() for m in maps)  # exact zeros in every layer


def test_map_shapes_per_family():
    """SAM: per-window maps in windowed blocks, the full map in global ones; CaiT class attention: 1 query."""
    shapes = {}
    for family in ("sam", "cait", "dinov2_reg4", "siglip"):
        model = sparsify(small_model(family), pools=True)
        with torch.no_grad(), collect_attention(model) as maps:
            model(random_images(family))
        shapes[family] = [tuple(m.shape) for m in maps]
    assert shapes["sam"] == [(2 * 4, 4, 9, 9), (2, 4, 16, 16)]  # 4 windows of 3x3; 4x4 patches global
    assert shapes["cait"] == [(2, 4, 4, 4), (2, 4, 4, 4), (2, 4, 1, 5)]  # talking heads x2, class attention
    assert shapes["dinov2_reg4"] == [(2, 4, 9, 9)] * 2  # 4 patches + [CLS] + 4 registers
    assert shapes["siglip"] == [(2, 4, 4, 4), (2, 4, 4, 4), (2, 4, 1, 4)]  # blocks, then the latent query


@pytest.mark.parametrize(
    "normalizer, oracle",
    [("sparsemax", entmax.sparsemax), ("entmax1.25", lambda s, dim: entmax.entmax_bisect(s, 1.25, dim=dim))],
)
@pytest.mark.parametrize("family", ["dinov3", "beit"])
def test_other_normalisers_equal_the_oracle(family, normalizer, oracle):
    model = small_model(family)
    twin = unfused_copy(model)
    sparsify(model, normalizer)
    assert {c.normalizer for c in converted_modules(model)} == {normalizer}
    assert_blocks_match_oracle(model, twin, random_images(family), oracle)


@pytest.mark.parametrize("family", ["beit", "sam"])
def test_gradients_equal_the_oracle(family):
    model = small_model(family)
    oracle = unfused_copy(model)
    x = random_images(family)
    sparsify(model, "entmax15")
    target = torch.randn_like(model(x))
    (model(x) * target).sum().backward()
    with softmax_replaced_by(entmax.entmax15):
        (oracle(x) * target).sum().backward()
    theirs = dict(oracle.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-4, rtol=1e-3, msg=name)
    position = "relative_position_bias_table" if family == "beit" else "rel_pos_h"
    assert model.blocks[0].attn.get_parameter(position).grad.abs().sum() > 0  # through the bias too

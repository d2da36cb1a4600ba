"""``sparsify`` / ``collect_attention`` on every timm ViT family, against timm's own modules.

The oracle is timm itself: a copy of the model taken before ``sparsify``, in timm's unfused mode
(``fused_attn=False``), whose ``scores.softmax(dim=-1)`` is replaced by the ``entmax`` package's normaliser.
So each block's reference output comes from the timm module's own scores (RoPE, relative position
biases, windows, qk-norm, bias layouts, talking heads), normalised by an independent implementation.

Models are timm's architectures with random weights, shrunk (depth 2, width 64, 4 heads, tiny images) and
re-drawn with a larger spread so that the entmax maps have exact zeros.
"""

import contextlib
import copy
import math
import pickle

import entmax
import pytest
import timm
import torch
from timm.layers import Attention, AttentionPoolLatent, AttentionRope, DiffAttention, RotaryEmbeddingCat
from timm.layers.attention_pool import AttentionPoolPrr
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn, TalkingHeadAttn
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from timm.models.vision_transformer_sam import Attention as SamAttention
from timm.utils import AttentionExtract
from torch.utils._pytree import tree_map

import sparsedino  # noqa: F401  (registers the timm names)
from sparsedino.attention import SparseAttention, collect_attention, converted_modules, sparsify
from sparsedino.attention.families import SparseEvaAttention

SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)

# family -> (timm model, create_model kwargs besides SMALL, attention types sparsify converts by default)
FAMILIES = {
    "vit": ("vit_small_patch16_224", dict(img_size=32), {Attention}),
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=28), {Attention}),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=28), {Attention}),
    "deit3": ("deit3_small_patch16_224", dict(img_size=32), {Attention}),
    "deit_distilled": ("deit_small_distilled_patch16_224", dict(img_size=32), {Attention}),
    "siglip": ("vit_base_patch16_siglip_224", dict(img_size=32), {Attention}),  # + AttentionPoolLatent
    "registers_gap": ("vit_base_patch16_reg4_gap_256", dict(img_size=32), {Attention}),
    "flexivit": ("flexivit_small", dict(img_size=32), {Attention}),
    "naflexvit": ("naflexvit_base_patch16_gap", dict(img_size=32), {Attention}),
    "hybrid": ("vit_tiny_r_s16_p8_224", dict(img_size=64), {Attention}),  # ResNet stem, then ViT
    "dinov3": ("vit_small_patch16_dinov3", dict(img_size=32), {EvaAttention}),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28), {EvaAttention}),
    "rope_sbb": ("vit_medium_patch16_rope_reg1_gap_256", dict(img_size=32), {EvaAttention}),
    "rope_vit": ("vit_small_patch16_rope_224", dict(img_size=32), {AttentionRope}),
    "beit": ("beit_base_patch16_224", dict(img_size=32), {BeitAttention}),
    "relpos": ("vit_relpos_small_patch16_224", dict(img_size=32), {RelPosAttention}),
    # 4x4 patches, 3x3 windows: the block pads to 6x6 (4 windows); block 1 attends globally
    "sam": (
        "samvit_base_patch16",
        dict(img_size=64, window_size=3, global_attn_indexes=(1,)),
        {SamAttention},
    ),
    "cait": ("cait_xxs24_224", dict(img_size=32, depth_token_only=1), {TalkingHeadAttn, ClassAttn}),
}
ORACLES = {"entmax15": entmax.entmax15, "sparsemax": entmax.sparsemax}


def _model(family: str, **overrides) -> torch.nn.Module:
    name, kwargs, _ = FAMILIES[family]
    model = timm.create_model(name, pretrained=False, **{**SMALL, **kwargs, **overrides}).eval()
    with torch.no_grad():  # a wider spread than timm's init: clearly sparse maps, exact zeros
        for pname, p in model.named_parameters():
            if "norm" not in pname:
                p.normal_(0.0, 0.2)
    return model


def _images(family: str, batch: int = 2) -> torch.Tensor:
    size = FAMILIES[family][1]["img_size"]
    return torch.randn(batch, 3, size, size)


def _oracle(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the timm model in timm's unfused mode (scores, then ``.softmax``, then ``@ v``)."""
    oracle = copy.deepcopy(model)
    for m in oracle.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return oracle


@contextlib.contextmanager
def _softmax_replaced_by(normalize):
    """Within: ``Tensor.softmax`` is ``normalize`` (timm's unfused attention calls ``scores.softmax(-1)``)."""
    outputs = []

    def softmax(scores, dim, *args, **kwargs):
        outputs.append(normalize(scores, dim=dim))
        return outputs[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "softmax", softmax)
        yield outputs


def _record_calls(model: torch.nn.Module) -> tuple[list, list]:
    """Forward hooks on every converted module: [(path, args, kwargs, output)] in call order, and the handles."""
    calls, handles = [], []
    for info in converted_modules(model):

        def hook(module, args, kwargs, output, path=info.path):
            clone = tree_map(
                lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, (args, kwargs)
            )
            calls.append((path, *clone, output.detach()))

        handles.append(model.get_submodule(info.path).register_forward_hook(hook, with_kwargs=True))
    return calls, handles


def _assert_blocks_match_oracle(model, oracle, x, normalize) -> list[torch.Tensor]:
    """Each converted module's output on ``x`` equals the oracle module's on the same input; the oracle maps."""
    calls, handles = _record_calls(model)
    model(x)
    for h in handles:
        h.remove()
    assert calls
    with torch.no_grad(), _softmax_replaced_by(normalize) as oracle_maps:
        for path, args, kwargs, output in calls:
            expected = oracle.get_submodule(path)(*args, **kwargs)
            torch.testing.assert_close(output, expected, atol=2e-5, rtol=1e-4, msg=path)
    assert len(oracle_maps) == len(calls)  # the oracle really ran timm's unfused scores (one softmax a call)
    return oracle_maps


@pytest.mark.parametrize("family", FAMILIES)
def test_entmax_blocks_equal_the_oracle_and_softmax_gives_back_timm(family):
    model = _model(family)
    x = _images(family)
    with torch.no_grad():
        reference = model(x)
    oracle = _oracle(model)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    state = {k: v.clone() for k, v in model.state_dict().items()}

    assert sparsify(model, "entmax15") is model
    converted = {c.timm_type for c in converted_modules(model)}
    assert converted == {f"{t.__module__}.{t.__qualname__}" for t in FAMILIES[family][2]}
    assert params.keys() == dict(model.named_parameters()).keys()
    assert all(p is params[k] for k, p in model.named_parameters())  # reused, not copied
    assert all(b is buffers[k] for k, b in model.named_buffers())
    _assert_blocks_match_oracle(model, oracle, x, entmax.entmax15)

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
    model = _model(family)
    x = _images(family)
    oracle = _oracle(model)
    sparsify(model, "entmax15", pools=True)  # every softmax of the oracle has its sparse twin
    with torch.no_grad():
        fused = model(x)
        with collect_attention(model) as maps:
            materialised = model(x)
        with _softmax_replaced_by(entmax.entmax15) as oracle_maps:
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
        model = sparsify(_model(family), pools=True)
        with torch.no_grad(), collect_attention(model) as maps:
            model(_images(family))
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
    model = _model(family)
    twin = _oracle(model)
    sparsify(model, normalizer)
    assert {c.normalizer for c in converted_modules(model)} == {normalizer}
    _assert_blocks_match_oracle(model, twin, _images(family), oracle)


@pytest.mark.parametrize("family", ["beit", "sam"])
def test_gradients_equal_the_oracle(family):
    model = _model(family)
    oracle = _oracle(model)
    x = _images(family)
    sparsify(model, "entmax15")
    target = torch.randn_like(model(x))
    (model(x) * target).sum().backward()
    with _softmax_replaced_by(entmax.entmax15):
        (oracle(x) * target).sum().backward()
    theirs = dict(oracle.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-4, rtol=1e-3, msg=name)
    position = "relative_position_bias_table" if family == "beit" else "rel_pos_h"
    assert model.blocks[0].attn.get_parameter(position).grad.abs().sum() > 0  # through the bias too


def test_pools_are_converted_only_when_asked():
    model = _model("siglip")
    x = _images("siglip")
    with torch.no_grad():
        reference = model(x)
    oracle = _oracle(model)
    sparsify(model)
    assert type(model.attn_pool) is AttentionPoolLatent
    assert all(not c.path.startswith("attn_pool") for c in converted_modules(model))
    sparsify(model, pools=True)
    assert [c.path for c in converted_modules(model)][-1] == "attn_pool"
    assert isinstance(model.attn_pool, AttentionPoolLatent)  # converted in place: still timm's type
    _assert_blocks_match_oracle(model, oracle, x, entmax.entmax15)
    sparsify(model, "softmax")  # re-sets every converted module, the pool included
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_parameter_free_prr_pool():
    model = _model("vit", global_pool="prr")
    x = _images("vit")
    oracle = _oracle(model)
    sparsify(model, pools=True)
    assert isinstance(model.attn_pool, AttentionPoolPrr) and model.attn_pool.normalizer == "entmax15"
    _assert_blocks_match_oracle(model, oracle, x, entmax.entmax15)


def test_naflex_padding_masks_give_padded_keys_zero_weight():
    model = _model("naflexvit")
    oracle = _oracle(model)
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
    _assert_blocks_match_oracle(model, oracle, inputs, entmax.entmax15)
    with torch.no_grad(), collect_attention(model) as maps:
        model(inputs)
    prefix = model.embeds.num_prefix_tokens
    for m in maps:  # valid queries of image 1 give its padded keys exactly 0
        assert (m[1, :, : prefix + 4, prefix + 4 :] == 0).all()


def test_scale_override_and_validation():
    model = _model("dinov3")
    oracle = _oracle(model)
    sparsify(model, "entmax15", scale=0.5)
    assert {c.scale for c in converted_modules(model)} == {0.5}
    for m in oracle.modules():
        if isinstance(m, EvaAttention):
            m.scale = 0.5  # timm's unfused path reads it
    _assert_blocks_match_oracle(model, oracle, _images("dinov3"), entmax.entmax15)
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
    module = _model("dinov3").blocks[0].attn
    with pytest.raises(ValueError, match=r"invalid attention normalizer 'entmax0\.5'"):
        SparseEvaAttention.from_timm(module, "entmax0.5")
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        SparseEvaAttention.from_timm(module, "entmax15", scale=-1.0)
    assert type(module) is EvaAttention  # left as it was
    assert SparseEvaAttention.from_timm(module, "sparsemax", scale=0.25) is module
    assert (type(module), module.normalizer, module.scale) == (SparseEvaAttention, "sparsemax", 0.25)


def test_unknown_attention_raises_naming_path_and_type_and_changes_nothing():
    model = _model("vit")
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
    model = sparsify(_model("cait"), "sparsemax")
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
    model = sparsify(_model(family))
    x = _images(family)
    with torch.no_grad():
        hooked = AttentionExtract(model, method="hook")(x)  # hooks on *attn.attn_drop
        with collect_attention(model) as maps:
            model(x)
    assert len(hooked) == 2
    for ours, theirs in zip(maps, hooked.values()):
        torch.testing.assert_close(theirs, ours)


def test_converted_module_keeps_timm_methods_pickles_and_trains_with_dropout():
    model = sparsify(_model("dinov3", attn_drop_rate=0.5))
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
    model = _model("eva02")
    x = _images("eva02")
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
    model = sparsify(_model(family))
    x = _images(family, batch=1)
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
    oracle = _oracle(module)
    args, kwargs = inputs()
    with torch.no_grad():
        reference = module(*args, **kwargs)
    model = torch.nn.Sequential(module)  # sparsify converts children
    sparsify(model, "entmax15", pools=True)
    assert model[0] is module
    with torch.no_grad(), collect_attention(model) as maps:
        out = module(*args, **kwargs)
        with _softmax_replaced_by(entmax.entmax15) as oracle_maps:
            expected = oracle(*args, **kwargs)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(maps[0], oracle_maps[0], atol=2e-5, rtol=1e-4)
    assert (maps[0] == 0).any()
    sparsify(model, "softmax")
    with torch.no_grad():
        assert torch.equal(module(*args, **kwargs), reference)

"""The timm ViT families of the sparsify tests, shrunk, and the oracle they are checked against.

The oracle is timm itself: a copy of the model taken before ``sparsify``, in timm's unfused mode
(``fused_attn=False``), whose ``scores.softmax(dim=-1)`` is replaced by the ``entmax`` package's normaliser.
Models are timm's architectures with random weights, shrunk (depth 2, width 64, 4 heads, tiny images) and
re-drawn with a larger spread so that the entmax maps have exact zeros.
"""

import contextlib
import copy

import entmax
import pytest
import timm
import torch
from timm.layers import Attention, AttentionRope
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn, TalkingHeadAttn
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from timm.models.vision_transformer_sam import Attention as SamAttention
from torch.utils._pytree import tree_map

import sparsedino  # noqa: F401  (registers the timm names)
from sparsedino.attention import converted_modules

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


def small_model(family: str, **overrides) -> torch.nn.Module:
    name, kwargs, _ = FAMILIES[family]
    model = timm.create_model(name, pretrained=False, **{**SMALL, **kwargs, **overrides}).eval()
    with torch.no_grad():  # a wider spread than timm's init: clearly sparse maps, exact zeros
        for pname, p in model.named_parameters():
            if "norm" not in pname:
                p.normal_(0.0, 0.2)
    return model


def random_images(family: str, batch: int = 2) -> torch.Tensor:
    size = FAMILIES[family][1]["img_size"]
    return torch.randn(batch, 3, size, size)


def unfused_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the timm model in timm's unfused mode (scores, then ``.softmax``, then ``@ v``)."""
    oracle = copy.deepcopy(model)
    for m in oracle.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return oracle


@contextlib.contextmanager
def softmax_replaced_by(normalize):
    """Within: ``Tensor.softmax`` is ``normalize`` (timm's unfused attention calls ``scores.softmax(-1)``)."""
    outputs = []

    def softmax(scores, dim, *args, **kwargs):
        outputs.append(normalize(scores, dim=dim))
        return outputs[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "softmax", softmax)
        yield outputs


def record_calls(model: torch.nn.Module) -> tuple[list, list]:
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


def assert_blocks_match_oracle(model, oracle, x, normalize) -> list[torch.Tensor]:
    """Each converted module's output on ``x`` equals the oracle module's on the same input; the oracle maps."""
    calls, handles = record_calls(model)
    model(x)
    for h in handles:
        h.remove()
    assert calls
    with torch.no_grad(), softmax_replaced_by(normalize) as oracle_maps:
        for path, args, kwargs, output in calls:
            expected = oracle.get_submodule(path)(*args, **kwargs)
            torch.testing.assert_close(output, expected, atol=2e-5, rtol=1e-4, msg=path)
    assert len(oracle_maps) == len(calls)  # the oracle really ran timm's unfused scores (one softmax a call)
    return oracle_maps

"""The positive control: diffusion injected at evaluation time (diagnose/injection.py)."""

import pytest
import torch

from sparsedino.diagnose.injection import inject_diffusion, mix_tokens
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.diagnose.settings import DiagnoseConfig
from sparsedino.eval.features import forward_tokens, model_fingerprint

from .conftest import make_vit


def _tokens(model, images):
    return forward_tokens(model, images, [len(model.blocks) - 1], norm=True)


def test_amount_zero_is_bit_identical_and_one_copies_the_cls_token():
    model = make_vit("softmax")
    images = torch.randn(2, 3, 32, 32)
    cls, patches, _ = _tokens(model, images)
    with inject_diffusion(model, 0.0):
        cls0, patches0, _ = _tokens(model, images)
    assert torch.equal(cls0, cls) and torch.equal(patches0, patches)
    with inject_diffusion(model, 1.0):
        cls1, patches1, _ = _tokens(model, images)
    assert torch.equal(cls1, cls)  # the [CLS] token itself is untouched
    assert torch.equal(patches1, cls1[:, :, None, None].expand_as(patches1))  # every patch == [CLS]
    after, _, _ = _tokens(model, images)  # the hook is gone after the block
    assert torch.equal(after, cls)


def test_mean_source_and_partial_mixing_are_exact_interpolations():
    tokens = torch.randn(2, 1 + 6, 4)
    mixed = mix_tokens(tokens, 1, 0.25, "mean")
    mean = tokens[:, 1:].mean(1, keepdim=True)
    assert torch.allclose(mixed[:, 1:], 0.75 * tokens[:, 1:] + 0.25 * mean, atol=1e-6)
    assert torch.equal(mixed[:, :1], tokens[:, :1])


def test_injection_changes_the_feature_cache_key_and_restores_it():
    model = make_vit("softmax")
    clean = model_fingerprint(model)
    with inject_diffusion(model, 0.5):
        assert model_fingerprint(model) != clean
    assert model_fingerprint(model) == clean


@pytest.mark.parametrize(
    "bad", [{"amount": 1.5}, {"amount": 0.5, "source": "max"}, {"amount": 0.5, "block": 7}]
)
def test_bad_arguments_raise_naming_the_value(bad):
    with pytest.raises(ValueError, match=r"amount|source|block"), inject_diffusion(make_vit(), **bad):
        pass


def test_diffusion_index_rises_with_the_injected_amount(squares):
    # trained-free tiny model on squares whose background carries no label: injecting [CLS] into every
    # patch must make background patches predict the image label better
    model = make_vit("softmax", depth=2)
    cfg = DiagnoseConfig(n_images=48, img_size=32, batch_size=16, layers=[-1], n_figure_images=0,
                         patches_per_image=4, device="cpu")  # fmt: skip
    cfg.dense_probe.enabled = False
    acc = []
    for amount in (0.0, 0.5, 1.0):
        with inject_diffusion(model, amount):
            block = run_diagnostics(model, squares, cfg=cfg, progress=False)["blocks"]
        acc.append(block[max(block, key=int)]["diffusion.acc_bg"])
    assert acc[0] < acc[1] <= acc[2]
    assert acc[2] >= 0.9  # every patch is [CLS], which knows the label

"""Our normalisers in Hugging Face transformers: attn_implementation names, sparsify and collect_attention.

The oracle is transformers' own eager attention with its softmax swapped for the ``entmax`` package's
normaliser (``torch.nn.functional.softmax`` patched while the eager copy runs): same scores, scaling, masks
and dropout, computed by code that is not ours. Models are tiny and random (hidden 32, 2 layers, 2 heads,
32 px images, patch 8); ``initializer_range`` is raised so that the scores are large enough for exact zeros.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
entmax = pytest.importorskip("entmax")

from transformers import (  # noqa: E402
    AttentionInterface,
    AutoModel,
    DeiTConfig,
    DeiTModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    ViTConfig,
    ViTModel,
)

from sparsedino.attention import collect_attention, sparsify  # noqa: E402
from sparsedino.attention.hf import (  # noqa: E402
    contains_transformers_model,
    is_transformers_model,
    register_transformers_attention,
    sparsify_transformers,
)

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    initializer_range=0.15,
)
# name -> (config class, model class, extra config, config key of the attention dropout)
FAMILIES = {
    "vit": (ViTConfig, ViTModel, {}, "attention_probs_dropout_prob"),
    "deit": (DeiTConfig, DeiTModel, {}, "attention_probs_dropout_prob"),
    "dinov2": (Dinov2Config, Dinov2Model, {}, "attention_probs_dropout_prob"),
    "dinov2_reg": (Dinov2WithRegistersConfig, Dinov2WithRegistersModel, {"num_register_tokens": 4}, None),
    "dinov3": (DINOv3ViTConfig, DINOv3ViTModel, {"num_register_tokens": 2}, "attention_dropout"),
}
ORACLES = {
    "entmax15": lambda s, dim: entmax.entmax15(s, dim=dim),
    "sparsemax": lambda s, dim: entmax.sparsemax(s, dim=dim),
    "entmax1.25": lambda s, dim: entmax.entmax_bisect(s, alpha=1.25, dim=dim),
    "softmax": lambda s, dim: torch.softmax(s, dim=dim),
}


def _model(family: str, attention_dropout: float = 0.0, **kwargs) -> nn.Module:
    config_cls, model_cls, extra, dropout_key = FAMILIES[family]
    if dropout_key is not None:
        extra = {**extra, dropout_key: attention_dropout}
    return model_cls(config_cls(**SMALL, **extra, **kwargs)).eval()


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32)


@contextlib.contextmanager
def _eager_oracle(monkeypatch, normalizer: str):
    """transformers' eager softmax replaced by the ``entmax`` package's ``normalizer``; yields the call count."""
    calls = []

    def oracle(scores, dim=-1, dtype=None, **_):
        calls.append(scores.shape)
        return ORACLES[normalizer](scores if dtype is None else scores.to(dtype), dim)

    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.functional, "softmax", oracle)
        yield calls


def _run_oracle(monkeypatch, eager_model, normalizer, *args, **kwargs):
    assert eager_model.config._attn_implementation == "eager"
    with _eager_oracle(monkeypatch, normalizer) as calls:
        out = eager_model(*args, **kwargs)
    assert len(calls) == eager_model.config.num_hidden_layers  # the oracle really ran, once per layer
    return out


def _eager_copy(model: nn.Module) -> nn.Module:
    oracle = copy.deepcopy(model)
    oracle.set_attn_implementation("eager")
    return oracle


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_entmax_maps(maps, oracle_maps, tokens: int) -> None:
    assert len(maps) == len(oracle_maps) == SMALL["num_hidden_layers"]
    for p, q in zip(maps, oracle_maps):
        assert p.shape == (2, SMALL["num_attention_heads"], tokens, tokens)
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
        assert (p == 0).any() and (p > 0).any(dim=-1).all()  # exact zeros, never an empty row
        assert torch.allclose(p, q, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sparsify_matches_the_eager_oracle_and_softmax_gives_the_original_back(family, monkeypatch):
    model = _model(family)
    x = _images()
    with torch.no_grad():
        original = model(x).last_hidden_state
    state = _state(model)
    oracle = _eager_copy(model)

    assert sparsify(model, "entmax15") is model
    assert model.config._attn_implementation == "entmax15"
    with torch.no_grad():
        fused = model(x).last_hidden_state  # no probabilities materialised
        out = model(x, output_attentions=True)
        ref = _run_oracle(monkeypatch, oracle, "entmax15", x, output_attentions=True)
    assert torch.allclose(fused, ref.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)
    assert not torch.allclose(fused, original, atol=1e-3)
    _assert_entmax_maps(out.attentions, ref.attentions, tokens=original.shape[1])

    assert sparsify(model, "softmax") is model
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, original)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("spelling, name", [("sparsemax", "sparsemax"), ("entmax-1.25", "entmax1.25")])
def test_other_alphas_match_the_oracle(spelling, name, monkeypatch):
    assert register_transformers_attention(spelling) == name
    model = _model("dinov2_reg")
    oracle = _eager_copy(model)
    sparsify(model, spelling)
    assert model.config._attn_implementation == name
    x = _images()
    with torch.no_grad():
        out = model(x, output_attentions=True)
        ref = _run_oracle(monkeypatch, oracle, name, x, output_attentions=True)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)
    _assert_entmax_maps(out.attentions, ref.attentions, tokens=out.last_hidden_state.shape[1])


def test_from_pretrained_from_config_and_set_attn_implementation(tmp_path, monkeypatch):
    model = _model("dinov2")
    model.save_pretrained(tmp_path)
    x = _images()
    with torch.no_grad():
        ref = _run_oracle(monkeypatch, _eager_copy(model), "entmax15", x).last_hidden_state

    loaded = AutoModel.from_pretrained(tmp_path, attn_implementation="entmax15").eval()
    assert type(loaded) is Dinov2Model and loaded.config._attn_implementation == "entmax15"
    model.set_attn_implementation("entmax15")
    built = AutoModel.from_config(model.config, attn_implementation="entmax15").eval()
    built.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in (loaded, model, built):
            assert torch.allclose(m(x).last_hidden_state, ref, atol=1e-5)

    # a model loaded with ours goes to transformers' default on "softmax"; the folder never names ours
    sparsify(loaded, "softmax")
    assert loaded.config._attn_implementation == "sdpa"
    loaded.save_pretrained(tmp_path / "again")
    assert "entmax15" not in (tmp_path / "again" / "config.json").read_text()
    # the config's own attn_implementation reaches the constructor
    dinov3 = DINOv3ViTModel(DINOv3ViTConfig(**SMALL, attn_implementation="sparsemax"))
    assert dinov3.config._attn_implementation == "sparsemax"


def test_attention_dropout_is_the_eager_one_in_training_and_off_in_eval(monkeypatch):
    model = _model("vit", attention_dropout=0.5)
    oracle = _eager_copy(model).train()
    sparsify(model, "entmax15").train()
    x = _images()
    torch.manual_seed(1)
    y1 = model(x).last_hidden_state
    torch.manual_seed(1)
    ref = _run_oracle(monkeypatch, oracle, "entmax15", x).last_hidden_state
    assert torch.allclose(y1, ref, atol=1e-5)  # same probabilities, same dropout draws
    torch.manual_seed(2)
    assert not torch.allclose(model(x).last_hidden_state, y1, atol=1e-3)

    model.eval()
    oracle.eval()
    with torch.no_grad():
        y_eval = model(x).last_hidden_state
        assert torch.equal(model(x).last_hidden_state, y_eval)
        assert torch.allclose(
            y_eval, _run_oracle(monkeypatch, oracle, "entmax15", x).last_hidden_state, atol=1e-5
        )


def test_backward_matches_the_oracle_gradients(monkeypatch):
    model = _model("dinov3")
    oracle = _eager_copy(model)
    sparsify(model, "entmax15")
    x = _images()
    model(x).last_hidden_state.square().sum().backward()
    _run_oracle(monkeypatch, oracle, "entmax15", x).last_hidden_state.square().sum().backward()
    expected = {name: p.grad for name, p in oracle.named_parameters()}
    assert all(
        expected[name] is not None for name in expected if "_proj" in name
    )  # q, k, v and o of each layer
    for name, p in model.named_parameters():
        if expected[name] is None:  # unused without a masked-image input (the mask token)
            assert p.grad is None, name
            continue
        assert torch.isfinite(p.grad).all(), name
        assert torch.allclose(p.grad, expected[name], atol=1e-4, rtol=1e-4), name


def test_attention_mask_gives_masked_keys_exactly_zero_weight(monkeypatch):
    """ViT in transformers 5.x takes a 2D key mask; it is kept only because our names have a mask entry."""
    model = _model("vit")
    oracle = _eager_copy(model)
    sparsify(model, "entmax15")
    x = _images()
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[0, -5:] = False  # the last 5 patches of image 0 are padding
    with torch.no_grad():
        out = model(x, attention_mask=mask, output_attentions=True)
        fused = model(x, attention_mask=mask).last_hidden_state
        ref = _run_oracle(monkeypatch, oracle, "entmax15", x, attention_mask=mask, output_attentions=True)
    assert torch.allclose(fused, ref.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)
    for p, q in zip(out.attentions, ref.attentions):
        assert torch.equal(p[0, :, :, -5:], torch.zeros_like(p[0, :, :, -5:]))
        assert torch.allclose(p, q, atol=1e-5)


def test_scale_sets_every_layer_and_survives_softmax(monkeypatch):
    model = _model("deit")
    oracle = _eager_copy(model)
    for m in oracle.modules():
        if hasattr(m, "scaling"):
            m.scaling = 0.7
    sparsify(model, "entmax15", scale=0.7)
    assert [m.scaling for m in model.modules() if hasattr(m, "scaling")] == [0.7, 0.7]
    x = _images()
    with torch.no_grad():
        assert torch.allclose(
            model(x).last_hidden_state,
            _run_oracle(monkeypatch, oracle, "entmax15", x).last_hidden_state,
            atol=1e-5,
        )
        sparsify(model, "softmax")  # scale=None keeps each layer's scale, as for timm models
        assert torch.allclose(model(x).last_hidden_state, oracle(x).last_hidden_state, atol=1e-5)


def test_collect_attention_records_softmax_and_entmax_maps_through_an_adapter():
    class Adapter(nn.Module):  # what an eval/diagnose wrapper around a transformers backbone looks like
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(x).last_hidden_state

    model = _model("dinov2_reg")
    adapter = Adapter(model)
    x = _images()
    with torch.no_grad():
        original = adapter(x)
        eager = _eager_copy(model)(x, output_attentions=True).attentions  # transformers' softmax maps
        with collect_attention(adapter) as maps:
            y = adapter(x)
        assert model.config._attn_implementation == "sdpa"  # given back on exit
        assert torch.allclose(y, original, atol=1e-5)
        assert len(maps) == 2 and all(m.dtype == torch.float32 and not m.requires_grad for m in maps)
        assert all(torch.allclose(m, e, atol=1e-6) for m, e in zip(maps, eager))
        adapter(x)
        assert len(maps) == 2  # nothing recorded outside the context

        assert sparsify(adapter, "entmax15") is adapter
        expected = model(x, output_attentions=True).attentions
        with collect_attention(adapter) as maps:
            adapter(x)
        assert model.config._attn_implementation == "entmax15"
    assert len(maps) == 2 and all(torch.equal(m, e) for m, e in zip(maps, expected))
    assert all((m == 0).any() for m in maps)


def test_detection_does_not_claim_other_modules():
    model = _model("vit")
    adapter = nn.Sequential(nn.Identity(), model)
    assert is_transformers_model(model) and not is_transformers_model(adapter)
    assert contains_transformers_model(adapter) and not contains_transformers_model(nn.Linear(2, 2))


def test_bad_input_is_refused_before_anything_changes():
    model = _model("vit")
    with pytest.raises(ValueError, match=r"invalid attention normalizer 'entmax0\.5'"):
        sparsify(model, "entmax0.5")
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        sparsify(model, "entmax15", scale=-1.0)
    assert model.config._attn_implementation == "sdpa"
    assert all(m.scaling == 16**-0.5 for m in model.modules() if hasattr(m, "scaling"))
    with pytest.raises(ValueError, match="softmax is transformers' own attention"):
        register_transformers_attention("softmax")
    with pytest.raises(ValueError, match="no transformers PreTrainedModel in Linear"):
        sparsify_transformers(nn.Linear(2, 2), "entmax15")

    attn = AttentionInterface()["entmax15"]
    q = torch.randn(1, 2, 5, 8)
    module = nn.Module()
    with pytest.raises(ValueError, match="does not support transformers' 'softcap'"):
        attn(module, q, q, q, None, softcap=30.0)
    with pytest.raises(ValueError, match="grouped-query attention"):
        attn(module, q, q[:, :1], q[:, :1], None)

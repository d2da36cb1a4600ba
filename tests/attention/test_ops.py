"""attention(): softmax == SDPA, chunked == unchunked, masks, gradcheck, name validation."""

import entmax as ref
import pytest
import torch
import torch.nn.functional as F

from sparsedino.attention import attention, attention_probs, normalizer_name, ops, validate_normalizer


def _qkv(b=2, h=3, n=13, d=8, dtype=torch.float32, scale=1.0):
    return [(torch.randn(b, h, n, d, dtype=dtype) * scale).requires_grad_() for _ in range(3)]


def _grads(out, tensors):
    return torch.autograd.grad(out, tensors, torch.ones_like(out) * 0.5 + torch.arange(out.shape[-1]) * 0.1)


def test_softmax_goes_to_sdpa():
    q, k, v = _qkv()
    mask = torch.rand(2, 1, 13, 13) > 0.3
    mask[..., 0] = True
    assert torch.equal(
        attention(q, k, v, "softmax", attn_mask=mask), F.scaled_dot_product_attention(q, k, v, mask)
    )


@pytest.mark.parametrize("normalizer", ["entmax15", "sparsemax", 1.25])
def test_sparse_attention_matches_explicit_reference(normalizer):
    q, k, v = _qkv(scale=2.0)
    out = attention(q, k, v, normalizer)
    scores = q @ k.transpose(-2, -1) / 8**0.5
    fn = {"entmax15": ref.entmax15, "sparsemax": ref.sparsemax}.get(normalizer)
    probs = fn(scores, dim=-1) if fn else ref.entmax_bisect(scores, 1.25)
    expected = probs @ v
    assert (out - expected).abs().max() <= 1e-5
    for a, b in zip(_grads(out, (q, k, v)), _grads(expected, (q, k, v))):
        assert (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("chunk", [1, 4, 5, 12])
def test_chunked_equals_unchunked(chunk):
    q, k, v = _qkv(scale=2.0)
    mask = torch.zeros(13, 13).masked_fill(torch.rand(13, 13) < 0.3, float("-inf"))
    full = attention(q, k, v, attn_mask=mask, chunk_size=0)
    part = attention(q, k, v, attn_mask=mask, chunk_size=chunk)
    assert (full - part).abs().max() <= 1e-5
    for a, b in zip(_grads(full, (q, k, v)), _grads(part, (q, k, v))):
        assert (a - b).abs().max() <= 1e-5


def test_auto_chunking_above_threshold(monkeypatch):
    q, k, v = _qkv(n=40)
    monkeypatch.setattr(ops, "AUTO_CHUNK_BYTES", 1000)
    monkeypatch.setattr(ops, "BLOCK_BYTES", 2 * 3 * 40 * 4 * 16)
    # one batch element's scores (3 heads x 40 x 40 floats) exceed the budget of 32 rows: 2 blocks of 20
    assert ops.auto_chunk_size(q, k) == 20
    assert (attention(q, k, v) - attention(q, k, v, chunk_size=0)).abs().max() <= 1e-6


def test_tiles_spanning_batch_elements_match_unchunked_with_a_per_sample_mask(monkeypatch):
    q, k, v = _qkv(b=5, n=12, scale=2.0)
    mask = torch.rand(5, 1, 12, 12) > 0.3  # bool, one mask per sample, broadcast over heads
    monkeypatch.setattr(ops, "BLOCK_BYTES", 2 * q.shape[1] * 6 * 12 * 4)  # tiles of 2 samples x 6 rows
    assert ops.batch_per_tile(q, k, 6) == 2
    full = attention(q, k, v, attn_mask=mask, chunk_size=0)
    part = attention(q, k, v, attn_mask=mask, chunk_size=6)
    assert (full - part).abs().max() <= 1e-5
    for a, b in zip(_grads(full, (q, k, v)), _grads(part, (q, k, v))):
        assert (a - b).abs().max() <= 1e-5


def test_gradcheck_chunked_and_unchunked_float64():
    q, k, v = _qkv(b=1, h=2, n=6, d=3, dtype=torch.float64, scale=2.0)
    bias = torch.zeros(6, 6, dtype=torch.float64)
    bias[1, 2:] = float("-inf")
    for chunk in (0, 4):
        assert torch.autograd.gradcheck(
            lambda a, b, c, chunk=chunk: attention(a, b, c, attn_mask=bias, chunk_size=chunk), (q, k, v)
        )


def test_masks_bool_and_float_and_fully_masked_rows():
    q, k, v = _qkv(scale=2.0)
    keep = torch.rand(2, 3, 13, 13) > 0.4
    keep[..., 0] = True
    keep[0, 0, 3] = False  # fully masked query row
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    out_bool = attention(q, k, v, attn_mask=keep)
    out_float = attention(q, k, v, attn_mask=additive)
    assert torch.equal(out_bool, out_float)
    assert torch.isfinite(out_bool).all() and (out_bool[0, 0, 3] == 0).all()
    probs = attention_probs(q, k, attn_mask=keep)
    assert (probs[~keep] == 0).all()
    grads = _grads(out_bool, (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


def test_dtype_half_in_half_out():
    q, k, v = (t.detach().to(torch.bfloat16).requires_grad_() for t in _qkv())
    out = attention(q, k, v)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16


def test_dropout_on_probabilities():
    q, k, v = _qkv()
    torch.manual_seed(1)
    a = attention(q, k, v, dropout_p=0.5)
    assert not torch.allclose(a, attention(q, k, v))
    with pytest.raises(ValueError, match="dropout"):
        attention(q, k, v, dropout_p=0.5, chunk_size=4)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="softmaxx"):
        attention(q, k, v, "softmaxx")
    with pytest.raises(ValueError, match="attn_mask"):
        attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch, heads, tokens"):
        attention(q[0], k[0], v[0])


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("softmax", "softmax"),
        (1.0, "softmax"),
        ("entmax-1.5", "entmax15"),
        (1.5, "entmax15"),
        (2, "sparsemax"),
        ("entmax1.25", "entmax1.25"),
        (1.25, "entmax1.25"),
        ("ENTMAX15", "entmax15"),
    ],
)
def test_normalizer_names(value, name):
    assert normalizer_name(value) == name


@pytest.mark.parametrize("bad", ["relu", "entmaxx", 0.5, "entmax0.9", True, None])
def test_bad_normalizer_names_raise_naming_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(".", r"\.")):
        validate_normalizer(bad)

"""Sparse attention under autocast: scores and normaliser in float32, products in the autocast dtype."""

import pytest
import torch

from sparsedino.attention import attention, attention_probs, chunked, entmax15

DTYPES = [torch.bfloat16, torch.float16]


def _qkv(n=24, d=16):
    # fp32 leaves, as a model's activations are before autocast casts them; scores of std ~2
    return [(torch.randn(2, 3, n, d) * 1.4).requires_grad_() for _ in range(3)]


def _reference(q, k, v, dtype):
    """Exact entmax-1.5 of float32 scores of the autocast-rounded inputs; P @ V in ``dtype``."""
    qr, kr, vr = (t.detach().to(dtype) for t in (q, k, v))
    qf, kf, vf = (t.float().requires_grad_() for t in (qr, kr, vr))
    probs = entmax15(qf @ kf.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return probs, (qf, kf, vf)


@pytest.mark.parametrize("dtype", DTYPES)
def test_probabilities_come_from_unrounded_float32_scores(dtype):
    q, k, _ = _qkv()
    with torch.autocast("cpu", dtype=dtype):
        probs = attention_probs(q, k, "entmax15")
    expected, _ = _reference(q, k, q, dtype)
    assert probs.dtype == dtype
    # bit for bit: rounding the scores to the autocast dtype first would move thresholds and supports
    assert torch.equal(probs, expected.detach().to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [0, 8])
def test_attention_op_normalises_in_float32_and_returns_autocast_dtype(monkeypatch, dtype, chunk_size):
    seen = []
    real = chunked.normalize_scores

    def spy(scores, *args):
        seen.append(scores.dtype)
        return real(scores, *args)

    monkeypatch.setattr(chunked, "normalize_scores", spy)
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=dtype):
        out = attention(q, k, v, "entmax15", chunk_size=chunk_size)
    grad_out = torch.randn(out.shape)
    out.float().backward(grad_out)
    assert out.dtype == dtype
    assert seen and set(seen) == {torch.float32}  # forward, and the recomputation of chunked backward

    probs, (qf, kf, vf) = _reference(q, k, v, dtype)
    expected = probs.to(dtype).float() @ vf  # probabilities enter the product in the input dtype
    expected.backward(grad_out)
    tol = {torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)
    for got, want in zip((q.grad, k.grad, v.grad), (qf.grad, kf.grad, vf.grad)):
        assert got.dtype == torch.float32 and bool(got.isfinite().all())
        torch.testing.assert_close(got, want, atol=4 * tol, rtol=4 * tol)


@pytest.mark.parametrize("normalizer", ["sparsemax", 1.25])
def test_other_normalisers_under_autocast_match_float32(normalizer):
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, normalizer)
    out.float().sum().backward()
    ref_q, ref_k, ref_v = (t.detach().to(torch.bfloat16).float().requires_grad_() for t in (q, k, v))
    ref = attention(ref_q, ref_k, ref_v, normalizer)
    ref.sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(q.grad, ref_q.grad, atol=1e-1, rtol=1e-1)

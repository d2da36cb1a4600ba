"""The dispatch table (sparsedino.attention.dispatch) picks the path and kernels it states."""

import entmax
import pytest
import torch

from sparsedino.attention import attention, compiled, native, parse_normalizer, set_compile, sparsemax
from sparsedino.attention import entmax as entmax_module
from sparsedino.attention.dispatch import attention_path, normalizer_backward
from sparsedino.attention.entmax import entmax_bisect


def _qkv(n=9):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, n, 8, generator=g) for _ in range(3)]


@pytest.mark.parametrize(
    ("normalizer", "dropout_p", "masked", "path"),
    [
        ("softmax", 0.0, False, "sdpa"),
        ("softmax", 0.3, True, "sdpa"),
        ("entmax-1.5", 0.1, False, "materialise"),
        ("entmax15", 0.0, True, "fused"),
        ("1.25", 0.0, False, "fused"),  # CPU: adasplash is CUDA-only
        ("sparsemax", 0.0, False, "fused"),
    ],
)
def test_attention_path_follows_the_table(normalizer, dropout_p, masked, path):
    q, k, v = _qkv()
    mask = torch.ones(9, 9, dtype=torch.bool) if masked else None
    assert attention_path(q, k, v, parse_normalizer(normalizer), mask, dropout_p) == path


def test_entmax15_backend_follows_the_table():
    small, big = torch.randn(4, 33), torch.randn(40, 100)
    set_compile(False)  # no native code: big inputs take the eager row blocks, small ones the tensor ops
    try:
        assert compiled.entmax15_backend(small, -1, 1.0, 1000) == "compiled"
        assert compiled.entmax15_backend(big, -1, 1.0, 1000) == "eager"
        assert compiled.entmax15_backend(big.half(), -1, 1.0, 8) == "eager"
        assert compiled.entmax15_backend(big[:1], -1, 1.0, 8) == "compiled"  # one row: nothing to split
    finally:
        set_compile(None)
    if not native.available():
        pytest.skip("no C compiler")
    set_compile(True)
    try:
        assert compiled.entmax15_backend(small, -1, 1.0, 8) == "native"
        assert compiled.entmax15_backend(small.double(), 0, 1.0, 8) == "native"
        assert compiled.entmax15_backend(small, 0, 1.0, 8, last_dim_only=True) == "compiled"
        assert compiled.entmax15_backend(small.half(), -1, 1.0, 8) == "compiled"
        assert compiled.entmax15_backend(small, -1, 0.0, 8) == "compiled"
    finally:
        set_compile(None)
    assert entmax_module._EAGER_BLOCK > 8  # the tests pass a small block, production uses the module's


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_one_gradient_formula_for_autograd_and_the_attention_op(dtype):
    """The normalisers' autograd backward and the op's backward run the same formula.

    Same bits for sparsemax; alpha-entmax's autograd raises p to a tensor power (alpha may be a learnt
    tensor), the op to a float one, which may round differently.
    """
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 40, generator=g) * 3).to(dtype)
    x[0, :5] = float("-inf")
    grad = torch.randn(6, 40, generator=g).to(dtype)
    for normalizer, fn in (("sparsemax", sparsemax), ("entmax1.3", lambda t: entmax_bisect(t, 1.3))):
        xr = x.clone().requires_grad_()
        p = fn(xr)
        p.backward(grad)
        if normalizer == "sparsemax":  # (bisection's autograd keeps float32 p; the op gets p in x's dtype)
            assert torch.equal(normalizer_backward(p.detach(), grad, parse_normalizer(normalizer)), xr.grad)
        else:
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            p32 = entmax_bisect(x.to(compute), 1.3)
            torch.testing.assert_close(normalizer_backward(p32, grad, parse_normalizer(normalizer)), xr.grad)


def test_a_learned_bias_gets_its_gradient():
    """A float mask needing a gradient (BEiT's relative position table) takes the materialised path."""
    q, k, v = (t.requires_grad_() for t in _qkv())
    bias = torch.randn(1, q.shape[1], 9, 9, requires_grad=True)
    spec = parse_normalizer("entmax15")
    assert attention_path(q, k, v, spec, bias, 0.0) == "materialise"
    with torch.no_grad():
        assert attention_path(q, k, v, spec, bias, 0.0) == "fused"  # inference keeps the fused op
    attention(q, k, v, "entmax15", attn_mask=bias).square().sum().backward()
    ours = [t.grad.clone() for t in (q, k, v, bias)]
    for t in (q, k, v, bias):
        t.grad = None
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    (entmax.entmax15(scores, dim=-1) @ v).square().sum().backward()
    for mine, theirs in zip(ours, (q.grad, k.grad, v.grad, bias.grad)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)

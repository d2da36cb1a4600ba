"""Learned per-head alpha: alpha-entmax against the ``entmax`` package, gradients, the clamp, the layer."""

import entmax
import pytest
import timm
import torch
from timm.utils import AttentionExtract

from sparsedino.attention import SparseAttention, collect_attention
from sparsedino.attention.adaptive import ALPHA_MAX, ALPHA_MIN, bounded_alpha, entmax_adaptive
from sparsedino.attention.layers import enable_learned_alpha, learned_alphas
from sparsedino.train.schedules import param_groups

ALPHAS = [1.25, 1.5, 1.75, 2.0]  # one per head


def _reference(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The ``entmax`` package's bisection with one alpha per head of (B, H, N, M) scores."""
    return entmax.entmax_bisect(x, alpha.reshape(1, -1, 1, 1), dim=-1)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape", ["(H,)", "(1,H,1,1)"])
def test_forward_matches_entmax_bisect_per_head(dtype, atol, shape):
    x = 3.0 * torch.randn(2, 4, 6, 9, dtype=dtype)  # (B, H, N, M)
    alpha = torch.tensor(ALPHAS, dtype=dtype)
    p = entmax_adaptive(x, alpha if shape == "(H,)" else alpha.reshape(1, 4, 1, 1))
    assert p.dtype == dtype and p.shape == x.shape
    torch.testing.assert_close(p, _reference(x, alpha), atol=atol, rtol=0)
    assert bool((p == 0).any())  # sparse, as alpha > 1 must be
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 6, dtype=dtype))


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_gradients_wrt_scores_and_alpha_match_entmax_bisect(dtype, atol):
    x = 2.0 * torch.randn(2, 4, 5, 8, dtype=dtype)
    upstream = torch.randn_like(x)
    x1, a1 = x.clone().requires_grad_(), torch.tensor(ALPHAS, dtype=dtype, requires_grad=True)
    (entmax_adaptive(x1, a1) * upstream).sum().backward()
    x2 = x.clone().requires_grad_()
    a2 = torch.tensor(ALPHAS, dtype=dtype).reshape(1, 4, 1, 1).requires_grad_()
    (entmax.entmax_bisect(x2, a2, dim=-1) * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=atol, rtol=1e-5)
    torch.testing.assert_close(a1.grad, a2.grad.flatten(), atol=atol, rtol=1e-5)
    assert a1.grad.abs().min() > 0  # every head's alpha gets a signal


def test_gradcheck_in_float64():
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([1.2, 1.5, 1.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(entmax_adaptive, (x, alpha))


def test_masked_entries_rows_and_low_precision():
    x = torch.randn(1, 2, 3, 6)
    x[0, 0, 0, :2] = float("-inf")  # masked keys
    x[0, 1, 1] = float("-inf")  # a fully masked row
    x[0, 1, 2, 3] = float("inf")  # an overflowed score
    x.requires_grad_()
    alpha = torch.tensor([1.5, 1.75], requires_grad=True)
    p = entmax_adaptive(x, alpha)
    assert torch.equal(p[0, 0, 0, :2], torch.zeros(2))
    assert torch.equal(p[0, 1, 1], torch.zeros(6))  # zeros, not NaN
    assert bool(p[0, 1, 2].isnan().all())  # reported, as softmax does
    finite = p[:, :, :2]
    (finite * torch.randn_like(finite)).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(alpha.grad).all()
    assert torch.equal(x.grad[0, 1, 1], torch.zeros(6))
    y = torch.randn(2, 2, 4, 7)
    half = entmax_adaptive(y.bfloat16(), alpha.detach())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(
        half.float(), entmax_adaptive(y.bfloat16().float(), alpha.detach()), atol=4e-3, rtol=0
    )


def test_bad_alpha_is_refused():
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"\(1, 2\]"):
        entmax_adaptive(x, torch.tensor([1.0, 1.5]))
    with pytest.raises(ValueError, match="broadcast"):
        entmax_adaptive(x, torch.tensor([1.5, 1.5, 1.5]))


def _layer(**kwargs) -> SparseAttention:
    return SparseAttention(16, num_heads=4, qkv_bias=True, learn_alpha=True, **kwargs)


def test_layer_learns_one_alpha_per_head_from_the_normaliser_alpha():
    attn = _layer()
    assert attn.alpha.shape == (4,) and torch.equal(attn.alpha.detach(), torch.full((4,), 1.5))
    assert "alpha" in attn.state_dict()
    with torch.no_grad():
        attn.alpha.copy_(torch.tensor(ALPHAS))
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)  # (B, H, N, D) each
    expected = _reference(q @ k.transpose(-2, -1) * attn.scale, torch.tensor(ALPHAS)) @ v
    expected = attn.proj(expected.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    with collect_attention(attn) as maps:
        attn(x)
    torch.testing.assert_close(
        maps[0], _reference(q @ k.transpose(-2, -1) * attn.scale, torch.tensor(ALPHAS))
    )
    # Being 1-D, the alphas get no weight decay.
    no_decay = param_groups(attn)[1]
    assert no_decay["weight_decay"] == 0.0 and any(p is attn.alpha for p in no_decay["params"])
    with pytest.raises(ValueError, match="softmax"):
        SparseAttention(16, num_heads=4, normalizer="softmax", learn_alpha=True)
    assert "learn_alpha=True" in repr(attn) and SparseAttention(16, num_heads=4).alpha is None


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_alpha_stays_in_range_after_a_step_that_pushes_it_out_and_can_come_back(direction):
    attn = _layer()
    opt = torch.optim.SGD(attn.parameters(), lr=10.0)
    x = torch.randn(2, 5, 16)
    (direction * bounded_alpha(attn.alpha).sum()).backward()  # descent moves alpha by -10 * direction
    opt.step()
    raw = attn.alpha.detach()
    assert bool(((raw < ALPHA_MIN) if direction > 0 else (raw > ALPHA_MAX)).all())  # the step left the range
    used = torch.tensor(learned_alphas(attn)[0])
    assert bool(((used > 1.0) & (used <= 2.0)).all())
    assert torch.equal(used, torch.full((4,), ALPHA_MIN if direction > 0 else ALPHA_MAX))
    out = attn(x)
    assert torch.isfinite(out).all()
    # Outside the range the gradient flows only when descending it leads back towards the range.
    for sign, moves in ((direction, False), (-direction, True)):
        attn.alpha.grad = None
        (sign * bounded_alpha(attn.alpha).sum()).backward()
        assert bool((attn.alpha.grad != 0).all()) is moves


def test_learned_alpha_model_trains_traces_and_reports_alphas():
    model = timm.create_model(
        "vit_small_patch16_224", img_size=32, embed_dim=48, depth=2, num_heads=3, attn_layer=SparseAttention
    )
    assert enable_learned_alpha(model) is model
    assert learned_alphas(model) == [[1.5] * 3, [1.5] * 3]
    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    assert all(b.attn.alpha.grad is not None and b.attn.alpha.grad.abs().sum() > 0 for b in model.blocks)
    model.eval()
    hooked = AttentionExtract(model, method="hook")(x)
    traced = AttentionExtract(model, names=["*attn.adaptive_attention_probs"])(x)  # torch.fx leaves
    assert len(traced) == 2
    for fx_map, hook_map in zip(traced.values(), hooked.values()):
        torch.testing.assert_close(fx_map, hook_map)


def test_rows_newton_leaves_unconverged_are_solved_by_bisection():
    from sparsedino.attention.adaptive import _newton_forward

    x = 3.0 * torch.randn(2, 4, 5, 9, dtype=torch.float64)
    x[0, 1, 2] = float("-inf")  # a fully masked row stays zeros on the fallback path too
    alpha = torch.tensor(ALPHAS, dtype=torch.float64).reshape(4, 1, 1)
    p = _newton_forward(x, alpha, steps=0)  # no Newton step: every row falls back to bisection
    torch.testing.assert_close(
        p, torch.nan_to_num(_reference(x, alpha.flatten()), nan=0.0), atol=1e-12, rtol=0
    )
    assert torch.equal(p[0, 1, 2], torch.zeros(9, dtype=torch.float64))

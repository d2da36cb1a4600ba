"""Issue 12.10 (+inf scores): a row holding +inf gives NaN in every normaliser and on every path, as
softmax does (``torch.softmax`` and SDPA: exp(inf) / inf); ``-inf`` stays "masked" (0), fully masked rows 0."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from sparsedino.attention import attention, entmax15, entmax_bisect, native, set_compile, sparsemax
from sparsedino.attention import entmax as entmax_module

INF = float("inf")
NORMALISERS = {
    "entmax15": entmax15,
    "sparsemax": sparsemax,
    "entmax1.25": lambda x: entmax_bisect(x, 1.25),
}


def _scores(n: int) -> torch.Tensor:
    x = torch.randn(6, n)
    x[1, 2] = INF  # one +inf
    x[2, :2] = INF  # two +inf entries (ties)
    x[3, 1], x[3, 3] = INF, -INF  # +inf next to a masked entry
    x[4] = -INF  # fully masked row
    x[5, 0] = float("nan")
    return x


@pytest.fixture
def path(request, monkeypatch):
    if request.param == "native C kernels":
        if not any(shutil.which(c) for c in ("cc", "gcc", "clang")) or not native.available():
            pytest.skip("no C compiler: the native kernels are not built")
        set_compile(True)  # the native kernels run under the compile policy "1" or "auto"
        yield request.param
        set_compile(None)
        return
    if request.param == "eager row blocks":
        monkeypatch.setattr(entmax_module, "_EAGER_BLOCK", 8)  # several rows per block, many blocks
    yield request.param


CASES = [("eager", name) for name in sorted(NORMALISERS)]
CASES += [("eager row blocks", "entmax15"), ("native C kernels", "entmax15")]  # entmax-1.5's other paths


@pytest.mark.parametrize(("path", "name"), CASES, indirect=["path"])
@pytest.mark.parametrize("n", [5, 40])
def test_rows_with_plus_inf_are_nan_like_softmax(path, name, n):
    x = _scores(n).requires_grad_()
    p = NORMALISERS[name](x)
    softmax_nan = torch.softmax(x.detach(), -1).isnan().all(-1)
    assert softmax_nan.tolist() == [False, True, True, True, True, True]
    rows = [0, 1, 2, 3, 5]  # +inf (and NaN) rows: NaN as softmax; before, +inf rows came out all zeros
    assert p.detach()[rows].isnan().all(-1).tolist() == softmax_nan[rows].tolist()
    assert torch.equal(p.detach()[4], torch.zeros(n))  # fully masked: zeros, not NaN (unlike softmax)
    assert torch.allclose(p.detach()[0].sum(), torch.tensor(1.0))  # finite rows are untouched
    p.sum().backward()  # gradients exist; NaN rows stay NaN, the finite row's gradient is finite
    assert torch.isfinite(x.grad[0]).all()


def test_attention_with_a_plus_inf_mask_entry_matches_sdpa_nan_rows():
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    mask = torch.zeros(6, 6)
    mask[2, 4] = INF
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).isnan().any(-1)
    for normaliser in ("entmax15", "sparsemax", 1.25):
        for chunk in (0, 2):  # the default path and the tiled one
            out = attention(q, k, v, normaliser, attn_mask=mask, chunk_size=chunk)
            assert torch.equal(out.isnan().any(-1), expected), (normaliser, chunk)

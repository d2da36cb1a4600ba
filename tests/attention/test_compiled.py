"""The fast paths the eager test-suite does not take: native CPU kernels, torch.compile, the switch."""

import ast
import re
import shutil
from fnmatch import fnmatch
from pathlib import Path

import entmax as ref
import pytest
import torch

from sparsedino.attention import attention, compile_mode, compiled, entmax15, native, set_compile
from sparsedino.attention import entmax as entmax_module

HAS_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


@pytest.fixture
def fast_paths():
    set_compile(True)
    yield
    set_compile(None)


def test_compile_switch_and_env(monkeypatch):
    monkeypatch.setenv("SPARSEDINO_COMPILE", "auto")
    assert compile_mode() == "auto"
    monkeypatch.setenv("SPARSEDINO_COMPILE", "0")
    assert compile_mode() == "0" and not compiled.native_allowed()
    try:
        set_compile(True)
        assert compile_mode() == "1"
        set_compile(False)
        assert compile_mode() == "0"
    finally:
        set_compile(None)
    monkeypatch.setenv("SPARSEDINO_COMPILE", "maybe")
    with pytest.raises(ValueError, match="maybe"):
        compile_mode()


def test_auto_mode_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(name, fn):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(compiled, "_compiled", broken)
    monkeypatch.setattr(compiled, "_broken", None)
    monkeypatch.setenv("SPARSEDINO_COMPILE", "auto")
    x = torch.randn(4, 10)
    args = ("entmax15_newton", entmax_module._entmax15_newton, x, -1, 4)
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        p, _ok, all_ok = compiled.call(*args)
    assert torch.allclose(p, ref.entmax15(x), atol=1e-6) and bool(all_ok)
    compiled.call(*args)  # no second warning: the failure is remembered
    monkeypatch.setattr(compiled, "_broken", None)
    monkeypatch.setenv("SPARSEDINO_COMPILE", "1")
    with pytest.raises(RuntimeError, match="SPARSEDINO_COMPILE=1"):
        compiled.call(*args)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_cpu_kernels_are_exact(fast_paths, dtype):
    assert native.available(), native.build_error()
    for scale in (1e-4, 0.5, 3.0, 1e4):
        x = (torch.randn(64, 300, dtype=dtype) * scale).requires_grad_()
        x.data[:8, 50:] = float("-inf")
        xr = x.detach().clone().requires_grad_()
        p, pr = entmax15(x), ref.entmax15(xr)
        assert (p - pr).abs().max() <= 1e-5
        g = torch.randn_like(p)
        p.backward(g)
        pr.backward(g)
        assert (x.grad - xr.grad).abs().max() <= 1e-5
    # every row through the exact sort fallback (no Newton steps), ties, fully masked and NaN rows
    x = torch.randint(-3, 3, (40, 30)).to(dtype) * 0.5
    x[3] = float("-inf")
    x[5, 2] = float("nan")
    p = native.entmax15_rows(x.clone(), 1.0, 0)
    rows = [i for i in range(40) if i not in (3, 5)]
    assert (p[rows] - ref.entmax15(x[rows])).abs().max() <= 1e-6
    assert (p[3] == 0).all() and p[5].isnan().all()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_native_attention_matches_eager(fast_paths):
    q, k, v = (torch.randn(2, 3, 17, 8, requires_grad=True) for _ in range(3))
    mask = torch.rand(17, 17) > 0.2
    mask[:, 0] = True
    out = attention(q, k, v, attn_mask=mask, scale=0.7)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    set_compile(False)
    out_e = attention(q, k, v, attn_mask=mask, scale=0.7)
    grads_e = torch.autograd.grad(out_e.sum(), (q, k, v))
    assert (out - out_e).abs().max() <= 1e-5
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(grads, grads_e))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CC, reason="no C++ compiler")
def test_torch_compiled_kernels_match_reference(fast_paths):
    # The torch.compile path (used off-CPU, e.g. CUDA without adasplash), exercised on a tiny CPU shape.
    x = torch.randn(6, 9) * 2
    p, _ok, all_ok = compiled.call("entmax15_newton", entmax_module._entmax15_newton, x, -1, 4, 1.0, None)
    assert bool(all_ok) and (p - ref.entmax15(x)).abs().max() <= 1e-6
    g = torch.randn(6, 9)
    ds = compiled.call("entmax15_grad", entmax_module._entmax15_grad, p, g, -1, 1.0)
    xr = x.clone().requires_grad_()
    ref.entmax15(xr).backward(g)
    assert (ds - xr.grad).abs().max() <= 1e-5


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
@pytest.mark.parametrize("openmp", [True, False])
def test_native_kernels_split_rows_over_threads_exactly(fast_paths, monkeypatch, openmp):
    """Large inputs are spread over threads (OpenMP, or the thread pool of a build without it)."""
    assert native.available(), native.build_error()
    if openmp and not native._openmp:
        pytest.skip("the C compiler has no OpenMP")
    monkeypatch.setattr(native, "_openmp", openmp)
    monkeypatch.setattr(native, "MAX_THREADS", 2)
    x = torch.randn(600, 512) * 3.0  # 600 * 512 elements: enough work for two threads
    assert native._threads(600, 512) == 2
    p = native.entmax15_rows(x.clone(), 1.0, 4)
    assert (p - ref.entmax15(x)).abs().max() <= 1e-5
    g = torch.randn_like(p)
    ds = native.entmax15_grad_rows(p, g, 1.0)
    xr = x.clone().requires_grad_()
    (ref.entmax15(xr) * g).sum().backward()
    assert (ds - xr.grad).abs().max() <= 1e-5


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_thresholds_rebuild_the_forward_probabilities_bit_for_bit(fast_paths):
    assert native.available(), native.build_error()
    x = torch.randn(50, 77) * 4
    x[3] = float("-inf")
    x[7, :40] = float("-inf")
    x[9, 5] = float("nan")
    thr = torch.empty(50, 2)
    p = native.entmax15_rows(x.clone(), 0.3, 4, thresholds=thr)
    again = native.entmax15_recompute_rows(x.clone(), 0.3, thr)
    assert torch.equal(p[torch.arange(50) != 9], again[torch.arange(50) != 9])
    assert again[9].isnan().all() and (again[3] == 0).all()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
@pytest.mark.parametrize("masked", [False, True])
def test_native_tiled_attention_equals_unchunked(fast_paths, masked):
    # tiled backward rebuilds each tile's probabilities from the thresholds stored in forward
    q, k, v = (torch.randn(3, 2, 21, 8, requires_grad=True) for _ in range(3))
    mask = None
    if masked:
        mask = torch.rand(3, 1, 21, 21) > 0.3
        mask[..., 0] = True
    g = torch.randn(3, 2, 21, 8)
    full = attention(q, k, v, attn_mask=mask, scale=0.6, chunk_size=0)
    grads_full = torch.autograd.grad(full, (q, k, v), g)
    tiled = attention(q, k, v, attn_mask=mask, scale=0.6, chunk_size=5)
    grads_tiled = torch.autograd.grad(tiled, (q, k, v), g)
    assert (full - tiled).abs().max() <= 1e-6
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(grads_full, grads_tiled))


def test_kernel_source_ships_with_the_package():
    """The C files are package data (a wheel without them would silently fall back to tensor ops)."""
    root = Path(native.__file__).resolve().parents[2]
    section = (root / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    patterns = ast.literal_eval(re.search(r"^sparsedino = (\[.*\])$", section, re.M).group(1))
    for name in native.SOURCE_FILES:
        rel = (native.SOURCE_DIR / name).relative_to(root / "sparsedino").as_posix()
        assert (native.SOURCE_DIR / name).is_file()
        assert any(fnmatch(rel, p) for p in patterns), rel


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_build_cache_key_follows_the_source_contents(monkeypatch, tmp_path):
    """An edited kernel source gets a new cached library (the key hashes the files, not their names)."""
    src = tmp_path / "csrc"
    shutil.copytree(native.SOURCE_DIR, src)
    monkeypatch.setattr(native, "SOURCE_DIR", src)
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    flags = native.compile_flags(openmp=False)
    first = native._compile(compiler, flags, tmp_path / "cache")
    assert native._compile(compiler, flags, tmp_path / "cache") == first  # cached
    impl = src / native.SOURCE_FILES[1]
    impl.write_text(impl.read_text() + "\n/* edited */\n")
    second = native._compile(compiler, flags, tmp_path / "cache")
    assert second != first and second.is_file()
    assert "-DSPARSEDINO_TINY=1e-30" in flags

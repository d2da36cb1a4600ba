"""The torch.compile path (the rest of the suite runs eagerly) and the compile switch."""

import shutil

import entmax as ref
import pytest
import torch

from sparsedino.attention import attention, compile_mode, compiled, entmax15, set_compile


def test_compile_switch_and_env(monkeypatch):
    monkeypatch.setenv("SPARSEDINO_COMPILE", "auto")
    assert compile_mode() == "auto"
    monkeypatch.setenv("SPARSEDINO_COMPILE", "0")
    assert compile_mode() == "0"
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
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        p = entmax15(x)
    assert torch.allclose(p, ref.entmax15(x), atol=1e-6)
    entmax15(x)  # no second warning: the failure is remembered
    monkeypatch.setattr(compiled, "_broken", None)
    monkeypatch.setenv("SPARSEDINO_COMPILE", "1")
    with pytest.raises(RuntimeError, match="SPARSEDINO_COMPILE=1"):
        entmax15(x)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C++ compiler")
def test_compiled_entmax_attention_matches_reference():
    try:
        set_compile(True)
        q, k, v = (torch.randn(1, 2, 9, 4, requires_grad=True) for _ in range(3))
        out = attention(q, k, v, scale=1.0)
        expected = ref.entmax15(q @ k.transpose(-2, -1), dim=-1) @ v
        assert (out - expected).abs().max() <= 1e-5
        g = torch.autograd.grad(out.sum(), (q, k, v))
        ge = torch.autograd.grad(expected.sum(), (q, k, v))
        assert all((a - b).abs().max() <= 1e-5 for a, b in zip(g, ge))
    finally:
        set_compile(None)

"""The adasplash backend on CPU through Triton's interpreter: exactness, layout, and the production switch.

The kernels run in two worker processes (``adasplash_interpreter.py``: the interpreter must be switched on
before Triton is imported, and its shims and bounds checker stay out of this process). Each case sends CPU
tensors through ``attention()`` with the backend's device seam opened to "cpu", and compares the output and
the q/k/v gradients with our exact entmax in float64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsedino.attention import attention, backends
from sparsedino.attention.dispatch import attention_path
from sparsedino.attention.normalizers import parse_normalizer

pytest.importorskip("adasplash")
pytest.importorskip("triton")

WORKER = Path(__file__).with_name("adasplash_interpreter.py")
ROOT = Path(__file__).resolve().parents[2]

# (id, n, b, h, d, alpha, dtype, scale): DINO's local crops (37) and global crops (197, varlen padding),
# powers of two below and at the 128-row pre-pass block, a longer sequence, four head dims, three alphas.
CASES = [
    ("n37_d64", 37, 2, 1, 64, 1.5, "float32", None),
    ("n64_d32_h2", 64, 1, 2, 32, 1.5, "float32", None),
    ("n100_d32_a1.25_scaled", 100, 2, 1, 32, 1.25, "float32", 0.3),
    ("n128_d16_sparsemax", 128, 1, 1, 16, 2.0, "float32", None),
    ("n197_d64", 197, 1, 1, 64, 1.5, "float32", None),
    ("n256_d128", 256, 1, 1, 128, 1.5, "float32", None),
    ("n64_d64_fp16", 64, 1, 1, 64, 1.5, "float16", None),
    ("n128_d32_a1.25_fp16", 128, 1, 1, 32, 1.25, "float16", None),
]
# adasplash called directly, without our layout: lengths that touch memory outside its tensors.
DEFECTS = [
    ("direct_n64_no_varlen", 64, False, "_bwd_preprocess"),  # 128-row pre-pass blocks, no bounds mask
    ("direct_n37_varlen", 37, True, "_get_tau"),  # block-mask columns past ceil(37 / 16)
]
TOLERANCE = {"float32": 1e-5, "float16": 4e-3}  # of the largest reference magnitude
ENTMAX15 = parse_normalizer("entmax15")


def _case_dicts() -> list[dict]:
    cases = [
        {"id": i, "n": n, "b": b, "h": h, "d": d, "alpha": a, "dtype": dt, "scale": s}
        for i, n, b, h, d, a, dt, s in CASES
    ]
    cases += [
        {"id": i, "n": n, "b": 1, "h": 2, "d": 32, "alpha": 1.5, "direct": True, "varlen": vl}
        for i, n, vl, _ in DEFECTS
    ]
    return cases


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, dict]:
    """Results of every case, computed by two worker processes in parallel (about 45 s of CPU each)."""
    tmp = tmp_path_factory.mktemp("adasplash")
    cases = _case_dicts()
    heavy = {"n197_d64"}  # about as much work as all the others together
    groups = [[c for c in cases if c["id"] in heavy], [c for c in cases if c["id"] not in heavy]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = []
    for i, group in enumerate(groups):
        (tmp / f"cases{i}.json").write_text(json.dumps(group))
        cmd = [sys.executable, str(WORKER), str(tmp / f"cases{i}.json"), str(tmp / f"results{i}.json")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    results: dict[str, dict] = {}
    for i, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"interpreter worker failed:\n{output.decode()[-3000:]}"
        results.update(json.loads((tmp / f"results{i}.json").read_text()))
    return results


def test_launch_plan_stays_inside_adasplash_blocks():
    for n in range(1, 4097):
        plan = backends.launch_plan(n)
        assert plan.length >= n and plan.length % backends.THRESHOLD_BLOCK == 0, n
        if not plan.varlen:  # unmasked kernels: whole pre-pass blocks, power of two (adasplash's rule)
            assert plan.length == n and n >= backends.PREPASS_BLOCK and n & (n - 1) == 0, n
        # the longest varlen entry sets adasplash's block-mask size: it must be a whole number of blocks
        longest = plan.length if plan.extra_batch else n
        assert longest % backends.THRESHOLD_BLOCK == 0, n


@pytest.mark.parametrize(("case_id", "n", "varlen", "kernel"), DEFECTS)
def test_bounds_checker_catches_adasplash_defects(interpreted, case_id, n, varlen, kernel):
    # What our layout avoids: the same kernels, called as their defaults allow, write outside their tensors.
    result = interpreted[case_id]
    assert result.get("error") == "OutOfBounds", result
    assert result["message"].startswith(kernel)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_adasplash_path_matches_exact_entmax(interpreted, case):
    case_id, n, b, h, d, _, dtype, _ = case
    result = interpreted[case_id]
    assert "error" not in result, result.get("traceback")
    plan = backends.launch_plan(n)
    (call,) = result["calls"]  # the adasplash path was taken, once, with the planned layout
    assert call["shape"] == [b + plan.extra_batch, h, plan.length, d]
    expected_varlen = [n] * b + [plan.length] * plan.extra_batch if plan.varlen else None
    assert call["varlen"] == expected_varlen
    assert result["finite"]
    out_err, *grad_errs = result["errors"]
    assert out_err <= TOLERANCE[dtype], result
    assert max(grad_errs) <= TOLERANCE[dtype], result


def _qkv(n=64, d=32, requires_grad=True, dtype=torch.float32):
    return [torch.randn(1, 2, n, d, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


def test_switch_is_cuda_only_by_default():
    q, k, v = _qkv()
    assert backends.DEVICE_TYPES == ("cuda",)
    assert not backends.adasplash_usable(q, k, v, ENTMAX15)


@pytest.mark.parametrize(
    ("normalizer", "d", "dtype", "usable"),
    [
        ("entmax15", 64, torch.float32, True),
        ("sparsemax", 16, torch.float16, True),
        (1.25, 256, torch.bfloat16, True),
        ("softmax", 64, torch.float32, False),
        (3.0, 64, torch.float32, False),  # adasplash's solver covers 1 < alpha <= 2
        ("entmax15", 48, torch.float32, False),  # no kernel for this head dim
        ("entmax15", 64, torch.float64, False),
    ],
)
def test_switch_conditions(monkeypatch, normalizer, d, dtype, usable):
    monkeypatch.setattr(backends, "DEVICE_TYPES", ("cuda", "cpu"))
    q, k, v = _qkv(d=d, dtype=dtype)
    assert backends.adasplash_usable(q, k, v, parse_normalizer(normalizer)) is usable


def test_switch_needs_q_grad_when_k_or_v_need_one(monkeypatch):
    monkeypatch.setattr(backends, "DEVICE_TYPES", ("cuda", "cpu"))
    q, k, v = _qkv(requires_grad=False)
    k.requires_grad_()
    assert not backends.adasplash_usable(q, k, v, ENTMAX15)  # adasplash would keep no backward state
    with torch.no_grad():
        assert backends.adasplash_usable(q, k, v, ENTMAX15)


def test_masked_or_dropout_calls_take_the_portable_path(monkeypatch):
    monkeypatch.setattr(backends, "DEVICE_TYPES", ("cuda", "cpu"))

    def fail(*args, **kwargs):
        raise AssertionError("adasplash called")

    monkeypatch.setattr(backends, "adasplash_attention", fail)
    q, k, v = _qkv()
    mask = torch.ones(64, 64, dtype=torch.bool)
    attention(q, k, v, "entmax15", attn_mask=mask)
    attention(q, k, v, "entmax15", dropout_p=0.1)
    with pytest.raises(AssertionError, match="adasplash called"):
        attention(q, k, v, "entmax15")


def test_switch_sees_the_dtype_autocast_casts_to(monkeypatch):
    """The path is chosen once, before the casts: under autocast the switch judges the autocast dtype."""
    monkeypatch.setattr(backends, "DEVICE_TYPES", ("cuda", "cpu"))
    seen = []

    def kernel(q, k, v, spec, scale):
        seen.append((q.dtype, k.dtype, v.dtype, spec.name, scale))
        return torch.zeros_like(q)

    monkeypatch.setattr(backends, "adasplash_attention", kernel)
    q, k, v = _qkv(dtype=torch.float64)  # float64: no adasplash kernel
    assert attention_path(q, k, v, ENTMAX15, None, 0.0) == "fused"
    attention(q, k, v, "entmax15")
    assert not seen
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_path(q, k, v, ENTMAX15, None, 0.0) == "adasplash"
        out = attention(q, k, v, "entmax-1.5")
    assert seen == [(torch.bfloat16, torch.bfloat16, torch.bfloat16, "entmax15", 32**-0.5)]
    assert out.dtype == torch.bfloat16

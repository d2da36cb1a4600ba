"""``sparsedino bench gpu`` in its CPU dry-run mode: every check runs, the JSON schema, loud failures."""

from __future__ import annotations

import json

import pytest
import torch

from sparsedino.bench import gpu, gpu_attention


def _run(tmp_path, *extra):
    out = tmp_path / "gpu.json"
    code = gpu.main(["--device", "cpu", "--out", str(out), "--workdir", str(tmp_path / "work"), *extra])
    return code, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_runs_every_check_and_writes_the_documented_schema(tmp_path):
    code, result = _run(tmp_path)
    assert code == 0 and result["ok"] and result["failures"] == []
    assert result["mode"] == "dry-run" and set(result["seconds"]) == set(gpu.SECTIONS)
    shapes = [list(s) for s in gpu.SMOKE.shapes]
    rows = result["attention"]
    assert [(r["shape"], r["path"]) for r in rows] == [(s, p) for s in shapes for p in gpu_attention.PATHS]
    for r in rows:
        if r["path"] == "adasplash":
            assert r["skipped"] == "needs CUDA"  # on CPU only; on a GPU a missing path is a failure
        else:
            assert r["fwd_bwd_ms"] > 0 and r["peak_mb"] >= 0 and r["ratio_vs_sdpa"] > 0
    exact = [r for r in result["exactness"] if not r["skipped"]]
    assert len(exact) == len(shapes) * 2 * 3  # float32 + bfloat16, sdpa / compiled / eager
    assert all(r["ok"] and r["finite"] and r["out_err"] <= r["tolerance"] for r in exact)
    step = result["dino_step"]
    assert [r["normalizer"] for r in step["rows"]] == ["softmax", "entmax15"]
    assert step["rows"][1]["ratio_vs_softmax"] > 0 and step["setup"]["precision"] == "bf16"
    run = result["dino_run"]
    assert run["ok"] and len(run["losses"]) == gpu.SMOKE.run.iterations
    assert run["max_weight_diff"] == 0.0 and run["max_loss_diff"] == 0.0  # CPU training is deterministic


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda out: out + 0.05 * out.abs().max(), "relative errors"),
        (lambda out: out * float("nan"), "finite False"),
    ],
)
def test_an_inexact_or_non_finite_path_fails_loudly(tmp_path, monkeypatch, capsys, corrupt, message):
    real = gpu_attention.attention

    def broken(q, k, v, *args, **kwargs):
        out = real(q, k, v, *args, **kwargs)
        return out if q.dtype == torch.float64 else corrupt(out)  # the float64 reference stays right

    monkeypatch.setattr(gpu_attention, "attention", broken)
    code, result = _run(tmp_path, "--sections", "exactness")
    assert code == 1 and not result["ok"]
    failed = {f["check"] for f in result["failures"]}
    assert (
        "exactness/eager/float32/(4, 2, 37, 16)" in failed
        and "exactness/compiled/bfloat16/(2, 2, 197, 16)" in failed
    )
    assert not any(c.startswith("exactness/sdpa") for c in failed)  # SDPA does not go through attention()
    assert all(message in f["message"] for f in result["failures"])
    printed = capsys.readouterr().out
    assert "FAILED exactness/eager/float32/(4, 2, 37, 16)" in printed


def test_a_path_that_crashes_is_a_failure_naming_it(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gpu_attention, "time_path", crash)
    monkeypatch.setattr(gpu, "time_path", crash)
    code, result = _run(tmp_path, "--sections", "attention")
    assert code == 1
    assert result["failures"][0]["check"] == "attention/sdpa/(4, 2, 37, 16)"
    assert "kernel exploded" in result["failures"][0]["message"]


def test_unknown_section_is_rejected(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--out", str(out), "--sections", "attention,warp"]) == 2
    assert "sparsedino bench gpu: error: --sections: unknown section(s) ['warp']" in capsys.readouterr().err
    assert not out.exists()

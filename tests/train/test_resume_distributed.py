"""Process-level guarantees: kill -9 + resume == uninterrupted; 2 gloo ranks == 1 rank (same global batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sparsedino.train import load_train_config, run_training

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", SPARSEDINO_COMPILE="0", PYTHONUNBUFFERED="1")
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_NTASKS",
        "SLURM_PROCID",
    ):
        env.pop(key, None)
    return env


# ``sparsedino train`` with fp16 + GradScaler opened to CPU (torch's CPU autocast and GradScaler("cpu") run the
# code path CUDA uses; for users fp16 stays a CUDA mode).
_FP16_ON_CPU = (
    "import sys; import sparsedino.train.settings as s; s.FP16_DEVICES = ('cuda', 'cpu'); "
    "from sparsedino.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def _train_cmd(overrides, fp16_on_cpu=False):
    entry = ["-c", _FP16_ON_CPU] if fp16_on_cpu else ["-m", "sparsedino"]
    return [sys.executable, *entry, "train", "dino_cpu_tiny", *overrides]


def _assert_same_weights(a, b, atol):
    ca = torch.load(a / "checkpoint.pth", weights_only=True)
    cb = torch.load(b / "checkpoint.pth", weights_only=True)
    assert (ca["epoch"], ca["global_step"]) == (cb["epoch"], cb["global_step"])
    for part in ("student", "teacher"):
        assert set(ca[part]) == set(cb[part])
        for key in ca[part]:
            torch.testing.assert_close(
                ca[part][key], cb[part][key], atol=atol, rtol=1e-4, msg=f"{part}.{key}"
            )
    torch.testing.assert_close(ca["dino_loss"]["center"], cb["dino_loss"]["center"], atol=atol, rtol=1e-4)


def _steps_logged(out):
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_kill_9_then_resume_matches_uninterrupted_run(image_root, tmp_path, tiny_overrides, precision):
    extra = [
        "optim.epochs=3",
        "run.checkpoint_every_iters=1",
        "model.drop_path_rate=0.2",
        "optim.freeze_last_layer=1",
        f"run.precision={precision}",
    ]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    fp16 = precision == "fp16"
    subprocess.run(
        _train_cmd(tiny_overrides(image_root, ref, *extra), fp16), env=_env(), check=True, capture_output=True
    )

    cmd = _train_cmd(tiny_overrides(image_root, run, *extra), fp16)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _steps_logged(run) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # early in epoch 2, at whatever instruction it was executing
    proc.wait()
    killed_at = torch.load(run / "checkpoint.pth", weights_only=True)
    assert (killed_at["epoch"], killed_at["global_step"]) < (3, 12)

    subprocess.run(cmd, env=_env(), check=True, capture_output=True)
    _assert_same_weights(ref, run, atol=1e-6)
    scalers = [torch.load(r / "checkpoint.pth", weights_only=True)["fp16_scaler"] for r in (ref, run)]
    assert scalers[0] == scalers[1]
    if fp16:  # the GradScaler skipped its first steps (scale 2**16 -> 2**8): resumed with its state
        assert scalers[0]["scale"] < 2.0**16
    else:
        assert scalers[0] is None
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s)  # no duplicated steps after resume


def test_two_gloo_ranks_match_one_process_with_same_global_batch(image_root, tmp_path, tiny_overrides):
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["optim.epochs=2", "optim.freeze_last_layer=1"]
    run_training(
        load_train_config(
            "dino_cpu_tiny", tiny_overrides(image_root, one, *base, "optim.batch_size_per_gpu=8")
        )
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*torchrun, "-m", "sparsedino", "train", "dino_cpu_tiny",
         *tiny_overrides(image_root, two, *base, "optim.batch_size_per_gpu=4")],
        env=_env(),
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((two / "train_summary.json").read_text())
    assert (summary["world_size"], summary["global_batch"]) == (2, 8)
    _assert_same_weights(one, two, atol=1e-5)


def test_a_failing_rank_makes_the_job_fail_instead_of_hanging(image_root, tmp_path, tiny_overrides):
    # Rank 1 reads a folder that does not exist: it raises while rank 0 waits in a collective.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = (
        "import os, sys\n"
        "from sparsedino.cli import main\n"
        "args = sys.argv[1:]\n"
        "if os.environ['RANK'] == '1': args = [a if not a.startswith('data.path=') else 'data.path=/nonexistent' "
        "for a in args]\n"
        "raise SystemExit(main(args))\n"
    )
    (tmp_path / "entry.py").write_text(script)
    start = time.time()
    result = subprocess.run(
        [*torchrun, str(tmp_path / "entry.py"), "train", "dino_cpu_tiny",
         *tiny_overrides(image_root, tmp_path / "run", "run.dist_timeout_s=30")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )  # fmt: skip
    assert result.returncode != 0
    assert "nonexistent" in result.stderr  # the failing rank's own error reaches the user
    assert time.time() - start < 120

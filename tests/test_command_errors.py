"""Issues 13.5 and 12.9: a user error is one line on stderr and exit code 2 in every command; a bug keeps
its traceback (exit 1). Each case is bad input a user can give: a corrupt image, a bad mask, a malformed
checkpoint, an unwritable or full output folder, a device this machine does not have."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections import namedtuple

import pytest
import torch
from PIL import Image

from sparsedino.cli import main
from sparsedino.data.synthetic import write_synthetic_dataset
from sparsedino.models.vit import build_vit

from .cli_errors import error_line


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The embedded dataset (ImageNet + VOC layouts), 32 px."""
    root = tmp_path_factory.mktemp("errors") / "data"
    write_synthetic_dataset(root, n_train=16, n_val=8, size=32, seed=1, num_classes=3)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "pico.pth"
    torch.manual_seed(0)
    torch.save(build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax").state_dict(), path)
    return path


def _copy(data, tmp_path):
    shutil.copytree(data, tmp_path / "data")
    return tmp_path / "data"


SEG = ["crop_size=32", "eval_short_side=32", "eval_stride=32", "iters=2", "batch_size=4", "warmup_iters=0"]


def test_eval_knn_corrupt_image(data, checkpoint, tmp_path, capsys):
    root = _copy(data, tmp_path)
    broken = sorted((root / "imagenet" / "train").rglob("*.png"))[5]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = ["eval", "knn", "--checkpoint", str(checkpoint), "--data", str(root / "imagenet"), "--out",
            str(tmp_path / "o"), "resize=32", "crop=32", "ks=[2]", "features.device=cpu"]  # fmt: skip
    assert main(argv) == 2
    assert broken.name in error_line(capsys, "sparsedino eval knn")


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_seg_corrupt_image_also_from_a_loader_worker(data, checkpoint, tmp_path, capsys, workers):
    root = _copy(data, tmp_path)
    broken = sorted((root / "VOC2012" / "JPEGImages").glob("*train*"))[3]
    broken.write_bytes(b"\xff\xd8\xff garbage")
    argv = ["eval", "seg", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(tmp_path / "o"),
            *SEG, "features.device=cpu", f"features.num_workers={workers}"]  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys, "sparsedino eval seg")
    assert broken.name in line and "Original Traceback" not in line


def test_eval_checks_out_before_any_work_and_refuses_text_and_nan_checkpoints(
    data, checkpoint, tmp_path, capsys
):
    common = ["--data", str(data / "imagenet"), "resize=32", "crop=32", "features.device=cpu"]
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert main(["eval", "linear", "--checkpoint", str(tmp_path / "absent.pth"), "--out", str(blocker / "o"),
                 *common]) == 2  # fmt: skip
    assert "--out" in error_line(capsys, "sparsedino eval linear")  # not the checkpoint: --out came first
    text = tmp_path / "notes.pth"
    text.write_text("hello, this is not a checkpoint\n")
    assert main(["eval", "linear", "--checkpoint", str(text), "--out", str(tmp_path / "o"), *common]) == 2
    assert "not a PyTorch checkpoint" in error_line(capsys, "sparsedino eval linear")
    state = torch.load(checkpoint, weights_only=True)
    state["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "nan.pth"), "--out", str(tmp_path / "o"),
                 *common]) == 2  # fmt: skip
    assert "blocks.1.mlp.fc1.weight" in error_line(capsys, "sparsedino eval knn")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(data, checkpoint, tmp_path, capsys):
    argv = [
        "eval",
        "knn",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data / "imagenet"),
        "features.device=cuda",
    ]
    assert main(argv) == 2
    assert "features.device" in error_line(capsys, "sparsedino eval knn")


def test_diagnose_bad_mask_and_malformed_checkpoint(data, checkpoint, tmp_path, capsys):
    root = _copy(data, tmp_path)
    masks = sorted((root / "VOC2012" / "SegmentationClass").glob("*val*"))
    Image.fromarray(torch.full((32, 32), 200, dtype=torch.uint8).numpy(), "L").save(masks[2])
    argv = ["diagnose", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(tmp_path / "o"),
            "img_size=32", "n_images=8", "batch_size=4", "dense_probe.enabled=false", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    line = error_line(capsys, "sparsedino diagnose")
    assert masks[2].name in line and "[200]" in line
    state = torch.load(checkpoint, weights_only=True)
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:10]  # wrong shape
    torch.save(state, tmp_path / "shape.pth")
    argv[2] = str(tmp_path / "shape.pth")
    assert main(argv) == 2
    assert "shape.pth" in error_line(capsys, "sparsedino diagnose")


def test_export_random_bytes_are_not_called_an_unsafe_pickle(tmp_path, capsys):
    (tmp_path / "rand.pth").write_bytes(bytes(range(256)) * 8)
    assert main(["export", str(tmp_path / "rand.pth"), "--out", str(tmp_path / "x.pth")]) == 2
    line = error_line(capsys, "sparsedino export")
    assert "not a PyTorch checkpoint" in line and "arbitrary code" not in line


def test_train_unwritable_and_full_output_folders(data, tmp_path, capsys, monkeypatch):
    base = ["train", "dino_cpu_tiny", f"data.path={data / 'imagenet'}", "run.device=cpu"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*base, f"run.output_dir={blocker / 'run'}"]) == 2
    assert "is not a folder" in error_line(capsys, "sparsedino train")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    assert main([*base, f"run.output_dir={tmp_path / 'run'}"]) == 2
    assert "no space left on device" in error_line(capsys, "sparsedino train")


def test_a_full_disk_during_a_write_is_reported_as_such(tmp_path, monkeypatch, capsys):
    from sparsedino.errors import run_command

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", no_space)

    def body():
        from sparsedino.atomic import atomic_torch_save

        atomic_torch_save({"w": torch.zeros(4)}, tmp_path / "ckpt.pth")

    assert run_command("sparsedino train", body) == 2
    assert "no space left on device" in error_line(capsys, "sparsedino train")
    assert list(tmp_path.iterdir()) == []  # no half-written or temporary file left


def test_data_synth_and_bench_check_their_options_first(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--size", "8"]) == 2
    assert "--size" in error_line(capsys, "sparsedino data synth")
    (tmp_path / "file").write_text("x")
    assert main(["bench", "attention", "--json", str(tmp_path / "file" / "r.json")]) == 2
    assert "--json" in error_line(capsys, "sparsedino bench attention")


def test_a_bug_keeps_its_traceback_and_exit_code_1(checkpoint, data, tmp_path):
    script = textwrap.dedent(
        f"""
        import sparsedino.eval.command as command
        def buggy(protocol, model, cfg, out=None):  # a programming error, not bad input: a ValueError of ours
            raise ValueError("internal: shapes do not line up")
        command.run_protocol = buggy
        from sparsedino.cli import main
        raise SystemExit(main(["eval", "knn", "--checkpoint", {str(checkpoint)!r}, "--data",
                               {str(data / "imagenet")!r}, "--out", {str(tmp_path / "o")!r}]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: internal: shapes do not line up" in result.stderr

"""Issue 24: ``sparsedino export`` never destroys a training checkpoint or its own input, never leaves a
weights file without its sidecar, and an export read without its sidecar keeps its attention."""

from __future__ import annotations

import os

import pytest
import torch

from sparsedino.cli import main
from sparsedino.models import CheckpointError, DINOHead, MultiCropWrapper, build_vit, load_backbone

from ..cli_errors import error_line as _error_line

PROG = "sparsedino export"


def error_line(capsys) -> str:
    return _error_line(capsys, PROG)


def _training_checkpoint(path, normalizer="entmax15"):
    """A resumable checkpoint in our training layout (student, teacher, optimizer) with an entmax teacher."""
    torch.manual_seed(0)

    def net():
        return MultiCropWrapper(
            build_vit("vit_pico", patch_size=8, img_size=32, normalizer=normalizer), DINOHead(48, 64)
        )

    student, teacher = net(), net()
    optimizer = torch.optim.AdamW(student.parameters())
    meta = {"arch": "vit_pico", "patch_size": 8, "normalizer": normalizer, "num_registers": 0, "epoch": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": 3, "sparsedino": meta}, path)  # fmt: skip
    return path


def test_export_refuses_to_write_over_its_own_input(tmp_path, capsys):
    ckpt = _training_checkpoint(tmp_path / "run" / "checkpoint.pth")
    before = ckpt.read_bytes()
    assert main(["export", str(ckpt), "--out", str(ckpt)]) == 2
    assert "would overwrite the checkpoint being exported" in error_line(capsys)
    assert (
        main(
            ["export", str(ckpt), "--out", str(tmp_path / "run" / ".." / "run" / "checkpoint.pth"), "--force"]
        )
        == 2
    )
    assert "would overwrite" in error_line(capsys)
    assert ckpt.read_bytes() == before  # the run can still resume


def test_export_never_replaces_a_training_checkpoint_even_with_force(tmp_path, capsys):
    source = _training_checkpoint(tmp_path / "a" / "checkpoint.pth")
    other = _training_checkpoint(tmp_path / "b" / "checkpoint.pth", normalizer="softmax")
    before = other.read_bytes()
    for extra in ([], ["--force"]):
        assert main(["export", str(source), "--out", str(other), *extra]) == 2
        assert "is a training checkpoint" in error_line(capsys)
    assert other.read_bytes() == before


def test_export_replaces_another_existing_file_only_with_force(tmp_path, capsys):
    source = _training_checkpoint(tmp_path / "checkpoint.pth")
    out = tmp_path / "notes.pth"
    out.write_text("my own file")
    assert main(["export", str(source), "--out", str(out)]) == 2
    assert "--force" in error_line(capsys) and out.read_text() == "my own file"
    assert main(["export", str(source), "--out", str(out), "--force"]) == 0
    assert load_backbone(out)[1].normalizer == "entmax15"


def test_a_failed_sidecar_write_leaves_no_weights_file(tmp_path, capsys, monkeypatch):
    source = _training_checkpoint(tmp_path / "checkpoint.pth")
    real_replace = os.replace

    def full_disk_for_the_sidecar(src, dst):
        if str(dst).endswith(".pth.json"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_for_the_sidecar)
    assert main(["export", str(source), "--out", str(tmp_path / "x.pth")]) == 2
    assert "no space left on device" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no x.pth, no temporaries


def test_an_export_without_its_sidecar_keeps_its_attention(tmp_path, capsys):
    source = _training_checkpoint(tmp_path / "checkpoint.pth")
    out = tmp_path / "x.pth"
    assert main(["export", str(source), "--out", str(out)]) == 0
    (tmp_path / "x.pth.json").unlink()  # copied without its sidecar
    model, info = load_backbone(out)
    assert (info.normalizer, info.arch, info.source) == ("entmax15", "vit_pico", "export")
    assert all(block.attn.normalizer == "entmax15" for block in model.blocks)
    state = torch.load(out, weights_only=True)  # still the bare state dict other tools expect
    assert all(torch.is_tensor(v) for v in state.values())
    build_vit("vit_pico", patch_size=8, img_size=32).load_state_dict(state)


def test_a_sidecar_left_by_another_export_is_refused(tmp_path):
    entmax = _training_checkpoint(tmp_path / "e" / "checkpoint.pth")
    softmax = _training_checkpoint(tmp_path / "s" / "checkpoint.pth", normalizer="softmax")
    assert main(["export", str(entmax), "--out", str(tmp_path / "a.pth")]) == 0
    assert main(["export", str(softmax), "--out", str(tmp_path / "b.pth")]) == 0
    (tmp_path / "b.pth.json").replace(tmp_path / "a.pth.json")  # a's sidecar now describes b
    with pytest.raises(CheckpointError, match="does not describe"):
        load_backbone(tmp_path / "a.pth")


def test_a_foreign_state_dict_without_sidecar_still_loads_as_softmax(tmp_path, pico_timm):
    torch.save(pico_timm().state_dict(), tmp_path / "timm.pth")
    _, info = load_backbone(tmp_path / "timm.pth")
    assert info.normalizer == "softmax" and info.source == "state_dict"

"""Checkpoint resolution and epoch assignment for the over-training mode."""

from pathlib import Path

import pytest

from sparsedino.config import load_config
from sparsedino.diagnose.over_training import (
    assign_epochs,
    collect_series,
    epoch_from_name,
    resolve_checkpoints,
)
from sparsedino.diagnose.settings import DiagnoseConfig


@pytest.mark.parametrize(
    ("name", "epoch"),
    [("checkpoint0040.pth", 40), ("checkpoint_epoch0012.pth", 12), ("epoch_7.safetensors", 7), ("ep3.pt", 3),
     ("vits16_run2_100.pth", 100), ("checkpoint.pth", None)],
)  # fmt: skip
def test_epoch_from_name(name, epoch):
    assert epoch_from_name(name) == epoch


def test_resolve_checkpoints_files_folders_globs(tmp_path):
    for name in ("checkpoint0010.pth", "checkpoint0020.pth", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    folder = resolve_checkpoints([str(tmp_path)])
    assert [p.name for p in folder] == ["checkpoint0010.pth", "checkpoint0020.pth"]
    globbed = resolve_checkpoints([str(tmp_path / "checkpoint00*.pth"), str(tmp_path / "checkpoint0010.pth")])
    assert [p.name for p in globbed] == ["checkpoint0010.pth", "checkpoint0020.pth"]  # no duplicates
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        resolve_checkpoints([str(tmp_path / "missing.pth")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.pth"):
        resolve_checkpoints([str(empty)])


def test_assign_epochs_stored_epoch_wins_and_copies_are_dropped():
    items = [
        (Path("checkpoint.pth"), None, "same"),  # DINO's copy of the latest
        (Path("checkpoint0020.pth"), None, "same"),
        (Path("checkpoint0010.pth"), None, "a"),
        (Path("renamed_5.pth"), 30, "b"),  # stored epoch beats the name
    ]
    assert assign_epochs(items) == [(10, Path("checkpoint0010.pth")), (20, Path("checkpoint0020.pth")),
                                    (30, Path("renamed_5.pth"))]  # fmt: skip
    with pytest.raises(ValueError, match=r"final\.pth"):
        assign_epochs([(Path("final.pth"), None, "c")])


def test_collect_series_skips_missing_values():
    runs = [(10, {"blocks": {"0": {"attn.entropy": 2.0, "probe.miou": None}}}),
            (20, {"blocks": {"0": {"attn.entropy": 1.5, "probe.miou": 0.3}}})]  # fmt: skip
    series = collect_series(runs)
    assert series["attn.entropy"]["0"] == [(10, 2.0), (20, 1.5)]
    assert series["probe.miou"]["0"] == [(20, 0.3)]


@pytest.mark.parametrize("preset", ["diagnose_quick", "diagnose_paper"])
def test_presets_load(preset):
    cfg = load_config(DiagnoseConfig, preset)
    assert cfg.n_images > 0 and cfg.img_size % 16 == 0


def test_overrides_anywhere_on_the_command_line():
    from sparsedino.diagnose.command import split_overrides

    argv = ["--checkpoint", "a.pth", "b.pth", "n_images=8", "--layers", "0", "-1", "dense_probe.enabled=false",
            "--out", "x=y", "--data", "d"]  # fmt: skip
    options, overrides = split_overrides(argv)
    assert overrides == ["n_images=8", "dense_probe.enabled=false"]
    assert options == ["--checkpoint", "a.pth", "b.pth", "--layers", "0", "-1", "--out", "x=y", "--data", "d"]

"""Reports, comparisons and the command line, end to end on tiny models and datasets."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from sparsedino.config import load_config
from sparsedino.diagnose.command import main
from sparsedino.diagnose.report import write_run
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.diagnose.scores import SCORES
from sparsedino.diagnose.settings import DiagnoseConfig

from .conftest import make_vit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def check_report(folder: Path) -> _Collector:
    """report.html parses and embeds valid PNGs; every image report.md references exists."""
    parser = _Collector()
    parser.feed((folder / "report.html").read_text())
    parser.close()
    assert "table" in parser.tags and parser.images
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    md = (folder / "report.md").read_text()
    refs = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert refs and all((folder / r).is_file() for r in refs)
    assert len(refs) == len(parser.images)
    return parser


def _run(normalizer: str, squares, tmp: Path, probe: bool = False) -> Path:
    overrides = ["img_size=32", "batch_size=16", "n_images=12", "n_figure_images=2", "label_probe_iterations=30",
                 f"dense_probe.enabled={str(probe).lower()}", "dense_probe.iterations=15"]  # fmt: skip
    cfg = load_config(DiagnoseConfig, None, overrides)
    result = run_diagnostics(make_vit(normalizer), squares, None, cfg, progress=False)
    write_run(result, tmp / normalizer, {"normalizer": normalizer, "arch": "test"})
    return tmp / normalizer


@pytest.mark.slow
def test_run_report_has_every_score_and_renders(tmp_path, squares):
    folder = _run("entmax15", squares, tmp_path, probe=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["layers"] == [0, 1] and set(metrics["blocks"]) == {"0", "1"}
    for block in metrics["blocks"].values():
        assert set(SCORES) <= set(block)  # every documented score is reported (None only if undefined)
        assert 0 <= block["probe.miou"] <= 1 and 0 <= block["probe.miou_with_cls"] <= 1
        for key in ("align.cls_attn_iou", "align.pca_iou", "attn.cls_fg_mass"):
            assert 0 <= block[key] <= 1
        assert block["align.pca_iou_oracle"] >= block["align.pca_iou"]
    assert metrics["definitions"]["diffusion.diffusion_index"]
    assert all((folder / f).is_file() for f in metrics["figures"])
    assert {"figures/maps_cls_attn.png", "figures/maps_pca.png", "figures/maps_norm.png"} <= set(
        metrics["figures"]
    )
    check_report(folder)


@pytest.mark.slow
def test_compare_two_runs_side_by_side(tmp_path, squares):
    a, b = _run("softmax", squares, tmp_path), _run("entmax15", squares, tmp_path)
    assert main(["--compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    comparison = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert comparison["a"]["label"] == "softmax" and comparison["b"]["label"] == "entmax15"
    va, vb, delta = comparison["blocks"]["1"]["attn.entropy"]
    assert delta == pytest.approx(vb - va)
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "| score | softmax | entmax15 | B - A |" in text
    check_report(tmp_path / "cmp")
    assert main(["--compare", str(a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "cmp3")]) == 2


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from sparsedino.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, n_train=2, n_val=8, size=32, num_classes=3)
    return root


CLI_OPTIONS = ["n_images=8", "img_size=32", "batch_size=8", "n_figure_images=2", "label_probe_iterations=10",
               "dense_probe.enabled=false", "--normalizer", "entmax15", "--no-progress"]  # fmt: skip


def _checkpoint(path: Path, seed: int) -> Path:
    from sparsedino.models import build_vit

    torch.manual_seed(seed)
    torch.save(build_vit("vit_pico", patch_size=8, img_size=32).state_dict(), path)
    return path


@pytest.mark.slow
def test_cli_over_training_plots_scores_against_epoch(tmp_path, synthetic_root):
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (10, 20):
        _checkpoint(run / f"checkpoint{epoch:04d}.pth", epoch)
    (run / "checkpoint.pth").write_bytes((run / "checkpoint0020.pth").read_bytes())  # DINO's "latest" copy
    out = tmp_path / "diag"
    assert (
        main(["--checkpoint", str(run), "--data", str(synthetic_root), "--out", str(out), *CLI_OPTIONS]) == 0
    )
    summary = json.loads((out / "over_training.json").read_text())
    assert summary["epochs"] == [10, 20]  # checkpoint.pth (no epoch in name or file) is a copy: dropped
    series = summary["series"]["attn.zero_share"]
    assert set(series) == {"0", "1", "2"} and [p[0] for p in series["2"]] == [10, 20]
    assert all((out / f).is_file() for f in summary["figures"])
    for epoch in (10, 20):
        metrics = json.loads((out / f"epoch_{epoch:04d}" / "metrics.json").read_text())
        assert metrics["model"]["epoch"] == epoch and metrics["model"]["normalizer"] == "entmax15"
    check_report(out)
    check_report(out / "epoch_0020")


def test_cli_bad_inputs_are_named_before_work(tmp_path, synthetic_root, capsys):
    ckpt = _checkpoint(tmp_path / "model.pth", 0)
    data = str(synthetic_root)
    base = ["--data", data, "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(["--checkpoint", str(tmp_path / "missing.pth"), *base]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), *base, "n_imagez=3"]) == 2
    assert "n_imagez" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), *base, "--layers", "9"]) == 2
    assert "layer index 9" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), *base, "img_size=30"]) == 2
    assert "img_size=30" in capsys.readouterr().err
    assert (
        main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "nodata" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

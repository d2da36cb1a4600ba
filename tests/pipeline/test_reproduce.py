"""``sparsedino reproduce``: the micro preset end to end, resume, and its config errors."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sparsedino.cli import main as cli_main
from sparsedino.config import ConfigError
from sparsedino.pipeline.command import run_reproduce

ARMS = ("softmax", "entmax15")
METRICS = ("k-NN top-1 (%)", "linear top-1 (%)", "VOC 2012 mIoU (%)", "VOC 2012 mIoU + [CLS] (%)")


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "micro"
    report = run_reproduce("micro", out)
    return out, report


@pytest.mark.slow
def test_micro_report_holds_both_arms_every_metric_and_figure(micro_run):
    out, _ = micro_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == set(ARMS)
    for arm in ARMS:
        metrics = results["arms"][arm]["metrics"]
        for name in METRICS:
            assert metrics[name]["n"] == 1
            assert 0.0 <= metrics[name]["mean"] <= 100.0
        curve = results["runs"][f"curve/{arm}-s0"]["points"]
        assert [p["epoch"] for p in curve] == [0, 1, 2]  # the initialisation, then every epoch checkpoint
        assert results["diagnostics_last_block"][f"{arm}-s0"]["probe.miou"] is not None
    for rel in results["figures"]:
        assert (out / rel).is_file()
    assert {Path(f).name for f in results["figures"]} == {
        "training_loss.png",
        "curves_over_training.png",
        "video_propagation.png",
    }
    video = results["video"]
    for arm in ARMS:  # J&F of the final teacher and of the initialisation (epoch-0 floor), per arm
        assert set(video["arms"][arm]) == {"final", "epoch0"}
        assert 0.0 <= video["arms"][arm]["final"]["J&F-Mean"]["mean"] <= 100.0
    assert video["oracle"]["J&F-Mean"] > video["constant"]["J&F-Mean"]  # the oracle reference above the floor
    assert "Video label propagation" in (out / "report.md").read_text()
    markdown = (out / "report.md").read_text()
    for name in METRICS:
        assert name in markdown
    for line in markdown.splitlines():
        if line.startswith("!["):
            assert (out / line.split("(")[-1].rstrip(")")).is_file()
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.sources) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert (out / "diagnose_compare" / "report.html").is_file()


@pytest.mark.slow
def test_micro_report_calibrates_the_instrument(micro_run):
    out, _ = micro_run
    evidence = json.loads((out / "results.json").read_text())["evidence"]
    assert 0.0 < evidence["oracle_miou"] <= 100.0
    for arm in ARMS:
        assert evidence["floor"][arm]["n"] == 1 and evidence["trained"][arm]["n"] == 1
    control = evidence["controls"]["softmax-s0"]
    assert [p["amount"] for p in control["injection"]] == [0.0, 0.25, 0.5, 0.75]
    assert control["source"] == "mean"
    assert all(0.0 <= p["video_jf"] <= 1.0 for p in control["injection"])  # video J&F under injection too
    assert len(control["probe_noise"]["values"]) == 2
    assert set(control) >= {"responds", "miou_falls", "acc_bg_rises", "miou_drop_per_index", "largest_drop"}
    paired = evidence["paired"]["VOC 2012 mIoU (%)"]["entmax15"]
    assert paired["baseline"] == "softmax" and paired["seeds"] == [0] and paired["ci_low"] is None
    markdown = (out / "report.md").read_text()
    for heading in (
        "The instrument",
        "Positive control on softmax-s0",
        "Negative control",
        "Paired comparison",
    ):
        assert heading in markdown


@pytest.mark.slow
def test_rerun_skips_every_finished_stage(micro_run, capsys):
    out, report = micro_run
    capsys.readouterr()
    again = run_reproduce("micro", out)
    log = capsys.readouterr().out
    assert "running" not in log
    stages = 17  # data, 2 x (train, eval, curve, diagnose, floor, video), oracle, control, clips, references
    assert log.count("done earlier, skipped") == stages
    assert again["arms"] == json.loads(json.dumps(report["arms"]))
    # the cost of the results is remembered from the run that produced them, not this quick re-run
    assert len(report["stage_seconds"]) == stages and all(s > 0 for s in report["stage_seconds"].values())
    assert again["stage_seconds"] == report["stage_seconds"]
    assert again["stages_total_s"] == report["stages_total_s"] > again["elapsed_s"]


def test_unknown_key_and_bad_arm_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="no_such_key"):
        run_reproduce("micro", tmp_path / "a", ["no_such_key=1"])
    with pytest.raises(ConfigError, match="softmx"):
        run_reproduce("micro", tmp_path / "b", ["arms=[softmx,entmax15]"])
    with pytest.raises(ConfigError, match=r"optim\.epochz"):
        run_reproduce("micro", tmp_path / "c", ["train_overrides=[optim.epochz=3]"])
    with pytest.raises(ConfigError, match=r"synth\.colours"):
        run_reproduce("micro", tmp_path / "d", ["synth.colours=rainbow"])
    with pytest.raises(ConfigError, match=r"controls\.arm"):
        run_reproduce("micro", tmp_path / "e", ["controls.arm=sparsemax"])
    with pytest.raises(ConfigError, match=r"controls\.inject"):
        run_reproduce("micro", tmp_path / "f", ["controls.inject=[0.5,2.0]"])
    with pytest.raises(ConfigError, match=r"video\.overrides.*topk"):
        run_reproduce("micro", tmp_path / "g", ["video.overrides=[topk=0]"])
    with pytest.raises(ConfigError, match=r"video\.overrides.*no_such_key"):
        run_reproduce("micro", tmp_path / "h", ["video.overrides=[no_such_key=1]"])
    assert not any((tmp_path / name).exists() for name in "abcdefgh")


def test_paper_preset_needs_data_paths_and_dry_run_prints_the_plan(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"data\.imagenet"):
        run_reproduce("paper", tmp_path / "p", dry_run=True)
    roots = {name: tmp_path / name for name in ("imagenet", "voc", "ade20k", "cityscapes")}
    for root in roots.values():
        root.mkdir()
    args = [f"data.{name}={root}" for name, root in roots.items()]
    assert cli_main(["reproduce", "--preset", "paper", "--out", str(tmp_path / "p"), "--dry-run", *args]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan["seg"]) == {"voc", "ade20k", "cityscapes"}
    assert {run["model"]["normalizer"] for run in plan["runs"].values()} == set(ARMS)
    assert {run["model"]["arch"] for run in plan["runs"].values()} == {"vit_small"}
    assert all(run["optim"]["epochs"] == 200 for run in plan["runs"].values())
    assert not (tmp_path / "p").exists()


def test_missing_data_folder_is_named(tmp_path, capsys):
    code = cli_main(["reproduce", "--preset", "paper", "--out", str(tmp_path / "p"), "--dry-run",
                     f"data.imagenet={tmp_path / 'nope'}", "data.voc=x", "data.ade20k=y", "data.cityscapes=z"])  # fmt: skip
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_arm_variants_and_spellings_resolve_to_canonical_runs(tmp_path):
    plan = run_reproduce("micro", tmp_path / "v", ["arms=[softmax,entmax-1.5,softmax-reg4]", "seeds=[0,1]"],
                         dry_run=True)  # fmt: skip
    runs = plan["runs"]
    assert set(runs) == {f"{a}-s{s}" for a in ("softmax", "entmax15", "softmax-reg4") for s in (0, 1)}
    assert runs["softmax-reg4-s1"]["model"]["num_registers"] == 4
    assert runs["softmax-reg4-s1"]["model"]["normalizer"] == "softmax"
    assert runs["entmax15-s0"]["model"]["num_registers"] == 0
    with pytest.raises(ConfigError, match="duplicate"):
        run_reproduce("micro", tmp_path / "w", ["arms=[entmax15,entmax-1.5]"], dry_run=True)

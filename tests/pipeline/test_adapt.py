"""``reproduce`` with ``adapt``: a base run continued in every arm (micro), the arm variants, the GPU plan."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from sparsedino.cli import main as cli_main
from sparsedino.config import ConfigError
from sparsedino.errors import MissingDataError
from sparsedino.pipeline.command import run_reproduce
from sparsedino.pipeline.ranks import average_ranks, kendall_tau_b, spearman

ARMS = ["softmax", "entmax15", "entmax15-warmup1", "softmax-gram"]
ADAPT = ["adapt.enabled=true", f"arms=[{','.join(ARMS)}]", "adapt.overrides=[optim.epochs=1,optim.warmup_epochs=0]",
         "curve.dse=true", "video.enabled=false", "diagnose=false"]  # fmt: skip


@pytest.fixture(scope="module")
def adapt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "micro"
    return out, run_reproduce("micro", out, ADAPT)


@pytest.mark.slow
def test_every_arm_continues_the_base_checkpoint(adapt_run):
    out, report = adapt_run
    base = out / "train" / "base-s0" / "checkpoint.pth"
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    teacher = torch.load(base, weights_only=True)["teacher"]
    for arm in ARMS:
        run = out / "train" / f"{arm}-s0"
        ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
        assert ckpt["sparsedino"]["init"]["sha256"] == digest and ckpt["epoch"] == 1
        start = torch.load(run / "checkpoint_epoch0000.pth", weights_only=True)
        for part in ("student", "teacher"):  # step 0 = the base teacher, backbone and head
            assert all(torch.equal(start[part][k], v) for k, v in teacher.items())
    assert "gram_teacher" in torch.load(
        out / "train" / "softmax-gram-s0" / "checkpoint.pth", weights_only=True
    )
    warm = out / "train" / "entmax15-warmup1-s0"
    alphas = [json.loads(x).get("alpha") for x in (warm / "metrics.jsonl").read_text().splitlines()]
    alphas = [a for a in alphas if a is not None]
    assert (
        alphas and all(1.0 < a < 1.5 for a in alphas) and alphas == sorted(alphas)
    )  # rising within the epoch
    normalizers = [torch.load(warm / name, weights_only=True)["sparsedino"]["normalizer"]
                   for name in ("checkpoint_epoch0000.pth", "checkpoint.pth")]  # fmt: skip
    assert normalizers == ["softmax", "entmax15"]  # softmax at step 0, entmax-1.5 after its 1-epoch schedule
    assert set(report["arms"]) == set(ARMS) and "base" not in report["arms"]


@pytest.mark.slow
def test_report_has_the_levels_the_paired_differences_and_the_dse_ranks(adapt_run):
    out, _ = adapt_run
    results = json.loads((out / "results.json").read_text())
    adapt = results["adapt"]
    assert adapt["base"]["runs"] == ["base-s0"] and adapt["base"]["floor"]["n"] == 1
    assert {a: v["start_normalizer"] for a, v in adapt["arms"].items()} == {
        "softmax": "softmax", "entmax15": "entmax15", "entmax15-warmup1": "softmax", "softmax-gram": "softmax"}  # fmt: skip
    assert adapt["arms"]["softmax"]["start"] == pytest.approx(adapt["base"]["trained"]["mean"])  # same model
    paired = results["evidence"]["paired"]["VOC 2012 mIoU (%)"]
    assert set(paired) == {"entmax15", "entmax15-warmup1", "softmax-gram"}
    assert all(c["baseline"] == "softmax" for c in paired.values())
    ranks = results["dse_ranks"]
    assert (
        ranks["all"]["n"] == 3 + 4
    )  # base: epochs 0, 1, 2; every arm: 1 (its epoch 0 is the base checkpoint)
    assert ranks["arms"]["n"] == 4 and all(-1 <= ranks["all"][k] <= 1 for k in ("spearman", "kendall"))
    assert results["evidence"]["controls"]["softmax-s0"]["probe_noise"]["values"]
    markdown = (out / "report.md").read_text()
    for heading in ("one trained checkpoint continued in every arm", "Label-free DSE", "Paired comparison",
                    "Positive control on softmax-s0"):  # fmt: skip
        assert heading in markdown


def test_rank_correlations_against_their_definitions():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert spearman(x, y) == pytest.approx(1 - 6 * 4 / (5 * 24))  # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    assert kendall_tau_b(x, y) == pytest.approx((8 - 2) / 10)  # 8 concordant, 2 discordant pairs
    # tau-b with ties: (C - D) / sqrt((n0 - n1)(n0 - n2)); here C=4, D=0, one tie in x, one in y
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(4 / 5)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and kendall_tau_b([1, 2], [2, 1]) is None


def test_arm_variants_resolve_and_bad_ones_are_named(tmp_path):
    plan = run_reproduce("micro", tmp_path / "v", [*ADAPT, "arms=[softmax,entmax15-gram,entmax15-warmup3]",
                                                   "adapt.overrides=[optim.epochs=4]"], dry_run=True)  # fmt: skip
    runs = plan["runs"]
    assert list(runs) == ["base-s0", "softmax-s0", "entmax15-gram-s0", "entmax15-warmup3-s0"]
    assert (
        runs["entmax15-gram-s0"]["gram"]["enabled"]
        and runs["entmax15-gram-s0"]["model"]["normalizer"] == "entmax15"
    )
    assert runs["entmax15-warmup3-s0"]["model"]["alpha_warmup_epochs"] == 3
    assert runs["base-s0"]["optim"]["epochs"] == 2 and runs["softmax-s0"]["optim"]["epochs"] == 4
    assert runs["base-s0"]["init"]["checkpoint"] == "" and runs["softmax-s0"]["init"]["checkpoint"].endswith(
        "train/base-s0/checkpoint.pth")  # fmt: skip
    with pytest.raises(ConfigError, match=r"'softmx' is neither.*-warmup<epochs>"):
        run_reproduce("micro", tmp_path / "w", ["arms=[softmax,softmx-warmup2]"], dry_run=True)
    with pytest.raises(ConfigError, match=r"alpha_warmup_epochs.*model\.normalizer is softmax"):
        run_reproduce("micro", tmp_path / "x", ["arms=[softmax-warmup1]"], dry_run=True)
    with pytest.raises(ConfigError, match=r"adapt\.base_arm"):
        run_reproduce("micro", tmp_path / "y", [*ADAPT, "adapt.base_arm=nope"], dry_run=True)
    with pytest.raises(MissingDataError, match=r"adapt\.base_checkpoint.*gone\.pth"):
        run_reproduce(
            "micro", tmp_path / "z", [*ADAPT, f"adapt.base_checkpoint={tmp_path / 'gone.pth'}"], dry_run=True
        )


def test_paper_adapt_dry_run_continues_the_given_dino_checkpoint_in_every_arm(tmp_path, capsys):
    roots = {name: tmp_path / name for name in ("imagenet", "voc", "ade20k", "cityscapes")}
    for root in roots.values():
        root.mkdir()
    (tmp_path / "dino_full.pth").write_bytes(b"checked when training starts")
    args = [f"data.{name}={root}" for name, root in roots.items()]
    with pytest.raises(ConfigError, match=r"adapt\.base_checkpoint"):
        run_reproduce("paper-adapt", tmp_path / "p", args, dry_run=True)
    code = cli_main(["reproduce", "--preset", "paper-adapt", "--out", str(tmp_path / "p"), "--dry-run", *args,
                     f"adapt.base_checkpoint={tmp_path / 'dino_full.pth'}"])  # fmt: skip
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert "base-s0" not in plan["runs"] and plan["adapt"]["base_runs"] == []
    for run in plan["runs"].values():
        assert run["init"]["checkpoint"] == str(tmp_path / "dino_full.pth")
        assert (
            run["model"]["arch"] == "vit_small"
            and run["optim"]["epochs"] == plan["runs"]["softmax-s0"]["optim"]["epochs"]
        )
    assert {r["model"]["normalizer"] for r in plan["runs"].values()} == {"softmax", "entmax15"}
    assert not (tmp_path / "p").exists()

"""Issues 13.3 and 12.5: every setting of a reproduce plan is checked before the first stage starts, and a
multi-process recipe is never trained silently in one process."""

from __future__ import annotations

import json

import pytest

from sparsedino.cli import main as cli_main
from sparsedino.config import ConfigError
from sparsedino.pipeline import stages
from sparsedino.pipeline.command import run_reproduce


@pytest.fixture
def no_stage_may_run(monkeypatch):
    def refuse(self, stage_list):
        raise AssertionError(f"a stage started: {stage_list[0].name}")

    monkeypatch.setattr(stages.StageRunner, "run_all", refuse)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train_overrides=[optim.no_such_key=1]", "no_such_key"),  # unknown key
        ("train_overrides=[optim.lr=nan]", "optim.lr"),  # non-finite value
        ("knn_overrides=[ks=abc]", "ks"),  # wrong type
        ("linear_overrides=[train_mode=augmnt]", "train_mode"),  # bad choice
        ("seg_overrides=[train_mode=augmnt]", "train_mode"),  # the example
        ("diagnose_overrides=[dataset=coco]", "dataset"),
        ("curve.seg_overrides=[iters=many]", "iters"),
        ("synth.colours=rainbow", "synth.colours"),  # the embedded dataset's generator
    ],
)
def test_a_bad_setting_in_any_section_fails_before_any_stage(tmp_path, no_stage_may_run, override, named):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        run_reproduce("micro", out, [override])
    assert not out.exists()  # nothing written


def test_the_command_reports_it_in_one_line_with_exit_code_2(tmp_path, capsys, no_stage_may_run):
    assert cli_main(["reproduce", "--out", str(tmp_path / "r"), "seg_overrides=[train_mode=augmnt]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seg_overrides" in err and "train_mode" in err and "augmnt" in err


@pytest.fixture
def paper_paths(tmp_path):
    paths = {}
    for name in ("imagenet", "voc", "ade20k", "cityscapes"):
        (tmp_path / name).mkdir()
        paths[name] = f"data.{name}={tmp_path / name}"
    return list(paths.values())


def _finish(out, run_id, epochs, global_batch):
    folder = out / "train" / run_id
    folder.mkdir(parents=True)
    (folder / "train_summary.json").write_text(json.dumps({"epochs": epochs, "global_batch": global_batch}))


def test_paper_preset_refuses_to_train_its_8_process_recipe_in_one_process(
    tmp_path, paper_paths, no_stage_may_run
):
    out = tmp_path / "paper"
    with pytest.raises(ConfigError) as err:
        run_reproduce("paper", out, paper_paths)
    message = str(err.value)
    assert "global batch 1024" in message and "train_processes=1" in message
    for run_id, preset_arm in (("softmax-s0", "softmax"), ("entmax15-s0", "entmax15")):
        assert f"run.output_dir={out / 'train' / run_id}" in message
        assert f"model.normalizer={preset_arm}" in message
    assert message.count("torchrun --nproc_per_node=8 -m sparsedino train dino_vits16_entmax15") == 2
    # a run trained with another global batch is not accepted as the preset's run either
    _finish(out, "softmax-s0", 200, 128)
    _finish(out, "entmax15-s0", 200, 1024)
    with pytest.raises(ConfigError, match="softmax-s0 \\(global batch 128, not 1024\\)"):
        run_reproduce("paper", out, paper_paths)


def test_paper_preset_goes_on_with_runs_finished_by_torchrun_or_an_explicit_override(
    tmp_path, paper_paths, no_stage_may_run
):
    out = tmp_path / "paper"
    _finish(out, "softmax-s0", 200, 1024)
    _finish(out, "entmax15-s0", 200, 1024)
    with pytest.raises(AssertionError, match="a stage started"):  # checks passed: the stages would run
        run_reproduce("paper", out, paper_paths)
    with pytest.raises(AssertionError, match="a stage started"):
        run_reproduce("paper", tmp_path / "one_process", [*paper_paths, "train_processes=1"])
    assert run_reproduce("paper", tmp_path / "dry", paper_paths, dry_run=True)["train_processes"] == 8

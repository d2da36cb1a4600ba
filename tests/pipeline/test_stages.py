"""The resumable stage runner: finished stages are skipped, changed or killed ones run again."""

import json

import pytest

from sparsedino.pipeline.stages import MARKER, Stage, StageRunner


def _counting_stage(name, calls, settings=None, fail=False):
    def run(stage_dir):
        calls.append(name)
        if fail:
            raise RuntimeError("killed")
        (stage_dir / "out.txt").write_text(name)
        return {"value": len(calls)}

    return Stage(name, run, settings)


def test_finished_stages_are_skipped_and_results_reloaded(tmp_path):
    calls = []
    first = StageRunner(tmp_path, log=lambda _: None).run_all([_counting_stage("a", calls, {"x": 1})])
    again = StageRunner(tmp_path, log=lambda _: None).run_all([_counting_stage("a", calls, {"x": 1})])
    assert calls == ["a"]
    assert again == first == {"a": {"value": 1}}


def test_changed_settings_rerun_the_stage(tmp_path):
    calls = []
    StageRunner(tmp_path, log=lambda _: None).run_all([_counting_stage("a", calls, {"x": 1})])
    StageRunner(tmp_path, log=lambda _: None).run_all([_counting_stage("a", calls, {"x": 2})])
    assert calls == ["a", "a"]


def test_a_failed_stage_leaves_no_marker_and_runs_again(tmp_path):
    calls = []
    with pytest.raises(RuntimeError, match="killed"):
        StageRunner(tmp_path, log=lambda _: None).run_all(
            [_counting_stage("a", calls), _counting_stage("b", calls, fail=True)]
        )
    assert (tmp_path / "a" / MARKER).is_file()
    assert not (tmp_path / "b" / MARKER).exists()
    StageRunner(tmp_path, log=lambda _: None).run_all(
        [_counting_stage("a", calls), _counting_stage("b", calls)]
    )
    assert calls == ["a", "b", "b"]
    marker = json.loads((tmp_path / "b" / MARKER).read_text())
    assert marker["stage"] == "b" and marker["result"] == {"value": 3}


def test_a_corrupt_marker_counts_as_unfinished(tmp_path):
    calls = []
    StageRunner(tmp_path, log=lambda _: None).run_all([_counting_stage("a", calls)])
    (tmp_path / "a" / MARKER).write_text("{not json")
    StageRunner(tmp_path, log=lambda _: None).run_all([_counting_stage("a", calls)])
    assert calls == ["a", "a"]


def test_duplicate_names_and_missing_dependencies_are_rejected(tmp_path):
    runner = StageRunner(tmp_path, log=lambda _: None)
    with pytest.raises(ValueError, match="unique"):
        runner.run_all([_counting_stage("a", []), _counting_stage("a", [])])
    later = Stage("b", lambda d: {}, depends_on=["a"])
    with pytest.raises(RuntimeError, match="needs"):
        runner.run_all([later])

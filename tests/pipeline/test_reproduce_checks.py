"""Issue 24, ``reproduce`` and config files: the video settings and the DAVIS tree are checked before the
first stage, overrides of what the pipeline owns are refused, malformed list overrides and ``base``
chains are one-line errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sparsedino.cli import main as cli_main
from sparsedino.config import ConfigError
from sparsedino.data.davis import DavisError
from sparsedino.data.palettes import voc_palette
from sparsedino.data.synthetic_video import write_synthetic_videos
from sparsedino.pipeline import stages
from sparsedino.pipeline.command import run_reproduce


@pytest.fixture
def no_stage_may_run(monkeypatch):
    def refuse(self, stage_list):
        raise AssertionError(f"a stage started: {stage_list[0].name}")

    monkeypatch.setattr(stages.StageRunner, "run_all", refuse)


@pytest.fixture
def real_data(tmp_path):
    """Overrides pointing ``reproduce`` at existing folders (their contents are read by later stages)."""
    for name in ("imagenet", "voc"):
        (tmp_path / name).mkdir()
    davis = tmp_path / "davis"
    write_synthetic_videos(davis, clips=2, frames=4, size=32, seed=0, num_classes=4)
    return davis, ["synth.enabled=false", f"data.imagenet={tmp_path / 'imagenet'}", f"data.voc={tmp_path / 'voc'}",
                   f"data.davis={davis}", "video.enabled=true"]  # fmt: skip


def test_a_bad_annotation_in_data_davis_fails_before_training(tmp_path, real_data, no_stage_may_run):
    davis, overrides = real_data
    path = davis / "Annotations/480p/synth_clip_001/00003.png"
    ids = np.array(Image.open(path))
    ids[0, 0] = 7
    image = Image.fromarray(ids, "P")
    image.putpalette(voc_palette())
    image.save(path)
    with pytest.raises(DavisError, match=r"data\.davis.*synth_clip_001.*00003\.png holds object ids \[7\]"):
        run_reproduce("micro", tmp_path / "run", overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("layer=99", "'layer': block 99 out of range for a model with 3 blocks"),
        ("short_side=4", "'short_side'"),
    ],
)
def test_video_overrides_are_checked_against_the_backbone_before_training(
    tmp_path, real_data, no_stage_may_run, setting, named
):
    _, overrides = real_data
    with pytest.raises(ConfigError, match=r"video\.overrides .*" + named):
        run_reproduce("micro", tmp_path / "run", [*overrides, f"video.overrides=[{setting}]"])
    with pytest.raises(ConfigError, match=named):  # the embedded clips too
        run_reproduce("micro", tmp_path / "run", [f"video.overrides=[{setting}]"])


@pytest.mark.parametrize("key", ["run.output_dir", "run.seed", "data.path", "model.normalizer"])
def test_train_overrides_of_what_the_pipeline_owns_are_refused(tmp_path, no_stage_may_run, key):
    with pytest.raises(ConfigError, match=rf"train_overrides.*sets {key}, which the pipeline sets"):
        run_reproduce("micro", tmp_path / "run", [f"train_overrides=[{key}=x]"])


def test_an_unquoted_nested_list_override_is_one_line(tmp_path, capsys, no_stage_may_run):
    assert cli_main(["reproduce", "--out", str(tmp_path / "r"), "knn_overrides=[ks=[0]]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "knn_overrides=[ks=[0]]" in err and "not valid YAML" in err and "quote" in err
    assert cli_main(["reproduce", "--out", str(tmp_path / "r"), "knn_overrides=['ks=[0]']"]) == 2
    assert "knn_overrides: key 'ks' must be a non-empty list of k > 0" in capsys.readouterr().err


def test_a_missing_base_file_names_the_config_that_names_it(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("base: nothere.yaml\noptim:\n  epochs: 1\n")
    assert cli_main(["train", str(tmp_path / "mine.yaml")]) == 2
    err = capsys.readouterr().err
    assert "mine.yaml" in err and "'nothere.yaml'" in err and "Traceback" not in err


def test_a_very_deep_base_chain_is_a_clear_error_not_a_recursion_error(tmp_path, capsys):
    for i in range(3000):
        (tmp_path / f"c{i}.yaml").write_text(
            f"base: c{i + 1}.yaml\n" if i < 2999 else "optim:\n  epochs: 1\n"
        )
    assert cli_main(["train", str(tmp_path / "c0.yaml")]) == 2
    err = capsys.readouterr().err
    assert "'base' chain is deeper than 32 files" in err and "recursion" not in err
    assert cli_main(["train", str(tmp_path / "c2990.yaml"), "data.path=x", "--print-config"]) == 0  # 10 deep

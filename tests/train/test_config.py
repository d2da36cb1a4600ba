"""Config loading for ``sparsedino train``: presets, unknown keys, wrong types, bad choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsedino.config import ConfigError, config_to_dict
from sparsedino.train import load_train_config
from sparsedino.train.command import main


@pytest.mark.parametrize("preset", ["dino_vits16_softmax", "dino_vits16_entmax15", "dino_cpu_tiny"])
def test_presets_load_and_validate(preset):
    cfg = load_train_config(preset, ["data.path=/somewhere"])
    assert cfg.data.path == "/somewhere"
    if preset.startswith("dino_vits16"):
        assert cfg.model.arch == "vit_small" and cfg.model.patch_size == 16
        assert cfg.optim.epochs == 200
        assert cfg.model.normalizer == preset.split("_")[-1]


RESOLVED = Path(__file__).parent / "data" / "train_presets_resolved.json"


@pytest.mark.parametrize("preset", ["dino_vits16_softmax", "dino_vits16_entmax15", "dino_cpu_tiny"])
def test_presets_resolve_to_the_recorded_whole_configs(preset):
    """Presets state only what differs from their base; what they resolve to is unchanged, key by key
    (recorded from the full presets before they were reduced to overrides)."""
    cfg = config_to_dict(load_train_config(preset, ["data.path=/data/imagenet"]))
    assert cfg == json.loads(RESOLVED.read_text())[preset]


def test_paper_presets_differ_only_in_normalizer_and_output_dir():
    soft = config_to_dict(load_train_config("dino_vits16_softmax", ["data.path=x"]))
    ent = config_to_dict(load_train_config("dino_vits16_entmax15", ["data.path=x"]))
    assert (soft["model"].pop("normalizer"), ent["model"].pop("normalizer")) == ("softmax", "entmax15")
    assert (soft["run"].pop("output_dir"), ent["run"].pop("output_dir")) == (
        "runs/dino_vits16_softmax",
        "runs/dino_vits16_entmax15",
    )
    assert soft == ent  # every other key of every section


def test_a_config_file_extends_its_base(tmp_path):
    """``base:`` names a preset or a file next to this one; the file's own keys win; loops are refused."""
    (tmp_path / "mine.yaml").write_text("base: dino_cpu_tiny\noptim:\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("base: mine.yaml\nrun:\n  seed: 7\n")
    cfg = load_train_config(tmp_path / "child.yaml")
    assert (cfg.model.arch, cfg.optim.epochs, cfg.run.seed) == ("vit_pico", 3, 7)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_train_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("base: no_such_preset\n")
    with pytest.raises(ConfigError, match="no_such_preset"):
        load_train_config(tmp_path / "bad.yaml")


def test_unknown_key_is_rejected_naming_it(capsys):
    assert main(["dino_cpu_tiny", "optim.learning_rate=1e-3"]) == 2
    assert "optim.learning_rate" in capsys.readouterr().err


def test_wrong_type_is_rejected_naming_it(capsys):
    assert main(["dino_cpu_tiny", "optim.epochs=many"]) == 2
    assert "optim.epochs" in capsys.readouterr().err


def test_bad_choice_is_rejected_naming_it():
    with pytest.raises(ConfigError, match=r"run\.precision"):
        load_train_config("dino_cpu_tiny", ["run.precision=fp8"])
    with pytest.raises(ConfigError, match=r"model\.normalizer"):
        load_train_config("dino_cpu_tiny", ["model.normalizer=entmax0.5"])


def test_augmentation_knobs_are_range_checked_naming_the_key():
    cfg = load_train_config("dino_cpu_tiny", ["data.color_jitter=0.3", "data.blur_radius=[0.1,0.5]"])
    assert cfg.data.color_jitter == 0.3 and list(cfg.data.blur_radius) == [0.1, 0.5]
    for override, key in (
        ("data.grayscale_prob=1.2", r"data\.grayscale_prob"),
        ("data.solarize_prob=-0.5", r"data\.solarize_prob"),
        ("data.color_jitter=-1", r"data\.color_jitter"),
        ("data.blur_radius=[2.0,0.5]", r"data\.blur_radius"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_train_config("dino_cpu_tiny", [override])


def test_unknown_key_in_yaml_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: vit_pico\n  depthh: 3\n")
    with pytest.raises(ConfigError, match="depthh"):
        load_train_config(bad)


def test_missing_data_path_is_reported():
    with pytest.raises(ConfigError, match=r"data\.path"):
        load_train_config("dino_vits16_entmax15")


def test_print_config_shows_resolved_values(capsys):
    assert main(["dino_vits16_entmax15", "data.path=/data/in1k", "optim.epochs=300", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 300" in out and "normalizer: entmax15" in out and "/data/in1k" in out

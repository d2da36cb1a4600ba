"""The ``entmax-learned-alpha`` arm of ``sparsedino reproduce``: its plan, stage settings and report section."""

from sparsedino.diagnose.report import render_markdown
from sparsedino.pipeline.alphas import learned_alpha_doc
from sparsedino.pipeline.command import run_reproduce
from sparsedino.pipeline.plan import build_plan, load_reproduce_config
from sparsedino.pipeline.runner import train_stages


def test_learned_alpha_arm_trains_entmax15_with_learn_alpha(tmp_path):
    runs = run_reproduce("micro", tmp_path / "v", ["arms=[softmax,entmax-learned-alpha]"], dry_run=True)[
        "runs"
    ]
    assert set(runs) == {"softmax-s0", "entmax-learned-alpha-s0"}
    assert runs["entmax-learned-alpha-s0"]["model"]["learn_alpha"] is True
    assert runs["entmax-learned-alpha-s0"]["model"]["normalizer"] == "entmax15"
    assert runs["softmax-s0"]["model"]["learn_alpha"] is False


def test_stage_settings_and_torchrun_overrides_carry_the_arm(tmp_path):
    plan = build_plan(load_reproduce_config("micro", ["arms=[softmax,entmax-learned-alpha]"]), tmp_path / "r")
    settings = {stage.name: stage.settings for stage in train_stages(plan)}
    # runs finished before the key existed keep their fingerprint; the new arm's differs
    assert "learn_alpha" not in settings["train/softmax-s0"]["model"]
    assert settings["train/entmax-learned-alpha-s0"]["model"]["learn_alpha"] is True
    overrides = plan.overrides["entmax-learned-alpha-s0"]
    assert "model.learn_alpha=true" in overrides and "model.normalizer=entmax15" in overrides


def test_report_section_lists_each_head_and_block_mean():
    results = {
        "train/entmax-learned-alpha-s0": {"learned_alpha": [[1.25, 1.75, 2.0], [1.5, 1.5, 1.01]]},
        "train/softmax-s0": {"epochs": []},
    }
    doc, data = learned_alpha_doc(results, ["softmax-s0", "entmax-learned-alpha-s0"])
    assert data == {"entmax-learned-alpha-s0": [[1.25, 1.75, 2.0], [1.5, 1.5, 1.01]]}
    text = render_markdown(doc)
    assert "| entmax-learned-alpha-s0 | 0 | 1.2500 | 1.7500 | 2.0000 | 1.6667 |" in text
    assert "| entmax-learned-alpha-s0 | 1 | 1.5000 | 1.5000 | 1.0100 | 1.3367 |" in text
    assert learned_alpha_doc({"train/softmax-s0": {}}, ["softmax-s0"]) == ([], {})

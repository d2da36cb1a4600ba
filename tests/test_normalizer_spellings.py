"""Every documented spelling of the attention normaliser is accepted the same way by every command.

The commands parse it once (config load or CLI parse) into a ``Normalizer``; what reaches the model, the
checkpoint and the reports is the canonical name.
"""

from __future__ import annotations

import json

import pytest
import torch

from sparsedino.attention import Normalizer, parse_normalizer
from sparsedino.attention.normalizers import MAX_ALPHA, normalize
from sparsedino.errors import UserError

SPELLINGS = {
    "entmax15": "entmax15",
    "entmax-1.5": "entmax15",
    "1.5": "entmax15",
    "entmax1.25": "entmax1.25",
    "sparsemax": "sparsemax",
    "softmax": "softmax",
}
BAD = "entmax0.5"


class _Reached(UserError):
    """Raised by the patched loaders: the command got past its parsing with this normaliser."""


@pytest.fixture()
def capture_backbone(monkeypatch):
    """Patch ``load_backbone`` to record the ``normalizer`` a command passes and stop there (exit 2)."""
    import sparsedino.diagnose.command
    import sparsedino.eval.command

    seen: list = []

    def fake(path, normalizer=None, **_):
        seen.append(normalizer)
        raise _Reached("stopped before loading")

    for where in (sparsedino.eval.command, sparsedino.diagnose.command):  # the commands' lookups
        monkeypatch.setattr(where, "load_backbone", fake)
    return seen


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_parse_gives_one_value_per_normaliser(spelling):
    spec = parse_normalizer(spelling)
    assert isinstance(spec, Normalizer) and spec.name == SPELLINGS[spelling] == str(spec)
    assert spec.alpha == parse_normalizer(SPELLINGS[spelling]).alpha
    assert spec.is_softmax == (SPELLINGS[spelling] == "softmax")
    assert parse_normalizer(spec) is spec
    with pytest.raises(AttributeError):
        spec.name = "softmax"  # immutable


def test_alpha_is_bounded_where_the_maps_stay_finite():
    """Alphas past MAX_ALPHA overflowed float32 in the bisection (NaN maps from about 1e38); the largest
    accepted one gives the argmax, as every alpha past ~10 does."""
    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    p = normalize(scores, MAX_ALPHA)
    assert torch.equal(p, torch.nn.functional.one_hot(scores.argmax(-1), 50).float())
    for alpha in (MAX_ALPHA * 10, 1e38, "entmax1e39"):
        with pytest.raises(ValueError, match=r"entmax alpha must be in \[1, 1e\+06\]"):
            parse_normalizer(alpha)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_train_config(spelling, capsys):
    from sparsedino.train.command import main

    assert main(["dino_cpu_tiny", f"model.normalizer={spelling}", "--print-config"]) == 0
    assert f"normalizer: {SPELLINGS[spelling]}\n" in capsys.readouterr().out


@pytest.mark.parametrize("protocol", ["knn", "linear", "seg", "video"])
@pytest.mark.parametrize("spelling", [*SPELLINGS, BAD])
def test_eval_commands(protocol, spelling, capture_backbone, tmp_path, capsys):
    from sparsedino.eval.command import main

    argv = [protocol, "--checkpoint", "x.pth", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--normalizer", spelling]) == 2
    if spelling == BAD:
        assert not capture_backbone and "--normalizer" in capsys.readouterr().err
    else:
        assert capture_backbone[0].name == SPELLINGS[spelling]


@pytest.mark.parametrize("spelling", [*SPELLINGS, BAD])
def test_diagnose_command(spelling, capture_backbone, tmp_path, monkeypatch, capsys):
    import sparsedino.diagnose.command
    from sparsedino.diagnose.command import main

    class _Dataset:
        def __len__(self):
            return 1

        def load_raw(self, i):
            return None

    monkeypatch.setattr(sparsedino.diagnose.command, "build_seg_dataset", lambda *a, **k: _Dataset())
    argv = ["--checkpoint", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    (tmp_path / "c.pth").write_bytes(b"")
    argv[1] = str(tmp_path / "c.pth")
    assert main([*argv, "--normalizer", spelling]) == 2
    if spelling == BAD:
        assert not capture_backbone and "--normalizer" in capsys.readouterr().err
    else:
        assert capture_backbone[0].name == SPELLINGS[spelling]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_reproduce_arms(spelling, tmp_path):
    from sparsedino.pipeline.command import run_reproduce

    plan = run_reproduce("micro", tmp_path / "r", [f"arms=[{spelling}]"], dry_run=True)
    (run,) = plan["runs"].values()
    assert run["model"]["normalizer"] == SPELLINGS[spelling]
    assert list(plan["runs"]) == [f"{SPELLINGS[spelling]}-s0"]


@pytest.mark.parametrize("spelling", [*SPELLINGS, BAD])
@pytest.mark.parametrize("bench", ["vit", "train"])
def test_bench_commands(bench, spelling, monkeypatch, capsys):
    from sparsedino.bench import train, vit
    from sparsedino.bench.command import main

    seen: list = []

    def stop(names):
        seen.extend(names)
        raise _Reached("stopped before timing")

    monkeypatch.setattr(vit, "build_models", lambda arch, size, names: stop(names))
    monkeypatch.setattr(train, "make_step", lambda name, *a, **k: stop([name]))
    assert main([bench, "--normalizers", spelling]) == 2
    if spelling == BAD:
        assert not seen and "--normalizers" in capsys.readouterr().err
    else:
        assert seen == [SPELLINGS[spelling]]


def test_bench_refuses_one_normaliser_spelled_twice(capsys):
    from sparsedino.bench.command import main

    assert main(["vit", "--normalizers", "entmax15,entmax-1.5"]) == 2
    assert "entmax15 given more than once" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_export_of_a_checkpoint_storing_any_spelling(spelling, tmp_path, capsys):
    """Checkpoints written before spellings were canonicalised still load; the export stores canonical."""
    from safetensors import safe_open

    from sparsedino.models import build_vit, load_backbone
    from sparsedino.models.export import main

    backbone = build_vit("vit_pico", patch_size=8, img_size=32, normalizer=spelling)
    meta = {"arch": "vit_pico", "patch_size": 8, "normalizer": spelling, "num_registers": 0, "epoch": 3}
    ckpt = tmp_path / "old.pth"
    torch.save(
        {"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "sparsedino": meta}, ckpt
    )
    _, info = load_backbone(ckpt)
    assert info.normalizer == SPELLINGS[spelling]
    out = tmp_path / "b.safetensors"
    assert main([str(ckpt), "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["sparsedino"])["normalizer"] == SPELLINGS[spelling]
    model, info = load_backbone(out)
    assert info.normalizer == SPELLINGS[spelling]
    assert all(m.normalizer == SPELLINGS[spelling] for m in model.modules() if hasattr(m, "head_dim"))

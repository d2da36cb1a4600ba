"""Issue 24: every option of the commands added since the first hardening (``eval video``, ``data
synth-video``, ``bench attention|vit|train|gpu``, ``export``, the learned-alpha and video keys), and ``data
synth`` whose rules they share, fed a wrong type, zero, a negative, inf, NaN and a huge value.

A bad value must give exit code 2 and exactly one line ``<command>: error: ...`` naming the option, with no
traceback, before any work. A value the option accepts (zero where 0 means "none" or "default", a huge
temperature, ...) must reach the work, which the test replaces by a marker, so no value tried here can
print a traceback either. Everything runs in-process through ``sparsedino.cli.main``; a few cases run the
real entry point in a subprocess.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

from sparsedino.cli import main
from sparsedino.data.synthetic_video import write_synthetic_videos
from sparsedino.models import DINOHead, MultiCropWrapper, build_vit

HUGE = "1000000000000"  # 1e12: beyond every count, size and range the commands accept
CATEGORIES = {"wrong type": "abc", "zero": "0", "negative": "-1", "inf": "inf", "nan": "nan", "huge": HUGE}


@dataclass(frozen=True)
class Row:
    """One option: how it is given, the values tried, which of them are valid and why."""

    command: str  # as typed after ``sparsedino``, e.g. "bench attention"
    option: str  # "--clips" (a flag) or "short_side" (a key=value setting)
    valid: dict[str, str] = field(default_factory=dict)  # category -> why the value is accepted
    values: dict[str, str] = field(default_factory=dict)  # category -> value replacing CATEGORIES'
    named: str = ""  # what the error line must contain (default: the option)

    def cases(self):
        for category, value in {**CATEGORIES, **self.values}.items():
            yield pytest.param(self, category, value, id=f"{self.command} {self.option} {category}")


ZERO_IS_NONE = {"zero": "0 means none / the default"}
# folder and list names of the DAVIS layout: no path separators, no "." / "..", at most 255 characters
STRINGS = {
    "wrong type": "",
    "zero": "..",
    "negative": "a/b",
    "inf": "../..",
    "nan": "/abs",
    "huge": "x" * 300,
}
DEVICES = {"huge": f"cuda:{HUGE}"}
SEED_HUGE = {"huge": "1" + "0" * 30}
NAMES = [c for c in CATEGORIES if c != "wrong type"]  # file names: "0", "inf", ... are names like any other

TABLE = [
    # ---- eval video: every key of VideoConfig ---------------------------------------------------------
    *(Row("eval video", key) for key in ("short_side", "size_multiple", "topk", "batch_size", "query_chunk")),
    Row("eval video", "layer", valid={"zero": "block 0", "negative": "block -1: the last"}),
    Row("eval video", "temperature", valid={"huge": "the uniform-average limit of the affinity; finite"}),
    Row("eval video", "n_last_frames", valid={"zero": "0: the first frame only as context"}),
    Row("eval video", "size_mask_neighborhood", valid={"zero": "0: no spatial window"}),
    Row("eval video", "max_sequences", valid={"zero": "0: all sequences"}),
    Row("eval video", "num_threads", valid={"zero": "0: torch's default"}),
    Row("eval video", "device", values={**DEVICES}),
    *(Row("eval video", key, values=STRINGS, valid={}) for key in ("split", "year", "resolution")),
    *(Row("eval video", key, valid={"zero": "0 is false"}) for key in ("save_masks", "norm")),
    Row("eval video", "--normalizer"),  # alpha 1e12 > MAX_ALPHA
    Row("eval video", "--which"),
    # ---- data synth-video / synth -------------------------------------------------------------------
    *(
        Row("data synth-video", opt)
        for opt in ("--clips", "--frames", "--size", "--num-classes", "--max-objects")
    ),
    Row("data synth-video", "--seed", valid={"zero": "seed 0"}, values=SEED_HUGE),
    Row("data synth-video", "--clutter", valid={"zero": "0: a plain background"}),
    Row("data synth-video", "--colours"),
    *(Row("data synth", opt) for opt in ("--n-train", "--n-val", "--size", "--num-classes", "--max-objects")),
    *(Row("data synth", opt) for opt in ("--colours", "--colour-groups", "--marker-share")),
    Row("data synth", "--seed", valid={"zero": "seed 0"}, values=SEED_HUGE),
    Row("data synth", "--clutter", valid={"zero": "0: a plain background"}),
    Row("data synth", "--same-group", valid={"zero": "0: groups mixed freely"}),
    # ---- bench ----------------------------------------------------------------------------------------
    Row("bench attention", "--repeats"),
    Row("bench attention", "--warmup", valid=ZERO_IS_NONE),
    Row("bench attention", "--input-std"),
    Row("bench attention", "--shapes", values={"huge": f"{HUGE}x1x1x1", "wrong type": ","}),
    Row("bench attention", "--device", values=DEVICES),
    Row("bench attention", "--json", values={"wrong type": "."}, valid=dict.fromkeys(NAMES, "a file name")),
    *(Row("bench vit", opt) for opt in ("--batch-size", "--img-size", "--repeats", "--arch")),
    Row("bench vit", "--warmup", valid=ZERO_IS_NONE),
    Row("bench vit", "--normalizers", values={"wrong type": ","}),
    *(Row("bench train", opt) for opt in ("--patch-size", "--batch", "--global-size", "--local-size")),
    *(Row("bench train", opt) for opt in ("--out-dim", "--steps", "--arch")),
    *(Row("bench train", opt, valid=ZERO_IS_NONE) for opt in ("--n-local", "--warmup", "--threads")),
    Row("bench train", "--normalizers", values={"wrong type": "softmax softmax"}),
    Row("bench gpu", "--device", values=DEVICES),
    Row("bench gpu", "--sections", values={"wrong type": ",", "huge": "attention,attention"}),
    Row("bench gpu", "--out", values={"wrong type": "."}, valid=dict.fromkeys(NAMES, "a file name")),
    # ---- export ---------------------------------------------------------------------------------------
    Row("export", "--format"),
    Row("export", "--which"),
    Row("export", "--out"),  # no .pth / .pt / .safetensors suffix: refused
    # ---- learned alpha and the video settings of reproduce --------------------------------------------
    Row("train", "model.learn_alpha", valid={"zero": "0 is false"}),
    *(Row("reproduce", f"video.{key}") for key in ("clips", "frames", "size", "max_objects")),
    Row("reproduce", "video.seed", valid={"zero": "seed 0"}, values=SEED_HUGE),
    Row("reproduce", "video.enabled", valid={"zero": "0 is false"}),
]
CASES = [case for row in TABLE for case in row.cases()]


class WorkStarted(Exception):
    """Raised in place of a command's work: the options were accepted."""


def _refuse_work(*args, **kwargs):
    raise WorkStarted


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    torch.manual_seed(0)
    build = lambda: build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax")  # noqa: E731
    torch.save(build().state_dict(), root / "vit.pth")
    net = MultiCropWrapper(build(), DINOHead(48, 64))
    torch.save({"student": net.state_dict(), "teacher": net.state_dict(), "sparsedino": {"arch": "vit_pico"}},
               root / "checkpoint.pth")  # fmt: skip
    write_synthetic_videos(root / "clips", clips=1, frames=3, size=32, seed=0, num_classes=3)
    (root / "a_file").write_text("not a folder")
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work replaced by :class:`WorkStarted`."""
    for target in (
        "sparsedino.eval.command.run_video",
        "sparsedino.data.command.write_synthetic_videos",
        "sparsedino.data.command.write_synthetic_dataset",
        "sparsedino.bench.attention.bench_shape",
        "sparsedino.bench.vit.build_models",
        "sparsedino.bench.train.make_step",
        "sparsedino.bench.gpu.Checks",
        "sparsedino.models.export.write_export",
        "sparsedino.train.command.run_training",
    ):
        monkeypatch.setattr(target, _refuse_work)


def argv_for(row: Row, value: str, files, tmp_path) -> list[str]:
    given = [row.option, value] if row.option.startswith("--") else [f"{row.option}={value}"]
    base = {
        "eval video": ["eval", "video", "--checkpoint", str(files / "vit.pth"), "--data", str(files / "clips"),
                       "--out", str(tmp_path / "out"), "short_side=32", "size_multiple=8", "device=cpu"],
        "data synth-video": ["data", "synth-video", "--out", str(tmp_path / "out")],
        "data synth": ["data", "synth", "--out", str(tmp_path / "out")],
        "bench attention": ["bench", "attention", "--shapes", "1x1x4x4", "--json", str(tmp_path / "a.json")],
        "bench vit": ["bench", "vit", "--json", str(tmp_path / "v.json")],
        "bench train": ["bench", "train", "--json", str(tmp_path / "t.json")],
        "bench gpu": ["bench", "gpu", "--device", "cpu", "--out", str(tmp_path / "g.json")],
        "export": ["export", str(files / "checkpoint.pth"), "--out", str(tmp_path / "x.pth")],
        "train": ["train", "dino_cpu_tiny", "data.path=unused", f"run.output_dir={tmp_path / 'run'}"],
        "reproduce": ["reproduce", "--preset", "micro", "--out", str(tmp_path / "r"), "--dry-run"],
    }[row.command]  # fmt: skip
    if row.command == "bench train" and row.option == "--normalizers":
        given = [row.option, *value.split()]
    return [*base, *given]


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own errors (a value that is not an int, not a choice)
        return int(exit_.code)


@pytest.mark.parametrize(("row", "category", "value"), CASES)
def test_each_option_refuses_bad_values_in_one_line_and_accepts_the_rest(
    row, category, value, files, tmp_path, capsys, no_work
):
    argv = argv_for(row, value, files, tmp_path)
    if category in row.valid:
        try:
            code = run(argv)
        except WorkStarted:
            code = 0
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err, f"{row.valid[category]}: {err}"
        return
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    prog = "sparsedino " + row.command
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    assert (row.named or row.option) in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


def _options(parser_main, monkeypatch) -> set[str]:
    """The value-taking options of the parser that ``parser_main`` builds and parses with."""
    seen: set[str] = set()

    def capture(parser, args=None, namespace=None):
        seen.update(a.option_strings[0] for a in parser._actions if a.option_strings and a.nargs != 0)
        raise WorkStarted

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(WorkStarted):
        parser_main()
    monkeypatch.undo()
    return seen - {"-h"}


def test_the_table_covers_every_option_of_those_commands(monkeypatch):
    """A new option of one of these commands must get a row."""
    from sparsedino.bench import attention, gpu, train, vit
    from sparsedino.data import command as data
    from sparsedino.eval.settings import VideoConfig
    from sparsedino.models import export

    paths = {"--json", "--out", "--workdir"}  # file and folder names: rows above where they can be refused
    ignored = {("bench vit", "--shapes")}  # accepted and ignored (symmetry with bench attention)
    covered = {(row.command, row.option) for row in TABLE} | ignored
    for command, parser_main in {
        "bench attention": lambda: attention.main([]),
        "bench vit": lambda: vit.main([]),
        "bench train": lambda: train.main([]),
        "bench gpu": lambda: gpu.main([]),
        "export": lambda: export.main([]),
        "data synth-video": lambda: data.main(["synth-video"]),
        "data synth": lambda: data.main(["synth"]),
    }.items():
        missing = sorted(o for o in _options(parser_main, monkeypatch) - paths if (command, o) not in covered)
        assert not missing, f"{command}: no table row for {missing}"
    keys = {key.name for key in dataclasses.fields(VideoConfig)} - {"data_root"}
    assert keys <= {row.option for row in TABLE if row.command == "eval video"}


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["data", "synth-video", "--out", "o", "--clutter", "nan"],
            "sparsedino data synth-video: error: --clutter",
        ),
        (["bench", "gpu", "--device", "cpu", "--out", "g.json", "--sections", ","], "--sections"),
        (
            ["eval", "video", "--checkpoint", "x.pth", "temperature=0"],
            "sparsedino eval video: error: key 'temperature'",
        ),
    ],
)
def test_the_real_entry_point_behaves_the_same(argv, named, tmp_path):
    result = subprocess.run([sys.executable, "-m", "sparsedino", *argv], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert named in result.stderr and not (tmp_path / "o").exists()

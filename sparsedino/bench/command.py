"""``sparsedino bench {attention,vit,train,gpu}``: speed and memory benchmarks (never run by the tests)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS: dict[str, str] = {
    "attention": "attention op alone: SDPA softmax vs entmax implementations, fwd and fwd+bwd, peak memory",
    "vit": "one ViT-S/16 training step (forward + backward + AdamW), softmax vs entmax-1.5",
    "train": "one DINO multi-crop training step (2x224 + 8x96 crops), softmax vs entmax-1.5",
    "gpu": "the first thing to run on a GPU: exactness, speed and a restarted DINO run (--out FILE)",
}


def main(argv: Sequence[str]) -> int:
    """Dispatch to ``sparsedino.bench.<name>.main``."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        stream = sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            print(f"sparsedino bench: unknown benchmark {argv[0]!r}", file=stream)
        print("usage: sparsedino bench {" + ",".join(BENCHMARKS) + "} [--json FILE] [...]", file=stream)
        for name, text in BENCHMARKS.items():
            print(f"  {name:<10} {text}", file=stream)
        return 0 if stream is sys.stdout else 2
    from sparsedino.errors import run_command

    return run_command(f"sparsedino bench {argv[0]}", lambda: _bench(argv[0], argv[1:]))


def _bench(name: str, argv: list[str]) -> int:
    from sparsedino.atomic import check_output_file

    pre = argparse.ArgumentParser(add_help=False)  # the result file is checked before minutes of timing
    pre.add_argument("--json", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.json is not None:
        check_output_file(known.json, "--json")
    module = importlib.import_module(f"sparsedino.bench.{name}")
    return int(module.main(argv) or 0)

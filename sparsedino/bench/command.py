"""``sparsedino bench {attention,vit,train,gpu}``: speed and memory benchmarks (never run by the tests)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

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
    module = importlib.import_module(f"sparsedino.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)

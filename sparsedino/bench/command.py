"""``sparsedino bench {attention,vit,train,gpu}``: speed and memory benchmarks (never run by the tests)."""

from __future__ import annotations

from collections.abc import Sequence

from sparsedino.commands import Group, dispatch

# benchmark -> one-line help; each is the ``CLI`` of ``sparsedino.bench.<benchmark>``
BENCHMARKS: dict[str, str] = {
    "attention": "attention op alone: SDPA softmax vs entmax implementations, fwd and fwd+bwd, peak memory",
    "vit": "one ViT-S/16 training step (forward + backward + AdamW), softmax vs entmax-1.5",
    "train": "one DINO multi-crop training step (2x224 + 8x96 crops), softmax vs entmax-1.5",
    "gpu": "the first thing to run on a GPU: exactness, speed and a restarted DINO run (--out FILE)",
}
USAGE = "\n".join(
    ["usage: sparsedino bench {" + ",".join(BENCHMARKS) + "} [--json FILE] [...]"]
    + [f"  {name:<10} {text}" for name, text in BENCHMARKS.items()]
)
CLI = Group("benchmark", USAGE, {name: f"sparsedino.bench.{name}" for name in BENCHMARKS})


def main(argv: Sequence[str]) -> int:
    """``sparsedino bench BENCHMARK [options]`` (``argv`` starts with the benchmark)."""
    return dispatch(CLI, argv, "sparsedino bench")

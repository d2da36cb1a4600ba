"""The ``sparsedino`` command line.

Each sub-command lives in the package folder that owns its concern and exposes ``main(argv) -> int``;
this file only dispatches, so a command's own modules load only when it runs. (Importing the package
itself loads torch and timm, because ``import sparsedino`` registers the sparse timm model names.)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command name -> (module with ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sparsedino.train.command", "pretrain DINO with softmax or sparse attention (torchrun-ready)"),
    "export": ("sparsedino.models.export", "export a training checkpoint's teacher backbone (timm or DINO)"),
    "eval": ("sparsedino.eval.command", "frozen-feature protocols: knn, linear, seg, video"),
    "diagnose": ("sparsedino.diagnose.command", "semantic-diffusion diagnostics of a ViT"),
    "reproduce": ("sparsedino.pipeline.command", "softmax vs entmax-1.5: train, evaluate, diagnose, report"),
    "bench": ("sparsedino.bench.command", "speed and memory benchmarks: attention, vit, train"),
    "data": (
        "sparsedino.data.command",
        "datasets: `data synth` / `data synth-video` write the embedded data",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sparsedino COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `sparsedino COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsedino`` console script.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        from sparsedino import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"sparsedino: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from sparsedino.allocator import keep_freed_memory
    from sparsedino.environment import check_environment
    from sparsedino.errors import run_command

    keep_freed_memory()  # large CPU temporaries are reused instead of re-faulted (see allocator.py)
    status = run_command(f"sparsedino {name}", check_environment)  # bad SPARSEDINO_* values fail now
    if status:
        return status
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

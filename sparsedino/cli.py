"""The ``sparsedino`` command line: the table of commands, on the skeleton of :mod:`sparsedino.commands`.

Each command lives in the package folder that owns its concern, as that module's ``CLI`` (a leaf
:class:`~sparsedino.commands.Command` or a :class:`~sparsedino.commands.Group` of sub-commands); a module
is imported only when its command runs, so ``sparsedino --help`` loads none of them. (Importing the package
itself loads torch and timm, because ``import sparsedino`` registers the sparse timm model names.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sparsedino import __version__
from sparsedino.allocator import keep_freed_memory
from sparsedino.commands import Group, dispatch
from sparsedino.environment import check_environment
from sparsedino.errors import run_command

# command name -> (module whose ``CLI`` it is, one-line help)
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
VERSION_WORDS = ("-V", "--version")


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sparsedino COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `sparsedino COMMAND --help` for the options of one command."]
    return "\n".join(lines)


CLI = Group("command", _usage(), {name: module for name, (module, _) in COMMANDS.items()})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsedino`` console script (and of ``python -m sparsedino``).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in VERSION_WORDS:
        print(__version__)
        return 0
    if args and args[0] in COMMANDS:  # a command will run: prepare the process for it first
        keep_freed_memory()  # large CPU temporaries are reused instead of re-faulted (see allocator.py)
        status = run_command(f"sparsedino {args[0]}", check_environment)  # bad SPARSEDINO_* values fail now
        if status:
            return status
    return dispatch(CLI, args, "sparsedino")


if __name__ == "__main__":
    raise SystemExit(main())

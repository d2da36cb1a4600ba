"""The skeleton every ``sparsedino`` command runs on: a tree of commands, one dispatcher, one exit path.

A command line is a path through a tree: ``sparsedino eval knn ...`` picks the group ``eval``, then its
leaf ``knn``. A :class:`Group` lists its sub-commands and the usage text it prints; a :class:`Command` (a
leaf) adds its options to a parser and does the work. :func:`dispatch` walks the tree the same way for
every command:

- a group given no word, ``-h`` or ``--help`` prints its usage on stdout (exit 0); an unknown word prints
  ``PROG: unknown NOUN 'WORD'`` and the usage on stderr (exit 2);
- a leaf gets an ``argparse`` parser named after the words typed (``prog="sparsedino eval knn"``), so
  argparse's own errors (a missing option, a value that is not an int) read ``PROG: error: ...`` (exit 2);
- the leaf's work runs inside :func:`~sparsedino.errors.run_command`: bad input (a
  :class:`~sparsedino.errors.UserError`) is one line on stderr and exit code 2, a bug keeps its traceback.

A sub-command may be given as the name of the module whose ``CLI`` it is; that module is imported only
when the command runs, so a group's help loads none of its sub-commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sparsedino.errors import run_command

HELP_WORDS = ("-h", "--help")


def parse_all(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """The default way a leaf turns its words into options: ``parser.parse_args``."""
    return parser.parse_args(list(argv))


@dataclass(frozen=True)
class Command:
    """A leaf of the command tree.

    Attributes:
        add_arguments: adds the command's options to its parser.
        run: the work, given the parsed options; returns the exit code (None = 0) and raises
            :class:`~sparsedino.errors.UserError` for bad input.
        description: the parser's description (the first line of ``--help``).
        epilog: text after the options in ``--help``.
        raw_help: keep the line breaks of ``description`` and ``epilog`` (examples, tables).
        parse: how the words become options; :func:`parse_all` unless the command separates some first.
    """

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None
    epilog: str | None = None
    raw_help: bool = False
    parse: Callable[[argparse.ArgumentParser, Sequence[str]], argparse.Namespace] = parse_all

    def parser(self, prog: str) -> argparse.ArgumentParser:
        """This command's parser, named ``prog`` in its usage line and its errors."""
        parser = argparse.ArgumentParser(
            prog=prog,
            description=self.description,
            epilog=self.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter if self.raw_help else argparse.HelpFormatter,
        )
        self.add_arguments(parser)
        return parser


@dataclass(frozen=True)
class Group:
    """A node of the command tree whose next word picks a sub-command.

    Attributes:
        noun: what a sub-command is called in the unknown-word error (``command``, ``protocol``, ...).
        usage: the text printed for ``--help`` and after an unknown word.
        commands: word -> sub-command: a :class:`Command`, a :class:`Group`, or the name of a module whose
            ``CLI`` attribute is one (imported only when that word is given).
    """

    noun: str
    usage: str
    commands: Mapping[str, Command | Group | str]


def resolve(node: Command | Group | str) -> Command | Group:
    """The node itself, or the ``CLI`` of the module it names."""
    return importlib.import_module(node).CLI if isinstance(node, str) else node


def dispatch(node: Command | Group | str, argv: Sequence[str], prog: str) -> int:
    """Run the command line ``argv`` from ``node`` (see the module docstring).

    Args:
        node: where the words start: the root of the tree, a group or a leaf.
        argv: the words after ``prog``.
        prog: the words that led to ``node``, e.g. ``"sparsedino eval"``.

    Returns:
        The exit code. argparse exits by itself (``SystemExit``) for ``--help`` and its own errors.
    """
    node = resolve(node)
    if isinstance(node, Command):
        args = node.parse(node.parser(prog), argv)
        return run_command(prog, lambda: node.run(args))
    word = argv[0] if argv else None
    if word in node.commands:
        return dispatch(node.commands[word], argv[1:], f"{prog} {word}")
    if word is None or word in HELP_WORDS:
        print(node.usage)
        return 0
    print(f"{prog}: unknown {node.noun} {word!r}", file=sys.stderr)
    print(node.usage, file=sys.stderr)
    return 2

"""The ``camkit`` command: one module per subcommand, the shared arguments in
:mod:`camkit.cli.arguments`.

Results and where they were written go to stdout; problems and progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from camkit.cli import (
    demo,
    evaluate,
    explain,
    explain_dataset,
    fit_embedding,
    serve,
    train_memory,
)

SUBCOMMANDS = (explain, demo, evaluate, train_memory, fit_embedding, explain_dataset, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``camkit`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="camkit", description="Class activation maps for PyTorch image models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
    return parser


# What an expected failure raises: bad arguments, unreadable or unfitting files, a busy output
# folder (camkit's own errors are ValueErrors saying what to do), missing packages.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camkit`` command; returns the exit status (2 for a usage or input
    error, with a one-line message on stderr)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except EXPECTED_ERRORS as err:
        print(f"camkit: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """The error's message on one line (an ``OSError`` names its file)."""
    text = str(err)
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    return " ".join(text.split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())

"""`ovstream` command line: classify images, run the streaming pipeline, subscribe to results."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from stream.errors import UserError

log = logging.getLogger("ovstream")

# Each entry adds one sub-command: (name, module, help). The module defines
# `add_arguments(parser)` and `run(args) -> int`, and is imported only when needed.
COMMANDS: list[tuple[str, str, str]] = [
    ("classify", "stream.classify", "classify image files with a prepared model"),
    ("run", "stream.run", "classify video files in the streaming pipeline and publish results"),
    ("subscribe", "stream.subscribe", "print a pipeline's published results as JSON lines"),
]


def build_parser(
    commands: Sequence[tuple[str, str, str]] = COMMANDS,
    prog: str = "ovstream",
    description: str | None = __doc__,
) -> argparse.ArgumentParser:
    """One sub-parser per command; each command module is imported when the parser is built."""
    import importlib

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in commands:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def run_guarded(func: Callable[[], int], prog: str) -> int:
    """Run a command; user errors become one line on stderr and exit code 2."""
    try:
        return func()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # imports the command modules
    except KeyboardInterrupt:
        print("ovstream: interrupted", file=sys.stderr)
        return 130
    setup_logging(args.verbose)
    return run_guarded(lambda: args._run(args), "ovstream")


if __name__ == "__main__":
    sys.exit(main())

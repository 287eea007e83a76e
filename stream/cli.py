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
    """Run a command; user errors and a missing extra become one line on stderr and exit code 2."""
    try:
        return func()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        from stream.deps import missing_dependency

        message = missing_dependency(exc)
        if message is None:  # not a declared dependency: a bug, keep the traceback
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def run_main(
    argv: Sequence[str] | None,
    commands: Sequence[tuple[str, str, str]],
    prog: str,
    description: str | None,
) -> int:
    """Parse and run one command, all inside `run_guarded`: building the parser imports every
    command module, and so every dependency a missing extra would lack."""

    def parse_and_run() -> int:
        args = build_parser(commands, prog, description).parse_args(argv)
        setup_logging(args.verbose)
        return args._run(args)

    return run_guarded(parse_and_run, prog)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(argv, COMMANDS, "ovstream", __doc__)


if __name__ == "__main__":
    sys.exit(main())

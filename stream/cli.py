"""`ovstream` command line: classify images, run the streaming pipeline, subscribe to results."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from stream.errors import UserError

log = logging.getLogger("ovstream")

# Each entry adds one sub-command: (name, module, help). The module defines
# `add_arguments(parser)` and `run(args) -> int`, and is imported only when needed.
COMMANDS: list[tuple[str, str, str]] = [
    ("classify", "stream.classify", "classify image files with a prepared model"),
    ("run", "stream.run", "classify video files in the streaming pipeline and publish results"),
    ("batch", "stream.jobs.cli", "classify many video files as one resumable job"),
    ("subscribe", "stream.subscribe", "print a pipeline's published results as JSON lines"),
    ("worker", "stream.remote.worker", "run inference for a pipeline on another machine"),
    ("keys", "stream.remote.keys", "make CURVE key pairs for remote infer workers"),
]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other user error:
    `ovstream: error: argument --fps: must be positive, got 0 (see ovstream run --help)`, exit 2.
    Sub-parsers made by `add_subparsers` are of the same class."""

    def error(self, message: str) -> NoReturn:
        tool = self.prog.split()[0]
        line = message.strip().splitlines()[0] if message.strip() else "bad arguments"
        self.exit(2, f"{tool}: error: {line} (see {self.prog} --help)\n")


def build_parser(
    commands: Sequence[tuple[str, str, str]] = COMMANDS,
    prog: str = "ovstream",
    description: str | None = __doc__,
) -> argparse.ArgumentParser:
    """One sub-parser per command; each command module is imported when the parser is built."""
    import importlib

    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in commands:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


class OneLineFormatter(logging.Formatter):
    """Log records as `ovstream: warning: ...` / `ovstream: error: ...`, one line each, like the
    command's own error lines; `-v` lines (info, debug) also name the logger. Tracebacks of
    logged exceptions only with `-vv`."""

    def __init__(self, prog: str, debug: bool) -> None:
        super().__init__()
        self.prog = prog
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        level = "error" if record.levelno >= logging.ERROR else record.levelname.lower()
        where = "" if record.levelno >= logging.WARNING else f"{record.name}: "
        text = record.getMessage()
        if not self.debug:
            text = " ".join(text.split("\n"))
        elif record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"{self.prog}: {level}: {where}{text}"


def setup_logging(verbose: int, prog: str = "ovstream") -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(prog, debug=verbose >= 2))
    logging.basicConfig(level=level, handlers=[handler])


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
        setup_logging(args.verbose, prog)
        return args._run(args)

    return run_guarded(parse_and_run, prog)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(argv, COMMANDS, "ovstream", __doc__)


if __name__ == "__main__":
    sys.exit(main())

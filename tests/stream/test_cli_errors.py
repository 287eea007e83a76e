"""Every user-facing line of `ovstream` on stderr is `ovstream: error: ...` or
`ovstream: warning: ...`, one line, no usage block and no traceback: argparse's errors too."""

from __future__ import annotations

import logging

import pytest

from stream.cli import OneLineFormatter
from tests.conftest import run_cli

USAGE_ERRORS = [
    (
        ["run", "x.mp4", "--model", "m", "--fps", "0"],
        "ovstream: error: argument --fps: must be positive, got 0 (see ovstream run --help)",
    ),
    (
        ["run", "x.mp4", "--stall-timeout", "soon", "--model", "m"],
        "ovstream: error: argument --stall-timeout: expected a number, got 'soon' "
        "(see ovstream run --help)",
    ),
    (
        ["run", "x.mp4", "--model", "m", "--decoder-threads", "many"],
        "ovstream: error: argument --decoder-threads: invalid choice: 'many' (choose from 'AUTO', "
        "'FRAME', 'SLICE', 'NONE') (see ovstream run --help)",
    ),
    (
        ["run", "x.mp4"],
        "ovstream: error: the following arguments are required: --model/-m "
        "(see ovstream run --help)",
    ),
    (
        ["subscribe", "--count", "many"],
        "ovstream: error: argument --count: invalid int value: 'many' "
        "(see ovstream subscribe --help)",
    ),
    (
        ["subscribe", "--status", "--status-only"],
        "ovstream: error: argument --status-only: not allowed with argument --status "
        "(see ovstream subscribe --help)",
    ),
    (
        ["launch"],
        "ovstream: error: argument COMMAND: invalid choice: 'launch' "
        "(choose from 'classify', 'run', 'batch', 'subscribe', 'worker', 'keys') "
        "(see ovstream --help)",
    ),
]


@pytest.mark.parametrize("args, line", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line(args, line):
    proc = run_cli("ovstream", *args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]
    assert proc.stdout == ""


def test_subscribe_count_below_one_is_an_error_line():
    proc = run_cli("ovstream", "subscribe", "--count", "0", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["ovstream: error: --count must be at least 1, got 0"]


def test_log_records_become_ovstream_lines():
    def line(level: int, msg: str, debug: bool = False) -> str:
        record = logging.LogRecord("stream.stages.capture", level, __file__, 1, msg, None, None)
        return OneLineFormatter("ovstream", debug).format(record)

    assert line(logging.WARNING, "source cam: disconnected") == (
        "ovstream: warning: source cam: disconnected"
    )
    assert line(logging.ERROR, "x") == "ovstream: error: x"
    assert line(logging.CRITICAL, "x") == "ovstream: error: x"
    assert line(logging.INFO, "x") == "ovstream: info: stream.stages.capture: x"
    assert line(logging.WARNING, "two\nlines") == "ovstream: warning: two lines"

"""Stage processes: how the supervisor starts them, hears their logs and ends them.

- `StageLauncher` starts each stage as a spawned process running `stage_main`, with SIGINT and
  SIGTERM ignored from its first instruction (`children_deaf_to_stop_signals`), and forwards the
  log records of every stage to this process's loggers.
- `stop_signals_blocked`: Ctrl-C belongs to the main thread; a thread started inside it (the log
  listener, the metrics server) never receives one.
- `end_processes`: give processes a grace period to leave, then kill what is left.
- `describe_exit`: an exit code in words (`killed by SIGKILL`, `exit code 3`).
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from stream.stages.base import Stage, stage_main

ABORT_GRACE_S = 1.0
"""After `abort`, how long a stage may take to leave before it is killed."""
JOIN_TIMEOUT_S = 5.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Forward(logging.Handler):
    """Hands records from the stage processes to this process's loggers."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT/SIGTERM in this thread; a thread started meanwhile keeps them blocked."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def children_deaf_to_stop_signals() -> Iterator[None]:
    """Start processes with SIGINT and SIGTERM ignored from their first instruction.

    An ignored disposition survives exec, so a stage process cannot be interrupted while Python
    starts and imports (a Ctrl-C to the whole group there printed KeyboardInterrupt tracebacks).
    The signals are blocked meanwhile: Linux keeps a blocked signal pending even while it is
    ignored, and the supervisor's own handler gets it when the block ends. Every other thread of
    the supervisor blocks them for good (ZeroMQ's I/O threads do; the log listener is started
    inside `stop_signals_blocked`), so the kernel cannot hand one to a thread that would drop it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # dispositions can be changed on the main thread only
        return
    with stop_signals_blocked():
        if set(signal.sigpending()) & STOP_SIGNALS:
            yield  # a stop is already waiting: ignoring now would discard it
            return
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


class StageLauncher:
    """Starts stage processes (spawn); their log records reach this process's loggers until
    `close()`."""

    def __init__(self) -> None:
        self._spawn = mp.get_context("spawn")
        self._log_queue = self._spawn.Queue()
        self._listener: Any = logging.handlers.QueueListener(self._log_queue, _Forward())
        with stop_signals_blocked():
            self._listener.start()

    def start(self, stage: Stage) -> Any:
        """Start `stage` in a process of its own, deaf to Ctrl-C; returns the process."""
        level = logging.getLogger().getEffectiveLevel()
        on_main_thread = threading.current_thread() is threading.main_thread()
        process = self._spawn.Process(
            target=stage_main,
            args=(stage, self._log_queue, level, on_main_thread),
            name=stage.name,
            daemon=True,
        )
        with children_deaf_to_stop_signals():
            process.start()
        return process

    def close(self) -> None:
        """Stop forwarding log records."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def end_processes(processes: Iterable[Any], grace_s: float = ABORT_GRACE_S) -> None:
    """Wait up to `grace_s` in all for `processes` to leave; kill those that have not."""
    processes = list(processes)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.exitcode is None:
            process.kill()
            process.join(JOIN_TIMEOUT_S)

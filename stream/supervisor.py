"""Supervisor: starts the stage processes, watches them, stops them in the right order.

It binds the control link (READY/STATS/ERROR from every stage) and, for the Python iterator, the
sink link (result records). `step()` handles whatever happened since the last call, so the CLI
loop and the Python iterator drive the same code.

Stopping: `request_stop()` (SIGINT/SIGTERM) stops only the captures; their ends of stream flow
through the pipeline, which drains what is in flight, flushes its outputs and exits by itself.
A stage that dies (non-zero exit, killed, or gone before its streams ended) stops the whole
pipeline, and `failure` names the stage and the reason.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from stream import messages
from stream.stage import EXIT_USER_ERROR, Stage, stage_main
from stream.transport import TransportConfig, open_socket, receive

log = logging.getLogger(__name__)

STATUS_PREFIX = messages.STATUS_TOPIC_PREFIX.encode()
JOIN_TIMEOUT_S = 5.0
FINAL_REPORT_WAIT_S = 2.0


@dataclass
class StageState:
    """What the supervisor knows about one stage process."""

    stage: Stage
    process: Any = None
    ready: bool = False
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    complete: bool = False
    exited_at: float | None = None
    judged: bool = False

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def is_capture(self) -> bool:
        return self.name.startswith("capture[")


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


class Supervisor:
    """Runs a set of stages as processes and reports on them."""

    def __init__(
        self,
        stages: list[Stage],
        endpoints: dict[str, str],
        transport: TransportConfig,
        collect: bool = False,
        startup_timeout_s: float = 120.0,
        drain_timeout_s: float = 60.0,
    ) -> None:
        self.states = {s.name: StageState(s) for s in stages}
        self.endpoints = endpoints
        self.transport = transport
        self.collect = collect
        self.startup_timeout_s = startup_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.failure: str | None = None
        self.failure_is_user_error = False
        """The failing stage reported a user error (bad model, endpoint in use), not a crash."""
        self.source_errors: dict[str, str] = {}
        self.status_events: list[dict[str, Any]] = []
        """Status events of the sources that reached the sink (collect=True only), in order."""
        self.rejected_control = 0
        self.stopping = False
        self.interrupted = False
        self._ctx: zmq.Context | None = None
        self._control: zmq.Socket | None = None
        self._sink: zmq.Socket | None = None
        self._listener: Any = None
        self._started_at = 0.0
        self._stop_at: float | None = None
        self._captures_started = False
        self._early_stop = False
        self._spawn: Any = None
        self._log_queue: Any = None

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the supervisor's sockets and start every stage process."""
        spawn = mp.get_context("spawn")
        self._ctx = zmq.Context()
        self._control = open_socket(
            self._ctx,
            zmq.PULL,
            self.endpoints["control"],
            True,
            self.transport,
            hwm=10000,
            linger_ms=0,
        )
        if self.collect:
            self._sink = open_socket(
                self._ctx, zmq.PULL, self.endpoints["sink"], True, self.transport, linger_ms=0
            )
        log_queue = spawn.Queue()
        import logging.handlers

        self._listener = logging.handlers.QueueListener(log_queue, _Forward())
        self._listener.start()
        self._spawn = spawn
        self._log_queue = log_queue
        self._started_at = time.monotonic()
        # Captures start once the rest is ready, so no frame waits for model compilation and
        # capture timestamps (hence latencies) mean what they say.
        for state in self.states.values():
            if not state.is_capture:
                self._start_process(state)

    def _start_process(self, state: StageState) -> None:
        level = logging.getLogger().getEffectiveLevel()
        state.process = self._spawn.Process(
            target=stage_main,
            args=(state.stage, self._log_queue, level),
            name=state.name,
            daemon=True,
        )
        state.process.start()

    def _start_captures_when_ready(self) -> None:
        if self._captures_started or self.failure is not None or self.stopping:
            return
        if all(s.ready for s in self.states.values() if not s.is_capture):
            self._captures_started = True
            for state in self.capture_states():
                self._start_process(state)

    @property
    def pids(self) -> dict[str, int]:
        return {n: s.process.pid for n, s in self.states.items() if s.process is not None}

    # -- run --------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Every stage has exited and been accounted for (or the run failed)."""
        return all(s.judged or s.process is None for s in self.states.values()) and (
            self._captures_started or self.failure is not None or self.stopping
        )

    def step(self, timeout_ms: int = 200) -> list[bytes]:
        """Handle reports, exits and timeouts; returns the result records that arrived (JSON)."""
        results: list[bytes] = []
        poller = zmq.Poller()
        assert self._control is not None
        poller.register(self._control, zmq.POLLIN)
        if self._sink is not None:
            poller.register(self._sink, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        if self._control in events:
            self._drain_control()
        if self._sink is not None and self._sink in events:
            while True:
                parts = receive(self._sink, 0)
                if parts is None:
                    break
                if len(parts) == 2 and bytes(parts[0].buffer).startswith(STATUS_PREFIX):
                    try:
                        self.status_events.append(json.loads(bytes(parts[1].buffer)))
                    except ValueError:
                        log.warning("supervisor: rejected a malformed status event on the sink")
                elif len(parts) == 2:
                    results.append(bytes(parts[1].buffer))
                else:
                    log.warning("supervisor: rejected a malformed result on the sink link")
        self._start_captures_when_ready()
        self._check_processes()
        self._check_timeouts()
        return results

    def _drain_control(self) -> None:
        assert self._control is not None
        while True:
            parts = receive(self._control, 0)
            if parts is None:
                return
            try:
                msg = messages.decode(parts)
            except messages.MessageError as exc:
                self.rejected_control += 1
                log.warning("supervisor: rejected a malformed control message: %s", exc)
                continue
            state = self.states.get(str(msg.meta.get("stage")))
            if state is None:
                self.rejected_control += 1
                log.warning(
                    "supervisor: control message from unknown stage %r", msg.meta.get("stage")
                )
                continue
            if msg.kind == messages.READY:
                state.ready = True
            elif msg.kind == messages.STATS:
                state.stats = dict(msg.meta.get("stats") or {})
                if msg.meta.get("final"):
                    state.final = True
                    state.complete = bool(msg.meta.get("complete"))
            elif msg.kind == messages.ERROR:
                text = str(msg.meta.get("message"))
                if msg.meta.get("source_error"):
                    self.source_errors[msg.stream] = text
                    log.info("source %s failed: %s", msg.stream, text)
                else:
                    state.error = text

    def _check_processes(self) -> None:
        now = time.monotonic()
        for state in self.states.values():
            if state.judged or state.process is None or state.process.exitcode is None:
                continue
            if state.exited_at is None:
                state.exited_at = now
            code = state.process.exitcode
            # The last report may still be on its way; give it a moment before judging.
            if not state.final and now - state.exited_at < FINAL_REPORT_WAIT_S:
                continue
            state.judged = True
            if self._early_stop:
                continue
            if code == 0 and (state.complete or (state.is_capture and self.stopping)):
                continue
            if code == 0 and self.failure is not None:
                continue  # stopped by us after another stage failed
            if self.failure is not None:
                continue
            if code == EXIT_USER_ERROR and state.error:
                self.failure_is_user_error = True
                self._fail(f"{state.name}: {state.error}")
                continue
            if code == 0:
                reason = "stopped before the end of its streams"
            else:
                reason = state.error or describe_exit(code)
            self._fail(f"stage {state.name} died: {reason}")

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        if self.failure is None and now - self._started_at > self.startup_timeout_s:
            late = [s.name for s in self.states.values() if not s.ready and not s.judged]
            if late:
                self._fail(f"stage {late[0]} did not start within {self.startup_timeout_s:.0f} s")
        draining_too_long = self._stop_at is not None and now - self._stop_at > self.drain_timeout_s
        if draining_too_long and self.failure is None:
            self._fail(f"pipeline did not drain within {self.drain_timeout_s:.0f} s of stopping")

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.debug("supervisor: %s; stopping every stage", reason)
        started = [s for s in self.states.values() if s.process is not None and s.process.pid]
        for state in started:
            if state.process.exitcode is None:
                state.process.terminate()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for state in self.states.values():
            state.judged = True
        for state in started:
            proc = state.process
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join(JOIN_TIMEOUT_S)

    # -- stop -------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop reading the sources; what is in flight still comes out."""
        if self.stopping:
            return
        self.stopping = True
        self.interrupted = True
        self._stop_at = time.monotonic()
        if not self._captures_started:  # nothing read yet: just stop the stages that run
            self._early_stop = True
            for state in self.states.values():
                if state.process is not None and state.process.exitcode is None:
                    state.process.terminate()
            return
        for state in self.states.values():
            if state.is_capture and state.process is not None and state.process.exitcode is None:
                state.process.terminate()  # SIGTERM: the capture sends its end of stream and exits

    def abort(self, reason: str) -> None:
        """Stop everything now (a second Ctrl-C, or the caller gave up)."""
        if self.failure is None:
            self._fail(reason)

    def close(self) -> None:
        """Make sure no stage process outlives the supervisor; release sockets and logging."""
        if not self.finished:
            self.abort(self.failure or "closed before the end")
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for sock in (self._control, self._sink):
            if sock is not None:
                sock.close(linger=0)
        self._control = self._sink = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- reports ----------------------------------------------------------------------------------

    def stats(self, name: str) -> dict[str, Any]:
        state = self.states.get(name)
        return dict(state.stats) if state else {}

    def capture_states(self) -> list[StageState]:
        return [s for s in self.states.values() if s.is_capture]

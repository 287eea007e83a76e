"""Supervisor: starts the stage processes, watches them, stops them in the right order.

It binds the control link (READY/STATS/ERROR/EOS_SEEN from every stage), the command link
(a ROUTER that reaches each stage by name: stream/command_link.py) and, for the Python iterator,
the sink link (result records). `step()` handles whatever happened since the last call, so the
CLI loop and the Python iterator drive the same code.

What it knows of the stages and streams, how it decides that a stage may leave (end of stream,
release) and which file a capture pool worker reads next: its base, `RunTracker`
(stream/tracking.py). How a stage process is started, deaf to Ctrl-C, and ended:
stream/stage_processes.py.

Stopping: `request_stop()` (SIGINT/SIGTERM to the main process) tells the captures to stop
reading; files not yet started are ended unread; their ends of stream flow through the pipeline,
which drains what is in flight, flushes its outputs and exits by itself. A stage that dies
(non-zero exit, killed, or gone before its streams ended) stops the whole pipeline, and
`failure` names the stage and the reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from stream.command_link import CommandLink
from stream.stage_processes import StageLauncher, describe_exit, end_processes
from stream.stages.base import EXIT_USER_ERROR, Stage
from stream.tracking import RunTracker, StageState
from stream.wire import messages
from stream.wire.transport import TransportConfig, open_socket

log = logging.getLogger(__name__)

FINAL_REPORT_WAIT_S = 2.0


class Supervisor(RunTracker):
    """Runs a set of stages as processes and reports on them."""

    def __init__(
        self,
        stages: list[Stage],
        endpoints: dict[str, str],
        transport: TransportConfig,
        collect: bool = False,
        startup_timeout_s: float = 120.0,
        drain_timeout_s: float = 60.0,
        streams: list[str] | None = None,
        files: list[dict[str, Any]] | None = None,
        downstream: dict[str, str] | None = None,
    ) -> None:
        super().__init__(stages, collect, streams, files, downstream)
        self.endpoints = endpoints
        self.transport = transport
        self.startup_timeout_s = startup_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.failure: str | None = None
        self.failure_is_user_error = False
        """The failing stage reported a user error (bad model, endpoint in use), not a crash."""
        self.stopping = False
        self.interrupted = False
        self._ctx: zmq.Context | None = None
        self._control: zmq.Socket | None = None
        self._commands: CommandLink | None = None
        self._sink: zmq.Socket | None = None
        self._launcher: StageLauncher | None = None
        self._started_at = 0.0
        self._stop_at: float | None = None
        self._captures_started = False
        self._early_stop = False
        self._stop_done = False

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the supervisor's sockets and start every stage process."""
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
        self._commands = CommandLink(self._ctx, self.endpoints["command"], self.transport)
        if self.collect:
            self._sink = open_socket(
                self._ctx, zmq.PULL, self.endpoints["sink"], True, self.transport, linger_ms=0
            )
        self._launcher = StageLauncher()
        self._started_at = time.monotonic()
        # Captures start once the rest is ready, so no frame waits for model compilation and
        # capture timestamps (hence latencies) mean what they say.
        for state in self.states.values():
            if not state.is_capture and not self.stopping:
                self._start_process(state)

    def _start_process(self, state: StageState) -> None:
        assert self._launcher is not None
        state.process = self._launcher.start(state.stage)

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

    def step(self, timeout_ms: int = 200) -> list[dict[str, Any]]:
        """Handle reports, commands, exits and timeouts; returns the result records that arrived
        (collect=True). Streams that ended on the sink collect in `ended`."""
        results: list[dict[str, Any]] = []
        poller = zmq.Poller()
        assert self._control is not None and self._commands is not None
        poller.register(self._control, zmq.POLLIN)
        poller.register(self._commands.socket, zmq.POLLIN)
        if self._sink is not None:
            poller.register(self._sink, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        if self._control in events:
            self._drain_control(self._control)
        if self._commands.socket in events:
            self._drain_commands()
        if self._sink is not None and self._sink in events:
            self._drain_sink(self._sink, results)
        self._carry_out_stop()
        self._start_captures_when_ready()
        for name, assignment in self._assignments(self.stopping):
            self._send_command(name, "assign", **assignment)
        for name in self._releases():
            self._send_command(name, "release")
        self._deliver()
        self._check_processes()
        self._check_timeouts()
        return results

    def _drain_commands(self) -> None:
        assert self._commands is not None
        for name, msg in self._commands.receive(self._reject):
            state = self.states.get(name)
            if state is None or msg.kind != messages.COMMAND:
                self._reject(f"a {msg.kind} message from unknown stage {name!r}")
                continue
            what = msg.meta.get("command")
            if what == "hello":
                self._commands.routes.add(name)
            elif what == "next" and state.is_capture:
                self._worker_waiting(name, msg.meta.get("ended"))
                self._commands.routes.add(name)
            else:
                self._reject(f"command {what!r} from {name}")

    def _send_command(self, name: str, command: str, **meta: Any) -> None:
        """Queue a command for a stage; delivered as soon as the stage has said hello."""
        assert self._commands is not None
        self._commands.queue(name, command, **meta)
        self._deliver()

    def _deliver(self) -> None:
        assert self._commands is not None
        self._commands.deliver(self._gone)

    def _gone(self, name: str) -> bool:
        """Has stage `name` left (so that a command to it is pointless)?"""
        state = self.states[name]
        return state.judged or (state.process is not None and state.process.exitcode is not None)

    def _check_processes(self) -> None:
        now = time.monotonic()
        for state in self.states.values():
            if state.judged or state.process is None or state.process.exitcode is None:
                continue
            if state.exited_at is None:
                state.exited_at = now
            code = state.process.exitcode
            # A stage that exited by itself sent its last report first, but it may still be on
            # its way; a killed one sends none.
            if code >= 0 and not state.final and now - state.exited_at < FINAL_REPORT_WAIT_S:
                continue
            state.judged = True
            if self._early_stop or self.failure is not None:
                continue  # stopped by us
            if code == 0 and state.released:
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
            if late and not self._captures_started:
                self._fail(f"stage {late[0]} did not start within {self.startup_timeout_s:.0f} s")
        draining_too_long = self._stop_at is not None and now - self._stop_at > self.drain_timeout_s
        if draining_too_long and self.failure is None:
            self._fail(f"pipeline did not drain within {self.drain_timeout_s:.0f} s of stopping")

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.debug("supervisor: %s; stopping every stage", reason)
        self._end_all()

    def _end_all(self) -> None:
        """Abort every stage process; kill what has not left after ABORT_GRACE_S."""
        started = [s for s in self.states.values() if s.process is not None and s.process.pid]
        for state in started:
            if state.process.exitcode is None:
                self._send_command(state.name, "abort")
        for state in self.states.values():
            state.judged = True
        end_processes(s.process for s in started)

    # -- stop -------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop reading the sources; what is in flight still comes out. Safe in a signal
        handler: it only records the request, which the next `step()` carries out."""
        if self.stopping:
            return
        self.stopping = True
        self.interrupted = True
        self._stop_at = time.monotonic()

    def _carry_out_stop(self) -> None:
        if not self.stopping or self._stop_done:
            return
        self._stop_done = True
        if not self._captures_started:  # nothing read yet: nothing to drain
            self._early_stop = True
            self._end_all()
            return
        for state in self.capture_states():
            self._send_command(state.name, "stop")
        if "infer" in self.states:
            self._send_command("infer", "stopping")

    def abort(self, reason: str) -> None:
        """Stop everything now (a second Ctrl-C, or the caller gave up)."""
        if self.failure is None:
            self._fail(reason)

    def close(self) -> None:
        """Make sure no stage process outlives the supervisor; release sockets and logging."""
        if not self.finished:
            self.abort(self.failure or "closed before the end")
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None
        if self._control is not None:
            self._control.close(linger=0)
        if self._commands is not None:
            self._commands.close()
        if self._sink is not None:
            self._sink.close(linger=0)
        self._control = self._commands = self._sink = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

"""Supervisor: starts the stage processes, watches them, stops them in the right order.

It binds the control link (READY/STATS/ERROR/EOS_SEEN from every stage), the command link
(a ROUTER that reaches each stage by name) and, for the Python iterator, the sink link (result
records). `step()` handles whatever happened since the last call, so the CLI loop and the Python
iterator drive the same code.

End of stream, and how a stage leaves: every stage passes each stream's end of stream on and
reports EOS_SEEN for every one it receives. A stage whose streams have all ended sends its final
STATS and then waits; the supervisor `release`s it once the next stage downstream has reported
EOS_SEEN for every stream the stage sent (a capture: the streams it read; preprocess and infer:
all of them; publish: at once, or once the sink delivered every stream's end here). Since a
stream's messages travel in order over one link, its end of stream arriving downstream means
everything before it arrived too; so no stage exits while something it sent is still in a
socket buffer, whatever the transport does with a closing socket.

Sources: a live source has a capture process of its own. Files are read by a pool of at most
`jobs` capture workers, each asking for the next file (`next` on the command link) when it has
finished one; with no more files than `jobs`, each file has its own worker named after it.

Stopping: `request_stop()` (SIGINT/SIGTERM to the main process) tells the captures to stop
reading; files not yet started are ended unread; their ends of stream flow through the pipeline,
which drains what is in flight, flushes its outputs and exits by itself. A stage that dies
(non-zero exit, killed, or gone before its streams ended) stops the whole pipeline, and
`failure` names the stage and the reason.
"""

from __future__ import annotations

import collections
import json
import logging
import logging.handlers
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import zmq

from stream.stages.base import EXIT_USER_ERROR, Stage, stage_main
from stream.wire import messages
from stream.wire.transport import TransportConfig, open_socket, receive

log = logging.getLogger(__name__)

STATUS_PREFIX = messages.STATUS_TOPIC_PREFIX.encode()
ABORT_GRACE_S = 1.0
"""After `abort`, how long a stage may take to leave before it is killed."""
JOIN_TIMEOUT_S = 5.0
FINAL_REPORT_WAIT_S = 2.0
SKIP_BATCH = 500
"""After a stop, unread files are ended this many per assignment."""
CAPTURE_STAGES = ("capture[",)


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
    released: bool = False
    exited_at: float | None = None
    judged: bool = False
    streams: set[str] = field(default_factory=set)
    """Streams this stage sends downstream (a capture: those it was given)."""
    eos_seen: set[str] = field(default_factory=set)
    """Streams whose end of stream reached this stage."""

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def is_capture(self) -> bool:
        return self.name.startswith(CAPTURE_STAGES)


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


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


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
        streams: list[str] | None = None,
        files: list[dict[str, Any]] | None = None,
        downstream: dict[str, str] | None = None,
    ) -> None:
        self.states = {s.name: StageState(s) for s in stages}
        self.endpoints = endpoints
        self.transport = transport
        self.collect = collect
        self.startup_timeout_s = startup_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.streams = set(streams or [])
        """Every stream of the run."""
        self.files: collections.deque[dict[str, Any]] = collections.deque(files or [])
        """Files (`SourceSpec` fields) that pool workers have not taken yet."""
        self.downstream = downstream or {}
        """Stage name -> the stage that receives what it sends (captures -> preprocess...)."""
        self.failure: str | None = None
        self.failure_is_user_error = False
        """The failing stage reported a user error (bad model, endpoint in use), not a crash."""
        self.source_errors: dict[str, str] = {}
        self.stream_reports: dict[str, dict[str, Any]] = {}
        """Per stream, once its end of stream reached publish: the capture's end-of-stream
        counters (decoded, skipped, error...) and `published`."""
        self.capture_ends: dict[str, dict[str, Any]] = {}
        """Per stream a pool worker has finished, its capture counters (sent with the worker's
        next request): what the stream's counters are until publish reports its end."""
        self.ended: list[tuple[str, dict[str, Any]]] = []
        """Streams whose end arrived on the sink after their last result (collect=True only),
        not yet taken by the caller."""
        self.sink_ended: set[str] = set()
        self.status_events: list[dict[str, Any]] = []
        """Status events of the sources that reached the sink (collect=True only), in order."""
        self.rejected_control = 0
        self.stopping = False
        self.interrupted = False
        self._ctx: zmq.Context | None = None
        self._control: zmq.Socket | None = None
        self._commands: zmq.Socket | None = None
        self._sink: zmq.Socket | None = None
        self._routes: set[str] = set()
        self._outbox: list[tuple[str, dict[str, Any]]] = []
        self._waiting_workers: collections.deque[str] = collections.deque()
        self._listener: Any = None
        self._started_at = 0.0
        self._stop_at: float | None = None
        self._captures_started = False
        self._early_stop = False
        self._stop_done = False
        self._spawn: Any = None
        self._log_queue: Any = None
        for state in self.states.values():
            source = getattr(state.stage, "config", None)
            spec = getattr(source, "source", None)
            if state.is_capture and spec is not None:
                state.streams.add(spec.stream_id)

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
        self._commands = open_socket(
            self._ctx, zmq.ROUTER, self.endpoints["command"], True, self.transport, linger_ms=0
        )
        self._commands.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.collect:
            self._sink = open_socket(
                self._ctx, zmq.PULL, self.endpoints["sink"], True, self.transport, linger_ms=0
            )
        log_queue = spawn.Queue()
        self._listener = logging.handlers.QueueListener(log_queue, _Forward())
        with stop_signals_blocked():
            self._listener.start()
        self._spawn = spawn
        self._log_queue = log_queue
        self._started_at = time.monotonic()
        # Captures start once the rest is ready, so no frame waits for model compilation and
        # capture timestamps (hence latencies) mean what they say.
        for state in self.states.values():
            if not state.is_capture and not self.stopping:
                self._start_process(state)

    def _start_process(self, state: StageState) -> None:
        level = logging.getLogger().getEffectiveLevel()
        on_main_thread = threading.current_thread() is threading.main_thread()
        state.process = self._spawn.Process(
            target=stage_main,
            args=(state.stage, self._log_queue, level, on_main_thread),
            name=state.name,
            daemon=True,
        )
        with children_deaf_to_stop_signals():
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

    def step(self, timeout_ms: int = 200) -> list[dict[str, Any]]:
        """Handle reports, commands, exits and timeouts; returns the result records that arrived
        (collect=True). Streams that ended on the sink collect in `ended`."""
        results: list[dict[str, Any]] = []
        poller = zmq.Poller()
        assert self._control is not None and self._commands is not None
        poller.register(self._control, zmq.POLLIN)
        poller.register(self._commands, zmq.POLLIN)
        if self._sink is not None:
            poller.register(self._sink, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        if self._control in events:
            self._drain_control()
        if self._commands in events:
            self._drain_commands()
        if self._sink is not None and self._sink in events:
            self._drain_sink(results)
        self._carry_out_stop()
        self._start_captures_when_ready()
        self._assign()
        self._release()
        self._deliver()
        self._check_processes()
        self._check_timeouts()
        return results

    def _drain_sink(self, results: list[dict[str, Any]]) -> None:
        assert self._sink is not None
        while True:
            parts = receive(self._sink, 0)
            if parts is None:
                return
            if len(parts) == 3 and bytes(parts[1].buffer) == messages.SINK_END:
                try:
                    report = json.loads(bytes(parts[2].buffer))
                    stream = str(report["stream_id"])
                except (ValueError, KeyError, TypeError):
                    self._reject("a malformed end of stream on the sink link")
                    continue
                self.sink_ended.add(stream)
                self.ended.append((stream, report))
            elif len(parts) == 2 and bytes(parts[0].buffer).startswith(STATUS_PREFIX):
                try:
                    self.status_events.append(json.loads(bytes(parts[1].buffer)))
                except ValueError:
                    self._reject("a malformed status event on the sink link")
            elif len(parts) == 2:
                try:
                    record = json.loads(bytes(parts[1].buffer))
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    results.append(record)
                else:
                    self._reject("a result on the sink link that is no JSON object")
            else:
                self._reject("a malformed result on the sink link")

    def _reject(self, what: str) -> None:
        self.rejected_control += 1
        log.warning("supervisor: rejected %s", what)

    def _drain_control(self) -> None:
        assert self._control is not None
        while True:
            parts = receive(self._control, 0)
            if parts is None:
                return
            try:
                msg = messages.decode(parts)
            except messages.MessageError as exc:
                self._reject(f"a malformed control message: {exc}")
                continue
            state = self.states.get(str(msg.meta.get("stage")))
            if state is None:
                self._reject(f"a control message from unknown stage {msg.meta.get('stage')!r}")
                continue
            if msg.kind == messages.READY:
                state.ready = True
            elif msg.kind == messages.STATS:
                state.stats = dict(msg.meta.get("stats") or {})
                if msg.meta.get("final"):
                    state.final = True
                    state.complete = bool(msg.meta.get("complete"))
            elif msg.kind == messages.EOS_SEEN:
                state.eos_seen.add(msg.stream)
                if state.name == "publish":
                    eos = msg.meta.get("eos")
                    report = dict(eos) if isinstance(eos, dict) else {}
                    report["published"] = int(msg.meta.get("published") or 0)
                    report["latency"] = msg.meta.get("latency")
                    self.capture_ends.pop(msg.stream, None)
                    self.stream_reports[msg.stream] = report
            elif msg.kind == messages.ERROR:
                text = str(msg.meta.get("message"))
                if msg.meta.get("source_error"):
                    self.source_errors[msg.stream] = text
                    log.info("source %s failed: %s", msg.stream, text)
                else:
                    state.error = text
            else:
                self._reject(f"an unexpected {msg.kind} message on the control link")

    def _drain_commands(self) -> None:
        assert self._commands is not None
        while True:
            try:
                frames = self._commands.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._reject(f"a command of {len(frames)} part(s)")
                continue
            name = frames[0].decode(errors="replace")
            try:
                msg = messages.decode(frames)
            except messages.MessageError as exc:
                self._reject(f"a malformed command from {name!r}: {exc}")
                continue
            state = self.states.get(name)
            if state is None or msg.kind != messages.COMMAND:
                self._reject(f"a {msg.kind} message from unknown stage {name!r}")
                continue
            what = msg.meta.get("command")
            if what == "hello":
                self._routes.add(name)
            elif what == "next" and state.is_capture:
                ended = msg.meta.get("ended")
                if isinstance(ended, dict) and isinstance(ended.get("stream"), str):
                    self.capture_ends[ended["stream"]] = ended
                self._routes.add(name)
                self._waiting_workers.append(name)
            else:
                self._reject(f"command {what!r} from {name}")

    def _send_command(self, name: str, command: str, **meta: Any) -> None:
        """Queue a command for a stage; delivered as soon as the stage has said hello."""
        self._outbox.append((name, {"command": command, **meta}))
        self._deliver()

    def _deliver(self) -> None:
        assert self._commands is not None
        kept = []
        for name, meta in self._outbox:
            state = self.states[name]
            if state.judged or (state.process is not None and state.process.exitcode is not None):
                continue  # gone: nothing to tell it any more
            if name not in self._routes:
                kept.append((name, meta))
                continue
            header = messages.encode(messages.COMMAND, name, 0, meta)[1]
            try:
                self._commands.send_multipart([name.encode(), header], flags=zmq.NOBLOCK)
            except zmq.ZMQError:  # not connected (yet, or any more) or its queue is full
                kept.append((name, meta))
        self._outbox = kept

    def _assign(self) -> None:
        """Give each waiting pool worker its next file (after a stop: files to end unread)."""
        while self._waiting_workers:
            name = self._waiting_workers.popleft()
            state = self.states[name]
            if self.stopping and self.files:
                count = min(SKIP_BATCH, len(self.files))
                skip = [self.files.popleft()["stream_id"] for _ in range(count)]
                state.streams.update(skip)
                self._send_command(name, "assign", source=None, skip=skip)
            elif self.files and not self.stopping:
                source = self.files.popleft()
                state.streams.add(source["stream_id"])
                self._send_command(name, "assign", source=source, skip=[])
            else:
                self._send_command(name, "assign", source=None, skip=[])

    def _release(self) -> None:
        """Release every stage whose streams have all ended and been confirmed downstream."""
        for state in self.states.values():
            if state.released or not state.final or state.process is None:
                continue
            if state.complete and not self._confirmed(state):
                continue
            state.released = True
            self._send_command(state.name, "release")

    def _confirmed(self, state: StageState) -> bool:
        """Has everything `state` sent arrived where it goes?"""
        if state.name == "publish":
            return not self.collect or self.sink_ended >= self.streams
        receiver = self.states.get(self.downstream.get(state.name, ""))
        if receiver is None:
            return True
        streams = state.streams if state.is_capture else self.streams
        return receiver.eos_seen >= streams

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
        deadline = time.monotonic() + ABORT_GRACE_S
        for state in started:
            state.process.join(max(0.0, deadline - time.monotonic()))
        for state in started:
            proc = state.process
            if proc.exitcode is None:
                proc.kill()
                proc.join(JOIN_TIMEOUT_S)

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
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for sock in (self._control, self._commands, self._sink):
            if sock is not None:
                sock.close(linger=0)
        self._control = self._commands = self._sink = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- reports ----------------------------------------------------------------------------------

    def stats(self, name: str) -> dict[str, Any]:
        state = self.states.get(name)
        return dict(state.stats) if state else {}

    def capture_states(self) -> list[StageState]:
        return [s for s in self.states.values() if s.is_capture]

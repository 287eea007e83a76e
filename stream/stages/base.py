"""The one base for stage processes: process title, logging to the parent, signals, stop flag.

A stage is a `Stage` subclass whose `__init__` only stores its config. `stage_main` (the process
target) sets the process up, calls `stage.run()`, which opens sockets, decoders or models and
loops until its streams end or `should_stop()`, and `stage.close()`. The stage reports to the
supervisor over the control link: READY once its resources are open, EOS_SEEN for every end of
stream it receives, STATS now and then and once more at the end, ERROR (one line) if it cannot
go on.

Leaving: a stage whose streams have all ended does not exit at once. What it sent may still sit
in a socket buffer (ZeroMQ drops an ipc message whose sender exits while the receiver's queue is
full, linger or not), so it waits on the command link until the supervisor `release`s it, which
the supervisor does once the next stage has reported EOS_SEEN for every stream this one sent.
No message has to outlive its sender.

Signals: stages ignore SIGINT and SIGTERM. Ctrl-C, systemd, `timeout` and `kill -- -PGID` send
them to every process of the group; only the supervisor decides how to stop (capture first, then
drain) and tells the stages over the command link (`stop`, `abort`). A stage dies with its
supervisor (PR_SET_PDEATHSIG), so none is left orphaned.
"""

from __future__ import annotations

import ctypes
import logging
import logging.handlers
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from stream.errors import UserError, first_line
from stream.wire import messages
from stream.wire.transport import TransportConfig, open_socket, receive_message

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5
COMMAND_POLL_S = 0.02
"""How often a busy loop looks at the command link (stop/abort reach a stage within this)."""
EXIT_USER_ERROR = 2
EXIT_CRASH = 1


def set_process_title(title: str) -> None:
    """Name the process for ps/top: setproctitle if installed, else the kernel's comm name."""
    try:
        import setproctitle  # type: ignore[import-not-found]

        setproctitle.setproctitle(title)
        return
    except ImportError:
        pass
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_NAME = 15
            libc.prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)
        except (OSError, AttributeError):
            pass


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent (the supervisor) dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def process_title(name: str) -> str:
    """`ovs-infer`, `ovs-cap-cam1`: short, since Linux keeps 15 characters."""
    return "ovs-" + name.replace("capture[", "cap-").rstrip("]")


class Stage:
    """Base of all stages: stop flag, counters and reports to the supervisor."""

    name = "stage"

    def __init__(self, transport: TransportConfig, endpoints: dict[str, str]) -> None:
        self.transport = transport
        self.endpoints = endpoints
        self.stats: dict[str, Any] = {"rejected": 0}
        self.complete = False  # set once every stream of this stage has ended
        self._stop = False
        self.run_stopping = False
        """The supervisor is stopping the run (the captures stop reading; the rest drains)."""
        self._abort = False
        self._released = False
        self._assignments: list[dict[str, Any]] = []
        self._ppid = -1  # set in the child by stage_main
        self._ctx: zmq.Context | None = None
        self._control: zmq.Socket | None = None
        self._commands: zmq.Socket | None = None
        self._last_commands = 0.0
        self._sockets: list[zmq.Socket] = []  # every socket(), closed by shutdown()
        self._last_stats = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what run() opened besides its sockets (shutdown closes those); safe to call
        more than once."""

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def should_stop(self) -> bool:
        """True once the supervisor said stop or abort, or is gone."""
        return self._stop or self._abort or self.orphaned()

    def orphaned(self) -> bool:
        return self._ppid != -1 and os.getppid() != self._ppid

    @property
    def aborted(self) -> bool:
        return self._abort or self.orphaned()

    # -- resources ------------------------------------------------------------------------------

    @property
    def ctx(self) -> zmq.Context:
        if self._ctx is None:
            self._ctx = zmq.Context()
        return self._ctx

    def socket(self, kind: int, link: str, bind: bool, **kw: Any) -> zmq.Socket:
        """A socket on one of the stage's links; shutdown() closes it (with its own linger)."""
        sock = open_socket(self.ctx, kind, self.endpoints[link], bind, self.transport, **kw)
        self._sockets.append(sock)
        return sock

    # -- the command link -------------------------------------------------------------------------

    def open_commands(self) -> None:
        """Connect to the supervisor's command link and say hello, so it can reach this stage."""
        if "command" not in self.endpoints or self._commands is not None:
            return
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.name.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoints["command"])
        self._sockets.append(sock)
        self._commands = sock
        self.command("hello")

    def command(self, name: str, **meta: Any) -> None:
        """Send a command (hello, next) to the supervisor."""
        if self._commands is not None:
            parts = messages.encode(messages.COMMAND, self.name, 0, {"command": name, **meta})
            self._commands.send_multipart(parts[1:])  # the ROUTER prepends our identity

    def poll_commands(self, timeout_ms: int = 0) -> None:
        """Apply every command waiting on the command link (waits up to `timeout_ms` for one)."""
        sock = self._commands
        if sock is None:
            return
        self._last_commands = time.monotonic()
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = messages.decode([self.name.encode(), *frames])
                if msg.kind != messages.COMMAND:
                    raise messages.MessageError(f"{msg.kind} message on the command link")
            except messages.MessageError as exc:
                self.reject(f"command link: {exc}")
                continue
            what = msg.meta.get("command")
            if what == "stop":
                self.request_stop()
            elif what == "abort":
                self._abort = True
            elif what == "release":
                self._released = True
            elif what == "assign":
                self._assignments.append(msg.meta)
            elif what == "stopping":
                self.run_stopping = True
            else:
                self.reject(f"command link: unknown command {what!r}")

    def next_assignment(self, **meta: Any) -> dict[str, Any] | None:
        """Ask the supervisor for the next source (capture workers); None if stopped first.
        `meta` goes with the request (a worker's counters of the stream it just finished)."""
        self.command("next", **meta)
        while not self._assignments:
            if self.aborted:
                return None
            self.poll_commands(self.transport.io_timeout_ms)
            self.tick()
        return self._assignments.pop(0)

    def wait_for_release(self) -> None:
        """Keep every socket open until the supervisor confirms that everything this stage sent
        has arrived downstream (or aborts, or is gone)."""
        while not self._released and not self.aborted and self._commands is not None:
            self.poll_commands(self.transport.io_timeout_ms)

    def eos_seen(self, msg: messages.Message, **extra: Any) -> None:
        """Tell the supervisor that `msg`, a stream's end of stream, arrived here."""
        self.report(messages.EOS_SEEN, stream=msg.stream, eos=msg.meta, **extra)

    # -- reports to the supervisor -----------------------------------------------------------------

    def _control_socket(self) -> zmq.Socket | None:
        if self._control is None and "control" in self.endpoints:
            self._control = self.socket(zmq.PUSH, "control", False, hwm=1000, linger_ms=2000)
        return self._control

    def report(self, kind: str, stream: str | None = None, wait: bool = True, **meta: Any) -> None:
        """Send READY/STATS/ERROR/EOS_SEEN to the supervisor (never blocks for more than ~2 s)."""
        sock = self._control_socket()
        if sock is None:
            return
        parts = messages.encode(kind, stream or self.name, 0, {"stage": self.name, **meta})
        deadline = time.monotonic() + (2.0 if wait else 0.0)
        while True:
            try:
                sock.send_multipart(parts, flags=0 if wait else zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() >= deadline:
                    log.debug("%s: control link full, dropped a %s report", self.name, kind)
                    return

    def receive_checked(
        self,
        sock: zmq.Socket,
        timeout_ms: int,
        link: str,
        kinds: tuple[str, ...],
        tracker: StreamTracker,
        check: Callable[[messages.Message], str | None] | None = None,
        rejected: Callable[[messages.Message], None] | None = None,
    ) -> messages.Message | None:
        """The next well-formed message on `link`, or None: nothing came within `timeout_ms`, or
        what came was rejected and counted (malformed, a kind not in `kinds`, failing `check`,
        an unknown stream or sequence number). The stream tracker sees only what passes `check`;
        `rejected` is given every message that could be decoded and was rejected."""
        msg, problem = receive_message(sock, timeout_ms)
        if msg is None:
            if problem:
                self.reject(problem)
            return None
        if msg.kind not in kinds:
            problem = f"unexpected {msg.kind} message on the {link} link"
        else:
            problem = (check(msg) if check else None) or tracker.check(msg)
        if problem:
            self.reject(problem)
            if rejected is not None:
                rejected(msg)
            return None
        return msg

    def reject(self, reason: str) -> None:
        """Count and log a malformed message; the stage carries on."""
        self.stats["rejected"] += 1
        log.warning("%s: rejected a malformed message: %s", self.name, reason)

    def resource_stats(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "max_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        }

    def tick(self, force: bool = False) -> None:
        """Look at the command link and report counters to the supervisor, each now and then."""
        now = time.monotonic()
        if now - self._last_commands >= COMMAND_POLL_S:
            self.poll_commands()
        if force or now - self._last_stats >= STATS_INTERVAL_S:
            self._last_stats = now
            stats = {**self.stats, **self.resource_stats()}  # getrusage: ~1 us every 0.5 s
            self.report(messages.STATS, wait=False, final=False, stats=stats)

    def finish(self) -> None:
        self.report(
            messages.STATS,
            final=True,
            complete=self.complete,
            stats={**self.stats, **self.resource_stats()},
        )

    def shutdown(self) -> None:
        """Close the stage's resources, its sockets and its ZeroMQ context."""
        try:
            self.close()
        finally:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
            self._control = None
            if self._ctx is not None:
                # destroy, not term: a socket left open (a bug, or an exception in run) must
                # not keep the process alive past its linger.
                self._ctx.destroy(linger=self.transport.linger_ms)
                self._ctx = None


def configure_child_logging(log_queue: Any, level: int) -> None:
    """Send every log record of this process to the supervisor's queue."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_queue is not None:
        root.addHandler(logging.handlers.QueueHandler(log_queue))
    root.setLevel(level)


def stage_main(
    stage: Stage, log_queue: Any = None, log_level: int = logging.WARNING, orphan_kill: bool = True
) -> None:
    """Process target of every stage: set up, run, report, exit with a meaningful code.

    `orphan_kill`: die with the supervisor at once (the kernel ties it to the thread that started
    the process, so the supervisor asks for it only from the main thread)."""
    stage._ppid = os.getppid()
    if orphan_kill:
        die_with_parent()
    # Ignored from the start (the supervisor starts stages deaf to them), and again here for a
    # stage started off the main thread: nothing a terminal or a service manager sends to the
    # whole group stops a stage.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_process_title(process_title(stage.name))
    configure_child_logging(log_queue, log_level)
    code = 0
    try:
        stage.open_commands()
        stage.run()
    except UserError as exc:
        stage.report(messages.ERROR, message=str(exc))
        code = EXIT_USER_ERROR
    except Exception as exc:  # a crash: the supervisor names the stage and stops the pipeline
        log.debug("%s crashed:\n%s", stage.name, traceback.format_exc())
        name, first = type(exc).__name__, first_line(exc)
        stage.report(messages.ERROR, message=name if first == name else f"{name}: {first}")
        code = EXIT_CRASH
    finally:
        try:
            stage.finish()
            if code == 0:
                stage.wait_for_release()
            stage.shutdown()
        except Exception:  # never hide the original exit reason behind a cleanup problem
            log.debug("%s: cleanup failed:\n%s", stage.name, traceback.format_exc())
    sys.exit(code)


class StreamTracker:
    """Per-stream bookkeeping of a downstream stage: expected sequence numbers and ends."""

    def __init__(self, streams: list[str], ordered: bool = True) -> None:
        self.expected = {s: 0 for s in streams}
        self.ended: set[str] = set()
        self.ordered = ordered
        """False where messages legitimately arrive out of order (after async inference)."""

    def check(self, msg: messages.Message) -> str | None:
        """None if `msg` (a batch of frames, or an end of stream) may be processed, else why it
        must be rejected. A batch is taken or rejected whole."""
        if msg.kind == messages.STATUS:  # a pipeline-wide event (infer: the workers)
            return None
        streams = msg.batch.streams if msg.batch is not None else [msg.stream]
        for stream in streams:
            if stream not in self.expected:
                return f"unknown stream {stream!r}"
            if stream in self.ended:
                return f"{msg.kind} for stream {stream!r} after its end of stream"
        if msg.kind == messages.EOS:
            self.ended.add(msg.stream)
            return None
        if not self.ordered or msg.batch is None:
            return None
        expected = {s: self.expected[s] for s in streams}
        for seq, stream in zip(msg.batch.index[:, 1].tolist(), msg.batch.stream_ids(), strict=True):
            if seq < expected[stream]:
                return f"stream {stream!r}: sequence {seq} repeats (expected {expected[stream]})"
            if seq > expected[stream]:
                log.warning(
                    "stream %r: sequence jumps from %d to %d", stream, expected[stream], seq
                )
            expected[stream] = seq + 1
        self.expected.update(expected)
        return None

    @property
    def done(self) -> bool:
        return len(self.ended) == len(self.expected)

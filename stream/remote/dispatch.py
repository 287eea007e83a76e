"""The head's side of remote infer workers: a ROUTER that hands batches out by credit.

Workers (`ovstream worker`, stream/remote/worker.py) connect a DEALER to the endpoint the head
binds (`--workers tcp://ADDR:PORT`). The infer stage owns a `RemoteWorkers` next to its own
requests (`LocalRequests`) and treats a worker's free requests like its own: a batch goes
wherever a request is free. The conversation, every message in the wire format
(stream/wire/messages.py), the worker's DEALER identity prepended by the ROUTER:

    worker -> head   COMMAND hello {identity, name,        on connecting (and after a reset)
                              frame_formats}
    head -> worker   COMMAND welcome {max_batch,           the model matches: compile (for the
                              frame_format}                run's frame format), then
                     COMMAND refuse {reason}               it does not: the worker exits
    worker -> head   COMMAND credit {requests}             how many requests it runs at once
    head -> worker   TENSOR {chunk}                        one batch, one of the worker's credits
    worker -> head   LOGITS {chunk}                        its outputs; the credit comes back
    both ways        COMMAND heartbeat                     every HEARTBEAT_S when idle
    worker -> head   COMMAND bye                           leaving: nothing of it is in flight
    head -> worker   COMMAND reset                         "who are you?" (the head forgot you)
    head -> worker   COMMAND reset {ended: true}           the run is over

Credit (the ZeroMQ Guide's load balancing): a worker is sent only as many batches as it has free
requests, so a slow worker gets less and nothing piles up in a dead worker's queue.

A worker is dropped, and the batches it held are handed back to be run again elsewhere (counted
as `resent`), when it is gone:

- its connection closed (killed, crashed, its machine rebooted, a reset): at once. The ROUTER
  runs with ROUTER_MANDATORY, so a send to a worker whose connection it no longer holds fails
  with EHOSTUNREACH. A socket monitor (EVENT_DISCONNECTED) says that some connection closed; the
  head then sends every worker a heartbeat, on every `maintain()` for `CLOSED_PROBE_S` (the
  ROUTER forgets the connection a moment after the monitor reports it), and drops those it cannot
  reach ("connection closed"). The monitor only wakes the head up: it names no worker, and a
  refused CURVE client or a port scanner closing a connection just costs a round of heartbeats.
  (libzmq's ROUTER_NOTIFY would hand the ROUTER an empty message per closed peer, but it is a
  draft option that the released libzmq 4.3.5 in pyzmq's wheels refuses with EINVAL.)
- it says nothing for `timeout_s` (no heartbeat, no result) while its connection stays up: a
  wedged or stopped process, a network partition ("silent for N s").

If a dropped worker's results come later after all, they are dropped here and counted (`late`),
so each frame still has exactly one result (publish drops any copy as well); the worker is told
`reset` and joins again with a hello.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from stream.wire import messages
from stream.wire.transport import NOBLOCK, readable, recv_parts, send_parts

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
"""Both sides send a heartbeat when they sent nothing else for this long."""
DEFAULT_WORKER_TIMEOUT_S = 5.0
CLOSED_PROBE_S = 1.0
"""After the monitor reported a closed connection, workers are probed this long."""


@dataclass
class Worker:
    """What the head knows of one connected worker."""

    route: bytes
    name: str
    credit: int = 0
    """Requests free on the worker now."""
    requests: int = 0
    """Requests the worker runs at once (what it announced)."""
    inflight: dict[int, messages.Batch] = field(default_factory=dict)
    """Batches sent to it and not answered, by chunk id."""
    last_heard: float = field(default_factory=time.monotonic)
    last_sent: float = field(default_factory=time.monotonic)
    frames: int = 0
    """Frames it has returned results for."""

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "inflight": sum(len(b) for b in self.inflight.values()),
            "requests": self.requests,
        }


class RemoteWorkers:
    """The ROUTER end of the worker link, inside the infer stage."""

    def __init__(
        self,
        sock: zmq.Socket,
        identity: dict[str, Any],
        max_batch: int,
        timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
        mismatch: Any = None,
        frame_format: str = "bgr",
    ) -> None:
        """`sock`: a bound ROUTER (CURVE already set up where asked); `identity`: the head's
        model identity; `mismatch(head, worker) -> reason | None` compares identities;
        `frame_format`: the run's (`stream.geometry.FRAME_FORMATS`), the frames workers get."""
        self.sock = sock
        self.identity = identity
        self.max_batch = max_batch
        self.frame_format = frame_format
        self.timeout_s = timeout_s
        self._mismatch = mismatch
        self.workers: dict[bytes, Worker] = {}
        self._next_chunk = 0
        self.counters = {"resent": 0, "late": 0, "refused": 0, "joined": 0, "lost": 0}
        self.rejected: list[str] = []
        """Why messages were rejected since the caller last emptied this list."""
        self._requeue: list[messages.Batch] = []
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        """Says when a connection to the ROUTER closed (poll it; `receive()` reads it)."""
        self.monitor.linger = 0
        self._probe_until = 0.0

    # -- handing work out -----------------------------------------------------------------------

    @property
    def free(self) -> int:
        """Batches the workers can take now."""
        return sum(w.credit for w in self.workers.values())

    def dispatch(self, chunk: messages.Batch) -> bool:
        """Send `chunk` to the worker with the most free requests (the next one if that one
        cannot take it); False if none could (the caller keeps the chunk)."""
        parts = None
        for worker in sorted(self.workers.values(), key=lambda w: w.credit, reverse=True):
            if worker.credit <= 0:
                break
            if parts is None:
                parts = messages.encode_batch(messages.TENSOR, chunk, {"chunk": self._next_chunk})
            try:
                send_parts(self.sock, [worker.route, *parts], NOBLOCK)
            except zmq.ZMQError as exc:  # gone (ROUTER_MANDATORY) or its queue is full
                log.debug("workers: could not send to %s: %s", worker.name, exc)
                if exc.errno == zmq.EHOSTUNREACH:
                    # Its connection closed (a killed worker): what it holds goes to others.
                    self._drop(worker, "connection closed")
                continue
            worker.credit -= 1
            worker.inflight[self._next_chunk] = chunk
            worker.last_sent = time.monotonic()
            self._next_chunk += 1
            return True
        return False

    # -- what comes back --------------------------------------------------------------------------

    def receive(self) -> list[tuple[messages.Batch, Any]]:
        """Handle every message waiting on the socket, then the monitor's news of closed
        connections; returns (batch, outputs) of each answered chunk."""
        results: list[tuple[messages.Batch, Any]] = []
        while readable(self.sock):  # a whole message waits: the receive cannot come up empty
            frames = recv_parts(self.sock, NOBLOCK)
            if len(frames) < 2:
                continue
            route = bytes(frames[0].buffer)
            try:
                msg = messages.decode(frames[1:])
            except messages.MessageError as exc:
                self.rejected.append(f"worker link: {exc}")
                continue
            worker = self.workers.get(route)
            if worker is not None:
                worker.last_heard = time.monotonic()
            if msg.kind == messages.COMMAND:
                self._command(route, worker, msg)
            elif msg.kind == messages.LOGITS and worker is not None:
                done = self._result(worker, msg)
                if done is not None:
                    results.append(done)
            elif worker is None:
                self._send(route, "reset")
            else:
                self.rejected.append(f"worker link: unexpected {msg.kind} from {worker.name}")
        # After the messages: what a closed connection sent before it closed counts.
        if self._connections_closed():
            self._probe_until = time.monotonic() + CLOSED_PROBE_S
            self._probe()
        return results

    def _connections_closed(self) -> int:
        """How many connections the monitor reported closed since the last call."""
        closed = 0
        while readable(self.monitor):
            event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                closed += 1
        return closed

    def _command(self, route: bytes, worker: Worker | None, msg: messages.Message) -> None:
        what = msg.meta.get("command")
        if what == "hello":
            self._hello(route, worker, msg.meta)
        elif worker is None:
            if what != "bye":
                self._send(route, "reset")
        elif what == "credit":
            requests = msg.meta.get("requests")
            if not messages.is_count(requests):
                self.rejected.append(f"worker {worker.name}: bad credit {requests!r}")
                return
            worker.requests = requests
            worker.credit = requests - len(worker.inflight)
        elif what == "bye":
            self._drop(worker, "left")
        elif what != "heartbeat":
            self.rejected.append(f"worker {worker.name}: unknown command {what!r}")

    def _hello(self, route: bytes, old: Worker | None, meta: dict[str, Any]) -> None:
        name = str(meta.get("name") or route.hex())[:64]
        if old is not None and not old.inflight:
            # The same connection asking again: hellos it sent every second while no head
            # answered, queued by its DEALER and delivered together. Not a new worker.
            self._welcome(route)
            return
        if old is not None:  # it forgot the batches it held (it took the head for gone)
            self._drop(old, "said hello again")
        identity = meta.get("identity")
        formats = meta.get("frame_formats", ["bgr"])  # a worker from before i420 frames: bgr
        if not isinstance(identity, dict):
            reason = "no model identity"
        elif not isinstance(formats, list) or self.frame_format not in formats:
            reason = (
                f"the worker cannot take {self.frame_format} frames (an older ovstream: upgrade"
                " it, or run the head with --frame-format bgr)"
            )
        else:
            reason = self._mismatch(identity, self.identity) if self._mismatch else None
        if reason:
            self.counters["refused"] += 1
            log.warning("workers: refused %s: %s", name, reason)
            self._send(route, "refuse", reason=reason)
            return
        self.workers[route] = Worker(route, name)
        self.counters["joined"] += 1
        log.info("workers: %s joined", name)
        self._welcome(route)

    def _welcome(self, route: bytes) -> None:
        self._send(route, "welcome", max_batch=self.max_batch, frame_format=self.frame_format)

    def _result(self, worker: Worker, msg: messages.Message) -> tuple[messages.Batch, Any] | None:
        chunk_id = msg.meta.get("chunk")
        chunk = worker.inflight.pop(chunk_id, None) if isinstance(chunk_id, int) else None
        if chunk is None:
            self.counters["late"] += 1  # already handed to another worker: that copy counts
            return None
        worker.credit += 1
        assert msg.batch is not None
        if len(msg.batch) != len(chunk) or msg.batch.data.ndim != 2:
            self.rejected.append(f"worker {worker.name}: {msg.batch.data.shape} for {len(chunk)}")
            self._requeue.append(chunk)
            return None
        worker.frames += len(chunk)
        return chunk, msg.batch.data

    # -- liveness ---------------------------------------------------------------------------

    def maintain(self) -> list[messages.Batch]:
        """Heartbeats out, dead workers dropped; returns the batches to run again elsewhere."""
        now = time.monotonic()
        probing = now < self._probe_until
        for worker in list(self.workers.values()):
            if now - worker.last_heard > self.timeout_s:
                self._drop(worker, f"silent for {self.timeout_s:g} s")
                continue
            if probing or now - worker.last_sent >= HEARTBEAT_S:
                self._heartbeat(worker)
        again, self._requeue = self._requeue, []
        return again

    def _probe(self) -> None:
        """Drop the workers whose connection the ROUTER no longer holds."""
        for worker in list(self.workers.values()):
            self._heartbeat(worker)

    def _heartbeat(self, worker: Worker) -> None:
        """Send `worker` a heartbeat; one the ROUTER cannot send (EHOSTUNREACH: it holds no
        connection to it any more) drops it."""
        if not self._send(worker.route, "heartbeat"):
            self._drop(worker, "connection closed")

    def _drop(self, worker: Worker, why: str) -> None:
        self.workers.pop(worker.route, None)
        held = list(worker.inflight.values())
        if held:
            frames = sum(len(b) for b in held)
            self.counters["resent"] += frames
            log.warning(
                "workers: %s %s; %d frame(s) it held go to others", worker.name, why, frames
            )
        else:
            log.info("workers: %s %s", worker.name, why)
        if why != "left":  # gone without saying goodbye
            self.counters["lost"] += 1
        self._requeue.extend(held)

    def _send(self, route: bytes, command: str, **meta: Any) -> bool:
        """Send a command without blocking; False when the ROUTER holds no connection to
        `route` (it closed), True otherwise (sent, or its queue was full)."""
        parts = messages.encode(messages.COMMAND, "head", 0, {"command": command, **meta})
        try:
            send_parts(self.sock, [route, *parts], NOBLOCK)
        except zmq.ZMQError as exc:
            return exc.errno != zmq.EHOSTUNREACH
        worker = self.workers.get(route)
        if worker is not None:
            worker.last_sent = time.monotonic()
        return True

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "connected": len(self.workers),
            "per_worker": {w.name: w.stats() for w in self.workers.values()},
        }

    def close(self) -> None:
        """Tell every worker the run is over (it goes back to saying hello); stop the monitor."""
        for worker in list(self.workers.values()):
            self._send(worker.route, "reset", ended=True)
        self.sock.disable_monitor()
        self.monitor.close(linger=0)

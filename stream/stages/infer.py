"""Infer stage: OpenVINO in THROUGHPUT mode with the optimal number of requests in flight, and
optionally remote workers (`--workers`) that run the same model on other machines.

Frames arrive in batches (TENSOR messages of whatever preprocess found waiting) and are queued
here; whenever requests are free, the queued frames are shared among them, each taking up to
`max_batch` frames. Shared, not filled: with 8 frames queued and 2 requests free each takes 4,
and a frame that is alone goes alone, so nothing waits for a batch to fill and a live source's
latency does not grow. The queue holds at most `max_batch` frames beyond the requests in flight;
the socket in front of it is the backpressure. A local batch runs on OpenVINO as requests of 4
frames on a model compiled for exactly 4, and what is left over one frame a request on one
compiled for 1 (`stream.inference.LocalRequests`): static shapes run faster than a batch axis.

A request is a local one (stream/inference.py `LocalRequests`) or a free request of a remote
worker (stream/remote/dispatch.py `RemoteWorkers`, handed out by credit); a batch goes to whichever
is free, local first. A worker's batches come back here when it dies and run again elsewhere.

Results leave in completion order, one LOGITS message per request; publish puts them back in
frame order. An end of stream is passed on only once its stream has no frame queued or in flight,
so it always follows the stream's last result.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from stream.inference import FrameQueue, LocalRequests
from stream.model import load_info
from stream.stages.base import STATS_INTERVAL_S, Stage, StreamTracker
from stream.stages.preprocess import DEFAULT_MAX_BATCH
from stream.wire import messages
from stream.wire.shm import PoolSet
from stream.wire.transport import NOBLOCK, TransportConfig, bind_error, send, send_parts

log = logging.getLogger(__name__)

CREDIT_BATCHES = 2
"""Batches of max_batch frames preprocess may send ahead of what infer has taken: one queued
while the next is on its way."""
MAINTAIN_S = 0.1
"""How often the workers' heartbeats and silences are looked at (not on every event)."""


@dataclass
class InferConfig:
    """What the infer stage loads and how it runs it."""

    model: str
    """Model folder (a precision folder, or a parent with int8/fp32/fp16)."""
    streams: list[str]
    """Stream ids it waits for; it ends after the end of stream of each."""
    device: str = "CPU"
    """OpenVINO device: CPU, AUTO, GPU, NPU..."""
    requests: int = 0
    """Infer requests in flight; 0 = the device's OPTIMAL_NUMBER_OF_INFER_REQUESTS."""
    ov_config: dict[str, Any] = field(default_factory=dict)
    """Extra OpenVINO properties (e.g. NUM_STREAMS, INFERENCE_NUM_THREADS)."""
    mode: str = "throughput"
    """Performance hint: `throughput` (default) or `latency` (lowest delay per frame)."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Frames per inference request at most; 1 = one frame a request."""
    workers: str | None = None
    """Endpoint to bind for remote workers (`tcp://ADDR:PORT`); None = local inference only."""
    local: bool = True
    """Run inference here too; False = only on remote workers (needs `workers`)."""
    worker_timeout_s: float = 5.0
    """A worker silent this long is dropped and its frames run elsewhere."""
    keys: str | None = None
    """Folder made by `ovstream keys`: CURVE on the worker link; None = plain tcp."""
    frame_format: str = "bgr"
    """The run's frame format (`stream.geometry.FRAME_FORMATS`): i420 compiles OpenVINO's
    colour conversion in front of the IR, here and on the workers."""


class InferStage(Stage):
    """PULL tensors (bound), run them asynchronously, PUSH logits to publish."""

    name = "infer"

    def __init__(
        self, config: InferConfig, transport: TransportConfig, endpoints: dict[str, str]
    ) -> None:
        super().__init__(transport, endpoints)
        self.config = config
        self._in: zmq.Socket | None = None
        self._out: zmq.Socket | None = None
        self._demand: zmq.Socket | None = None
        self._local: LocalRequests | None = None
        self._remote: Any = None
        self._auth: Any = None
        self._workers_at = 0.0
        self._maintained = 0.0
        self._workers_available: bool | None = None

    def run(self) -> None:
        cfg = self.config
        info = load_info(cfg.model)
        max_batch = max(1, cfg.max_batch)
        nreq = 0
        if cfg.local:
            self._local = LocalRequests.compile(
                info, cfg.device, cfg.mode, cfg.ov_config, max_batch, cfg.frame_format, cfg.requests
            )
            nreq = self._local.requests
        if cfg.workers:
            self._remote = self._open_workers(info, max_batch)
        self._in = self.socket(zmq.PULL, "tensors", bind=True)
        self._out = self.socket(zmq.PUSH, "logits", bind=False)
        # Credit left unread when preprocess has gone (after its last end of stream) is of no
        # use to anyone: no linger, or closing waits the whole linger for a reader that is gone.
        self._demand = self.socket(zmq.PUSH, "demand", bind=False, linger_ms=0)
        self.report(messages.READY, requests=nreq, device=cfg.device, precision=info.precision)
        log.info("infer: %s %s on %s, %d requests", info.name, info.precision, cfg.device, nreq)

        tracker = StreamTracker(cfg.streams)

        pools = PoolSet(self.endpoints.get("shm"))

        fmt = cfg.frame_format

        def check_input(msg: messages.Message) -> str | None:
            batch = msg.batch
            if batch is None:
                return None
            if batch.shared is not None:
                problem = info.geometry.shape_problem(batch.shared.shape, fmt=fmt)
                problem = problem or pools.problem(batch)
            else:
                problem = info.geometry.input_problem(batch.data, batched=True, fmt=fmt)
            return f"tensors of {', '.join(batch.streams)}: {problem}" if problem else None

        local, remote = self._local, self._remote
        self._queued = queued = FrameQueue(pools, max_batch)
        self._owed = 0
        self._credit(CREDIT_BATCHES * max_batch)  # room in the queue: preprocess may send

        def rejected(msg: messages.Message) -> None:
            if msg.batch is not None and msg.kind == messages.TENSOR:
                self._credit(len(msg.batch))  # preprocess counted them as taken

        self._pending: collections.Counter[str] = collections.Counter()  # queued or in flight
        self._held_eos: dict[str, messages.Message] = {}
        self.stats.update(frames=0, requests_done=0, inflight=0, requests=nreq, queued=0)
        poller = zmq.Poller()
        if local is not None:
            poller.register(local.fd, zmq.POLLIN)
        if remote is not None:
            poller.register(remote.sock, zmq.POLLIN)
            poller.register(remote.monitor, zmq.POLLIN)  # a worker's connection closed
        polling_input = False
        while not self.should_stop():
            if tracker.done and not self._pending and not self._held_eos:
                break
            want_input = len(queued) < max_batch
            if want_input != polling_input:
                if want_input:
                    poller.register(self._in, zmq.POLLIN)
                else:
                    poller.unregister(self._in)
                polling_input = want_input
            events = dict(poller.poll(self.transport.io_timeout_ms))
            self.tick()
            if not events and local is not None and local.inflight:
                local.check()  # a failed request wakes nobody
            finished = []
            if local is not None and local.fd in events:
                finished += [(chunk, out) for chunk, out, _ in local.finished()]
            if remote is not None:
                if remote.sock in events or remote.monitor in events:
                    finished += remote.receive()
                if time.monotonic() - self._maintained >= MAINTAIN_S:
                    self._maintained = time.monotonic()
                    for chunk in remote.maintain():
                        queued.put(chunk, front=True)
                for problem in remote.rejected:
                    self.reject(problem)
                remote.rejected.clear()
            for chunk, out in finished:
                if not self._send_results(chunk, out):
                    return
            if polling_input and self._in in events:
                kinds = (messages.TENSOR, messages.EOS)
                # timeout 0: the poller saw it ready
                msg = self.receive_checked(
                    self._in, 0, "tensors", kinds, tracker, check_input, rejected
                )
                if msg is not None and msg.kind == messages.EOS:
                    self.eos_seen(msg)
                    if self._pending[msg.stream] == 0:
                        self._forward_eos(msg)
                    else:
                        self._held_eos[msg.stream] = msg
                elif msg is not None:
                    assert msg.batch is not None
                    queued.put(msg.batch)
                    self._pending.update(msg.batch.stream_ids())
            self._start(max_batch)
            if self._owed and not tracker.done:
                self._credit(0)
            if remote is not None and local is None:
                self._announce_workers(len(remote.workers))
                if self.run_stopping and not remote.workers:
                    self._give_up_queued()
        self.complete = tracker.done
        self._worker_stats(force=True)
        self.tick(force=True)

    def _start(self, max_batch: int) -> None:
        """Share the queued frames among the free requests, local ones first."""
        local, remote, queued = self._local, self._remote, self._queued
        while queued:
            local_free = local.free if local is not None else 0
            free = local_free + (remote.free if remote is not None else 0)
            if free <= 0:
                break
            chunk = queued.take(min(max_batch, -(-len(queued) // free)))  # share, never wait
            if local_free > 0:
                local.start(chunk)
            elif not remote.dispatch(chunk):
                queued.put(chunk, front=True)
                break
        self._credit(queued.pop_fresh())
        self.stats["inflight"] = local.inflight if local is not None else 0
        self.stats["queued"] = len(queued)
        self._worker_stats()

    def _give_up_queued(self) -> None:
        """The run is being stopped and nothing can run frames (no local inference, no worker):
        the queued frames are not classified; their streams end, and publish counts them as
        never reached (a warning names each stream)."""
        queued = self._queued
        if not queued:
            return
        chunk = queued.take(len(queued))
        self._credit(queued.pop_fresh())
        log.warning(
            "infer: stopping with no worker connected: %d frame(s) not classified", len(chunk)
        )
        self.stats["given_up"] = self.stats.get("given_up", 0) + len(chunk)
        self._done_with(chunk)

    def _credit(self, frames: int) -> None:
        """Tell preprocess it may send `frames` more frames (they left the queue).

        Never blocks: credit that cannot go now (preprocess not reading, or gone after its last
        end of stream, when nothing reads the link again) is owed and goes with the next."""
        self._owed += frames
        if self._owed <= 0:
            return
        assert self._demand is not None
        try:
            send_parts(self._demand, messages.encode_credit(self._owed), NOBLOCK)
        except zmq.Again:
            return
        self._owed = 0

    def _announce_workers(self, connected: int) -> None:
        """With inference only on workers: tell publish (status events of every source) when
        none is left to run frames, and when one is back; the progress line says it too."""
        available = connected > 0
        if available == self._workers_available:
            return
        if not available and self._workers_available is not None:
            log.warning("infer: no worker left; frames wait for one")
        self._workers_available = available
        event = "workers_available" if available else "waiting_for_workers"
        parts = messages.encode(messages.STATUS, "infer", 0, {"event": event, "workers": connected})
        send(self._out, parts, self.should_stop)

    def _worker_stats(self, force: bool = False) -> None:
        """The workers' counters into the stage's report (a dict per worker: not on every event
        of a busy loop)."""
        now = time.monotonic()
        if self._remote is None or (not force and now - self._workers_at < STATS_INTERVAL_S / 2):
            return
        self._workers_at = now
        self.stats["workers"] = self._remote.stats()
        if self._auth is not None:
            self.stats["workers"]["unauthorized"] = self._auth.refused

    def _send_results(self, chunk: messages.Batch, out: Any) -> bool:
        parts = messages.encode_batch(messages.LOGITS, chunk.with_data(out))
        if not send(self._out, parts, self.should_stop):
            return False
        self.stats["frames"] += len(chunk)
        self.stats["requests_done"] += 1
        self._done_with(chunk)
        return True

    def _done_with(self, chunk: messages.Batch) -> None:
        """`chunk`'s frames have left: its buffer is free again, and a stream with none left
        here has its end passed on."""
        self._queued.done(chunk)
        self._pending.subtract(chunk.stream_ids())
        for stream in chunk.streams:
            if self._pending[stream] <= 0:
                del self._pending[stream]
                held = self._held_eos.pop(stream, None)
                if held is not None:
                    self._forward_eos(held)

    def _forward_eos(self, msg: messages.Message) -> None:
        parts = messages.encode(messages.EOS, msg.stream, msg.seq, msg.meta)
        assert self._out is not None
        send(self._out, parts, self.should_stop)

    def _open_workers(self, info: Any, max_batch: int) -> Any:
        """Bind the worker link (CURVE where keys are given) and start handing out work."""
        from stream.remote.dispatch import RemoteWorkers
        from stream.remote.identity import identity_mismatch, model_identity

        cfg = self.config
        sock = self.ctx.socket(zmq.ROUTER)
        self._sockets.append(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 500)  # the closing `reset` reaches the workers
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        if cfg.keys:
            from stream.remote.security import bind_curve_server

            self._auth = bind_curve_server(self.ctx, sock, cfg.workers, cfg.keys)
        else:
            try:
                sock.bind(cfg.workers)
            except zmq.ZMQError as exc:
                raise bind_error(cfg.workers, exc) from None
        identity = model_identity(info)
        return RemoteWorkers(
            sock, identity, max_batch, cfg.worker_timeout_s, identity_mismatch, cfg.frame_format
        )

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

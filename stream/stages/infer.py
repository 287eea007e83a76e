"""Infer stage: OpenVINO in THROUGHPUT mode with an AsyncInferQueue of the optimal size.

Frames arrive in batches (TENSOR messages of whatever preprocess found waiting) and are queued
here; whenever requests are free, the queued frames are shared among them, each request taking
up to `max_batch` frames as one inference on the IR's dynamic batch axis. Shared, not filled: with
8 frames queued and 2 requests free each takes 4, and a frame that is alone goes alone, so nothing
waits for a batch to fill and a live source's latency does not grow. The queue holds at most
`max_batch` frames beyond the requests in flight; the socket in front of it is the backpressure.

OpenVINO's callback threads copy each request's outputs (the request is reused right after) onto
a deque and wake the main thread through a pipe, which the ZeroMQ poller watches next to the
input socket; the main thread sends each finished request's outputs on as one LOGITS message.
Results leave in completion order; publish puts them back in frame order. An end of stream is
passed on only once its stream has no frame queued or in flight, so it always follows the
stream's last result.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from stream.model import compile_model, load_info
from stream.stages.base import Stage, StreamTracker
from stream.stages.preprocess import DEFAULT_MAX_BATCH
from stream.wire import messages
from stream.wire.transport import TransportConfig, send

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def captured_stderr() -> Iterator[None]:
    """Keep native libraries' noise on fd 2 (frontend probing of a broken file) off the terminal;
    what they printed goes to the debug log."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            noise = sink.read().decode(errors="replace").strip()
            if noise:
                log.debug("OpenVINO said on stderr:\n%s", noise)


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
        self._queue: Any = None
        self._pipe: tuple[int, int] | None = None

    def run(self) -> None:
        import openvino as ov

        cfg = self.config
        info = load_info(cfg.model)
        with captured_stderr():  # a broken IR makes the frontends print; compile_model says why
            compiled = compile_model(
                info, cfg.device, cfg.mode, cfg.ov_config, max_batch=max(1, cfg.max_batch)
            )
        nreq = cfg.requests or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = ov.AsyncInferQueue(compiled, nreq)
        done: collections.deque = collections.deque()
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        self._pipe = (rfd, wfd)

        def on_done(request: Any, chunk: messages.Batch) -> None:
            # Runs on an OpenVINO thread: copy now, the request is reused for the next frames.
            try:
                out: Any = request.get_output_tensor(0).data.copy()
            except Exception as exc:  # reported by the main thread, which owns the sockets
                out = exc
            done.append((chunk, out))
            os.write(wfd, b"\0")

        self._queue.set_callback(on_done)
        self._in = self.socket(zmq.PULL, "tensors", bind=True)
        self._out = self.socket(zmq.PUSH, "logits", bind=False)
        self.report(messages.READY, requests=nreq, device=cfg.device, precision=info.precision)
        log.info("infer: %s %s on %s, %d requests", info.name, info.precision, cfg.device, nreq)

        tracker = StreamTracker(cfg.streams)

        def check_input(msg: messages.Message) -> str | None:
            if msg.batch is None:
                return None
            problem = info.geometry.input_problem(msg.batch.data, batched=True)
            return f"tensors of {', '.join(msg.batch.streams)}: {problem}" if problem else None

        queued = FrameQueue()
        pending: collections.Counter[str] = collections.Counter()  # queued or in flight
        held_eos: dict[str, messages.Message] = {}
        inflight = 0  # requests
        max_batch = max(1, cfg.max_batch)
        self.stats.update(frames=0, requests_done=0, inflight=0, requests=nreq, queued=0)
        poller = zmq.Poller()
        poller.register(rfd, zmq.POLLIN)
        polling_input = False
        while not self.should_stop():
            if tracker.done and inflight == 0 and not held_eos and not queued:
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
            if rfd in events:
                with contextlib.suppress(BlockingIOError):
                    os.read(rfd, 4096)
            while done:
                chunk, out = done.popleft()
                inflight -= 1
                if isinstance(out, Exception):
                    raise RuntimeError(f"inference failed: {out}")
                out = out.reshape(len(chunk), -1)
                parts = messages.encode_batch(messages.LOGITS, chunk.with_data(out))
                if not send(self._out, parts, self.should_stop):
                    return
                self.stats["frames"] += len(chunk)
                self.stats["requests_done"] += 1
                pending.subtract(chunk.stream_ids())
                for stream in chunk.streams:
                    if pending[stream] == 0 and stream in held_eos:
                        self._forward_eos(held_eos.pop(stream))
            if polling_input and self._in in events:
                kinds = (messages.TENSOR, messages.EOS)
                # timeout 0: the poller saw it ready
                msg = self.receive_checked(self._in, 0, "tensors", kinds, tracker, check_input)
                if msg is not None and msg.kind == messages.EOS:
                    self.eos_seen(msg)
                    if pending[msg.stream] == 0:
                        self._forward_eos(msg)
                    else:
                        held_eos[msg.stream] = msg
                elif msg is not None:
                    assert msg.batch is not None
                    queued.put(msg.batch)
                    pending.update(msg.batch.stream_ids())
            while queued and inflight < nreq:
                size = min(max_batch, -(-len(queued) // (nreq - inflight)))  # share, never wait
                chunk = queued.take(size)
                self._queue.start_async({0: chunk.data}, chunk, share_inputs=True)
                inflight += 1
            self.stats["inflight"] = inflight
            self.stats["queued"] = len(queued)
        self.complete = tracker.done
        self.tick(force=True)

    def _forward_eos(self, msg: messages.Message) -> None:
        parts = messages.encode(messages.EOS, msg.stream, msg.seq, msg.meta)
        assert self._out is not None
        send(self._out, parts, self.should_stop)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.wait_all()
            self._queue = None
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


class FrameQueue:
    """Frames waiting for a request, in arrival order, as the batches they came in."""

    def __init__(self) -> None:
        self._batches: collections.deque[messages.Batch] = collections.deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, batch: messages.Batch) -> None:
        self._batches.append(batch)
        self._count += len(batch)

    def take(self, size: int) -> messages.Batch:
        """The next `size` frames (fewer if fewer wait): views of one batch, or a copy joining
        the pieces of several."""
        pieces = []
        want = size
        while want and self._batches:
            head = self._batches[0]
            if len(head) <= want:
                pieces.append(self._batches.popleft())
                want -= len(head)
            else:
                pieces.append(head.take(0, want))
                self._batches[0] = head.take(want, len(head))
                want = 0
        chunk = messages.Batch.join(pieces)
        self._count -= len(chunk)
        return chunk

"""Preprocess stage: frames from every capture -> batches of the model's input, in the run's frame
format (u8 BGR, or I420 that infer's compiled model converts: `stream.geometry.FRAME_FORMATS`).

The geometry is the project's one policy (`stream.geometry`). Capture already applies it on the
decoded YUV frame (`sources.decode.WindowScaler`: crop the source window and resize, in one swscale
pass), which costs a quarter of converting the whole frame and resizing it here, so its frames
arrive marked `prepared`: this stage checks they are the model input. Any other BGR frame goes
through `stream.geometry.prepare` (and, in i420 runs, OpenCV's conversion to I420). Frames of
every source meet here, and malformed ones stop here. Colour conversion (for bgr frames) and
normalisation are inside the IR.

Batching, driven by infer's demand: infer says on the demand link how many frames it can take
(credit: its queue's room at the start, then each frame it hands to a request), and the stage
sends whatever frames it has gathered, up to `max_batch`, as one TENSOR message, which infer runs
as one request, whenever infer has credit left. It never waits for a batch to fill: with credit,
a frame that arrives alone goes on alone, so a live source's latency does not grow; without,
the frames that arrive while infer is busy join the batch, so under load batches fill by
themselves (a queue's high-water mark cannot do this: it counts messages, and a few hundred
small ones fit in the kernel's socket buffers). Capture's frames are in shared memory
(stream/wire/shm.py), so only their slot numbers are joined and passed on; frames that came inside
their messages are copied into the batch. An end of stream goes on after the frames gathered
before it, so it still follows its stream's last frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from stream.geometry import Geometry, prepare, to_frame_format
from stream.stages.base import Stage, StreamTracker
from stream.wire import messages
from stream.wire.shm import PoolSet
from stream.wire.transport import TransportConfig, receive_message, send

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
"""Frames per TENSOR message and per inference request at most (`--max-batch`)."""
MAX_BATCH_LIMIT = 256
TENSORS_HWM = 1
"""Messages the preprocess -> infer link holds on each side. Small, so that it is full as soon
as infer is busy and preprocess gathers the frames that come meanwhile into fuller batches;
infer's own queue (max_batch frames beyond its requests) keeps it fed."""


@dataclass
class PreprocessConfig:
    """What the preprocess stage needs."""

    streams: list[str]
    """Stream ids it waits for; it ends after the end of stream of each."""
    geometry: Geometry = field(default_factory=Geometry)
    """The model's geometry (from model.json)."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Frames per TENSOR message at most (whatever is waiting, never waiting for more)."""
    frame_format: str = "bgr"
    """The run's frame format (`stream.geometry.FRAME_FORMATS`): what capture sends and infer
    takes."""


def to_tensors(msg: messages.Message, geometry: Geometry, fmt: str = "bgr") -> messages.Batch:
    """The model inputs of one FRAME message, as frames of `fmt`; ValueError if they cannot be.

    Frames marked `prepared` (capture's, made by the decoder-side window) must already be the
    model input in `fmt` and are passed on as they are; any other BGR frames go through
    `prepare` (and `to_frame_format`).
    """
    batch = msg.batch
    assert batch is not None
    if batch.shared is not None:  # in the capture's pool: only their slots pass through here
        problem = geometry.shape_problem(batch.shared.shape, fmt=fmt)
        if problem or not msg.meta.get("prepared"):
            raise ValueError(f"shared frames: {problem or 'not prepared'}")
        return batch
    if msg.meta.get("prepared"):
        problem = geometry.input_problem(batch.data, batched=True, fmt=fmt)
        if problem:
            raise ValueError(f"prepared frame: {problem}")
        return batch
    data = batch.data
    if data.ndim != 4:
        raise ValueError(f"expected N x H x W x 3 uint8 frames, got shape {data.shape}")
    return batch.with_data(
        np.stack([to_frame_format(prepare(frame, geometry), fmt) for frame in data])
    )


class PreprocessStage(Stage):
    """PULL frames (bound: outlives the captures), PUSH batches of tensors to infer."""

    name = "preprocess"

    def __init__(
        self, config: PreprocessConfig, transport: TransportConfig, endpoints: dict[str, str]
    ) -> None:
        super().__init__(transport, endpoints)
        self.config = config
        self._in: zmq.Socket | None = None
        self._out: zmq.Socket | None = None
        self._demand: zmq.Socket | None = None
        self._pools = PoolSet(endpoints.get("shm"))
        self._credit = 0
        """Frames infer can take now (it says so on the demand link as it takes them)."""
        self._taken: list[Any] = []
        """The batch being gathered, in order: Batches, and encoded ends of stream."""
        self._count = 0

    def run(self) -> None:
        cfg = self.config
        self._in = self.socket(zmq.PULL, "frames", bind=True)
        self._out = self.socket(zmq.PUSH, "tensors", bind=False)
        self._demand = self.socket(zmq.PULL, "demand", bind=True)
        self.report(messages.READY)
        tracker = StreamTracker(cfg.streams)
        self.stats.update(frames=0, batches=0, errors=0, credit=0)
        poller = zmq.Poller()
        poller.register(self._demand, zmq.POLLIN)
        reading = False
        kinds = (messages.FRAME, messages.EOS)
        while not self.should_stop():
            if tracker.done and not self._taken:
                break
            want = self._count < cfg.max_batch  # room in the batch being gathered
            if want != reading:
                if want:
                    poller.register(self._in, zmq.POLLIN)
                else:
                    poller.unregister(self._in)
                reading = want
            events = dict(poller.poll(self.transport.io_timeout_ms))
            self.tick()
            if self._demand in events:
                self._take_credit()
            while reading and self._count < cfg.max_batch:
                msg = self.receive_checked(self._in, 0, "frames", kinds, tracker)
                if msg is None:
                    break
                if not self._add(msg):
                    return
            if self._taken and self._credit > 0 and not self._flush():
                return
        self.complete = tracker.done
        self.tick(force=True)

    def _take_credit(self) -> None:
        """Add the frames infer says it can take (`credit` commands on the demand link)."""
        assert self._demand is not None
        while True:
            msg, problem = receive_message(self._demand, 0)
            if msg is None:
                if problem:
                    self.reject(f"demand link: {problem}")
                    continue
                return
            frames = msg.meta.get("frames")
            if (
                msg.kind != messages.COMMAND
                or msg.meta.get("command") != "credit"
                or not messages.is_count(frames)
            ):
                self.reject(f"demand link: not a credit: {msg.kind} {msg.meta}")
                continue
            self._credit += frames
            self.stats["credit"] = self._credit

    def _add(self, msg: messages.Message) -> bool:
        """Add a frame message to the batch being gathered; an end of stream goes on after it
        (at once if nothing is gathered). False if stopped."""
        if msg.kind == messages.EOS:
            self.eos_seen(msg)
            eos = messages.encode(messages.EOS, msg.stream, msg.seq, msg.meta)
            if not self._taken:
                return send(self._out, eos, self.should_stop)
            self._taken.append(eos)  # after the frames before it, whenever they go
            return True
        try:
            batch = to_tensors(msg, self.config.geometry, self.config.frame_format)
        except ValueError as exc:
            self.reject(f"frame message of {', '.join(msg.batch.streams)}: {exc}")
            self._pools.release(msg.batch)
            return True
        last = self._taken[-1] if self._taken else None
        if isinstance(last, messages.Batch) and (batch.shared is None) != (last.shared is None):
            self._taken.append(_KIND_BREAK)  # one kind of frames a message
        self._taken.append(batch)
        self._count += len(batch)
        return True

    def _flush(self) -> bool:
        """Send what is gathered: its frames as one batch (or one per kind), each end of stream
        after the frames before it. False if stopped."""
        group: list[messages.Batch] = []
        for item in [*self._taken, _KIND_BREAK]:
            if isinstance(item, messages.Batch):
                group.append(item)
                continue
            if group:
                joined = messages.Batch.join(group)
                most = self.config.max_batch
                # A capture's message joins whole, so what was gathered can pass max_batch.
                for start in range(0, len(joined), most):
                    piece = joined if len(joined) <= most else joined.take(start, start + most)
                    parts = messages.encode_batch(messages.TENSOR, piece)
                    if not send(self._out, parts, self.should_stop):
                        return False
                    self._credit -= len(piece)
                    self.stats["frames"] += len(piece)
                    self.stats["batches"] += 1
                group = []
            if item is not _KIND_BREAK and not send(self._out, item, self.should_stop):
                return False
        self._taken, self._count = [], 0
        self.stats["credit"] = self._credit
        return True


_KIND_BREAK: list = []
"""In the gathered list: the frames before and after go in separate messages."""

"""Preprocess stage: frames from every capture -> batches of the u8 BGR tensor the IR takes.

The geometry is the project's one policy (`stream.geometry`). Capture already applies it on the
decoded YUV frame (`sources.decode.WindowScaler`: crop the source window, resize and convert to BGR
in one swscale pass), which costs a quarter of converting the whole frame and resizing it here, so
its frames arrive marked `prepared`: this stage checks they are the model input. Any other BGR
frame goes through `stream.geometry.prepare`. Frames of every source meet here, and malformed ones
stop here. Colour conversion and normalisation are inside the IR.

Batching: the stage takes the frames that are waiting, up to `max_batch`, and sends them on as
one TENSOR message, which infer runs as one request. Capture's frames are in shared memory
(stream/wire/shm.py), so only their slot numbers are joined and passed on; frames that came inside
their messages are copied into the batch. It
never waits for a batch to fill: a frame that arrives alone goes on alone, so a live source's
latency does not grow. An end of stream flushes the frames before it, so it still follows its
stream's last frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import zmq

from stream.geometry import Geometry, prepare
from stream.stages.base import Stage, StreamTracker
from stream.wire import messages
from stream.wire.shm import PoolSet
from stream.wire.transport import TransportConfig, send

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
"""Frames per TENSOR message and per inference request at most (`--max-batch`)."""
MAX_BATCH_LIMIT = 256


@dataclass
class PreprocessConfig:
    """What the preprocess stage needs."""

    streams: list[str]
    """Stream ids it waits for; it ends after the end of stream of each."""
    geometry: Geometry = field(default_factory=Geometry)
    """The model's geometry (from model.json)."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Frames per TENSOR message at most (whatever is waiting, never waiting for more)."""


def to_tensors(msg: messages.Message, geometry: Geometry) -> messages.Batch:
    """The model inputs of one FRAME message; ValueError if they cannot be.

    Frames marked `prepared` (capture's, made by the decoder-side window) must already be the
    model input and are passed on as they are; any other BGR frames go through `prepare`.
    """
    batch = msg.batch
    assert batch is not None
    if batch.shared is not None:  # in the capture's pool: only their slots pass through here
        problem = geometry.shape_problem(batch.shared.shape)
        if problem or not msg.meta.get("prepared"):
            raise ValueError(f"shared frames: {problem or 'not prepared'}")
        return batch
    if msg.meta.get("prepared"):
        problem = geometry.input_problem(batch.data, batched=True)
        if problem:
            raise ValueError(f"prepared frame: {problem}")
        return batch
    data = batch.data
    if data.ndim != 4:
        raise ValueError(f"expected N x H x W x 3 uint8 frames, got shape {data.shape}")
    return batch.with_data(np.stack([prepare(frame, geometry) for frame in data]))


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
        self._pools = PoolSet(endpoints.get("shm"))

    def run(self) -> None:
        self._in = self.socket(zmq.PULL, "frames", bind=True)
        self._out = self.socket(zmq.PUSH, "tensors", bind=False)
        self.report(messages.READY)
        tracker = StreamTracker(self.config.streams)
        self.stats.update(frames=0, batches=0, errors=0)
        timeout = self.transport.io_timeout_ms
        while not tracker.done and not self.should_stop():
            self.tick()
            if not self._pass_on(tracker, timeout):
                break
        self.complete = tracker.done
        self.tick(force=True)

    def _pass_on(self, tracker: StreamTracker, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` for frames, take what is waiting (up to max_batch) and send it
        on as one batch; ends of stream go on after the frames before them. False if stopped."""
        kinds = (messages.FRAME, messages.EOS)
        taken: list[messages.Batch] = []
        count = 0
        msg = self.receive_checked(self._in, timeout_ms, "frames", kinds, tracker)
        while msg is not None:
            if msg.kind == messages.EOS:
                self.eos_seen(msg)
                if not self._flush(taken, count):
                    return False
                taken, count = [], 0
                if not send(
                    self._out,
                    messages.encode(messages.EOS, msg.stream, msg.seq, msg.meta),
                    self.should_stop,
                ):
                    return False
            else:
                try:
                    batch = to_tensors(msg, self.config.geometry)
                except ValueError as exc:
                    self.reject(f"frame message of {', '.join(msg.batch.streams)}: {exc}")
                    self._pools.release(msg.batch)
                else:
                    if taken and (batch.shared is None) != (taken[0].shared is None):
                        if not self._flush(taken, count):  # one kind of frames a message
                            return False
                        taken, count = [], 0
                    taken.append(batch)
                    count += len(batch)
            if count >= self.config.max_batch:
                break
            msg = self.receive_checked(self._in, 0, "frames", kinds, tracker)
        return self._flush(taken, count)

    def _flush(self, taken: list[messages.Batch], count: int) -> bool:
        if not taken:
            return True
        parts = messages.encode_batch(messages.TENSOR, messages.Batch.join(taken))
        if not send(self._out, parts, self.should_stop):
            return False
        self.stats["frames"] += count
        self.stats["batches"] += 1
        return True

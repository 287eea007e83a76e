"""Preprocess stage: frames from every capture -> the u8 BGR tensor the IR takes.

The geometry is the project's one policy (`stream.geometry`). Capture already applies it on the
decoded YUV frame (`sources.decode.WindowScaler`: crop the source window, resize and convert to BGR
in one swscale pass), which costs a quarter of converting the whole frame and resizing it here, so
its frames arrive marked `prepared`: this stage checks they are the model input and passes them on
without a copy. Any other BGR frame goes through `stream.geometry.prepare`. Frames of every source
meet here, and malformed ones stop here. Colour conversion and normalisation are inside the IR.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import zmq

from stream.geometry import Geometry, prepare
from stream.stages.base import Stage, StreamTracker
from stream.wire import messages
from stream.wire.transport import TransportConfig, send

log = logging.getLogger(__name__)


@dataclass
class PreprocessConfig:
    """What the preprocess stage needs."""

    streams: list[str]
    """Stream ids it waits for; it ends after the end of stream of each."""
    geometry: Geometry = field(default_factory=Geometry)
    """The model's geometry (from model.json)."""


def to_tensor(msg: messages.Message, geometry: Geometry) -> list:
    """The TENSOR message (multipart frames) for one FRAME message; ValueError if it is no frame.

    A frame marked `prepared` (capture's, made by the decoder-side window) must already be the
    model input and is passed on as it is; any other BGR frame goes through `prepare`.
    """
    frame = msg.arrays[0]
    if msg.meta.get("prepared"):
        problem = geometry.input_problem(frame)
        if problem:
            raise ValueError(f"prepared frame: {problem}")
        tensor = frame
    else:
        tensor = prepare(frame, geometry)
    return messages.encode(messages.TENSOR, msg.stream, msg.seq, msg.meta, [tensor])


class PreprocessStage(Stage):
    """PULL frames (bound: outlives the captures), PUSH tensors to infer."""

    name = "preprocess"

    def __init__(
        self, config: PreprocessConfig, transport: TransportConfig, endpoints: dict[str, str]
    ) -> None:
        super().__init__(transport, endpoints)
        self.config = config
        self._in: zmq.Socket | None = None
        self._out: zmq.Socket | None = None

    def run(self) -> None:
        self._in = self.socket(zmq.PULL, "frames", bind=True)
        self._out = self.socket(zmq.PUSH, "tensors", bind=False)
        self.report(messages.READY)
        tracker = StreamTracker(self.config.streams)
        self.stats.update(frames=0, errors=0)
        timeout = self.transport.io_timeout_ms
        while not tracker.done and not self.should_stop():
            self.tick()
            kinds = (messages.FRAME, messages.EOS)
            msg = self.receive_checked(self._in, timeout, "frames", kinds, tracker)
            if msg is None:
                continue
            if msg.kind == messages.EOS:
                self.eos_seen(msg)
                parts = messages.encode(messages.EOS, msg.stream, msg.seq, msg.meta)
            else:
                try:
                    parts = to_tensor(msg, self.config.geometry)
                except ValueError as exc:
                    self.reject(f"stream {msg.stream!r} frame {msg.seq}: {exc}")
                    continue
                self.stats["frames"] += 1
            if not send(self._out, parts, self.should_stop):
                break
        self.complete = tracker.done
        self.tick(force=True)

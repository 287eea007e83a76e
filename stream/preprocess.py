"""Preprocess stage: frames from every capture -> the u8 BGR tensor the IR takes.

It applies `stream.geometry.prepare`, the project's one geometric preprocessing function. Capture
has already done the resize in the decoder, so for the default policy this is a centre crop and
a contiguous copy (well under a millisecond): the stage stays light and leaves the cores to
decoding and inference. Colour conversion and normalisation are inside the IR.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import zmq

from stream import messages
from stream.geometry import Geometry, prepare
from stream.stage import Stage, StreamTracker
from stream.transport import TransportConfig, receive_message, send

log = logging.getLogger(__name__)


@dataclass
class PreprocessConfig:
    """What the preprocess stage needs."""

    streams: list[str]
    """Stream ids it waits for; it ends after the end of stream of each."""
    geometry: Geometry = field(default_factory=Geometry)
    """The model's geometry (from model.json)."""


def to_tensor(msg: messages.Message, geometry: Geometry) -> list:
    """The TENSOR message (multipart frames) for one FRAME message."""
    tensor = prepare(msg.arrays[0], geometry)
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
            msg, problem = receive_message(self._in, timeout)
            if msg is None:
                if problem:
                    self.reject(problem)
                continue
            if msg.kind not in (messages.FRAME, messages.EOS):
                self.reject(f"unexpected {msg.kind} message on the frames link")
                continue
            problem = tracker.check(msg)
            if problem:
                self.reject(problem)
                continue
            if msg.kind == messages.EOS:
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

    def close(self) -> None:
        for sock in (self._in, self._out):
            if sock is not None:
                sock.close()
        self._in = self._out = None

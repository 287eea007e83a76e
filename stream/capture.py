"""Capture stage: one process per source; decodes with PyAV and sends small BGR frames.

Each decoded frame is stamped with the stream id, its index among the frames the decoder
produced, its pts in seconds and the wall-clock time it was decoded. The decoder also does the
resize step of the model's geometry (`Geometry.scaled_size`) in the same swscale pass as the
YUV->BGR conversion, which is far cheaper than converting a full-size frame and resizing it with
OpenCV, and keeps the frames on the wire small; `stream.geometry.prepare` then only crops.

Corrupt packets are skipped and counted, decoding goes on. A source that cannot be read at all
sends an end-of-stream carrying the error, so the rest of the pipeline (and the other sources)
go on. Live sources (a later issue) plug in at `open_source` (network options, reconnect around
`decode_frames`) and at `CaptureStage._send_frame` (drop the oldest frame instead of blocking).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import zmq

from stream import messages
from stream.errors import UserError
from stream.geometry import Geometry
from stream.stage import Stage
from stream.transport import TransportConfig, send

log = logging.getLogger(__name__)

MAX_DEMUX_ERRORS = 100
THREAD_TYPES = ("AUTO", "FRAME", "SLICE", "NONE")
EOS_SEND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SourceSpec:
    """One input: a stream id and where to read it from."""

    stream_id: str
    """Id of the stream: the PUB topic and `stream_id` of its results."""
    url: str
    """A file path (or, later, a camera URL)."""

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """`NAME=SOURCE` or just `SOURCE` (the id is then the file stem)."""
        name, sep, rest = text.partition("=")
        if sep and name and "/" not in name and ":" not in name and rest:
            return cls(name, rest)
        stem = Path(text.split("?", 1)[0].rstrip("/")).stem or "stream"
        return cls(stem, text)


def parse_sources(texts: list[str]) -> list[SourceSpec]:
    """Sources with unique stream ids; duplicates are a UserError naming the fix."""
    if not texts:
        raise UserError("no sources given")
    specs = [SourceSpec.parse(t) for t in texts]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.stream_id in seen:
            raise UserError(
                f"two sources would have the stream id {spec.stream_id!r} "
                f"({seen[spec.stream_id]}, {spec.url}); name them with NAME=SOURCE"
            )
        seen[spec.stream_id] = spec.url
    return specs


@dataclass
class CaptureConfig:
    """What one capture process reads and how."""

    source: SourceSpec
    """The source and its stream id."""
    geometry: Geometry = field(default_factory=Geometry)
    """The model's geometry; frames leave capture at `geometry.scaled_size` (resize done)."""
    fps: float | None = None
    """Sample this many frames per second of video, by pts; None = every frame."""
    thread_type: str = "AUTO"
    """PyAV/FFmpeg decoder threading: AUTO (frame+slice), FRAME, SLICE or NONE."""

    def __post_init__(self) -> None:
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise UserError(f"--fps must be a positive number, got {self.fps}")
        if self.thread_type not in THREAD_TYPES:
            raise UserError(f"thread_type must be one of {THREAD_TYPES}, got {self.thread_type!r}")


# ------------------------------------------------------------------------------ pure functions


class PtsSampler:
    """Keeps the first frame of every 1/fps-second slot of presentation time."""

    def __init__(self, fps: float | None) -> None:
        self.fps = fps
        self._origin: float | None = None
        self._last_slot: int | None = None

    def keep(self, pts: float) -> bool:
        if self.fps is None:
            return True
        if self._origin is None:
            self._origin = pts
        slot = math.floor((pts - self._origin) * self.fps + 1e-6)
        if self._last_slot is not None and slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True


def scaled_bgr(frame: av.VideoFrame, geometry: Geometry) -> np.ndarray:
    """The frame as u8 BGR at the geometry's resize size, scaled and converted in one pass."""
    width, height = geometry.scaled_size(frame.width, frame.height)
    shrinking = width * height < frame.width * frame.height
    out = frame.reformat(
        width=width,
        height=height,
        format="bgr24",
        interpolation="AREA" if shrinking else "BILINEAR",
    )
    return out.to_ndarray()


@dataclass
class DecodeCounters:
    """What the decoder did with one source."""

    packets: int = 0
    """Video packets with data that were read."""
    decoded: int = 0
    """Frames the decoder produced."""
    decode_errors: int = 0
    """Packets the decoder rejected (corrupt data)."""
    demux_errors: int = 0
    """Read errors the demuxer recovered from."""
    corrupt_frames: int = 0
    """Frames the decoder produced but flagged as damaged (still classified)."""

    @property
    def skipped(self) -> int:
        """Frames lost to corrupt data: packets that did not become frames."""
        return max(0, self.packets - self.decoded)


def open_source(url: str) -> tuple[Any, Any]:
    """Open a source and its first video stream; every failure is a one-line UserError."""
    if "://" not in url:
        path = Path(url)
        if not path.exists():
            raise UserError(f"no such file: {url}")
        if not path.is_file():
            raise UserError(f"not a file: {url}")
    try:
        container = av.open(url, mode="r", timeout=10.0)
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"cannot read {url} as video: {reason}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{url} has no video stream (no frames to classify)")
    return container, container.streams.video[0]


def decode_frames(
    container: Any, stream: Any, counters: DecodeCounters
) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """(frame_index, pts_seconds, frame) for every frame the decoder yields; skips bad data."""
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    packets = container.demux(stream)
    last_pts: float | None = None
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            counters.demux_errors += 1
            log.debug("demux error %d: %s", counters.demux_errors, exc)
            if counters.demux_errors > MAX_DEMUX_ERRORS:
                raise UserError(f"too many read errors ({counters.demux_errors}): {exc}") from None
            packets = container.demux(stream)
            continue
        if packet.size:
            counters.packets += 1
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            counters.decode_errors += 1
            log.debug("decode error %d: %s", counters.decode_errors, exc)
            continue
        for frame in frames:
            pts = frame.time
            if pts is None:
                pts = 0.0 if last_pts is None else last_pts + 1.0 / rate
            last_pts = float(pts)
            counters.corrupt_frames += int(frame.is_corrupt)
            index = counters.decoded
            counters.decoded += 1
            yield index, float(pts), frame


# ------------------------------------------------------------------------------ the stage


class CaptureStage(Stage):
    """Decodes one source and pushes its frames, then its end of stream, to preprocess."""

    def __init__(
        self, config: CaptureConfig, transport: TransportConfig, endpoints: dict[str, str]
    ) -> None:
        super().__init__(transport, endpoints)
        self.config = config
        self.name = f"capture[{config.source.stream_id}]"
        self._out: zmq.Socket | None = None
        self._container: Any = None

    def run(self) -> None:
        cfg = self.config
        sid = cfg.source.stream_id
        self._out = self.socket(zmq.PUSH, "frames", bind=False)
        self.report(messages.READY)
        counters = DecodeCounters()
        sampler = PtsSampler(cfg.fps)
        self.stats.update(frames=0, decoded=0, skipped=0)
        seq = 0
        error: str | None = None
        stopped = False
        try:
            self._container, stream = open_source(cfg.source.url)
            stream.thread_type = cfg.thread_type
            for index, pts, frame in decode_frames(self._container, stream, counters):
                if self.should_stop():
                    stopped = True
                    break
                self.stats["decoded"] = counters.decoded
                if not sampler.keep(pts):
                    continue
                if not self._send_frame(seq, index, pts, scaled_bgr(frame, cfg.geometry)):
                    stopped = True
                    break
                seq += 1
                self.stats["frames"] = seq
                self.tick()
            if counters.decoded == 0 and not stopped:
                error = f"{cfg.source.url}: no frames could be decoded"
        except UserError as exc:
            error = str(exc)
        except av.FFmpegError as exc:
            error = f"{cfg.source.url}: {exc}"
        self.stats.update(frames=seq, decoded=counters.decoded, skipped=counters.skipped)
        eos = {
            "count": seq,
            "decoded": counters.decoded,
            "skipped": counters.skipped,
            "decode_errors": counters.decode_errors,
            "corrupt_frames": counters.corrupt_frames,
            "stopped": stopped,
            "error": error,
        }
        self.stats.update(eos)
        if error:
            self.report(messages.ERROR, stream=sid, message=error, source_error=True)
        self.complete = self._send_eos(seq, eos)

    def _send_frame(self, seq: int, index: int, pts: float, image: np.ndarray) -> bool:
        """Blocks while downstream is busy (files: nothing is dropped); False if stopped."""
        meta = {"frame_index": index, "pts": pts, "capture_ts": time.time()}
        parts = messages.encode(messages.FRAME, self.config.source.stream_id, seq, meta, [image])
        assert self._out is not None
        return send(self._out, parts, self.should_stop)

    def _send_eos(self, count: int, meta: dict[str, Any]) -> bool:
        parts = messages.encode(messages.EOS, self.config.source.stream_id, count, meta)
        deadline = time.monotonic() + EOS_SEND_TIMEOUT_S
        assert self._out is not None
        if not send(self._out, parts, lambda: time.monotonic() > deadline):
            log.warning("%s: could not pass on end of stream (downstream not reading)", self.name)
            return False
        return True

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._out is not None:
            self._out.close()
            self._out = None

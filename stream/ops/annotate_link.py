"""The annotate link: live captures send a copy of each frame they send on to the annotator.

The pipeline carries only the model's input, so with `--annotate` and a live source the capture
also PUSHes the frame itself, at the annotate size, to the `LiveAnnotator` in the main process
(stream/ops/annotate_live.py), which binds the PULL side. A message is two parts: a small JSON
header (version, stream id, frame index, pts, capture time, size, colour range and space) and
the yuv420p planes, Y then U then V, without padding. The link is this module's own, not a kind
of `stream.wire.messages`: it has one sender and one receiver, both here.

Sending never blocks capture: a frame the link has no room for is dropped and counted
(`annotate_dropped` in the capture's stats). The copy is cheap: a live H.264 frame is already
yuv420p at the source's size, so reformatting is a no-op and the one copy is `to_ndarray`.
This module imports nothing heavy, so capture can import it whether annotation is on or off;
with it off, no `FrameTap` exists and no socket is opened.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import zmq

from stream.wire.transport import NOBLOCK, TransportConfig, open_socket, send_parts

TAP_VERSION = 1
TAP_HWM = 16
"""Frames queued on each side of the link; a full link drops frames, never stalls capture."""
TAP_LINGER_MS = 500
"""At the end, frames still queued get this long to reach the annotator."""
MAX_SIDE = 16384


@dataclass(frozen=True)
class AnnotateLink:
    """Where a live capture sends copies of its frames for `--annotate`, and at what size."""

    endpoint: str
    """PULL endpoint bound by the annotator in the main process."""
    size: tuple[int, int] | None = None
    """(width, height) of the copies; None = the source's, rounded down to even numbers."""


@dataclass(frozen=True)
class TapFrame:
    """One frame received on the link: its header and its planes as one (h*3/2, w) array."""

    stream_id: str
    frame_index: int
    pts: float | None
    capture_ts: float
    width: int
    height: int
    planes: np.ndarray
    color_range: int = 0
    colorspace: int = 0

    @property
    def time(self) -> float:
        """Stream time in seconds: the pts, or the capture time for a source without one."""
        return self.pts if self.pts is not None else self.capture_ts


class TapError(ValueError):
    """A malformed message on the annotate link."""


def even_size(width: int, height: int) -> tuple[int, int]:
    """The even size at or just below (H.264 in 4:2:0 needs even sizes)."""
    return max(2, width - width % 2), max(2, height - height % 2)


def encode_tap(
    stream_id: str,
    frame_index: int,
    pts: float | None,
    capture_ts: float,
    planes: np.ndarray,
    color_range: int = 0,
    colorspace: int = 0,
) -> list[Any]:
    """The two parts of one link message; `planes` is the (h*3/2, w) yuv420p array."""
    rows, width = planes.shape
    header = {
        "v": TAP_VERSION,
        "stream_id": stream_id,
        "frame_index": frame_index,
        "pts": pts,
        "capture_ts": capture_ts,
        "width": width,
        "height": rows * 2 // 3,
        "color_range": color_range,
        "colorspace": colorspace,
    }
    return [json.dumps(header).encode(), np.ascontiguousarray(planes)]


def _number(header: dict[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    value = header.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TapError(f"{key}: expected {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise TapError(f"{key}: expected a finite number, got {value!r}")
    return kind(value)


def decode_tap(parts: list[Any]) -> TapFrame:
    """Check and read one link message; TapError (one line) if anything is off."""
    if len(parts) != 2:
        raise TapError(f"expected 2 parts (header, planes), got {len(parts)}")
    raw = parts[0].bytes if isinstance(parts[0], zmq.Frame) else bytes(parts[0])
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TapError("header is not JSON") from None
    if not isinstance(header, dict):
        raise TapError("header is not a JSON object")
    if header.get("v") != TAP_VERSION:
        raise TapError(f"version: expected {TAP_VERSION}, got {header.get('v')!r}")
    stream_id = header.get("stream_id")
    if not isinstance(stream_id, str) or not stream_id:
        raise TapError(f"stream_id: expected a name, got {stream_id!r}")
    index = _number(header, "frame_index", int)
    width, height = _number(header, "width", int), _number(header, "height", int)
    if index < 0:
        raise TapError(f"frame_index: expected >= 0, got {index}")
    if not (2 <= width <= MAX_SIDE and 2 <= height <= MAX_SIDE) or width % 2 or height % 2:
        raise TapError(f"size: expected even sides of 2..{MAX_SIDE}, got {width}x{height}")
    payload = parts[1].buffer if isinstance(parts[1], zmq.Frame) else memoryview(parts[1])
    if payload.nbytes != width * height * 3 // 2:
        raise TapError(f"planes: expected {width * height * 3 // 2} bytes, got {payload.nbytes}")
    planes = np.frombuffer(payload, np.uint8).reshape(height * 3 // 2, width)
    return TapFrame(
        stream_id,
        index,
        _number(header, "pts", float, optional=True),
        _number(header, "capture_ts", float),
        width,
        height,
        planes,
        _number(header, "color_range", int),
        _number(header, "colorspace", int),
    )


class FrameTap:
    """Capture's end of the link: `send` a copy of a frame, never blocking.

    Counts go into the capture's `stats`: annotate_sent, annotate_dropped (the link was full)
    and annotate_copy_s (seconds spent reformatting, copying and sending).
    """

    def __init__(self, link: AnnotateLink, stream_id: str, stats: dict[str, Any]) -> None:
        self.link = link
        self.stream_id = stream_id
        self.stats = stats
        self.sock: zmq.Socket | None = None
        stats.update(annotate_sent=0, annotate_dropped=0, annotate_copy_s=0.0)

    def open(self, ctx: zmq.Context, transport: TransportConfig) -> zmq.Socket:
        """Connect the PUSH socket (the caller closes it)."""
        self.sock = open_socket(
            ctx, zmq.PUSH, self.link.endpoint, False, transport, TAP_HWM, TAP_LINGER_MS
        )
        return self.sock

    def send(self, index: int, pts: float | None, capture_ts: float, frame: av.VideoFrame) -> bool:
        """Send `frame` at the link's size; False (and counted) if the link had no room."""
        assert self.sock is not None
        t0 = time.perf_counter()
        width, height = self.link.size or even_size(frame.width, frame.height)
        if (frame.width, frame.height, frame.format.name) != (width, height, "yuv420p"):
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        parts = encode_tap(
            self.stream_id,
            index,
            pts,
            capture_ts,
            frame.to_ndarray(),
            int(frame.color_range or 0),
            int(frame.colorspace or 0),
        )
        try:
            send_parts(self.sock, parts, NOBLOCK)
            self.stats["annotate_sent"] += 1
            sent = True
        except zmq.Again:
            self.stats["annotate_dropped"] += 1
            sent = False
        self.stats["annotate_copy_s"] += time.perf_counter() - t0
        return sent

"""Decoding a source with PyAV: open it, yield its frames, and cut the model's window on the
decoded YUV frame.

Each decoded frame gets its index among the frames the decoder produced and its pts in seconds.
Corrupt packets are skipped and counted, decoding goes on. The model's geometry is applied on the
decoded YUV frame (`WindowScaler`: FFmpeg crops the source window of `Geometry.source_window` and
one swscale pass resizes it and converts it to BGR), far cheaper than converting the full frame
and resizing it with OpenCV. `PtsSampler` keeps the first frame of every 1/fps slot.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from stream.errors import UserError
from stream.geometry import Geometry
from stream.sources.live import FIRST_FRAME_TIMEOUT_S, Stalled
from stream.sources.live_errors import scrub
from stream.wire import messages

log = logging.getLogger(__name__)

MAX_DEMUX_ERRORS = 100


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


# 8-bit planar formats by chroma subsampling (horizontal, vertical), for `crop_format`.
PLANAR_8BIT = {(2, 2): "yuv420p", (2, 1): "yuv422p", (4, 1): "yuv411p", (4, 4): "yuv410p"}


def crop_format(fmt: av.VideoFormat) -> str | None:
    """None if FFmpeg's crop can cut `fmt` at any pixel, else the 8-bit planar format to convert
    to first.

    Cropping at an odd offset is exact for 8-bit planar YUV and for formats without chroma
    subsampling; for semi-planar (NV12), packed 4:2:2 (YUYV) and high-bit-depth subsampled
    frames (10-bit HEVC) it would misplace the chroma, so those are converted first (at full
    size: slower, but only for such sources).
    """
    full = av.VideoFormat(fmt.name, 64, 64)
    sub = (64 // full.chroma_width(), 64 // full.chroma_height())
    if sub == (1, 1):
        return None
    components = fmt.components
    if all(c.bits == 8 for c in components) and len({c.plane for c in components}) == len(
        components
    ):
        return None
    return PLANAR_8BIT.get(sub, "yuv444p")


class WindowScaler:
    """Decoded frame -> the model's input as a frame of `fmt` (`stream.geometry.FRAME_FORMATS`):
    `prepare`'s work, done on the YUV frame.

    FFmpeg's crop filter takes the geometry's source window (no copy: it moves the plane
    pointers) and one swscale pass resizes it to the input size and converts it to BGR (bgr) or
    to planar YUV 4:2:0 (i420, which skips the conversion: 0.11 against 0.15 ms a 640x360
    frame), on this thread only. For a 1080p frame that is about a quarter of the CPU of scaling
    the whole frame to 455x256 and cropping afterwards, and the frame on the wire is the input
    tensor itself.
    The filter graph is rebuilt when the frame size or pixel format changes (a live stream can
    change resolution on reconnect).
    """

    def __init__(self, geometry: Geometry, fmt: str = "bgr") -> None:
        self.geometry = geometry
        self.shape = geometry.frame_shape(fmt)
        """One frame's shape (`Geometry.frame_shape`)."""
        self._pix_fmt = "yuv420p" if fmt == "i420" else "bgr24"
        self._key: tuple[int, int, str] | None = None
        self._graph: Any = None

    def __call__(self, frame: av.VideoFrame, out: np.ndarray | None = None) -> np.ndarray:
        """The model input of `frame`, written into `out` where given (a shared-memory slot)."""
        key = (frame.width, frame.height, frame.format.name)
        if key != self._key:
            self._graph = self._build(frame)
            self._key = key
        self._graph.push(frame)
        # Rows of FFmpeg's frame are padded: one copy of the small input makes it contiguous.
        image = self._graph.pull().to_ndarray().reshape(self.shape)
        if out is None:
            return np.ascontiguousarray(image)
        np.copyto(out, image)
        return out

    def _build(self, frame: av.VideoFrame) -> Any:
        g = self.geometry
        x, y, width, height = g.source_window(frame.width, frame.height)
        shrinking = g.width * g.height < width * height
        graph = av.filter.Graph()
        chain = [
            graph.add_buffer(
                width=frame.width,
                height=frame.height,
                format=frame.format.name,
                time_base=frame.time_base or Fraction(1, 90000),
            )
        ]
        planar = crop_format(frame.format)
        if planar is not None:
            chain.append(graph.add("format", f"pix_fmts={planar}"))
        scale = f"w={g.width}:h={g.height}:flags={'area' if shrinking else 'bilinear'}:threads=1"
        if self._pix_fmt == "yuv420p":  # what OpenVINO's I420 conversion reads, whatever the tags
            scale += ":out_color_matrix=bt601:out_range=tv"
        chain += [
            graph.add("crop", f"w={width}:h={height}:x={x}:y={y}:exact=1"),
            graph.add("scale", scale),
            graph.add("format", f"pix_fmts={self._pix_fmt}"),
            graph.add("buffersink"),
        ]
        for a, b in zip(chain, chain[1:], strict=False):
            a.link_to(b)
        graph.configure()
        return graph


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
    shown = messages.mask_credentials(url)
    try:
        container = av.open(url, mode="r", timeout=10.0)
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(scrub(f"cannot read {shown} as video: {reason}", url)) from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{shown} has no video stream (no frames to classify)")
    return container, container.streams.video[0]


def decode_frames(
    container: Any, stream: Any, counters: DecodeCounters, stall_timeout_s: float | None = None
) -> Iterator[tuple[int, float | None, av.VideoFrame]]:
    """(frame_index, pts_seconds, frame) for every frame the decoder yields; skips bad data.

    Files: a missing pts is extrapolated from the frame rate; demux errors are retried.
    Live (`stall_timeout_s` set): pts stay None when the stream has none; read errors end the
    connection (the caller reconnects; a read that waits longer than the read timeout for data
    is the stall of a silent stream). A connection joins the stream anywhere in a GOP, and the
    decoder yields nothing before the next keyframe, which can be 10 s and more away on a camera:
    `Stalled` is raised when packets keep coming but no first frame arrived within
    `max(stall_timeout_s, FIRST_FRAME_TIMEOUT_S)`, or, once frames came, none was decoded for
    `stall_timeout_s`. `counters.decoded` numbers the frames, so indices carry on when the caller
    passes the same counters to the next connection.
    """
    live = stall_timeout_s is not None
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    packets = container.demux(stream)
    last_pts: float | None = None
    connected = time.monotonic()
    last_frame: float | None = None  # none yet on this connection: waiting for a keyframe
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            if live:
                raise
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
            frames = []
        if live and not frames:
            now = time.monotonic()
            if last_frame is None:
                wait = max(stall_timeout_s, FIRST_FRAME_TIMEOUT_S)  # type: ignore[type-var]
                if now - connected > wait:
                    raise Stalled(f"packets arrive but no keyframe decoded in {wait:g} s")
            elif now - last_frame > stall_timeout_s:  # type: ignore[operator]
                raise Stalled(f"packets arrive but no frame decoded for {stall_timeout_s:g} s")
        for frame in frames:
            pts = frame.time
            if pts is None and not live:
                pts = 0.0 if last_pts is None else last_pts + 1.0 / rate
            if pts is not None:
                last_pts = float(pts)
            counters.corrupt_frames += int(frame.is_corrupt)
            index = counters.decoded
            counters.decoded += 1
            last_frame = time.monotonic()
            yield index, None if pts is None else float(pts), frame

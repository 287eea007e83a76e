"""The segments of a live stream's annotated video: `SegmentWriter` draws and encodes frames
from the annotate link (`TapFrame`) into `DIR/<stream_id>/<stream_id>-NNNNN.mp4`.

A new segment starts every `segment_s` seconds of stream time (the frames' pts; capture time
for a source without), and also when the stream's clock goes back (a reconnect that restarts
the pts) or its size changes, since one MP4 needs monotonic times and one size. Each segment's
times start at 0. A segment is written as `.mp4.part` and renamed when closed, so a file under
its final name is always whole (a killed run leaves its open segment as `.part`, which is
playable up to where the muxer got). Numbers go on from the highest segment already in the
folder, so a second run into the same DIR never replaces the first one's video.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import av
import numpy as np

from stream.ops.annotate import TIME_BASE, Mark, draw_box
from stream.ops.annotate_link import TapFrame

log = logging.getLogger(__name__)


def plane_view(plane: Any) -> np.ndarray:
    """A writable (height, width) view of one plane of an av.VideoFrame, without its padding."""
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def draw_tap_frame(tap: TapFrame, mark: Mark) -> av.VideoFrame:
    """A new yuv420p frame: the tap frame's picture with `mark` drawn in its box."""
    frame = av.VideoFrame.from_ndarray(tap.planes, format="yuv420p")
    luma, u, v = (plane_view(p) for p in frame.planes)
    draw_box(luma, (u, v), mark.lines())
    frame.color_range = tap.color_range
    frame.colorspace = tap.colorspace
    return frame


def next_number(folder: Path, stream_id: str) -> int:
    """The number after the highest segment of `stream_id` in `folder` (0 if none)."""
    if not folder.is_dir():
        return 0
    pattern = re.compile(re.escape(stream_id) + r"-(\d{5,})\.mp4(\.part)?")
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return max(numbers, default=-1) + 1


class SegmentWriter:
    """One live stream's annotated video, cut into segments; `write` frames, `close` at the end."""

    def __init__(self, folder: Path, stream_id: str, segment_s: float, crf: int = 18) -> None:
        self.folder = folder / stream_id
        """Made with the first segment, so a run that never gets a frame leaves no folder."""
        self.stream_id = stream_id
        self.segment_s = segment_s
        self.crf = crf
        self.number = next_number(self.folder, stream_id)
        self.segments = 0
        """Segments closed (renamed to their final names)."""
        self.frames = 0
        """Frames written, the open segment's included."""
        self.open_frames = 0
        """Frames in the open segment."""
        self._out: Any = None
        self._encoder: Any = None
        self._size = (0, 0)
        self._start = 0.0
        self._last_time = 0.0
        self._last_tick = -1

    def path(self, number: int) -> Path:
        return self.folder / f"{self.stream_id}-{number:05d}.mp4"

    @property
    def part(self) -> Path:
        """The open segment's file while it is written."""
        path = self.path(self.number)
        return path.with_name(path.name + ".part")

    def write(self, tap: TapFrame, mark: Mark) -> None:
        t = tap.time
        if self._out is not None and (
            t - self._start >= self.segment_s
            or t < self._last_time
            or (tap.width, tap.height) != self._size
        ):
            self.close()
        if self._out is None:
            self._open(tap)
        frame = draw_tap_frame(tap, mark)
        tick = max(self._last_tick + 1, round((t - self._start) / TIME_BASE))
        frame.pts, frame.time_base, self._last_tick = tick, TIME_BASE, tick
        self._last_time = t
        for packet in self._encoder.encode(frame):
            self._out.mux(packet)
        self.frames += 1
        self.open_frames += 1

    def _open(self, tap: TapFrame) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._out = av.open(str(self.part), "w", format="mp4")
        encoder = self._out.add_stream("libx264", rate=25)
        encoder.width, encoder.height = self._size = (tap.width, tap.height)
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = TIME_BASE
        encoder.codec_context.time_base = TIME_BASE
        encoder.options = {"crf": str(self.crf), "preset": "veryfast"}
        if tap.color_range:
            encoder.codec_context.color_range = tap.color_range
        if tap.colorspace:
            encoder.codec_context.colorspace = tap.colorspace
        self._encoder = encoder
        self._start = self._last_time = tap.time
        self._last_tick = -1
        self.open_frames = 0

    def close(self) -> Path | None:
        """Finish the open segment and give it its final name; its path, or None if none."""
        if self._out is None:
            return None
        out, self._out = self._out, None
        try:
            for packet in self._encoder.encode():
                out.mux(packet)
        finally:
            out.close()
        path = self.path(self.number)
        os.replace(self.part, path)
        self.number += 1
        self.segments += 1
        log.info("annotated %s: segment %s", self.stream_id, path)
        return path

    def abandon(self) -> int:
        """After a failure: close what is open and remove its `.part`; the frames lost."""
        lost, self.open_frames = self.open_frames, 0
        self.frames -= lost
        out, self._out = self._out, None
        if out is not None:
            try:
                out.close()
            except (av.FFmpegError, OSError) as exc:  # the failure itself is reported already
                log.debug("annotate %s: closing after a failure: %s", self.stream_id, exc)
        self.part.unlink(missing_ok=True)
        return lost

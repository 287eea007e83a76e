"""`--annotate DIR`: an H.264 MP4 per file source of the frames that were classified, with the
top-1 label, score and stream time drawn on each, so a person can check the model by watching.

The pipeline carries only the model's input (224x224), not the source frames, so the annotator
works beside it in the main process: `on_result` keeps each stream's results (label, score,
pts by frame index), and when a stream has ended `on_stream_end` hands it to one background
thread that decodes the file again with PyAV (`decode_frames`, which numbers the frames exactly
as capture did), keeps the frames that have a result (all of them, or the sampled ones with
`--fps`), draws on them and encodes them with libx264 into `<stream_id>.mp4.part`, renamed to
`<stream_id>.mp4` once complete. A file under its final name is always whole.

Drawing touches only a box in the top-left corner, on the decoded YUV planes themselves: the
box is filled dark grey (neutral chroma) and the text written on the luma plane with OpenCV. No
full-frame colour conversion is made, so outside the box the annotated frame is the source frame
(exactly so with `crf=0`, lossless H.264). Live sources cannot be decoded again: their frames
come from capture as they are read, and `stream.ops.annotate_live` writes them in segments.

When `--annotate` is off this module is not even imported; the pipeline does not deliver results
to the main process unless something asks for them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from stream.errors import UserError
from stream.sources.decode import DecodeCounters, decode_frames, open_source
from stream.sources.spec import SourceSpec

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 90000)
"""Time base of the annotated videos: the source's pts (seconds) in 90 kHz ticks."""
BOX_Y = 32
"""Luma of the text box: dark grey, in limited and full range alike."""
TEXT_Y = 235
"""Luma of the text: white in limited range."""


def parse_size(text: str) -> tuple[int, int]:
    """`WxH` with even, positive numbers (H.264 in 4:2:0 needs even sizes)."""
    w, sep, h = text.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        raise UserError(f"--annotate-size: expected WxH such as 640x360, got {text!r}") from None
    if not sep or width < 16 or height < 16 or width % 2 or height % 2:
        raise UserError(f"--annotate-size: expected even W and H of at least 16, got {text!r}")
    return width, height


@dataclass(frozen=True)
class Mark:
    """What is drawn on one frame."""

    label: str
    score: float
    pts: float | None
    frame_index: int

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Mark:
        best = record["topk"][0]
        return cls(
            str(best["label"]), float(best["score"]), record.get("pts"), record["frame_index"]
        )

    def lines(self) -> list[str]:
        t = "-" if self.pts is None else f"{self.pts:.2f} s"
        return [f"{self.label}  {self.score:.2f}", f"t={t}  frame {self.frame_index}"]


def text_layout(width: int, height: int) -> tuple[float, int, int]:
    """Font scale, thickness and margin for a frame of this size (readable from 90p to 4K)."""
    scale = max(0.3, height / 720 * 0.9)
    return scale, max(1, round(scale * 1.6)), max(2, round(6 * scale))


def draw_box(luma: np.ndarray, chroma: Iterable[np.ndarray], lines: list[str]) -> tuple[int, ...]:
    """Draw `lines` in a dark box in the top-left corner of a 4:2:0 frame's planes, in place.

    Returns the box (x, y, w, h) in luma pixels; x, y, w and h are even, so the box covers
    whole chroma samples and nothing outside it changes.
    """
    height, width = luma.shape
    scale, thick, pad = text_layout(width, height)
    font = cv2.FONT_HERSHEY_SIMPLEX
    sizes = [cv2.getTextSize(line, font, scale, thick) for line in lines]
    line_h = max(h + base for (_, h), base in sizes) + pad // 2
    box_w = min(width, max(w for (w, _), _ in sizes) + 2 * pad)
    box_h = min(height, line_h * len(lines) + pad)
    box_w, box_h = box_w + box_w % 2, box_h + box_h % 2
    box_w, box_h = min(box_w, width - width % 2), min(box_h, height - height % 2)
    region = luma[:box_h, :box_w]
    region[:] = BOX_Y
    for k, (line, ((_, h), _)) in enumerate(zip(lines, sizes, strict=True)):
        y = pad + k * line_h + h
        cv2.putText(region, line, (pad, y), font, scale, TEXT_Y, thick, cv2.LINE_AA)
    for plane in chroma:
        plane[: box_h // 2, : box_w // 2] = 128
    return 0, 0, box_w, box_h


def annotate_frame(frame: av.VideoFrame, mark: Mark, size: tuple[int, int]) -> av.VideoFrame:
    """The frame at `size` in yuv420p with `mark` drawn on it (a new frame)."""
    width, height = size
    if (frame.width, frame.height, frame.format.name) != (width, height, "yuv420p"):
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    planes = frame.to_ndarray()  # (h * 3/2, w): Y, then U and V of (h/2, w/2) each
    luma = planes[:height]
    chroma = planes[height:].reshape(2, height // 2, width // 2)
    draw_box(luma, chroma, mark.lines())
    out = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    out.color_range = frame.color_range
    out.colorspace = frame.colorspace
    return out


@dataclass
class DrawStats:
    """Frames an annotator wrote and the seconds it spent on them, all streams together."""

    frames: int = 0
    seconds: float = 0.0
    """Decoding (files), drawing and encoding."""
    errors: list[str] = field(default_factory=list)

    @property
    def ms_per_frame(self) -> float:
        return 1000 * self.seconds / self.frames if self.frames else 0.0


@dataclass
class AnnotateStats(DrawStats):
    """What the file annotator did: videos written, frames, and the seconds it spent on them."""

    videos: int = 0


def write_annotated(
    url: str,
    marks: dict[int, Mark],
    path: Path,
    size: tuple[int, int] | None = None,
    crf: int = 18,
    cancel: threading.Event | None = None,
) -> int:
    """Decode `url`, draw each frame's mark and encode the frames that have one into `path`.

    Written to `path` + `.part` and renamed once complete; returns the frame count. `size`:
    None = the source's (rounded down to even numbers).
    """
    part = path.with_name(path.name + ".part")
    last_index = max(marks) if marks else -1
    written = 0
    container, stream = open_source(url)
    try:
        with av.open(str(part), "w", format="mp4") as out:
            encoder = None
            last_tick = -1
            for index, pts, frame in decode_frames(container, stream, DecodeCounters()):
                if cancel is not None and cancel.is_set():
                    raise InterruptedError("annotation cancelled")
                if index > last_index:
                    break
                mark = marks.get(index)
                if mark is None:
                    continue
                if encoder is None:
                    if size is None:
                        size = (frame.width - frame.width % 2, frame.height - frame.height % 2)
                    encoder = out.add_stream("libx264", rate=stream.average_rate or 25)
                    encoder.width, encoder.height = size
                    encoder.pix_fmt = "yuv420p"
                    encoder.time_base = TIME_BASE
                    encoder.codec_context.time_base = TIME_BASE
                    encoder.options = {"crf": str(crf), "preset": "veryfast"}
                    if frame.color_range:
                        encoder.codec_context.color_range = frame.color_range
                    if frame.colorspace:
                        encoder.codec_context.colorspace = frame.colorspace
                drawn = annotate_frame(frame, mark, size)
                seconds = mark.pts if mark.pts is not None else pts or 0.0
                tick = max(last_tick + 1, round(seconds / TIME_BASE))
                drawn.pts, drawn.time_base, last_tick = tick, TIME_BASE, tick
                for packet in encoder.encode(drawn):
                    out.mux(packet)
                written += 1
            if encoder is not None:
                for packet in encoder.encode():
                    out.mux(packet)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        container.close()
    if written == 0:
        part.unlink(missing_ok=True)
        return 0
    os.replace(part, path)
    return written


class Annotator:
    """Collects results and writes one annotated MP4 per file source once it has ended.

    Use with `Pipeline.run(on_result=annotator.on_result, on_stream_end=annotator.on_stream_end)`
    and call `close()` after the run: it waits for the videos still being written. One
    background thread does the work, so the pipeline's main loop never waits for it.
    """

    def __init__(
        self,
        folder: str | Path,
        specs: list[SourceSpec],
        size: tuple[int, int] | None = None,
        crf: int = 18,
    ) -> None:
        live = [s for s in specs if s.is_live]
        if live:
            raise UserError(
                f"--annotate: {live[0].stream_id} ({live[0].masked_url}) is a live source; "
                "Annotator decodes files again, LiveAnnotator (stream.ops.annotate_live) takes "
                "live frames from capture"
            )
        if not 0 <= crf <= 51:
            raise UserError(f"annotate crf must be 0..51, got {crf}")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--annotate: cannot create {folder}: {exc.strerror}") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise UserError(f"--annotate: cannot write to {folder}")
        self.urls = {s.stream_id: s.url for s in specs}
        for spec in specs:
            target = self.path(spec.stream_id)
            if target.exists() and Path(spec.url).exists() and target.samefile(spec.url):
                raise UserError(
                    f"--annotate: {target} would replace the input {spec.url}; "
                    "choose another folder"
                )
        self.size = size
        self.crf = crf
        self.stats = AnnotateStats()
        self.marks: dict[str, dict[int, Mark]] = {}
        self._cancel = threading.Event()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="ovs-annotate", daemon=True)
        self._thread.start()

    def path(self, stream_id: str) -> Path:
        """Where the annotated video of a stream goes."""
        return self.folder / f"{stream_id}.mp4"

    def on_result(self, record: dict[str, Any]) -> None:
        mark = Mark.from_record(record)
        self.marks.setdefault(record["stream_id"], {})[mark.frame_index] = mark

    def on_stream_end(self, stream_id: str, _report: Any = None) -> None:
        if stream_id in self.urls:
            self._queue.put(stream_id)

    def close(self, timeout_s: float | None = None) -> AnnotateStats:
        """Annotate what is left (streams with results whose end never came, after a failed
        run), wait for every video, and return the stats."""
        for stream_id in [s for s in self.marks if s in self.urls]:
            self._queue.put(stream_id)  # already done ones are skipped: their marks are gone
        self._queue.put(None)
        try:
            self._thread.join(timeout_s)
        except KeyboardInterrupt:
            self.cancel()
            raise
        return self.stats

    def cancel(self) -> None:
        """Stop at the next frame; the video being written is removed, never left whole-looking."""
        self._cancel.set()
        self._queue.put(None)
        self._thread.join(10)

    def _work(self) -> None:
        while True:
            stream_id = self._queue.get()
            if stream_id is None or self._cancel.is_set():
                return
            marks = self.marks.pop(stream_id, None)
            if not marks:
                continue
            t0 = time.perf_counter()
            try:
                n = write_annotated(
                    self.urls[stream_id],
                    marks,
                    self.path(stream_id),
                    self.size,
                    self.crf,
                    self._cancel,
                )
            except InterruptedError:
                return
            except (UserError, av.FFmpegError, OSError) as exc:
                self.stats.errors.append(f"annotate {stream_id}: {exc}")
                log.error("annotate %s: %s", stream_id, exc)
                continue
            self.stats.seconds += time.perf_counter() - t0
            self.stats.frames += n
            self.stats.videos += int(n > 0)
            if n != len(marks):
                self.stats.errors.append(
                    f"annotate {stream_id}: {n} frame(s) written for {len(marks)} result(s)"
                )
            log.info("annotated %s: %d frame(s) -> %s", stream_id, n, self.path(stream_id))


def summary_line(stats: AnnotateStats, folder: str | Path) -> str:
    """`annotated 2 video(s), 150 frame(s) in 1.2 s (8.0 ms/frame) into DIR`."""
    return (
        f"annotated {stats.videos} video(s), {stats.frames} frame(s) in {stats.seconds:.1f} s "
        f"({stats.ms_per_frame:.1f} ms/frame) into {folder}"
    )

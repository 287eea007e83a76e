"""`--annotate DIR` for live sources: the classified frames, drawn and cut into MP4 segments.

A file can be decoded again after its stream ended (stream/ops/annotate.py); a live source
cannot, so its capture sends a copy of each frame it sends into the pipeline, at the annotate
size, over the annotate link (stream/ops/annotate_link.py) that `LiveAnnotator` binds here, in
the main process. One background thread reads the link into a bounded buffer per stream (the
oldest frame goes when it is full, counted), takes the stream's results (`on_result`, in frame
order) and matches them by frame index: a result whose frame is there is drawn (the same
`draw_box` as for files) and encoded; a frame that a later result passed never got a result
(dropped by the live policy, or in flight at a stop) and is discarded; a result whose frame
never came (dropped on a full link, or pushed out of the buffer) is counted as missing. So a
stream's written frames plus its missing ones equal its results.

Segments: `DIR/<stream_id>/<stream_id>-NNNNN.mp4`, a new one every `segment_s` seconds of
stream time, each written as `.mp4.part` and renamed when closed (stream/ops/annotate_segments.py).

`Annotation` puts the file and live annotators of one run behind one interface for the CLI.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import zmq

from stream.errors import UserError
from stream.ops.annotate import Annotator, DrawStats, Mark, summary_line
from stream.ops.annotate_link import TAP_HWM, AnnotateLink, TapError, TapFrame, decode_tap
from stream.ops.annotate_segments import SegmentWriter
from stream.sources.spec import SourceSpec
from stream.wire.transport import TransportConfig, free_tcp_port, open_socket

log = logging.getLogger(__name__)

BUFFER_FRAMES = 64
"""Frames kept per stream awaiting their result (2.5 s at 25 fps; far more than in flight)."""
FRAME_WAIT_S = 2.0
"""How long a result waits for its frame before it counts as missing."""
BATCH = 8
"""Results handled per stream before the link is read again."""
DEFAULT_SEGMENT_S = 300.0


def segment_seconds(value: float) -> float:
    """`--annotate-segment`: positive seconds."""
    if not value > 0 or value != value:
        raise UserError(f"--annotate-segment: expected seconds > 0, got {value:g}")
    return float(value)


@dataclass
class LiveStats(DrawStats):
    """What the live annotator did, all streams together."""

    segments: int = 0
    missing: int = 0
    """Results whose source frame never came (dropped on the link, or pushed out of the buffer)."""
    discarded: int = 0
    """Source frames without a result (dropped by the live policy)."""
    overflow: int = 0
    """Source frames pushed out of a full buffer before their result came."""
    rejected: int = 0
    """Malformed messages on the link."""


@dataclass
class _Stream:
    writer: SegmentWriter
    failed: bool = False
    """Writing failed; its results count as missing from then on."""
    frames: deque[TapFrame] = field(default_factory=deque)
    pending: deque[tuple[Mark, float]] = field(default_factory=deque)
    ended: bool = False


class LiveAnnotator:
    """Binds the annotate link and writes each live stream's segments from a background thread.

    Set `PipelineConfig.annotate = annotator.link`, run with `on_result` / `on_stream_end`, then
    `close()`: it waits for the last frames and closes every open segment.
    """

    def __init__(
        self,
        folder: str | Path,
        specs: list[SourceSpec],
        size: tuple[int, int] | None = None,
        segment_s: float = DEFAULT_SEGMENT_S,
        transport: TransportConfig | None = None,
        crf: int = 18,
    ) -> None:
        self.folder = Path(folder)
        self.segment_s = segment_seconds(segment_s)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--annotate: cannot create {folder}: {exc.strerror}") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise UserError(f"--annotate: cannot write to {folder}")
        self.stats = LiveStats()
        self.streams = {
            s.stream_id: _Stream(SegmentWriter(self.folder, s.stream_id, segment_s, crf))
            for s in specs
        }
        transport = transport or TransportConfig()
        self._dir: str | None = None
        if transport.scheme == "ipc":
            self._dir = tempfile.mkdtemp(prefix="ovstream-annotate-")
            endpoint = f"ipc://{self._dir}/annotate.sock"
        else:
            endpoint = f"tcp://{transport.host}:{free_tcp_port(transport.host)}"
        self._ctx = zmq.Context()
        self._sock = open_socket(self._ctx, zmq.PULL, endpoint, True, transport, TAP_HWM, 0)
        self.link = AnnotateLink(endpoint, size)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._closing = False
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ovs-annotate-live", daemon=True)
        self._thread.start()

    def on_result(self, record: dict[str, Any]) -> None:
        self._inbox.put(("result", (record["stream_id"], Mark.from_record(record))))

    def on_stream_end(self, stream_id: str, _report: Any = None) -> None:
        self._inbox.put(("end", stream_id))

    def close(self, timeout_s: float | None = None) -> LiveStats:
        """Write what is left, close every segment, release the link; the stats."""
        self._inbox.put(("close", None))
        try:
            self._thread.join(timeout_s)
        except KeyboardInterrupt:
            self.cancel()
            raise
        self._release()
        return self.stats

    def cancel(self) -> None:
        """Stop at once; open segments are still closed (what they hold is whole)."""
        self._cancel.set()
        self._thread.join(10)
        self._release()

    def _release(self) -> None:
        if self._thread.is_alive():
            return  # the thread still uses the socket; it is a daemon
        self._sock.close(linger=0)
        self._ctx.term()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- the background thread -----------------------------------------------------------------

    def _work(self) -> None:
        busy = False
        try:
            while not self._cancel.is_set():
                self._receive(0 if busy else 20)  # (waits only when nothing could be done)
                self._take_inbox()
                now = time.monotonic()
                busy = False
                for stream_id, stream in self.streams.items():
                    busy |= self._match(stream_id, stream, now)
                if self._closing and not any(s.pending for s in self.streams.values()):
                    return
        except Exception as exc:  # a bug: say so in the summary, close what is open
            log.exception("annotate: live annotator failed")
            self.stats.errors.append(f"annotate: live annotator failed: {exc!r}")
        finally:
            for stream_id, stream in self.streams.items():
                self._finish(stream_id, stream)

    def _receive(self, timeout_ms: int) -> None:
        """Read what the link holds (up to a batch per stream) into the streams' buffers."""
        for _ in range(BATCH * max(1, len(self.streams))):
            if not self._sock.poll(timeout_ms, zmq.POLLIN):
                return
            timeout_ms = 0
            parts = self._sock.recv_multipart(copy=False)
            try:
                tap = decode_tap(parts)
                stream = self.streams.get(tap.stream_id)
                if stream is None:
                    raise TapError(f"unknown stream {tap.stream_id!r}")
            except TapError as exc:
                self.stats.rejected += 1
                log.warning("annotate link: message rejected: %s", exc)
                continue
            if stream.frames and tap.frame_index <= stream.frames[-1].frame_index:
                self.stats.rejected += 1
                log.warning(
                    "annotate link: %s frame %d out of order", tap.stream_id, tap.frame_index
                )
                continue
            if len(stream.frames) >= BUFFER_FRAMES:
                stream.frames.popleft()
                self.stats.overflow += 1
            stream.frames.append(tap)

    def _take_inbox(self) -> None:
        now = time.monotonic()
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "result":
                stream = self.streams.get(item[0])
                if stream is not None:
                    stream.pending.append((item[1], now))
            elif kind == "end" and item in self.streams:
                self.streams[item].ended = True
            elif kind == "close":
                self._closing = True

    def _match(self, stream_id: str, stream: _Stream, now: float) -> bool:
        """Draw and write the results whose frames are here; give up on those that never came.
        True if a result was dealt with."""
        frames, pending = stream.frames, stream.pending
        done = 0
        for _ in range(BATCH):
            if not pending:
                break
            mark, received = pending[0]
            while frames and frames[0].frame_index < mark.frame_index:
                frames.popleft()
                self.stats.discarded += 1
            if frames and frames[0].frame_index == mark.frame_index:
                self._write(stream_id, stream, frames.popleft(), mark)
            elif not frames and now - received < FRAME_WAIT_S:
                break  # the frame may still be on its way
            else:
                self.stats.missing += 1
            pending.popleft()
            done += 1
        if stream.ended and not pending:
            self._finish(stream_id, stream)
        return done > 0

    def _write(self, stream_id: str, stream: _Stream, tap: TapFrame, mark: Mark) -> None:
        if stream.failed:
            self.stats.missing += 1
            return
        t0 = time.perf_counter()
        try:
            stream.writer.write(tap, mark)
        except (av.FFmpegError, OSError) as exc:
            self._fail(stream_id, stream, exc)
            self.stats.missing += 1
            return
        self.stats.seconds += time.perf_counter() - t0
        self.stats.frames += 1

    def _finish(self, stream_id: str, stream: _Stream) -> None:
        """Close the stream's open segment (its end came, or the annotator stops)."""
        stream.frames.clear()
        if stream.failed:
            return
        t0 = time.perf_counter()
        try:
            stream.writer.close()
        except (av.FFmpegError, OSError) as exc:
            self._fail(stream_id, stream, exc)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.segments = sum(s.writer.segments for s in self.streams.values())

    def _fail(self, stream_id: str, stream: _Stream, exc: BaseException) -> None:
        """Writing failed: the open segment goes, its frames count as missing."""
        self.stats.errors.append(f"annotate {stream_id}: {exc}")
        log.error("annotate %s: %s", stream_id, exc)
        lost = stream.writer.abandon()
        self.stats.frames -= lost
        self.stats.missing += lost
        stream.failed = True


def link_counts(stages: dict[str, dict[str, Any]]) -> tuple[int, int, float]:
    """(sent, dropped, seconds copying) on the annotate link, from the captures' final stats."""
    captures = [s for name, s in stages.items() if name.startswith("capture[")]
    return (
        sum(int(s.get("annotate_sent", 0)) for s in captures),
        sum(int(s.get("annotate_dropped", 0)) for s in captures),
        sum(float(s.get("annotate_copy_s", 0.0)) for s in captures),
    )


def live_summary_line(stats: LiveStats, folder: str | Path, stages: dict[str, Any]) -> str:
    """`annotated live: 250 frame(s) in 5 segment(s), 0 without a source frame (0 dropped on
    the link), 4.1 ms/frame (+0.2 ms/frame copying in capture) into DIR`."""
    sent, dropped, copy_s = link_counts(stages)
    copy_ms = 1000 * copy_s / (sent + dropped) if sent + dropped else 0.0
    return (
        f"annotated live: {stats.frames} frame(s) in {stats.segments} segment(s), "
        f"{stats.missing} without a source frame ({dropped} dropped on the link), "
        f"{stats.ms_per_frame:.1f} ms/frame (+{copy_ms:.2f} ms/frame copying in capture) "
        f"into {folder}"
    )


class Annotation:
    """The annotators of one run: `Annotator` for files, `LiveAnnotator` for live sources."""

    def __init__(
        self,
        folder: str | Path,
        specs: list[SourceSpec],
        size: tuple[int, int] | None = None,
        segment_s: float = DEFAULT_SEGMENT_S,
        transport: TransportConfig | None = None,
    ) -> None:
        segment_seconds(segment_s)
        for spec in specs:  # stream ids name files and folders under DIR
            if "/" in spec.stream_id or spec.stream_id.startswith("."):
                raise UserError(
                    f"--annotate: stream id {spec.stream_id!r} cannot name a file "
                    "(no '/', no leading '.'); choose another with NAME=SOURCE"
                )
        self.folder = folder
        files = [s for s in specs if not s.is_live]
        live = [s for s in specs if s.is_live]
        self.files = Annotator(folder, files, size=size) if files else None
        try:
            self.live = LiveAnnotator(folder, live, size, segment_s, transport) if live else None
        except BaseException:
            if self.files is not None:
                self.files.cancel()
            raise
        self.link = self.live.link if self.live is not None else None
        """What live captures need (`PipelineConfig.annotate`); None without live sources."""
        self._live_ids = {s.stream_id for s in live}

    def on_result(self, record: dict[str, Any]) -> None:
        target = self.live if record["stream_id"] in self._live_ids else self.files
        if target is not None:
            target.on_result(record)

    def on_stream_end(self, stream_id: str, report: Any = None) -> None:
        target = self.live if stream_id in self._live_ids else self.files
        if target is not None:
            target.on_stream_end(stream_id, report)

    def finish(self, stages: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Wait for every video; (summary lines, errors)."""
        lines, errors = [], []
        if self.files is not None:
            stats = self.files.close()
            lines.append(summary_line(stats, self.folder))
            errors += stats.errors
        if self.live is not None:
            live = self.live.close()
            lines.append(live_summary_line(live, self.folder, stages))
            errors += live.errors
        return lines, errors

    def cancel(self) -> None:
        for annotator in (self.files, self.live):
            if annotator is not None:
                annotator.cancel()

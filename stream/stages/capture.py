"""Capture stage: decodes its sources (`stream.sources.decode`) and sends the model's input.

A dedicated capture reads one source; a pool worker asks the supervisor for files one by one.
Each decoded frame is stamped with the stream id, its index among the frames the decoder
produced, its pts in seconds and the wall-clock time it was decoded; the frame on the wire is
the model's input itself (224x224 for the default), cut on the decoded YUV frame into a slot of
the process's frame pool in shared memory; a file's frames go in messages of up to `max_batch`
slot numbers (`_send_frame`, `_flush`), a live source's one at a time. A source that
cannot be read at all sends an end of stream carrying the error, so the rest of the pipeline (and
the other sources) go on.

A live source (RTSP, HLS, UDP, RTMP, a V4L2 device) is read differently
(`stream.stages.capture_live`): frames go to a sender thread that sends only the newest one
when the pipeline has room.
Both kinds publish status events (connecting, connected, disconnected, ...) to the publish stage
over the `status` link.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import av
import zmq

from stream.errors import UserError
from stream.geometry import FRAME_FORMATS, Geometry
from stream.ops.annotate_link import AnnotateLink, FrameTap
from stream.sources.decode import (
    DecodeCounters,
    PtsSampler,
    decode_frames,
    open_source,
)
from stream.sources.live import (
    LatestSlot,
    LiveOptions,
    scrub,
)
from stream.sources.spec import SourceSpec
from stream.stages.base import Stage
from stream.stages.capture_live import LiveCapture
from stream.stages.frame_out import FrameOut
from stream.stages.preprocess import DEFAULT_MAX_BATCH
from stream.wire import messages
from stream.wire.transport import NOBLOCK, TransportConfig, send, send_parts

log = logging.getLogger(__name__)

THREAD_TYPES = ("AUTO", "FRAME", "SLICE", "NONE")
EOS_SEND_TIMEOUT_S = 10.0
STATUS_HWM = 1000
FILE_BATCH_WAIT_S = 0.02
"""The longest a decoded frame of a file waits here for the rest of its message
(`CaptureConfig.max_batch`)."""


def auto_thread_count(decoders: int, cores: int) -> int:
    """Decoder threads for a file's capture under AUTO with `decoders` captures at once (0:
    FFmpeg's choice, frame threads): one thread each once they alone keep every core busy."""
    return 1 if decoders >= cores else 0


ENDED_KEYS = ("stream", "frames", "decoded", "skipped", "dropped", "reconnects", "error", "stopped")
"""A pool worker's counters of a finished stream, sent with its request for the next one."""


@dataclass
class CaptureConfig:
    """What one capture process reads and how."""

    source: SourceSpec | None
    """The source and its stream id; None for a pool worker, which is given files one by one."""
    geometry: Geometry = field(default_factory=Geometry)
    """The model's geometry; frames leave capture as the model's input (`WindowScaler`)."""
    fps: float | None = None
    """Sample this many frames per second of video, by pts; None = every frame."""
    thread_type: str = "AUTO"
    """PyAV/FFmpeg decoder threading: AUTO (frame+slice; slice only for live sources, since
    frame threading holds frames back), FRAME, SLICE or NONE."""
    live: LiveOptions = field(default_factory=LiveOptions)
    """How a live source is opened, watched and reconnected (ignored for files)."""
    annotate: AnnotateLink | None = None
    """Live sources with `--annotate`: also send a copy of each frame sent on to the annotator
    here (stream/ops/annotate_link.py); None = no link, no copies."""
    frame_format: str = "bgr"
    """How frames leave for the other stages (`stream.geometry.FRAME_FORMATS`); the pipeline
    sets its own."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Frames of a file one message carries at most (in shared memory; the pipeline's
    `max_batch`): those decoded since the last message go when there are this many, before it
    waits for a free slot, after FILE_BATCH_WAIT_S, and at the end of the file. A live source
    sends each frame at once."""
    thread_count: int = 0
    """Decoder threads for a file; 0 = FFmpeg's choice. The pipeline sets 1 in AUTO when it runs
    at least as many decoders as there are cores: the streams then keep the cores busy, and one
    thread a decoder costs 15-25 % less CPU per frame than frame threading."""

    def __post_init__(self) -> None:
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise UserError(f"--fps must be a positive number, got {self.fps}")
        if self.frame_format not in FRAME_FORMATS:
            raise UserError(
                f"frame format must be one of {FRAME_FORMATS}, got {self.frame_format!r}"
            )
        if self.thread_type not in THREAD_TYPES:
            raise UserError(f"thread_type must be one of {THREAD_TYPES}, got {self.thread_type!r}")


# ------------------------------------------------------------------------------ the stage


class CaptureStage(LiveCapture, Stage):
    """Decodes its sources and pushes their frames, then each one's end of stream, to preprocess.

    With `config.source` set, the stage reads that one source (every live source has its own
    process). Without, it is a pool worker: it asks the supervisor for the next file on the
    command link until none is left, so a thousand files need no more than `jobs` processes.
    """

    def __init__(
        self,
        config: CaptureConfig,
        transport: TransportConfig,
        endpoints: dict[str, str],
        worker: int | None = None,
    ) -> None:
        super().__init__(transport, endpoints)
        self.config = config
        if config.source is not None:
            self.name = f"capture[{config.source.stream_id}]"
        else:
            self.name = f"capture[#{worker or 0}]"
        self._spec: SourceSpec | None = config.source
        self._out: zmq.Socket | None = None
        self._status_out: zmq.Socket | None = None
        self._container: Any = None
        self._counters = DecodeCounters()
        self._sent = 0
        self._pending: list[tuple[int, int, float, float, int]] = []
        """A file's frames in their slots, not sent yet: (seq, index, pts, capture time, slot)."""
        self._pending_since = 0.0
        self._slot: LatestSlot | None = None
        self._late_drops = 0
        self._failures = 0
        self._tap: FrameTap | None = None
        self._frames = FrameOut(config.geometry, endpoints, self.name, config.frame_format)

    @property
    def spec(self) -> SourceSpec:
        """The source being read now."""
        assert self._spec is not None
        return self._spec

    def run(self) -> None:
        live = self.config.source is not None and self.config.source.is_live
        self._out = self.socket(zmq.PUSH, "frames", bind=False, **({"hwm": 1} if live else {}))
        if "status" in self.endpoints:
            self._status_out = self.socket(
                zmq.PUSH, "status", bind=False, hwm=STATUS_HWM, linger_ms=1000
            )
        if live and self.config.annotate is not None:
            self._open_tap(self.config.annotate)
        self.report(messages.READY)
        self.stats.update(frames=0, decoded=0, skipped=0, live=live, dropped=0, reconnects=0)
        if self.config.source is not None:
            self.complete = self._read(self.config.source)
            return
        self.stats.update(streams_done=0)
        complete = True
        ended: dict[str, Any] | None = None
        while True:
            # The counters of the file just read go with the request: the supervisor keeps them
            # until publish reports that stream's end, so no count vanishes in between.
            assignment = self.next_assignment(ended=ended)
            if assignment is None:  # aborted
                return
            for stream_id in assignment.get("skip") or []:
                complete &= self._end_unread(str(stream_id))
            source = assignment.get("source")
            if isinstance(source, dict):
                spec = SourceSpec(
                    str(source["stream_id"]), str(source["url"]), False, source.get("fps")
                )
                complete &= self._read(spec)
                self.stats["streams_done"] += 1
                ended = {k: self.stats.get(k) for k in ENDED_KEYS}
            elif not assignment.get("skip"):
                break  # no file left
        self.complete = complete

    def _read(self, spec: SourceSpec) -> bool:
        """Read one source to its end (or a stop) and send its end of stream."""
        self._spec = spec
        self._counters = DecodeCounters()
        self._sent = 0
        self._pending = []
        self._slot = None
        self._late_drops = 0
        self._failures = 0
        self.stats.update(stream=spec.stream_id, frames=0, decoded=0, last_error=None)
        live = spec.is_live
        if live:
            error, stopped = self._run_live()
        else:
            error, stopped = self._run_file()
        counters = self._counters
        seq = self._sent
        # What a stop left in the decoder was not reached, and a live stream's packets before
        # its first keyframe (and what is in the decoder when a connection drops) never become
        # frames: only packets the decoder rejected count as skipped there.
        skipped = counters.decode_errors if (live or stopped) else counters.skipped
        if live and not error and counters.decoded == 0 and self.stats.get("last_error"):
            error = f"no frames: never connected; last problem: {self.stats['last_error']}"
        eos = {
            "count": seq,
            "decoded": counters.decoded,
            "skipped": skipped,
            "decode_errors": counters.decode_errors,
            "corrupt_frames": counters.corrupt_frames,
            "dropped": self._dropped(),
            "reconnects": int(self.stats.get("reconnects", 0)),
            "last_error": self.stats.get("last_error"),
            "stopped": stopped,
            "error": error,
        }
        self.stats.update(eos, frames=seq)
        if error:
            self.report(messages.ERROR, stream=spec.stream_id, message=error, source_error=True)
        self._status("end_of_stream", stopped=stopped)  # before the EOS, which ends publish
        return self._send_eos(seq, eos)

    def _end_unread(self, stream_id: str) -> bool:
        """End a stream that a stop left unread: an end of stream with nothing before it."""
        eos = {"count": 0, "decoded": 0, "skipped": 0, "stopped": True, "unread": True}
        self._spec = SourceSpec(stream_id, stream_id, False)
        return self._send_eos(0, eos)

    # -- files: lossless, blocking backpressure --------------------------------------------------

    def _run_file(self) -> tuple[str | None, bool]:
        cfg = self.config
        url = self.spec.url
        counters = self._counters
        sampler = PtsSampler(self.spec.fps if self.spec.fps is not None else cfg.fps)
        error: str | None = None
        stopped = False
        try:
            self._container, stream = open_source(url)
            self._status("connected", attempt=1)
            stream.thread_type = cfg.thread_type
            if cfg.thread_count:
                stream.thread_count = cfg.thread_count
            for index, pts, frame in decode_frames(self._container, stream, counters):
                # A frame in hand when a stop comes (waiting for room downstream, or decoded
                # after it) is not reached, like what the decoder still holds: it is not counted
                # as decoded, so every frame the report counts has its result.
                if self.should_stop():
                    counters.decoded -= 1
                    stopped = True
                    break
                self.stats["decoded"] = counters.decoded
                assert pts is not None  # files always have one (extrapolated if missing)
                if not sampler.keep(pts):
                    continue
                if not self._send_frame(index, pts, frame):
                    counters.decoded -= 1
                    stopped = True
                    break
                self.stats["frames"] = self._sent
                self.tick()
            if counters.decoded == 0 and not stopped:
                error = f"{self.spec.masked_url}: no frames could be decoded"
        except UserError as exc:
            error = scrub(str(exc), url)
        except av.FFmpegError as exc:
            error = scrub(f"{url}: {exc}", url)
        finally:
            # The frames held for a message go too (a stop still publishes what was decoded,
            # where there is room); if they cannot, they were never sent and their slots are free.
            if not self._flush():
                self._drop_pending()
            self.close()  # a pool worker goes on to its next file
        if error:
            self._status("error", reason=error)
        return error, stopped

    def _send_frame(self, index: int, pts: float, frame: av.VideoFrame) -> bool:
        """A file's next frame. Blocks while downstream is busy (files: nothing is dropped);
        False if stopped. In a slot of the frame pool it waits here for the rest of its message
        (`CaptureConfig.max_batch`); without a pool it goes at once, inside its message."""
        assert self._out is not None
        pool = self._frames.pool()
        seq = self._sent + len(self._pending)
        if pool is None:
            parts = self._frames.message(
                self.spec.stream_id, seq, index, pts, time.time(), frame, None
            )
            if not send(self._out, parts, self.should_stop):
                return False
            self._sent += 1
            return True
        slot = pool.acquire()
        if slot is None:  # all in flight: backpressure, as a full queue
            if not self._flush():  # the frames held here first, or no slot comes free
                return False
            slot = pool.wait(self.should_stop)
            if slot is None:
                return False
        try:
            self._frames.into_slot(frame, slot)
        except BaseException:
            pool.release((slot,))
            raise
        now = time.monotonic()
        if not self._pending:
            self._pending_since = now
        self._pending.append((seq, index, pts, time.time(), slot))
        full = len(self._pending) >= self.config.max_batch
        if full or now - self._pending_since >= FILE_BATCH_WAIT_S:
            return self._flush()
        return True

    def _flush(self) -> bool:
        """Send the frames held, as one message; False if stopped first (they stay held)."""
        if not self._pending:
            return True
        assert self._out is not None
        parts = self._frames.slots_message(self.spec.stream_id, self._pending)
        if not send(self._out, parts, self.should_stop):
            return False
        self._sent += len(self._pending)
        self._pending = []
        return True

    def _drop_pending(self) -> None:
        """Frames held that could not be sent: never sent, so their slots are free again."""
        pool = self._frames.pool()
        if self._pending and pool is not None:
            pool.release([slot for *_, slot in self._pending])
        self._pending = []

    # -- status events ------------------------------------------------------------------------

    def _status(self, event: str, **fields: Any) -> None:
        """Publish a status event (never blocks; counted if the link is full) and log it."""
        src = self.spec
        if event == "error":
            self._failures += 1
        elif event == "connected":
            self._failures = 0
        if event == "connecting" and fields.get("attempt", 1) > 1:
            self.stats["reconnects"] = self.stats.get("reconnects", 0) + 1
        reason = fields.get("reason")
        if reason is not None:
            fields["reason"] = reason = scrub(str(reason), src.url)
            self.stats["last_error"] = reason
        record = messages.status_record(
            src.stream_id,
            src.url,
            event,
            time.time(),
            frames=self._counters.decoded,
            sent=self._sent,
            dropped=self._dropped(),
            **fields,
        )
        self.stats["state"] = event
        # Live trouble is a warning as it happens; a file's error is in the run's summary.
        loud = src.is_live and (
            event == "disconnected" or (event == "error" and self._failures == 1)
        )
        detail = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "attempt" or loud)
        log.log(
            logging.WARNING if loud else logging.INFO,
            "source %s (%s): %s%s",
            src.stream_id,
            src.masked_url,
            event.replace("_", " "),
            f" ({detail})" if detail else "",
        )
        if self._status_out is not None:
            parts = messages.encode(messages.STATUS, src.stream_id, 0, {"status": record})
            try:
                send_parts(self._status_out, parts, NOBLOCK)
            except zmq.Again:
                self.stats["status_dropped"] = self.stats.get("status_dropped", 0) + 1
        self.tick(force=True)

    # -- end ------------------------------------------------------------------------------------

    def _send_eos(self, count: int, meta: dict[str, Any]) -> bool:
        parts = messages.encode(messages.EOS, self.spec.stream_id, count, meta)
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

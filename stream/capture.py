"""Capture stage: one process per source; decodes with PyAV and sends the model's input.

Each decoded frame is stamped with the stream id, its index among the frames the decoder
produced, its pts in seconds and the wall-clock time it was decoded. The model's geometry is
applied on the decoded YUV frame (`WindowScaler`: FFmpeg crops the source window of
`Geometry.source_window` and one swscale pass resizes it and converts it to BGR), far cheaper
than converting the full frame and resizing it with OpenCV; the frame on the wire is the model's
input itself (224x224 for the default).

Corrupt packets are skipped and counted, decoding goes on. A source that cannot be read at all
sends an end-of-stream carrying the error, so the rest of the pipeline (and the other sources)
go on.

A live source (RTSP, HLS, UDP, RTMP, a V4L2 device; see `stream.live`) is read differently: the
reconnect loop `live.live_frames` wraps `decode_frames`, and frames go through a one-frame
`LatestSlot` to a sender thread that sends only when the pipeline has room, so a saturated
pipeline drops frames (counted) and always classifies the newest one instead of falling behind.
Both kinds publish status events (connecting, connected, disconnected, ...) to the publish stage
over the `status` link.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import zmq

from stream import messages
from stream.errors import UserError
from stream.geometry import Geometry
from stream.live import (
    FIRST_FRAME_TIMEOUT_S,
    LatestSlot,
    LiveOptions,
    Stalled,
    default_stream_id,
    is_live_url,
    live_frames,
    scrub,
)
from stream.stage import Stage
from stream.transport import TransportConfig, send

log = logging.getLogger(__name__)

MAX_DEMUX_ERRORS = 100
THREAD_TYPES = ("AUTO", "FRAME", "SLICE", "NONE")
EOS_SEND_TIMEOUT_S = 10.0
STATUS_HWM = 1000
ENDED_KEYS = ("stream", "frames", "decoded", "skipped", "dropped", "reconnects", "error", "stopped")
"""A pool worker's counters of a finished stream, sent with its request for the next one."""
RESERVED_PREFIX = messages.STATUS_TOPIC_PREFIX.rstrip("/")


@dataclass(frozen=True)
class SourceSpec:
    """One input: a stream id, where to read it from, and per-source settings."""

    stream_id: str
    """Id of the stream: the PUB topic and `stream_id` of its results."""
    url: str
    """A file path, a stream URL (rtsp://, http(s)://, udp://, rtmp://...) or /dev/videoN."""
    live: bool | None = None
    """Read as a live source (reconnect, drop to keep up); None = decide from the URL."""
    fps: float | None = None
    """Frames per second to classify for this source; None = the pipeline's setting."""
    options: LiveOptions | None = None
    """Transport, timeouts and backoff of a live source; None = the pipeline's defaults."""

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """`NAME=SOURCE` or just `SOURCE` (the id is then the file stem or the URL's last
        path segment)."""
        name, sep, rest = text.partition("=")
        if sep and name and "/" not in name and ":" not in name and rest:
            return cls(name, rest)
        return cls(default_stream_id(text.split("?", 1)[0].rstrip("/")), text)

    @property
    def is_live(self) -> bool:
        return is_live_url(self.url) if self.live is None else self.live

    @property
    def masked_url(self) -> str:
        """The URL with its password replaced by ***, for anything shown or logged."""
        return messages.mask_credentials(self.url)


def parse_sources(texts: list[str | SourceSpec]) -> list[SourceSpec]:
    """Sources with unique stream ids; duplicates are a UserError naming the fix."""
    if not texts:
        raise UserError("no sources given")
    specs = [t if isinstance(t, SourceSpec) else SourceSpec.parse(t) for t in texts]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.stream_id.startswith(RESERVED_PREFIX):
            raise UserError(
                f"stream id {spec.stream_id!r} starts with {RESERVED_PREFIX!r}, which is reserved "
                f"for status events; name the source with NAME=SOURCE"
            )
        if spec.stream_id in seen:
            raise UserError(
                f"two sources would have the stream id {spec.stream_id!r} "
                f"({seen[spec.stream_id]}, {spec.masked_url}); name them with NAME=SOURCE"
            )
        seen[spec.stream_id] = spec.masked_url
    return specs


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
    """Decoded frame -> the model's input, u8 BGR: `prepare`'s work, done on the YUV frame.

    FFmpeg's crop filter takes the geometry's source window (no copy: it moves the plane
    pointers) and one swscale pass resizes it to the input size and converts it to BGR, on this
    thread only. For a 1080p frame that is about a quarter of the CPU of scaling the whole frame
    to 455x256 and cropping afterwards, and the frame on the wire is the input tensor itself.
    The filter graph is rebuilt when the frame size or pixel format changes (a live stream can
    change resolution on reconnect).
    """

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self._key: tuple[int, int, str] | None = None
        self._graph: Any = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name)
        if key != self._key:
            self._graph = self._build(frame)
            self._key = key
        self._graph.push(frame)
        # Rows of FFmpeg's frame are padded: one copy of the small input makes it contiguous.
        return np.ascontiguousarray(self._graph.pull().to_ndarray())

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
        chain += [
            graph.add("crop", f"w={width}:h={height}:x={x}:y={y}:exact=1"),
            graph.add(
                "scale",
                f"w={g.width}:h={g.height}:flags={'area' if shrinking else 'bilinear'}:threads=1",
            ),
            graph.add("format", "pix_fmts=bgr24"),
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


# ------------------------------------------------------------------------------ the stage


class CaptureStage(Stage):
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
        self._slot: LatestSlot | None = None
        self._late_drops = 0
        self._failures = 0
        self._scale = WindowScaler(config.geometry)

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
            for index, pts, frame in decode_frames(self._container, stream, counters):
                if self.should_stop():
                    stopped = True
                    break
                self.stats["decoded"] = counters.decoded
                assert pts is not None  # files always have one (extrapolated if missing)
                if not sampler.keep(pts):
                    continue
                if not self._send_frame(self._sent, index, pts, self._scale(frame)):
                    stopped = True
                    break
                self._sent += 1
                self.stats["frames"] = self._sent
                self.tick()
            if counters.decoded == 0 and not stopped:
                error = f"{self.spec.masked_url}: no frames could be decoded"
        except UserError as exc:
            error = scrub(str(exc), url)
        except av.FFmpegError as exc:
            error = scrub(f"{url}: {exc}", url)
        finally:
            self.close()  # a pool worker goes on to its next file
        if error:
            self._status("error", reason=error)
        return error, stopped

    def _send_frame(
        self,
        seq: int,
        index: int,
        pts: float | None,
        image: np.ndarray,
        capture_ts: float | None = None,
    ) -> bool:
        """Blocks while downstream is busy (files: nothing is dropped); False if stopped."""
        parts = self._frame_message(seq, index, pts, capture_ts or time.time(), image)
        assert self._out is not None
        return send(self._out, parts, self.should_stop)

    def _frame_message(
        self, seq: int, index: int, pts: float | None, capture_ts: float, image: np.ndarray
    ) -> list:
        """A FRAME message; `prepared`: the image is already the model input (WindowScaler)."""
        meta = {"frame_index": index, "pts": pts, "capture_ts": capture_ts, "prepared": True}
        return messages.encode(messages.FRAME, self.spec.stream_id, seq, meta, [image])

    # -- live: reconnect, never fall behind ------------------------------------------------------

    def _run_live(self) -> tuple[str | None, bool]:
        """Decode on this thread, send the newest frame from a sender thread; until stopped."""
        cfg = self.config
        thread_type = "SLICE" if cfg.thread_type == "AUTO" else cfg.thread_type
        spec = self.spec
        sampler = PtsSampler(spec.fps if spec.fps is not None else cfg.fps)  # by capture time
        slot = self._slot = LatestSlot()
        sender = threading.Thread(target=self._sender, args=(slot,), name="sender", daemon=True)
        sender.start()
        error: str | None = None
        try:
            frames = live_frames(
                spec.url,
                spec.options or cfg.live,
                self._counters,
                decode_frames,
                self._status,
                self.should_stop,
                thread_type,
                on_open=self._opened,
            )
            for index, pts, frame in frames:
                captured = time.time()
                if sampler.keep(time.monotonic()):
                    slot.put((index, pts, captured, frame))
                self.stats.update(
                    decoded=self._counters.decoded, frames=self._sent, dropped=self._dropped()
                )
                self.tick()
        except Exception as exc:  # never let a password escape in a crash report
            error = scrub(f"{type(exc).__name__}: {exc}", spec.url)
            log.debug("%s: %s", self.name, error)
        finally:
            slot.discard()
            slot.close()
            sender.join(5.0)
            self._container = None
        stopped = self.should_stop()
        return error, stopped

    def _opened(self, container: Any) -> None:
        self._container = container

    def _sender(self, slot: LatestSlot) -> None:
        """Sender thread: whenever preprocess can take a frame, send the newest one."""
        sock = self._out
        assert sock is not None
        while not slot.closed:
            if not sock.poll(100, zmq.POLLOUT):
                continue
            item = slot.take(0.1)
            if item is None:
                continue
            index, pts, captured, frame = item
            image = self._scale(frame)
            parts = self._frame_message(self._sent, index, pts, captured, image)
            try:
                sock.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
                self._sent += 1
            except zmq.Again:
                self._late_drops += 1

    def _dropped(self) -> int:
        return (self._slot.dropped if self._slot is not None else 0) + self._late_drops

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
                self._status_out.send_multipart(parts, flags=zmq.NOBLOCK)
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

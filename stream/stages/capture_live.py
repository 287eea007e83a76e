"""A capture's live half: reading a live source (RTSP, HLS, UDP, RTMP, a V4L2 device; see
`stream.sources.live`) for `stream.stages.capture.CaptureStage`.

The reconnect loop `live.live_frames` wraps `decode_frames` on the capture's main thread, and
frames go through a one-frame `LatestSlot` to a sender thread that sends only when the pipeline
has room, so a saturated pipeline drops frames (counted) and always classifies the newest one
instead of falling behind. With `--annotate`, each frame sent also goes to the annotator.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

from stream.ops.annotate_link import AnnotateLink, FrameTap
from stream.sources.decode import PtsSampler, decode_frames
from stream.sources.live import LatestSlot, live_frames, scrub
from stream.wire.transport import NOBLOCK, send_parts

if TYPE_CHECKING:
    from stream.sources.decode import DecodeCounters
    from stream.sources.spec import SourceSpec
    from stream.stages.capture import CaptureConfig
    from stream.stages.frame_out import FrameOut

log = logging.getLogger(__name__)


class LiveCapture:
    """`CaptureStage`'s methods for a live source (a mixin: the state is the stage's)."""

    name: str
    config: CaptureConfig
    spec: SourceSpec
    stats: dict[str, Any]
    ctx: Any
    transport: Any
    _out: zmq.Socket | None
    _sockets: list[Any]
    _counters: DecodeCounters
    _frames: FrameOut
    _container: Any
    _sent: int
    _slot: LatestSlot | None
    _late_drops: int
    _tap: FrameTap | None

    if TYPE_CHECKING:  # the stage's (`Stage`, `CaptureStage`)

        def should_stop(self) -> bool: ...
        def tick(self, force: bool = False) -> None: ...
        def _status(self, event: str, **fields: Any) -> None: ...

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
        pool = self._frames.pool()
        while not slot.closed:
            if not sock.poll(100, zmq.POLLOUT):
                continue
            if pool is not None and not pool.has_free():  # every slot in flight: as a full queue
                time.sleep(0.002)
                continue
            item = slot.take(0.1)
            if item is None:
                continue
            index, pts, captured, frame = item
            where = pool.acquire() if pool is not None else None  # only this thread acquires
            parts = self._frames.message(
                self.spec.stream_id, self._sent, index, pts, captured, frame, where
            )
            try:
                send_parts(sock, parts, NOBLOCK)
                self._sent += 1
            except zmq.Again:
                self._late_drops += 1
                if where is not None:
                    pool.release((where,))  # type: ignore[union-attr]
                continue
            if self._tap is not None:
                self._tap.send(index, pts, captured, frame)

    def _open_tap(self, link: AnnotateLink) -> None:
        """Connect the annotate link; shutdown() closes it with the other sockets."""
        self._tap = FrameTap(link, self.spec.stream_id, self.stats)
        self._sockets.append(self._tap.open(self.ctx, self.transport))

    def _dropped(self) -> int:
        return (self._slot.dropped if self._slot is not None else 0) + self._late_drops

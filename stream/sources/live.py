"""Live sources: reading one for as long as the pipeline runs, never falling behind real time.

A file is read once, losslessly, with blocking backpressure. A live source (RTSP, HLS, UDP, RTMP,
a V4L2 device) runs for as long as the pipeline runs and must never fall behind real time:

- `live_frames`: the reconnect loop with a watchdog: opens, decodes, and when the stream ends,
  errors or stalls (no data for `stall_timeout_s`; or packets without frames: no first keyframe
  within `FIRST_FRAME_TIMEOUT_S`, or no frame for `stall_timeout_s` after the first) reports why,
  waits the backoff delay and opens again, until told to stop. Frame indices keep counting
  across reconnects.
- `Backoff`: exponential delay between reconnect attempts, capped.
- `LatestSlot`: a one-frame mailbox between the decoder and the sender; a new frame replaces an
  unsent one (counted as dropped), so what leaves is always the newest frame.

What a live source is and how it is opened (`LiveOptions`, `open_args`, `is_live_url`):
stream/sources/live_options.py; why one failed, without its password (`scrub`,
`describe_error`, `open_failure`): stream/sources/live_errors.py.

Stopping: PyAV exposes no way to interrupt a blocking FFmpeg call from Python, and a signal
handler only runs once that call returns. Every call is bounded instead: opening by
`open_timeout_s`, each read by `read_timeout_s` (PyAV's interrupt callback), and the backoff
wait checks the stop flag every 0.1 s. So a stop takes at most max(open, read timeout) to act.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from threading import Condition
from typing import Any

import av

from stream.errors import UserError
from stream.sources.live_errors import describe_error, open_failure
from stream.sources.live_errors import scrub as scrub  # re-exported for stages/capture.py
from stream.sources.live_options import LiveOptions, open_args

WAIT_SLICE_S = 0.1
"""How often a backoff wait checks the stop flag."""
FIRST_FRAME_TIMEOUT_S = 60.0
"""How long a new connection that receives packets may wait for its first frame (the next
keyframe: cameras send one every 1 to 10 s and more) before it counts as stalled; a stream that
sends no data at all is caught by the read timeout (`stall_timeout_s`) instead."""


# ------------------------------------------------------------------------------ pure helpers


class Backoff:
    """Exponential delays between reconnect attempts: initial, initial*factor, ... up to cap."""

    def __init__(self, initial_s: float = 0.5, cap_s: float = 10.0, factor: float = 2.0) -> None:
        if not (initial_s > 0 and cap_s >= initial_s and factor >= 1):
            raise ValueError(f"bad backoff: initial {initial_s}, cap {cap_s}, factor {factor}")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.factor = factor
        self.failures = 0
        """Failed attempts since the last reset."""

    def next(self) -> float:
        """The delay before the next attempt (and count one more failure)."""
        delay = min(self.cap_s, self.initial_s * self.factor**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A connection worked: start again from the initial delay."""
        self.failures = 0


class LatestSlot:
    """A one-item mailbox between two threads; `put` replaces an item not yet taken.

    The decoder puts every frame; the sender takes one when the pipeline has room. What it takes
    is always the newest frame, and every frame replaced unsent is counted in `dropped`.
    """

    def __init__(self) -> None:
        self._cond = Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def put(self, item: Any) -> bool:
        """Store `item`; True if it replaced (dropped) an unsent one."""
        with self._cond:
            replaced = self._full
            self.dropped += int(replaced)
            self.put_count += 1
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout_s: float) -> Any:
        """The newest item, or None after `timeout_s` (or once closed and empty)."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout_s)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def discard(self) -> bool:
        """Drop an unsent item (counted); True if there was one."""
        with self._cond:
            had = self._full
            self.dropped += int(had)
            self._item, self._full = None, False
            return had

    def close(self) -> None:
        """Wake a waiting taker; later takes return what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def wait_unless_stopped(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Wait `seconds`, checking `should_stop` every 0.1 s; True if the wait was cut short."""
    deadline = time.monotonic() + seconds
    while True:
        if should_stop():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(WAIT_SLICE_S, left))


# ------------------------------------------------------------------------------ reconnect loop


class Stalled(Exception):
    """Packets arrive but no frame was decoded in time (raised by capture's decode loop; its text
    says which wait ran out)."""


Status = Callable[..., None]
"""status(event, **fields): called for connecting, connected, disconnected, error and
reconnect_scheduled (see stream/schemas/status.schema.json)."""


def live_frames(
    url: str,
    opts: LiveOptions,
    counters: Any,
    decode: Callable[..., Iterator[tuple[int, float | None, Any]]],
    status: Status,
    should_stop: Callable[[], bool],
    thread_type: str = "SLICE",
    on_open: Callable[[Any], None] | None = None,
) -> Iterator[tuple[int, float | None, Any]]:
    """(frame_index, pts or None, frame) from a live source, reconnecting until `should_stop()`.

    `decode(container, stream, counters, stall_timeout_s=...)` is capture's decode loop (it
    raises `Stalled`); `counters` carries
    on across connections, so frame indices keep increasing. Ends when stopped, or when the
    stream ends and `opts.reconnect` is False.
    """
    backoff = Backoff(opts.backoff_initial_s, opts.backoff_max_s, opts.backoff_factor)
    args = open_args(url, opts)
    attempt = 0
    while not should_stop():
        attempt += 1
        status("connecting", attempt=attempt)
        t0 = time.monotonic()
        container = None
        try:
            container = av.open(url, **args)
            if not container.streams.video:
                raise UserError("no video stream")
        except (av.FFmpegError, UserError, OSError) as exc:
            if container is not None:
                container.close()
            elapsed = time.monotonic() - t0
            if isinstance(exc, UserError):
                reason = str(exc)
            else:
                reason = open_failure(exc, url, elapsed, opts)
            status("error", attempt=attempt, reason=f"cannot connect: {reason}")
        else:
            if should_stop():  # stopped while the open was blocking: do not start reading
                container.close()
                return
            status("connected", attempt=attempt, elapsed_ms=round((time.monotonic() - t0) * 1e3, 1))
            if on_open is not None:
                on_open(container)
            stream = container.streams.video[0]
            stream.thread_type = thread_type
            reason = "stream ended"
            got_frames = False
            try:
                for item in decode(
                    container, stream, counters, stall_timeout_s=opts.stall_timeout_s
                ):
                    if not got_frames:
                        got_frames = True
                        backoff.reset()
                    yield item
                    if should_stop():
                        break
            except Stalled as exc:
                reason = f"stalled: {exc}"
            except av.ExitError:
                reason = f"stalled: no data for {opts.read_timeout:g} s"
            except (av.FFmpegError, UserError, OSError) as exc:
                reason = f"read error: {describe_error(exc, url)}"
            finally:
                container.close()
            if should_stop():
                return
            status("disconnected", reason=reason)
            if reason == "stream ended" and not opts.reconnect:
                return
        if should_stop():
            return
        delay = backoff.next()
        status("reconnect_scheduled", delay_s=round(delay, 3), attempt=attempt + 1)
        if wait_unless_stopped(delay, should_stop):
            return

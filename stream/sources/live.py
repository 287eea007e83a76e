"""Live sources: what a camera needs that a file does not.

A file is read once, losslessly, with blocking backpressure. A live source (RTSP, HLS, UDP, RTMP,
a V4L2 device) runs for as long as the pipeline runs and must never fall behind real time:

- `LiveOptions`: per-source transport, timeouts and reconnect policy (typed, validated).
- `open_args`: the FFmpeg format/options and PyAV timeouts that open a live source with little
  buffering (`fflags=nobuffer`, short analysis), TCP for RTSP unless UDP is asked for.
- `Backoff`: exponential delay between reconnect attempts, capped.
- `live_frames`: the reconnect loop with a watchdog: opens, decodes, and when the stream ends,
  errors or stalls (no data for `stall_timeout_s`; or packets without frames: no first keyframe
  within `FIRST_FRAME_TIMEOUT_S`, or no frame for `stall_timeout_s` after the first) reports why,
  waits the backoff delay and opens again, until told to stop. Frame indices keep counting
  across reconnects.
- `LatestSlot`: a one-frame mailbox between the decoder and the sender; a new frame replaces an
  unsent one (counted as dropped), so what leaves is always the newest frame.
- `scrub`: takes the password of a URL out of any text (PyAV error messages quote the URL).

Stopping: PyAV exposes no way to interrupt a blocking FFmpeg call from Python, and a signal
handler only runs once that call returns. Every call is bounded instead: opening by
`open_timeout_s`, each read by `read_timeout_s` (PyAV's interrupt callback), and the backoff
wait checks the stop flag every 0.1 s. So a stop takes at most max(open, read timeout) to act.
"""

from __future__ import annotations

import errno
import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from threading import Condition
from typing import Any
from urllib.parse import unquote, urlsplit

import av

from stream.errors import UserError
from stream.wire.messages import mask_credentials

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp")
TRANSPORTS = ("tcp", "udp")
WAIT_SLICE_S = 0.1
"""How often a backoff wait checks the stop flag."""
FIRST_FRAME_TIMEOUT_S = 60.0
"""How long a new connection that receives packets may wait for its first frame (the next
keyframe: cameras send one every 1 to 10 s and more) before it counts as stalled; a stream that
sends no data at all is caught by the read timeout (`stall_timeout_s`) instead."""


# ------------------------------------------------------------------------------ source kinds


def is_device(url: str) -> bool:
    """A V4L2 capture device such as /dev/video0."""
    return re.fullmatch(r"/dev/video\d+", url) is not None


def is_live_url(url: str) -> bool:
    """True for network streams and capture devices; False for files (paths, file://)."""
    if is_device(url):
        return True
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return scheme in LIVE_SCHEMES


def default_stream_id(url: str) -> str:
    """Stream id for a source given without NAME=: the file stem, or for a URL the last path
    segment (else the host), never anything from the credentials."""
    if "://" not in url:
        return Path(url).stem or "stream"
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if segments:
        stem = Path(unquote(segments[-1])).stem
        if stem:
            return stem
    return parts.hostname or "stream"


# ------------------------------------------------------------------------------ options


@dataclass
class LiveOptions:
    """How one live source is opened, watched and reconnected."""

    transport: str = "tcp"
    """RTSP transport: `tcp` (default; no losses, works through NAT) or `udp`."""
    open_timeout_s: float = 5.0
    """Give up a connection attempt after this long (also bounds how long a stop can wait)."""
    read_timeout_s: float | None = None
    """Give up one blocking read after this long; None = `stall_timeout_s`."""
    stall_timeout_s: float = 5.0
    """Reconnect when no data arrived for this long, or, once a connection decoded its first
    frame (the first keyframe may take longer: `FIRST_FRAME_TIMEOUT_S`), no frame (the
    watchdog)."""
    backoff_initial_s: float = 0.5
    """Delay before the first reconnect attempt; it doubles on every failure..."""
    backoff_max_s: float = 10.0
    """...up to this cap; a connection that delivers frames resets it."""
    backoff_factor: float = 2.0
    """Growth of the delay per failed attempt."""
    reconnect: bool = True
    """Reconnect when the stream ends; False = the end of the stream ends the source."""
    options: dict[str, str] = field(default_factory=dict)
    """Extra FFmpeg options (e.g. `video_size`, `input_format` for V4L2), passed as given."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError(problems[0])

    def problems(self) -> list[str]:
        """Every invalid field, one line each (empty when the options are valid)."""
        out = []
        if self.transport not in TRANSPORTS:
            out.append(f"transport must be 'tcp' or 'udp', got {self.transport!r}")
        for name in ("open_timeout_s", "stall_timeout_s", "backoff_initial_s", "backoff_max_s"):
            if not _positive(getattr(self, name)):
                out.append(
                    f"{name} must be a positive number of seconds, got {getattr(self, name)!r}"
                )
        if self.read_timeout_s is not None and not _positive(self.read_timeout_s):
            out.append(
                f"read_timeout_s must be a positive number of seconds, got {self.read_timeout_s!r}"
            )
        if not (_number(self.backoff_factor) and self.backoff_factor >= 1):
            out.append(f"backoff_factor must be a number >= 1, got {self.backoff_factor!r}")
        if (
            _positive(self.backoff_initial_s)
            and _positive(self.backoff_max_s)
            and self.backoff_max_s < self.backoff_initial_s
        ):
            out.append(
                f"backoff_max_s ({self.backoff_max_s}) must not be below backoff_initial_s "
                f"({self.backoff_initial_s})"
            )
        if not isinstance(self.reconnect, bool):
            out.append(f"reconnect must be true or false, got {self.reconnect!r}")
        if not isinstance(self.options, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
            for k, v in self.options.items()
        ):
            out.append(f"options must map FFmpeg option names to strings, got {self.options!r}")
        return out

    @property
    def read_timeout(self) -> float:
        return self.read_timeout_s if self.read_timeout_s is not None else self.stall_timeout_s

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def open_args(url: str, opts: LiveOptions) -> dict[str, Any]:
    """Keyword arguments of `av.open` for a live source: low buffering, bounded waits."""
    options: dict[str, str] = {
        "fflags": "nobuffer",
        "analyzeduration": "200000",  # µs of stream analysed at open; the default buffers ~1 s
    }
    fmt = None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if is_device(url):
        fmt = "v4l2"
    elif scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = opts.transport
        options["timeout"] = str(int(opts.read_timeout * 1e6))  # socket I/O timeout, µs
        if opts.transport == "tcp":
            options["max_delay"] = "0"  # no reordering buffer needed over TCP
    elif scheme in ("http", "https"):
        options["rw_timeout"] = str(int(opts.read_timeout * 1e6))
    options.update({k: str(v) for k, v in opts.options.items()})
    return {
        "mode": "r",
        "format": fmt,
        "options": options,
        "timeout": (opts.open_timeout_s, opts.read_timeout),
    }


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


def scrub(text: str, url: str) -> str:
    """`text` without the password of `url` (as given or percent-decoded), and with the URL
    itself masked; for error messages and logs, which often quote the URL."""
    if not text:
        return text
    out = text.replace(url, mask_credentials(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        for secret in {password, unquote(password)}:
            if secret:
                out = out.replace(secret, "***")
    return out


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


def describe_error(exc: BaseException, url: str) -> str:
    """One line for an FFmpeg/PyAV error, without the URL's password."""
    if isinstance(exc, av.ExitError):
        return "timed out"
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return scrub(str(reason).strip().splitlines()[0], url)


DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}
"""TCP port of each scheme whose connection failures `open_failure` can diagnose."""
TIMEOUT_SHARE = 0.9
"""An open that failed after this share of its timeout ran into the timeout."""


def connect_problem(
    host: str, port: int, timeout_s: float, waited_s: float | None = None
) -> str | None:
    """Why a TCP connection to host:port fails, or None if it connects (and is closed again).
    `waited_s`: how long the caller already waited for an answer (said in the timeout's line)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return f"unknown host {host}"
    family, kind, proto, _, address = addresses[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(address)
        except TimeoutError:
            waited = timeout_s if waited_s is None else waited_s
            return f"timed out: no answer to a connection to {host}:{port} in {waited:g} s"
        except ConnectionRefusedError:
            return "connection refused"
        except OSError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                return "host unreachable"
            if exc.errno == errno.ENETUNREACH:
                return "network unreachable"
            return (exc.strerror or str(exc)).lower()
    return None


def open_failure(exc: BaseException, url: str, elapsed_s: float, opts: LiveOptions) -> str:
    """One line on why opening a live source failed.

    FFmpeg's RTSP demuxer reports a server that never answers, one that closes the connection
    and a timed-out open alike as "Invalid data found when processing input", and a failed name
    lookup as "Input/output error". Those are told apart here: a TCP connection to the server
    shows whether it is there at all, and the time the open took whether it ran out of time.
    """
    specific = not isinstance(exc, (av.InvalidDataError, av.ExitError)) and getattr(
        exc, "errno", None
    ) not in (errno.EIO, None)
    if specific or "://" not in url:
        return describe_error(exc, url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        host, port = None, None
    if not host or port is None or scheme not in DEFAULT_PORTS:
        return describe_error(exc, url)
    timeout_s = min(opts.open_timeout_s, opts.read_timeout)
    # The open already waited; the attempt as a whole stays within about its timeout (Ctrl-C).
    probe_s = max(0.2, opts.open_timeout_s - elapsed_s)
    problem = connect_problem(host, port, probe_s, waited_s=max(probe_s, round(elapsed_s, 1)))
    if problem is not None:
        return scrub(problem, url)
    if isinstance(exc, av.ExitError) or elapsed_s >= TIMEOUT_SHARE * timeout_s:
        return f"timed out: the server took the connection but did not answer in {timeout_s:g} s"
    return "the server closed the connection without a valid answer"


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

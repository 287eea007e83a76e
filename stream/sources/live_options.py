"""What a live source is, and how it is opened.

- `is_live_url`, `is_device`, `default_stream_id`: a network stream or capture device, not a
  file; the stream id of a source given without NAME=.
- `LiveOptions`: per-source transport, timeouts and reconnect policy (typed, validated).
- `open_args`: the FFmpeg format/options and PyAV timeouts that open a live source with little
  buffering (`fflags=nobuffer`, short analysis), TCP for RTSP unless UDP is asked for.

How a live source is then read, watched and reconnected: stream/sources/live.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from stream.errors import UserError

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp")
TRANSPORTS = ("tcp", "udp")


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

"""Why a live source failed, in one line and without its password.

- `scrub`: takes the password of a URL out of any text (PyAV error messages quote the URL).
- `describe_error`: one line for an FFmpeg/PyAV error.
- `open_failure`: why opening failed, where FFmpeg gives the same vague error for different
  causes (no server, a server that closes the connection, a timeout, an unknown host); a TCP
  connection to the server (`connect_problem`) tells them apart.
"""

from __future__ import annotations

import errno
import socket
from urllib.parse import unquote, urlsplit

import av

from stream.sources.live_options import LiveOptions
from stream.wire.records import mask_credentials


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

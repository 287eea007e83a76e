"""The `rtsp_server` fixture: a real GStreamer RTSP server (tests/rtsp/server.py) in a subprocess.

Any test module or conftest can use it with `from tests.rtsp.fixtures import rtsp_server  # noqa`.
The server runs under Debian's /usr/bin/python3 because the venv's Python cannot import `gi`;
`.ci/install-system-deps` installs what it needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("server.py")
READY_TIMEOUT = 30.0
"""Seconds to wait for READY: the server demuxes the whole clip into memory first."""


@functools.cache
def gst_rtsp_unavailable() -> str | None:
    """Why the server cannot run here, or None: /usr/bin/python3 must import GstRtspServer."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import GstRtspServer"
    )
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return f"{SYSTEM_PYTHON} took over 30 s to import GstRtspServer"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"{SYSTEM_PYTHON} cannot import gi.repository.GstRtspServer ({last})"
    return None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM the server if pytest dies without cleaning up."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RtspServer:
    """One server process; `start()` after `stop()`/`kill()` comes back on the same port."""

    def __init__(
        self,
        *,
        file: str | os.PathLike | None = None,
        pattern: str | None = None,
        path: str = "/stream",
        user: str | None = None,
        password: str | None = None,
        once: bool = False,
        start_frame: int = 0,
        log_dir: Path,
    ) -> None:
        if (file is None) == (pattern is None):
            raise ValueError("give exactly one of file= or pattern= (e.g. '320x180@25')")
        self.path = path if path.startswith("/") else "/" + path
        self.user, self.password = user, password
        self._args = ["--path", self.path]
        self._args += ["--file", str(file)] if file is not None else ["--pattern", pattern]
        if user is not None:
            self._args += ["--user", user, "--password", password or ""]
        if once:
            self._args.append("--once")
        if start_frame:
            self._args += ["--start-frame", str(start_frame)]
        self.port = 0
        """Bound TCP port; 0 until the first start picks a free one, then kept for restarts."""
        self.log = log_dir / "rtsp-server.log"
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def url(self) -> str:
        """rtsp://127.0.0.1:PORT/PATH, without credentials."""
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def url_for(self, user: str | None = None, password: str | None = None) -> str:
        """The URL with credentials (by default the server's own) in it, percent-encoded."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        if user is None:
            return self.url
        userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return f"rtsp://{userinfo}@127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = READY_TIMEOUT) -> RtspServer:
        """Start the process and return once it prints READY (fails after `timeout` s)."""
        if self.running:
            raise RuntimeError(f"RTSP server already running at {self.url}")
        self._lines = queue.Queue()
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), *self._args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                preexec_fn=_die_with_parent,
            )
        threading.Thread(
            target=self._read_stdout, args=(self.proc, self._lines), daemon=True
        ).start()
        line = self._expect("READY", timeout)
        url = line.split(maxsplit=1)[1]
        self.port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL: the server vanishes without closing its RTSP sessions."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(5.0)

    def stall(self, timeout: float = 5.0) -> None:
        """Stop sending frames, keeping sessions open; returns once the server confirms."""
        self._signal(signal.SIGUSR1, "STALLED", timeout)

    def resume(self, timeout: float = 5.0) -> None:
        """Send frames again (with timestamps that jump over the stall)."""
        self._signal(signal.SIGUSR2, "RESUMED", timeout)

    def _signal(self, signum: int, ack: str, timeout: float) -> None:
        if not self.running:
            raise RuntimeError(f"RTSP server at {self.url} is not running")
        self.proc.send_signal(signum)
        self._expect(ack, timeout)

    def _expect(self, word: str, timeout: float) -> str:
        """The next stdout line starting with `word`; fails after `timeout` s or on exit."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError(
                    f"RTSP server: no {word} in {timeout} s\n{self.tail()}"
                ) from None
            if line is None:
                code = self.proc.wait(5.0)
                raise RuntimeError(f"RTSP server exited ({code}) before {word}\n{self.tail()}")
            if line.startswith(word):
                return line.strip()

    @staticmethod
    def _read_stdout(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def tail(self, n: int = 20) -> str:
        """The last lines of the server's stderr, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator:
    """Factory: rtsp_server(file=... | pattern='WxH@FPS', path=, user=, password=, once=,
    start_frame=) starts a
    server and returns its RtspServer (.url, .url_for(), .stop(), .start(), .stall(), .resume(),
    .kill()); every server is stopped at teardown."""
    reason = gst_rtsp_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/install-system-deps should have installed it")
        pytest.skip(reason)
    servers: list[RtspServer] = []

    def make(**kw) -> RtspServer:
        log_dir = tmp_path / f"rtsp{len(servers)}"
        log_dir.mkdir()
        server = RtspServer(log_dir=log_dir, **kw)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()

"""The `mosquitto` fixture: Debian's Mosquitto broker as a real process on a free loopback port.

Any test module or conftest can use it with `from tests.mqtt.fixtures import mosquitto  # noqa`.
Each test gets its own broker, started from a generated config (`listener PORT 127.0.0.1`,
anonymous, no persistence), so the package's system service, running or not, plays no part.
`.ci/install-system-deps` installs the package.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"
READY_TIMEOUT_S = 10.0


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM the broker if pytest dies without cleaning up."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One Mosquitto process; `start()` after `kill()` comes back on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest stderr\n"
        )
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads started yet here)
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto not listening after {READY_TIMEOUT_S} s")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path) -> Iterator[Broker]:
    """A running broker (`.port`, `.url`, `.kill()`, `.start()`), killed at teardown."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip(f"{MOSQUITTO} not found (apt-get install mosquitto)")
    broker = Broker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()

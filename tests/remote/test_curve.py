"""CURVE between machines: a ROUTER on this machine, bound with keys on the address another
machine (a network namespace) reaches, and DEALER clients running there as their own processes."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest
import zmq

from stream.remote.security import (
    Authenticator,
    check_bind,
    curve_server,
    load_client_keys,
    load_server_keys,
)
from tests.conftest import ROOT
from tests.stream.conftest import wait_for

TIMEOUT_S = 60


class EchoServer:
    """A CURVE ROUTER answering `pong <message>`, served by a thread; `received` holds what came."""

    def __init__(self, ctx: zmq.Context, keys_dir, host: str) -> None:
        keys = load_server_keys(keys_dir)
        self.auth = Authenticator(ctx, keys.authorized).start()
        self.sock = curve_server(ctx.socket(zmq.ROUTER), keys)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(100):
                identity, message = self.sock.recv_multipart()
                self.received.append(message)
                self.sock.send_multipart([identity, b"pong " + message])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        self.sock.close(linger=0)
        self.auth.stop()


@pytest.fixture
def far_host(other_hosts):
    return other_hosts.add()


@pytest.fixture
def server(zctx, head_keys, far_host):
    check_bind(f"tcp://{far_host.peer_address}:5600", head_keys, insecure=False)
    srv = EchoServer(zctx, head_keys, far_host.peer_address)
    yield srv
    srv.close()


def peer(host, endpoint: str, keys=None, attempts: int = 1) -> list[dict]:
    """Run tests/remote/peer.py inside `host`; its JSON lines."""
    argv = [sys.executable, "-m", "tests.remote.peer", "--connect", endpoint]
    argv += ["--attempts", str(attempts), "--timeout", "20"]
    if keys is not None:
        argv += ["--keys", str(keys)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = host.popen(argv, cwd=ROOT, env=env)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_the_other_host_reaches_only_the_link_address(far_host):
    """The namespace really is another machine: its own address and loopback, nothing else."""
    out = far_host.run(["ip", "-o", "-4", "addr", "show"]).stdout
    addresses = {line.split()[3] for line in out.splitlines()}
    assert addresses == {"127.0.0.1/8", f"{far_host.address}/30"}


def test_authorized_worker_is_served(server, far_host, worker_keys):
    results = peer(far_host, server.endpoint, worker_keys, attempts=2)
    assert [r["handshake"] for r in results] == ["HANDSHAKE_SUCCEEDED"] * 2
    assert [r["reply"] for r in results] == ["pong ping 0", "pong ping 1"]
    assert server.received == [b"ping 0", b"ping 1"]
    assert server.auth.accepted == 2 and server.auth.refused == 0


def test_unknown_key_is_refused_logged_once_and_the_worker_still_served(
    server, far_host, worker_keys, stranger_keys, caplog
):
    stranger = load_client_keys(stranger_keys).public.decode()
    with caplog.at_level(logging.WARNING, logger="stream.remote.security"):
        results = peer(far_host, server.endpoint, stranger_keys, attempts=3)
        assert [r["handshake"] for r in results] == ["HANDSHAKE_FAILED_AUTH"] * 3
        assert all(r["reply"] is None for r in results)
        wait_for(lambda: server.auth.refused == 3, 10, "three refusals counted")
        served = peer(far_host, server.endpoint, worker_keys)
    assert served[0]["reply"] == "pong ping 0"
    assert server.received == [b"ping 0"]  # nothing from the stranger reached the application
    assert server.auth.refused_keys == {stranger}
    refusals = [r.getMessage() for r in caplog.records if "refused a worker" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert stranger in refusals[0] and far_host.address in refusals[0]
    for path in [*worker_keys.glob("*.key_secret"), *stranger_keys.glob("*.key_secret")]:
        secret = load_client_keys(path.parent, path.name.removesuffix(".key_secret")).secret
        assert secret.decode() not in caplog.text


def test_plaintext_client_is_refused(server, far_host, worker_keys):
    results = peer(far_host, server.endpoint, None, attempts=2)
    # PROTOCOL when the server's ERROR command arrives first, NO_DETAIL when its close does.
    for result in results:
        assert result["handshake"] in ("HANDSHAKE_FAILED_PROTOCOL", "HANDSHAKE_FAILED_NO_DETAIL")
        assert result["reply"] is None
    assert server.received == []
    assert peer(far_host, server.endpoint, worker_keys)[0]["reply"] == "pong ping 0"


def test_garbage_on_the_port_does_not_stop_the_server(server, far_host, worker_keys):
    host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
    code = (
        "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10);"
        "s.sendall(bytes(range(256)) * 64); s.close()"
    )
    proc = far_host.run([sys.executable, "-c", code, host, port], timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert peer(far_host, server.endpoint, worker_keys)[0]["reply"] == "pong ping 0"
    assert server.received == [b"ping 0"]


def test_loopback_of_this_machine_is_out_of_reach_of_the_other_host(zctx, far_host):
    """A server bound on 127.0.0.1 here is not reachable from the namespace: loopback binds need
    no keys because no other machine can connect to them."""
    sock = zctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    code = (
        "import socket, sys\n"
        "try:\n    socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5)\n"
        "except OSError:\n    sys.exit(3)\n"
    )
    proc = far_host.run([sys.executable, "-c", code, str(port)], timeout=TIMEOUT_S)
    assert proc.returncode == 3
    assert socket.create_connection(("127.0.0.1", port), 5)
    sock.close(linger=0)


def test_namespaces_and_links_are_removed(other_hosts):
    host = other_hosts.add()
    proc = host.popen(["sleep", "60"])
    other_hosts.remove_all()
    assert proc.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    assert host.name not in listed.stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=20)
    assert host.link not in links.stdout

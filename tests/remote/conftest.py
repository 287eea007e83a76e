"""Fixtures of the remote-worker tests: key folders made by `ovstream keys`, other machines as
network namespaces (tests/remote/netns.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zmq

from stream.remote.dispatch import RemoteWorkers
from stream.remote.keys import DEFAULT_CLIENT, create_keys
from stream.wire import messages
from tests.remote.netns import other_hosts  # noqa: F401  (a fixture)
from tests.stream.conftest import model, recv_within, zctx  # noqa: F401  (fixtures)


def make_keys(folder: Path, *clients: str) -> Path:
    """A keys folder as `ovstream keys` makes it (in this process: tests/remote/test_keys.py runs
    the command itself)."""
    create_keys(folder, clients or (DEFAULT_CLIENT,))
    return folder


def worker_folder(keys: Path, client_keys: Path, dest: Path, name: str = "worker") -> Path:
    """What a worker machine holds: the head's public key and one client secret, side by side."""
    dest.mkdir(mode=0o700)
    shutil.copy2(keys / "server.key", dest / "server.key")
    shutil.copy2(client_keys / "clients" / f"{name}.key_secret", dest / f"{name}.key_secret")
    return dest


@pytest.fixture
def head_keys(tmp_path) -> Path:
    """A keys folder with the head's pair and one authorized client, `worker`."""
    return make_keys(tmp_path / "keys")


@pytest.fixture
def worker_keys(head_keys, tmp_path) -> Path:
    """A worker's folder holding its authorized key and the head's public key."""
    return worker_folder(head_keys, head_keys, tmp_path / "worker")


@pytest.fixture
def stranger_keys(head_keys, tmp_path) -> Path:
    """A worker's folder with the head's public key but a client key the head never authorized."""
    other = make_keys(tmp_path / "other")
    return worker_folder(head_keys, other, tmp_path / "stranger")


# -- the head's dispatcher on real sockets, without processes ----------------------------------

IDENTITY = {"name": "m", "precision": "fp32", "files": {"model.xml": "x", "model.bin": "b"}}


@pytest.fixture
def link(zctx):  # noqa: F811  (the fixture imported above)
    """(RemoteWorkers on a loopback ROUTER, a function making connected DEALERs)."""
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    head = RemoteWorkers(router, IDENTITY, max_batch=4, timeout_s=60)

    def dealer() -> zmq.Socket:
        sock = zctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{port}")
        return sock

    return head, dealer


def say(sock: zmq.Socket, command: str, **meta) -> None:
    sock.send_multipart(messages.encode(messages.COMMAND, "w", 0, {"command": command, **meta}))


def heard(sock: zmq.Socket) -> messages.Message:
    return messages.decode(recv_within(sock))


def one_frame(seq: int) -> messages.Batch:
    return messages.Batch.single("s", seq, seq, None, 0.0, np.zeros((2, 2, 3), np.uint8))

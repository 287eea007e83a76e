"""Fixtures of the remote-worker tests: key folders made by `ovstream keys`, other machines as
network namespaces (tests/remote/netns.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stream.remote.keys import DEFAULT_CLIENT, create_keys
from tests.remote.netns import other_hosts  # noqa: F401  (a fixture)
from tests.stream.conftest import model, zctx  # noqa: F401  (fixtures)


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

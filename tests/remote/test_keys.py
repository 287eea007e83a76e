"""`ovstream keys DIR`: the files it writes, their modes, and what it refuses."""

from __future__ import annotations

import stat

import pytest
import zmq.auth

from stream.errors import UserError
from stream.remote.keys import create_keys
from tests.conftest import run_cli


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secrets_in(folder) -> list[str]:
    """The secret keys (Z85) in every *.key_secret file under `folder`."""
    return [zmq.auth.load_certificate(p)[1].decode() for p in folder.rglob("*.key_secret")]


def test_keys_writes_pairs_with_private_modes_and_prints_no_secret(tmp_path):
    folder = tmp_path / "keys"
    proc = run_cli("ovstream", "keys", str(folder), timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert files == {
        "server.key",
        "server.key_secret",
        "clients/worker.key",
        "clients/worker.key_secret",
        "authorized/worker.key",
    }
    assert mode(folder) == 0o700
    for sub in ("clients", "authorized"):
        assert mode(folder / sub) == 0o700
    for secret in folder.rglob("*.key_secret"):
        assert mode(secret) == 0o600, secret
    # authorized/ holds the client's public key, and only that.
    assert (folder / "authorized" / "worker.key").read_bytes() == (
        folder / "clients" / "worker.key"
    ).read_bytes()
    assert zmq.auth.load_certificate(folder / "authorized" / "worker.key")[1] is None
    out = proc.stdout + proc.stderr
    assert "server.key_secret" in out and "clients/worker.key_secret" in out
    assert "--keys" in out  # how to use them
    secrets = secrets_in(folder)
    assert len(secrets) == 2
    for secret in secrets:
        assert secret not in out


def test_keys_refuses_to_overwrite_a_secret_key(tmp_path):
    folder = tmp_path / "keys"
    assert run_cli("ovstream", "keys", str(folder), timeout=120).returncode == 0
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    proc = run_cli("ovstream", "keys", str(folder), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "worker.key_secret already exists" in lines[0] and "--client" in lines[0]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_keys_adds_clients_to_an_existing_folder_and_keeps_the_server_pair(tmp_path):
    folder = tmp_path / "keys"
    assert run_cli("ovstream", "keys", str(folder), timeout=120).returncode == 0
    server = (folder / "server.key_secret").read_bytes()
    proc = run_cli(
        "ovstream", "keys", str(folder), "--client", "cam-a", "--client", "cam-b", timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert (folder / "server.key_secret").read_bytes() == server
    assert "kept" in proc.stdout
    assert {p.name for p in (folder / "authorized").iterdir()} == {
        "worker.key",
        "cam-a.key",
        "cam-b.key",
    }
    assert mode(folder / "clients" / "cam-b.key_secret") == 0o600
    for secret in secrets_in(folder):
        assert secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("clients", "setup", "error"),
    [
        (["../evil"], None, "client name must be"),
        (["a", "a"], None, "client names repeated"),
        (["worker"], "notes.txt", "is not empty and holds no server.key_secret"),
        (["worker"], "file", "exists and is not a folder"),
    ],
)
def test_keys_bad_requests_write_nothing(tmp_path, clients, setup, error):
    folder = tmp_path / "keys"
    if setup == "file":
        folder.write_text("x")
    elif setup:
        folder.mkdir()
        (folder / setup).write_text("x")
    with pytest.raises(UserError, match=error):
        create_keys(folder, clients)
    assert not list(tmp_path.rglob("*.key*"))

"""Key loading, the bind check and the ZAP authenticator's own edge cases (no namespaces)."""

from __future__ import annotations

import logging
import shutil

import pytest
import zmq
from zmq.utils import z85

from stream.errors import UserError
from stream.remote.security import (
    Authenticator,
    check_bind,
    is_loopback_host,
    load_client_keys,
    load_server_keys,
)
from tests.remote.conftest import make_keys
from tests.stream.conftest import recv_within

REFUSE = "refusing to bind"


@pytest.mark.parametrize(
    ("endpoint", "keys", "insecure", "error"),
    [
        ("tcp://0.0.0.0:5600", None, False, REFUSE),
        ("tcp://*:5600", None, False, REFUSE),
        ("tcp://[::]:5600", None, False, REFUSE),
        ("tcp://10.1.2.3:5600", None, False, REFUSE),
        ("tcp://eth0:5600", None, False, REFUSE),
        ("tcp://0.0.0.0:5600", None, True, None),
        ("tcp://0.0.0.0:5600", "keys", False, None),
        ("tcp://127.0.0.1:5600", None, False, None),
        ("tcp://127.0.0.5:5600", None, False, None),
        ("tcp://[::1]:5600", None, False, None),
        ("tcp://localhost:5600", None, False, None),
        ("tcp://lo:5600", None, False, None),
        ("ipc:///tmp/ovstream-remote.sock", None, False, None),
        ("inproc://remote", None, False, None),
        ("udp://0.0.0.0:5600", None, False, "unsupported endpoint scheme"),
    ],
)
def test_check_bind(endpoint, keys, insecure, error):
    if error is None:
        check_bind(endpoint, keys, insecure)
        return
    with pytest.raises(UserError) as info:
        check_bind(endpoint, keys, insecure)
    message = str(info.value)
    assert error in message and "\n" not in message
    if error == REFUSE:
        assert f"refusing to bind {endpoint} without --keys" in message
        assert "--insecure" in message


def test_a_name_that_resolves_only_to_loopback_is_loopback():
    assert is_loopback_host("localhost")
    assert not is_loopback_host("no-such-host.invalid")


def test_check_bind_insecure_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="stream.remote.security"):
        check_bind("tcp://0.0.0.0:5600", None, True)
    assert "without encryption" in caplog.text


def test_loaded_keys_pair_up_and_never_show_a_secret(head_keys, worker_keys):
    server = load_server_keys(head_keys)
    client = load_client_keys(worker_keys)
    assert client.name == "worker"
    assert client.server_public == server.public
    assert zmq.curve_public(client.secret) == client.public
    assert server.secret.decode() not in repr(server)
    assert client.secret.decode() not in repr(client)
    # The head's own folder also works for a client on the same machine.
    assert load_client_keys(head_keys).public == client.public


def _break(folder, how):
    if how == "no folder":
        shutil.rmtree(folder)
    elif how == "no secret":
        (folder / "server.key_secret").unlink()
    elif how == "garbage secret":
        (folder / "server.key_secret").write_bytes(b"\x00\xffnot a key\n")
    elif how == "public only":
        shutil.copy(folder / "server.key", folder / "server.key_secret")
    elif how == "short key":
        text = (folder / "server.key_secret").read_text()
        (folder / "server.key_secret").write_text(text.replace('secret-key = "', 'secret-key = "x'))
    elif how == "other pair":
        other = make_keys(folder.parent / "other")
        shutil.copy(other / "server.key_secret", folder / "server.key_secret")
        text = (folder / "server.key_secret").read_text()
        mine = (folder / "server.key").read_text().split('public-key = "')[1][:40]
        public = text.split('public-key = "')[1][:40]
        (folder / "server.key_secret").write_text(text.replace(public, mine))
    elif how == "unreadable":
        (folder / "server.key_secret").unlink()
        (folder / "server.key_secret").mkdir()
    elif how == "no authorized":
        shutil.rmtree(folder / "authorized")
    elif how == "empty authorized":
        (folder / "authorized" / "worker.key").unlink()
    elif how == "bad authorized":
        (folder / "authorized" / "junk.key").write_text("hello\n")


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("no folder", "keys folder .* not found"),
        ("no secret", r"secret key file .*server.key_secret not found \(make keys with"),
        ("garbage secret", "is not a CURVE key file: no public-key line"),
        ("public only", "holds no secret key"),
        ("short key", "the secret key is not a 40-character Z85 CURVE key"),
        ("other pair", "its secret key does not belong to its public key"),
        ("unreadable", "cannot read key file"),
        ("no authorized", "authorized client keys folder .* not found"),
        ("empty authorized", "no client keys in"),
        ("bad authorized", "junk.key is not a CURVE key file"),
    ],
)
def test_bad_server_keys_give_one_line(head_keys, how, error):
    _break(head_keys, how)
    with pytest.raises(UserError, match=error) as info:
        load_server_keys(head_keys)
    assert "\n" not in str(info.value)


def test_bad_client_keys_give_one_line(head_keys, worker_keys, tmp_path):
    with pytest.raises(UserError, match="no client key nobody.key_secret"):
        load_client_keys(worker_keys, "nobody")
    (worker_keys / "server.key").unlink()
    with pytest.raises(UserError, match="key file .*server.key not found"):
        load_client_keys(worker_keys)
    make_keys(head_keys, "second")  # `worker` stays the default
    assert load_client_keys(head_keys).name == "worker"
    assert load_client_keys(head_keys, "second").name == "second"
    multi = make_keys(tmp_path / "multi", "cam-a", "cam-b")
    with pytest.raises(UserError, match=r"several client keys \(cam-a, cam-b\): say which one"):
        load_client_keys(multi)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no client secret key"):
        load_client_keys(empty)


def test_a_secret_readable_by_others_is_loaded_with_a_warning(head_keys, caplog):
    (head_keys / "server.key_secret").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="stream.remote.security"):
        load_server_keys(head_keys)
    assert "readable by other users" in caplog.text


def test_authenticator_answers_a_garbage_zap_request_and_keeps_running(head_keys, zctx):
    """A malformed ZAP request (a 5-byte CURVE key) would end pyzmq's ZAP thread; here it is
    refused with status 500 and the next request is answered."""
    auth = Authenticator(zctx, head_keys / "authorized").start()
    try:
        req = zctx.socket(zmq.REQ)
        req.linger = 0
        req.connect("inproc://zeromq.zap.01")
        for _ in range(2):
            req.send_multipart([b"1.0", b"1", b"", b"10.0.0.9", b"", b"CURVE", b"abcde"])
            reply = [f.bytes for f in recv_within(req, 10)]
            assert reply[2] == b"500"
        req.send_multipart([b"1.0", b"2", b"", b"10.0.0.9", b"", b"CURVE", b"\x01" * 32])
        reply = [f.bytes for f in recv_within(req, 10)]
        assert reply[2] == b"400"
        assert auth.errors == 2 and auth.refused == 1
    finally:
        auth.stop()
    assert auth._zap is None


def test_two_authenticators_on_one_context_is_a_clear_error(head_keys, zctx):
    with (
        Authenticator(zctx, head_keys / "authorized"),
        pytest.raises(UserError, match="cannot start the ZAP authenticator"),
    ):
        Authenticator(zctx, head_keys / "authorized").start()


def test_reload_accepts_a_key_added_to_authorized(head_keys, tmp_path, zctx):
    other = make_keys(tmp_path / "other")
    key = load_client_keys(other).public

    def ask(request_id: bytes) -> bytes:
        req.send_multipart([b"1.0", request_id, b"", b"10.0.0.9", b"", b"CURVE", z85.decode(key)])
        return recv_within(req, 10)[2].bytes

    with Authenticator(zctx, head_keys / "authorized") as auth:
        req = zctx.socket(zmq.REQ)
        req.linger = 0
        req.connect("inproc://zeromq.zap.01")
        assert ask(b"1") == b"400"
        shutil.copy(other / "clients" / "worker.key", head_keys / "authorized" / "other.key")
        assert auth.reload() == 2
        assert ask(b"2") == b"200"
        assert auth.accepted == 1 and auth.refused == 1

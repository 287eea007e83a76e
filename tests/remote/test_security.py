"""Key loading, the bind check and the ZAP authenticator's own edge cases (no namespaces)."""

from __future__ import annotations

import logging
import shutil

import pytest
import zmq
from zmq.utils import z85

from stream.batch import BatchConfig
from stream.config import PipelineConfig
from stream.errors import UserError
from stream.remote.security import (
    Authenticator,
    check_bind,
    is_loopback_host,
    load_client_keys,
    load_server_keys,
)
from tests.conftest import run_cli
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


ANY = "tcp://0.0.0.0:5556"
PUB_REFUSE = f"refusing to bind {ANY} without --keys and --secure-publish"


def _head_config(kind: str, **kw):
    if kind == "run":
        return PipelineConfig(sources=["cam.mp4"], model="model", **kw)
    return BatchConfig(inputs=["cam.mp4"], model="model", out="no-such-out", **kw)


@pytest.mark.parametrize("kind", ["run", "batch"])
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"publish": ANY}, PUB_REFUSE),
        ({"publish": "tcp://*:5556"}, "refusing to bind tcp://*:5556 without --keys and"),
        ({"publish": "tcp://10.1.2.3:5556"}, "refusing to bind tcp://10.1.2.3:5556 without"),
        # --keys alone secures the worker link, not the PUB socket
        ({"publish": ANY, "keys": "keys", "workers": "tcp://127.0.0.1:5600"}, PUB_REFUSE),
        ({"publish": ANY, "workers": "tcp://0.0.0.0:5600"}, "bind tcp://0.0.0.0:5600 without"),
        ({"publish": ANY, "insecure": True}, None),
        ({"publish": ANY, "keys": "keys", "secure_publish": True}, None),
        ({"publish": "tcp://127.0.0.1:5556"}, None),
        ({"publish": "ipc:///tmp/ovstream-results.sock"}, None),
        ({"publish": None}, None),
    ],
    ids=[
        "any",
        "star",
        "interface",
        "keys-without-secure-publish",
        "workers-first",
        "insecure",
        "secure-publish",
        "loopback",
        "ipc",
        "none",
    ],
)
def test_the_pub_socket_is_refused_on_a_reachable_address_without_keys(kind, options, error):
    """`--publish` is a tcp link of the head like `--workers`: keyed only with --secure-publish."""
    if error is None:
        _head_config(kind, **options)
        return
    with pytest.raises(UserError) as info:
        _head_config(kind, **options)
    message = str(info.value)
    assert error in message and "--insecure" in message and "\n" not in message


def test_insecure_publish_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="stream.remote.security"):
        _head_config("batch", publish=ANY, insecure=True)
        assert "without encryption" not in caplog.text  # the batch's run warns, not its config
        _head_config("run", publish=ANY, insecure=True)
    warnings = [r.getMessage() for r in caplog.records if "without encryption" in r.getMessage()]
    assert len(warnings) == 1 and ANY in warnings[0], warnings


@pytest.mark.parametrize("command", ["run", "batch"])
def test_a_reachable_pub_socket_without_keys_exits_2_with_one_line(
    command, clip_factory, model, tmp_path
):
    video = clip_factory(160, 96, 25, 5, name="open_pub")
    out = tmp_path / "out"
    extra = ["--out", str(out)] if command == "batch" else []
    proc = run_cli(
        "ovstream", command, str(video), "--model", str(model), *extra, "--publish", ANY,
        "--no-progress", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ovstream: error: "), proc.stderr
    assert PUB_REFUSE in lines[0] and "pass --insecure" in lines[0]
    assert not out.exists()  # refused before the job's folder was made


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

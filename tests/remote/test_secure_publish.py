"""`--secure-publish`: the results' PUB socket as a CURVE server; `ovstream subscribe --keys`."""

from __future__ import annotations

import json

import pytest

from stream.wire.transport import free_tcp_port
from tests.conftest import run_cli, start_cli
from tests.remote.conftest import make_keys, worker_folder


@pytest.mark.slow
def test_an_authorized_subscriber_gets_every_result_and_an_unknown_key_none(
    model, clip_factory, tmp_path
):
    video = clip_factory(160, 90, 25, 30, name="secure_pub")
    keys = make_keys(tmp_path / "keys", "viewer")
    viewer = worker_folder(keys, keys, tmp_path / "viewer", name="viewer")
    other_keys = make_keys(tmp_path / "other", "stranger")
    stranger = worker_folder(other_keys, other_keys, tmp_path / "stranger", name="stranger")
    # The stranger knows the head's public key, but its own key is not in keys/authorized.
    (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    subscribe = ["ovstream", "subscribe", endpoint, "--keys"]
    good = start_cli(*subscribe, str(viewer), "--until-eos", "--timeout", "60")
    bad = start_cli(*subscribe, str(stranger), "--timeout", "8")
    try:
        head = run_cli(
            "ovstream", "run", str(video), "--model", str(model), "--publish", endpoint,
            "--keys", str(keys), "--secure-publish", "--wait-subscribers", "1",
            "--subscriber-timeout", "30", "--no-progress", timeout=120,
        )  # fmt: skip
        assert head.returncode == 0, head.stderr
        out, err = good.communicate(timeout=60)
        assert good.returncode == 0, err
        frames = [json.loads(line)["frame_index"] for line in out.splitlines()]
        assert frames == list(range(30))
        out, err = bad.communicate(timeout=30)
        assert bad.returncode == 1 and out == "", (out, err)
        assert "refused" in head.stderr and "stranger" not in head.stderr  # logs its public key
    finally:
        for proc in (good, bad):
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def test_secure_publish_needs_keys(model, clip_factory):
    video = clip_factory(160, 90, 25, 5, name="secure_pub_nokeys")
    proc = run_cli("ovstream", "run", str(video), "--model", str(model), "--secure-publish")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "ovstream: error: --secure-publish needs --keys DIR"

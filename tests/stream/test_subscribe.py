"""`ovstream subscribe` from a shell: `--until-eos` ends by itself with exactly the run's results,
each line flushed as it is written; error lines look like every other ovstream error."""

from __future__ import annotations

import json
import select
import subprocess
import time

import pytest
import zmq

from stream.subscribe import EndTracker
from stream.wire import messages
from stream.wire.transport import free_tcp_port
from tests.conftest import run_cli, start_cli
from tests.stream.conftest import count_frames


def test_until_eos_exits_by_itself_with_exactly_the_runs_results(clip_factory, model, tmp_path):
    clips = {
        "a": clip_factory(160, 90, 25, 20, name="eos_a"),
        "b": clip_factory(160, 90, 15, 12, name="eos_b"),
    }
    total = sum(len(count_frames(p)) for p in clips.values())
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    out = tmp_path / "results.jsonl"
    sub = start_cli("ovstream", "subscribe", endpoint, "--until-eos", "--timeout", "120")
    try:
        proc = run_cli(
            "ovstream",
            "run",
            *(f"{name}={path}" for name, path in clips.items()),
            "--model",
            str(model),
            "--publish",
            endpoint,
            "--output",
            str(out),
            "--wait-subscribers",
            "1",
            "--no-progress",
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        try:
            stdout, stderr = sub.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            sub.kill()
            stdout, stderr = sub.communicate(timeout=5)
            raise AssertionError(
                f"subscribe --until-eos did not exit after the run:\n{stderr}"
            ) from None
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate(timeout=5)
    assert sub.returncode == 0, stderr
    assert stderr == ""
    lines = stdout.splitlines()
    assert len(lines) == total
    assert lines == out.read_text().splitlines()  # results only: no status events printed


def test_end_tracker_waits_for_the_end_of_the_run():
    ends = EndTracker()
    assert not ends.done  # nothing seen yet
    ends.saw({"stream_id": "a", "event": "connected"}, is_status=True)
    ends.saw({"stream_id": "a", "frame_index": 0}, is_status=False)
    ends.saw({"stream_id": "a", "event": "end_of_stream", "sent": 1}, is_status=True)
    # every stream seen so far has ended, but another one may not have shown up yet
    assert not ends.done
    ends.saw({"stream_id": "b", "event": "connected"}, is_status=True)
    ends.publisher_gone = True
    assert not ends.done  # b never ended: the run went away early
    ends.saw({"stream_id": "b", "event": "end_of_stream", "sent": 0}, is_status=True)
    assert ends.done
    late = EndTracker()  # joined late: missed results, but the run is over
    late.saw({"stream_id": "a", "event": "end_of_stream", "sent": 5}, is_status=True)
    assert not late.done
    late.publisher_gone = True
    assert late.done


def test_a_subscribe_timeout_is_one_error_line(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    proc = run_cli("ovstream", "subscribe", endpoint, "--timeout", "0.5", timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["ovstream: error: no result within 0.5 s (got 0)"]


def test_each_line_is_flushed_as_it_arrives(zctx):
    """A pipe gets every line at once, while subscribe runs on (no block buffering)."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pub = zctx.socket(zmq.PUB)
    pub.bind(endpoint)
    record = {"stream_id": "cam", "frame_index": 0}
    sub = start_cli("ovstream", "subscribe", endpoint, "--timeout", "60")
    try:
        deadline = time.monotonic() + 30
        while not select.select([sub.stdout], [], [], 0.1)[0]:  # until subscribed and flushed
            if time.monotonic() > deadline or sub.poll() is not None:
                pytest.fail(f"no line on subscribe's stdout: {sub.poll()}")
            pub.send_multipart([b"cam", messages.dump_result(record)])
        assert json.loads(sub.stdout.readline()) == record
        assert sub.poll() is None  # still running: the line was not flushed by an exit
    finally:
        sub.kill()
        sub.communicate(timeout=5)

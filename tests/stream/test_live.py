"""Live sources against a real GStreamer RTSP server: real-time classification, a server killed
and restarted, a server down at start, a stalled stream, bad URLs, a slow model on a fast stream,
and a password that must never show. Pipelines run as `ovstream run` subprocesses; the test
subscribes to their PUB socket for results and status events. Every wait has a timeout."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import zmq

from stream import Pipeline, PipelineConfig
from stream.sources.live_options import LiveOptions
from stream.wire.records import load_schema, load_status_schema
from stream.wire.transport import free_tcp_port
from tests.conftest import ROOT, cli_command, start_cli

pytestmark = [pytest.mark.rtsp, pytest.mark.slow]

PASSWORD = "p@ss:w/rd"
EXIT_TIMEOUT_S = 20.0


class LiveRun:
    """`ovstream run ... --publish tcp://...` in a subprocess, with a subscriber collecting
    results and status events (held until it subscribed: --wait-subscribers 1)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.jsonl = tmp_path / "results.jsonl"
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.results: list[dict] = []
        self.status: list[dict] = []
        self.proc = start_cli(
            "ovstream",
            "-v",
            "run",
            *args,
            "--publish",
            self.endpoint,
            "--output",
            str(self.jsonl),
            "--wait-subscribers",
            "1",
            "--no-progress",
        )
        self.sub.connect(self.endpoint)
        self.out = self.err = ""

    def collect(self, until, timeout_s: float, what: str) -> None:
        """Read messages until `until(self)` is true; fail after `timeout_s` or if the run ends."""
        deadline = time.monotonic() + timeout_s
        while not until(self):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout_s} s waiting for {what}; "
                    f"status: {[e['event'] for e in self.status]}"
                )
            if self.proc.poll() is not None:
                self.out, self.err = self.proc.communicate(timeout=5)
                pytest.fail(
                    f"ovstream exited ({self.proc.returncode}) waiting for {what}:\n{self.err}"
                )
            if self.sub.poll(200):
                topic, data = self.sub.recv_multipart()
                record = json.loads(data)
                (self.status if topic.startswith(b"_status/") else self.results).append(record)

    def events(self, stream: str | None = None) -> list[str]:
        return [e["event"] for e in self.status if stream is None or e["stream_id"] == stream]

    def interrupt(self) -> float:
        """SIGINT; returns how long the run took to exit (fails after EXIT_TIMEOUT_S)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.out, self.err = self.proc.communicate(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate(timeout=5)
            pytest.fail(f"ovstream did not exit within {EXIT_TIMEOUT_S} s of SIGINT:\n{self.err}")
        # what was published between the last read and the exit
        while self.sub.poll(300):
            topic, data = self.sub.recv_multipart()
            (self.status if topic.startswith(b"_status/") else self.results).append(
                json.loads(data)
            )
        return time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)
        self.sub.close()
        self.ctx.term()


@pytest.fixture
def live_run(tmp_path):
    runs: list[LiveRun] = []

    def start(*args: str) -> LiveRun:
        run = LiveRun(tmp_path, *args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


@pytest.fixture(scope="module")
def clip(clip_factory) -> Path:
    """4 s at 25 fps with a keyframe every second (clients join at a keyframe); loops forever."""
    return clip_factory(320, 180, 25, 100, name="live", gop=25)


def indices(records: list[dict], stream: str | None = None) -> list[int]:
    return [r["frame_index"] for r in records if stream is None or r["stream_id"] == stream]


def strictly_increasing(values: list[int]) -> bool:
    return all(b > a for a, b in zip(values, values[1:], strict=False))


def test_real_time_classification_and_the_password_never_shows(rtsp_server, clip, model, live_run):
    server = rtsp_server(file=clip, path="/cam", user="alice", password=PASSWORD)
    wrong = server.url_for(password="WrongPass99")
    run = live_run(
        f"cam={server.url_for()}", f"bad={wrong}", "--model", str(model), "--backoff-max", "1"
    )
    run.collect(lambda r: len(indices(r.results, "cam")) >= 75, 60, "75 results")
    run.collect(lambda r: r.events("bad").count("error") >= 2, 20, "two failed logins")
    # the results file is written line by line while the run goes on (people tail it)
    growing = [json.loads(line) for line in run.jsonl.read_text().splitlines()]
    assert len(growing) >= 74 and all(r["stream_id"] == "cam" for r in growing)
    run.interrupt()
    # a source that never connected failed: exit 1, and the summary says why
    assert run.proc.returncode == 1, run.err
    assert "source bad: no frames: never connected" in run.err

    cam = [r for r in run.results if r["stream_id"] == "cam"]
    assert strictly_increasing(indices(cam))
    assert growing == cam[: len(growing)]
    # live frames of the stream itself: its own timestamps, 25 fps, advance with the indices
    first, last = cam[0], cam[-1]
    assert last["pts"] - first["pts"] == pytest.approx(
        (last["frame_index"] - first["frame_index"]) / 25, abs=0.05
    )
    schema, status_schema = load_schema(), load_status_schema()
    for record in cam:
        jsonschema.validate(record, schema)
    for event in run.status:
        jsonschema.validate(event, status_schema)
    assert run.events("cam")[:2] == ["connecting", "connected"]
    assert run.events("cam")[-1] == "end_of_stream"
    bad_errors = [
        e["reason"] for e in run.status if e["stream_id"] == "bad" and e["event"] == "error"
    ]
    assert all("401" in reason for reason in bad_errors), bad_errors
    assert any("alice:***@" in e["source"] for e in run.status)
    # never printed, published or written anywhere, in any encoding
    everything = run.out + run.err + run.jsonl.read_text() + json.dumps(run.status)
    for secret in (PASSWORD, "p%40ss", "WrongPass99"):
        assert secret not in everything
    assert "bad" in run.err and "cam" in run.err  # the summary names both sources


def test_server_killed_and_restarted_mid_stream(rtsp_server, clip, model, live_run):
    server = rtsp_server(file=clip, path="/cam")
    run = live_run(f"cam={server.url}", "--model", str(model), "--backoff-max", "1")
    run.collect(lambda r: len(r.results) >= 25, 60, "25 results")
    server.kill()
    run.collect(lambda r: "disconnected" in r.events(), 20, "the disconnect")
    before = max(indices(run.results))
    run.collect(lambda r: r.events().count("reconnect_scheduled") >= 2, 20, "retries")
    server.start()
    run.collect(lambda r: max(indices(r.results)) > before + 25, 30, "results after the restart")
    run.interrupt()
    assert run.proc.returncode == 0, run.err

    assert strictly_increasing(indices(run.results))
    events = run.events()
    first_drop = events.index("disconnected")
    assert events[:2] == ["connecting", "connected"]
    assert events[first_drop + 1] == "reconnect_scheduled"
    assert "connected" in events[first_drop:]
    assert events[first_drop:].count("error") >= 1  # refused while the server was down
    drop = run.status[first_drop]
    assert drop["reason"] and drop["frames"] > 25
    delays = [e["delay_s"] for e in run.status if e["event"] == "reconnect_scheduled"]
    assert max(delays) <= 1.0
    assert "1 reconnect" in run.err or "reconnects" in run.err


def test_server_down_at_start_backs_off_then_connects(rtsp_server, clip, model, live_run):
    server = rtsp_server(file=clip, path="/cam")
    server.stop()  # keeps its port: start() comes back on it
    run = live_run(f"cam={server.url}", "--model", str(model), "--backoff-max", "2")
    run.collect(lambda r: r.events().count("reconnect_scheduled") >= 4, 30, "four retries")
    delays = [e["delay_s"] for e in run.status if e["event"] == "reconnect_scheduled"]
    assert delays[:4] == [0.5, 1.0, 2.0, 2.0]  # exponential, capped
    reasons = {e["reason"] for e in run.status if e["event"] == "error"}
    assert all("refused" in r.lower() for r in reasons), reasons
    server.start()
    back = time.time()
    run.collect(lambda r: len(r.results) >= 10, 30, "results once the server is up")
    run.interrupt()
    assert run.proc.returncode == 0, run.err
    # once the server is up, the next attempt connects
    after = [e["event"] for e in run.status if e["ts"] >= back]
    attempt = after.index("connecting")
    assert after[attempt + 1] == "connected", after


def test_a_stalled_stream_is_reconnected_by_the_watchdog(rtsp_server, clip, model, live_run):
    server = rtsp_server(file=clip, path="/cam")
    run = live_run(
        f"cam={server.url}",
        "--model",
        str(model),
        "--stall-timeout",
        "1.5",
        "--open-timeout",
        "2",
        "--backoff-max",
        "1",
    )
    run.collect(lambda r: len(r.results) >= 25, 60, "25 results")
    server.stall()
    run.collect(lambda r: "disconnected" in r.events(), 15, "the watchdog")
    drop = next(e for e in run.status if e["event"] == "disconnected")
    assert drop["reason"] == "stalled: no data for 1.5 s", drop
    before = max(indices(run.results))
    server.resume()
    run.collect(lambda r: max(indices(r.results)) > before + 25, 30, "results after the stall")
    run.interrupt()
    assert run.proc.returncode == 0, run.err
    assert strictly_increasing(indices(run.results))


def test_a_camera_with_keyframes_further_apart_than_the_stall_timeout(
    rtsp_server, clip_factory, model, live_run
):
    """A keyframe every 10 s, a stall timeout of 3 s, and a connection that joins just after a
    keyframe: it waits for the next one instead of reconnecting for ever; a stream that stops
    sending is still caught by the watchdog."""
    clip = clip_factory(320, 180, 25, 500, name="gop10", gop=250)
    server = rtsp_server(file=clip, path="/cam", start_frame=1)  # every new media: mid-GOP
    run = live_run(f"cam={server.url}", "--model", str(model), "--stall-timeout", "3")
    run.collect(lambda r: len(r.results) >= 25, 60, "25 results")
    assert run.events() == ["connecting", "connected"]  # the first connection delivered
    assert indices(run.results)[:25] == list(range(25))
    connected = next(e["ts"] for e in run.status if e["event"] == "connected")
    print(f"first result {run.results[0]['capture_ts'] - connected:.1f} s after connecting")
    server.stall()
    run.collect(lambda r: "disconnected" in r.events(), 20, "the watchdog")
    drop = next(e for e in run.status if e["event"] == "disconnected")
    assert drop["reason"] == "stalled: no data for 3 s", drop
    run.interrupt()
    assert run.proc.returncode == 0, run.err


class Closer:
    """A TCP server that accepts connections and closes them at once, without a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: a new connection's SYN gets no answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(sock.getsockname())
        fillers.append(filler)
    return sock, fillers


def test_each_failed_connection_says_why_then_sigint(rtsp_server, clip, model, live_run):
    """A wrong path (404), a refused port, a server that never answers (timed out), one that
    hangs up (closed), and one whose connection is never accepted (timed out connecting): each
    error says so, none says FFmpeg's "Invalid data found when processing input"."""
    server = rtsp_server(file=clip, path="/cam")
    silent = socket.socket()  # accepts TCP connections, never answers: the open timeout acts
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closer = Closer()
    full, fillers = full_listener()
    names = ("nopath", "refused", "silent", "closed", "full")
    try:
        run = live_run(
            f"nopath={server.url.replace('/cam', '/nope')}",
            f"refused=rtsp://127.0.0.1:{free_tcp_port()}/cam",
            f"silent=rtsp://127.0.0.1:{silent.getsockname()[1]}/cam",
            f"closed=rtsp://127.0.0.1:{closer.port}/cam",
            f"full=rtsp://127.0.0.1:{full.getsockname()[1]}/cam",
            "--model",
            str(model),
            "--open-timeout",
            "2",
            "--backoff-max",
            "1",
        )
        run.collect(
            lambda r: (
                all(r.events(s).count("error") >= 1 for s in names)
                and all(r.events(s).count("error") >= 2 for s in ("nopath", "refused"))
            ),
            40,
            "failures of every source",
        )
        run.collect(lambda r: r.events("silent").count("connecting") >= 2, 10, "a second try")
        run.interrupt()  # the silent one's open may be blocking: it ends within the open timeout
    finally:
        silent.close()
        closer.close()
        full.close()
        for filler in fillers:
            filler.close()
    assert run.proc.returncode == 1, run.err  # no source ever connected: each failed
    reasons = {e["stream_id"]: e["reason"] for e in run.status if e["event"] == "error"}
    assert "404" in reasons["nopath"], reasons
    assert "refused" in reasons["refused"].lower(), reasons
    assert "timed out" in reasons["silent"] and "did not answer" in reasons["silent"], reasons
    assert "closed the connection" in reasons["closed"], reasons
    assert "timed out" in reasons["full"] and "no answer to a connection" in reasons["full"]
    assert not any("Invalid data" in r for r in reasons.values()), reasons
    assert run.results == []
    assert "Traceback" not in run.err
    for stream in names:
        assert run.events(stream)[-1] == "end_of_stream"
        assert f"source {stream}: no frames: never connected; last problem" in run.err
    # every line on stderr is an ovstream line (-v: info lines too) or a row of the summary
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert all(line.startswith(("ovstream: ", "  ")) for line in lines), run.err


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_an_unreachable_network_says_so(model, tmp_path):
    """In a network namespace of its own (no interfaces up: nothing leaves this machine)."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {probe.stderr.decode().strip()}")
    command = [
        "unshare",
        "-rn",
        *cli_command(
            "ovstream",
            "run",
            "cam=rtsp://192.0.2.1/cam",  # TEST-NET-1, never routed
            "--model",
            str(model),
            "--publish",
            "none",
            "--no-progress",
        ),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        if not select.select([proc.stderr], [], [], 120)[0]:
            pytest.fail("no warning within 120 s")
        first = proc.stderr.readline()  # the first failure is a warning as it happens
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert first.startswith("ovstream: warning: source cam"), first + rest
    assert "unreachable" in first, first
    assert proc.returncode == 1, rest  # it never connected: the source failed
    assert "source cam: no frames: never connected; last problem: cannot connect: " in rest
    assert "unreachable" in rest.split("last problem:")[1]


def test_a_slow_model_on_a_fast_stream_drops_frames_instead_of_queueing_them(
    rtsp_server, clip_factory, resnet50_random
):
    """FP32 ResNet50 forced to f32 with one request (~75 ms a frame here) on a 50 fps stream."""
    clip = clip_factory(320, 180, 50, 200, name="fast", gop=50)
    server = rtsp_server(file=clip, path="/fast")
    config = PipelineConfig(
        sources=[f"fast={server.url}"],
        model=str(resnet50_random / "fp32"),
        publish=None,
        requests=1,
        mode="latency",
        ov_config={"INFERENCE_PRECISION_HINT": "f32"},
        live=LiveOptions(stall_timeout_s=5),
    )
    records: list[dict] = []
    with Pipeline(config) as pipeline:
        for record in pipeline:
            records.append(record)
            if len(records) == 60:
                pipeline.stop()
    summary = pipeline.summary
    assert summary.exit_code == 0
    source = summary.sources[0]
    assert source.dropped > 0 and source.decoded > len(records) + source.dropped // 2
    assert source.published == len(records)
    assert strictly_increasing(indices(records))
    # no queue builds up: every decoded frame was either classified or dropped, none waited
    assert source.published + source.dropped == source.decoded, source
    assert pipeline.status_events and pipeline.status_events[0]["event"] == "connecting"


def test_sources_file_runs_the_listed_cameras(rtsp_server, clip, model, tmp_path, live_run):
    server = rtsp_server(file=clip, path="/cam", user="bob", password=PASSWORD)
    os.environ["OVS_TEST_CAM_PW"] = "p%40ss%3Aw%2Frd"
    cams = tmp_path / "cams.toml"
    cams.write_text(
        "[defaults]\nfps = 5\nstall_timeout = 3\n\n"
        f'[[source]]\nname = "door"\nurl = "rtsp://bob:${{OVS_TEST_CAM_PW}}@127.0.0.1:{server.port}/cam"\n'
        'transport = "udp"\n'
    )
    try:
        run = live_run("--config", str(cams), "--model", str(model))
        run.collect(lambda r: len(r.results) >= 8, 60, "8 sampled results")
        run.interrupt()
    finally:
        del os.environ["OVS_TEST_CAM_PW"]
    assert run.proc.returncode == 0, run.err
    assert {r["stream_id"] for r in run.results} == {"door"}
    # --fps 5 by capture time: at most one result per 0.2 s slot, whatever the machine's speed
    ts = [r["capture_ts"] for r in run.results]
    assert len(ts) <= 5 * (ts[-1] - ts[0]) + 2, ts
    assert max(indices(run.results)) + 1 > 2 * len(ts)  # most decoded frames were not sampled
    assert PASSWORD not in run.out + run.err + run.jsonl.read_text()


def test_a_bad_sources_file_gives_one_line_per_problem(tmp_path, model):
    cams = tmp_path / "cams.toml"
    cams.write_text("[[source]]\nurl = 'rtsp://c/x'\nfps = 0\n[[source]]\nname = 'y'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "run", "--config", str(cams), "--model", str(model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ovstream: error: ") for line in lines), lines
    assert "'fps' must be a positive number" in lines[0] and "'url' is required" in lines[1]

"""Remote infer workers end to end: the head is `ovstream run` (a subprocess), each worker an
`ovstream worker` process inside its own network namespace ("another machine",
tests/remote/netns.py) that connects to the head over its veth link. Every result file is checked
against PyAV's own frame count: one result per frame, in order, none lost, none twice."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import zmq

from stream.inference import FrameQueue
from stream.wire import messages
from stream.wire.transport import free_tcp_port
from tests.conftest import ROOT, cli_command, run_cli, start_cli, write_failing_model
from tests.remote.conftest import IDENTITY, heard, make_keys, one_frame, say
from tests.stream.conftest import count_frames, wait_for

RUN_S = 300
"""A whole run (head or worker) at most."""
CLASSIFIED = re.compile(r"^ovstream worker: (\d+) frame\(s\) classified$", re.M)
COMPILED = re.compile(r"worker: \S+ \S+, \d+ requests$", re.M)
"""What `ovstream -v worker` logs once it compiled the model for a head."""
WORKING = re.compile(r"worker: running the head's frames$", re.M)
"""What it logs when the first frames of a head's run come."""
WORKERS_LINE = re.compile(
    r"workers: (?P<joined>\d+) joined, (?P<lost>\d+) lost, (?P<resent>\d+) frame\(s\) re-sent, "
    r"(?P<late>\d+) late result\(s\) dropped, (?P<refused>\d+) refused \(model\), "
    r"(?P<unauthorized>\d+) refused \(key\)"
)


# -- helpers ------------------------------------------------------------------------------------


def clips(clip_factory, count: int, frames: int, prefix: str) -> list[Path]:
    """`count` small H.264 files of `frames` frames each, with distinct stream ids."""
    return [clip_factory(160, 96, 25, frames, name=f"{prefix}{i}") for i in range(count)]


def bind_any() -> tuple[str, int]:
    """The head's worker endpoint on every address (each namespace reaches its own veth peer)."""
    port = free_tcp_port("0.0.0.0")
    return f"tcp://0.0.0.0:{port}", port


def start_head(videos: list[Path], model: Path, output: Path, *args: str) -> subprocess.Popen:
    return start_cli(
        "ovstream",
        "run",
        *map(str, videos),
        "--model",
        str(model),
        "--publish",
        "none",
        "--no-progress",
        "--output",
        str(output),
        *args,
    )


def start_worker(
    host, port: int, model: Path, name: str, *args: str, log: Path | None = None
) -> subprocess.Popen:
    """`ovstream worker --once` on `host`, connecting to the head through its veth link. With
    `log`, it runs with -v and its stderr goes to that file (to wait for what it says)."""
    argv = cli_command(
        "ovstream",
        *(["-v"] if log else []),
        "worker",
        "--connect",
        f"tcp://{host.peer_address}:{port}",
        "--model",
        str(model),
        "--name",
        name,
        "--once",
        *args,
    )
    if log is None:
        return host.popen(argv, cwd=ROOT)
    with log.open("w") as sink:  # the child keeps its own copy of the descriptor
        return host.popen(argv, cwd=ROOT, stderr=sink)


def compiled(log: Path) -> bool:
    """Whether the worker logging to `log` compiled the model (a head welcomed it)."""
    return COMPILED.search(log.read_text()) is not None


def working(log: Path) -> bool:
    """Whether the worker logging to `log` has had frames from the head (so the head has its
    credit: with the head's least-loaded dispatch it keeps getting frames while any are left)."""
    return WORKING.search(log.read_text()) is not None


def finish(proc: subprocess.Popen, timeout: float = RUN_S) -> tuple[int, str, str]:
    """Wait for `proc` to end (it is killed and the test fails after `timeout`)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{proc.args[:6]} still running after {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def classified(stdout: str) -> int:
    """A worker's final count of frames it ran."""
    found = CLASSIFIED.findall(stdout)
    assert len(found) == 1, stdout
    return int(found[0])


def worker_counters(stderr: str) -> dict[str, int]:
    """The head summary's `workers:` line as numbers."""
    found = WORKERS_LINE.search(stderr)
    assert found is not None, stderr
    return {k: int(v) for k, v in found.groupdict().items()}


def results(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.read_text().splitlines()]


def assert_each_frame_once(output: Path, videos: list[Path], context: str = "") -> int:
    """Every frame PyAV decodes has exactly one result, in frame order; returns how many."""
    frames: dict[str, list[int]] = defaultdict(list)
    for record in results(output):
        frames[record["stream_id"]].append(record["frame_index"])
    expected = {v.stem: [i for i, _ in count_frames(v)] for v in videos}
    problems = {}
    for stream, want in expected.items():
        got = frames.get(stream, [])
        if got != want:
            seen = set(got)
            problems[stream] = {
                "missing": sorted(set(want) - seen),
                "twice": sorted(i for i in seen if got.count(i) > 1),
                "out of order": got != sorted(got),
            }
    assert not problems and set(frames) == set(expected), (problems, context)
    return sum(len(f) for f in expected.values())


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def one_error_line(stderr: str) -> str:
    """stderr holds one line, `ovstream: error: ...`; returns it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ovstream: error: "), stderr
    return lines[0]


# -- sharing the work ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_and_the_local_stage_share_a_batch_of_files(
    other_hosts, clip_factory, model, tmp_path
):
    """Two workers on other machines and the head's own infer requests all run frames of six
    files; each frame has exactly one result, in order."""
    videos = clips(clip_factory, 6, 60, "share")
    endpoint, port = bind_any()
    a, b = other_hosts.add(), other_hosts.add()
    # Workers outlive heads: they are up first and wait for the run (saying hello every second).
    workers = [start_worker(h, port, model, n, "--threads", "1") for h, n in ((a, "a"), (b, "b"))]
    out = tmp_path / "results.jsonl"
    head = start_head(
        videos, model, out, "--workers", endpoint, "--insecure", "--requests", "1",
        "--max-batch", "2",
    )  # fmt: skip
    code, _, err = finish(head)
    assert code == 0, err
    total = assert_each_frame_once(out, videos, err)
    done = []
    for worker in workers:
        wcode, wout, werr = finish(worker)
        assert wcode == 0, werr
        done.append(classified(wout))
    assert all(n > 0 for n in done), done  # both workers ran frames...
    assert sum(done) < total, (done, total)  # ...and so did the head's own requests
    counters = worker_counters(err)
    assert counters["joined"] == 2 and counters["lost"] == 0 and counters["resent"] == 0, err
    assert counters["late"] == 0 and counters["refused"] == 0, err


def count_results(output: Path) -> int:
    return len(output.read_text().splitlines()) if output.exists() else 0


# -- losing and gaining workers -----------------------------------------------------------------


AFTER_KILL_S = 45
"""How long the rest of a run may take once a worker is gone; well below WORKER_TIMEOUT_S."""
WORKER_TIMEOUT_S = 120
"""--worker-timeout of the head whose worker is killed: never reached in the test."""


def start_two_and_lose_one(other_hosts, clip_factory, model, tmp_path, prefix, *head_args):
    """Head with --no-local-infer and two workers (a, b) that both compiled and ran frames:
    (videos, output file, head, a, b, their logs)."""
    videos = clips(clip_factory, 4, 150, prefix)
    endpoint, port = bind_any()
    a, b = other_hosts.add(), other_hosts.add()
    logs = {n: tmp_path / f"{n}.log" for n in "ab"}
    slow = ("--threads", "1", "--requests", "2")
    first = start_worker(a, port, model, "a", *slow, log=logs["a"])
    second = start_worker(b, port, model, "b", *slow, log=logs["b"])
    out = tmp_path / "results.jsonl"
    head = start_head(
        videos, model, out, "--workers", endpoint, "--insecure", "--no-local-infer",
        "--max-batch", "2", *head_args,
    )  # fmt: skip
    try:
        wait_for(lambda: compiled(logs["a"]) and compiled(logs["b"]), 120, "both workers")
        # Both have run frames: one stopped before the head had its credit would hold nothing.
        wait_for(lambda: working(logs["a"]) and working(logs["b"]), 120, "frames on both")
        wait_for(lambda: count_results(out) >= 20, 120, "the first results")
    except BaseException:
        head.kill()
        raise
    return videos, out, head, first, second, logs


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_noticed_at_once_and_loses_nothing(
    other_hosts, clip_factory, model, tmp_path
):
    """`kill -9` of one of two workers while it holds frames: its connection closes, the head
    drops it at once (not after --worker-timeout, which the test never waits out), its frames
    run again on the other, every frame has one result, in order, and the run ends normally."""
    videos, out, head, victim, survivor, logs = start_two_and_lose_one(
        other_hosts, clip_factory, model, tmp_path, "kill",
        "--worker-timeout", str(WORKER_TIMEOUT_S),
    )  # fmt: skip
    try:
        victim.kill()  # SIGKILL: no goodbye, its batches in flight stay unanswered
        assert victim.wait(timeout=30) == -signal.SIGKILL
        code, _, err = finish(head, AFTER_KILL_S)
    finally:
        head.kill()
    counters = assert_survivor_took_over(code, err, out, videos, survivor, logs)
    closed = lines_with(err, "a connection closed;")
    assert len(closed) == 1 and f"{counters['resent']} frame(s) it held" in closed[0], err
    assert "silent for" not in err


def assert_survivor_took_over(code, err, out, videos, survivor, logs) -> dict[str, int]:
    """The head ended normally with each frame once, the surviving worker did some of them, and
    the head counted two joined, one lost and frames re-sent; returns its worker counters."""
    assert code == 0, err
    total = assert_each_frame_once(out, videos, err)
    wcode, wout, _ = finish(survivor)
    assert wcode == 0, logs["b"].read_text()
    assert 0 < classified(wout) <= total
    counters = worker_counters(err)
    assert counters["joined"] == 2 and counters["lost"] == 1 and counters["resent"] > 0, err
    return counters


@pytest.mark.slow
def test_a_stopped_worker_is_dropped_after_its_silence(other_hosts, clip_factory, model, tmp_path):
    """SIGSTOP of one of two workers: its connection stays open, so only its silence tells; after
    --worker-timeout it is dropped, its frames run on the other, and no frame is lost or doubled."""
    videos, out, head, victim, survivor, logs = start_two_and_lose_one(
        other_hosts, clip_factory, model, tmp_path, "stop", "--worker-timeout", "2"
    )
    try:
        victim.send_signal(signal.SIGSTOP)
        code, _, err = finish(head)
    finally:
        head.kill()
        victim.kill()  # a stopped process ends on SIGKILL
        victim.communicate(timeout=30)
    assert_survivor_took_over(code, err, out, videos, survivor, logs)
    assert len(lines_with(err, "a silent for 2 s;")) == 1, err
    assert "connection closed" not in err


@pytest.mark.slow
def test_a_worker_joining_mid_run_gets_work(other_hosts, clip_factory, model, tmp_path):
    """A second worker started after the first results appeared is handed frames at once."""
    videos = clips(clip_factory, 2, 300, "join")
    endpoint, port = bind_any()
    a, b = other_hosts.add(), other_hosts.add()
    first = start_worker(a, port, model, "a", "--threads", "1", "--requests", "1")
    out = tmp_path / "results.jsonl"
    head = start_head(
        videos, model, out, "--workers", endpoint, "--insecure", "--no-local-infer",
        "--max-batch", "2",
    )  # fmt: skip
    try:
        wait_for(lambda: count_results(out) > 0, 120, "the first results")
        late = start_worker(b, port, model, "b", "--threads", "1")
        code, _, err = finish(head)
    finally:
        head.kill()
    assert code == 0, err
    total = assert_each_frame_once(out, videos, err)
    done = []
    for worker in (first, late):
        wcode, wout, werr = finish(worker)
        assert wcode == 0, werr
        done.append(classified(wout))
    assert done[1] > 0, done  # the latecomer ran frames
    assert sum(done) == total, (done, total)  # no local inference: the two ran everything
    counters = worker_counters(err)
    assert counters["joined"] == 2 and counters["lost"] == 0 and counters["resent"] == 0, err


# -- the head's dispatcher on real sockets, without processes ----------------------------------


def test_hellos_queued_while_no_head_answered_are_one_worker(link):
    """A worker waiting for a head says hello every second; its DEALER delivers them all at
    once: one worker joined, none lost, each hello welcomed."""
    head, dealer = link
    sock = dealer()
    for _ in range(3):
        say(sock, "hello", identity=IDENTITY, name="w")
    for _ in range(3):
        wait_for(lambda: not head.receive() and sock.poll(0), 10, "a welcome")
        assert heard(sock).meta == {"command": "welcome", "max_batch": 4, "frame_format": "bgr"}
    assert head.counters["joined"] == 1 and head.counters["lost"] == 0
    assert len(head.workers) == 1


def test_the_run_s_frame_format_goes_to_workers_that_can_take_it(zctx):
    """An I420 head welcomes a worker that says it takes I420 frames, with the format; a worker
    that says nothing of formats (an ovstream from before them) is refused with one reason."""
    from stream.remote.dispatch import RemoteWorkers

    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    head = RemoteWorkers(router, IDENTITY, max_batch=4, timeout_s=60, frame_format="i420")
    new, old = zctx.socket(zmq.DEALER), zctx.socket(zmq.DEALER)
    for sock in (new, old):
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{port}")
    say(new, "hello", identity=IDENTITY, name="new", frame_formats=["bgr", "i420"])
    wait_for(lambda: not head.receive() and new.poll(0), 10, "a welcome")
    assert heard(new).meta == {"command": "welcome", "max_batch": 4, "frame_format": "i420"}
    say(old, "hello", identity=IDENTITY, name="old")
    wait_for(lambda: not head.receive() and old.poll(0), 10, "a refusal")
    refusal = heard(old).meta
    assert refusal["command"] == "refuse"
    assert refusal["reason"] == (
        "the worker cannot take i420 frames (an older ovstream: upgrade it, or run the head with "
        "--frame-format bgr)"
    )
    assert head.counters["joined"] == 1 and head.counters["refused"] == 1


def test_dispatch_passes_over_a_worker_whose_connection_closed(link):
    """The worker with the most credit is gone (killed) and the head has not read the monitor's
    news yet: the send to it fails, it is dropped, and the batch goes to the next one at once."""
    head, dealer = link
    gone, alive = dealer(), dealer()
    for sock, credit in ((gone, 2), (alive, 1)):
        say(sock, "hello", identity=IDENTITY, name="w")
        say(sock, "credit", requests=credit)
    wait_for(lambda: not head.receive() and head.free == 3, 10, "both workers' credit")
    route = next(r for r, w in head.workers.items() if w.credit == 2)
    gone.close(linger=0)

    def router_knows_it_is_gone() -> bool:
        try:
            head.sock.send_multipart([route, b""], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            return exc.errno == zmq.EHOSTUNREACH
        return False

    wait_for(router_knows_it_is_gone, 10, "the ROUTER to see the connection close")
    assert head.dispatch(one_frame(0))
    assert route not in head.workers and head.counters["lost"] == 1
    got = heard(alive)
    while got.kind == messages.COMMAND:  # its welcome first
        got = heard(alive)
    assert got.kind == messages.TENSOR and len(got.batch) == 1
    assert not head.dispatch(one_frame(1))  # no credit left anywhere: the caller keeps it


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_with_another_model_is_refused_and_the_run_goes_on(
    other_hosts, clip_factory, lite0_model, tmp_path
):
    """Head on fp32, worker on fp16 of the same network: the worker exits 2 with one line, the
    head logs one line and runs every frame itself."""
    videos = clips(clip_factory, 3, 200, "mismatch")
    endpoint, port = bind_any()
    host = other_hosts.add()
    worker = start_worker(host, port, lite0_model / "fp16", "halfwidth")
    out = tmp_path / "results.jsonl"
    head = start_head(
        videos, lite0_model / "fp32", out, "--workers", endpoint, "--insecure",
        "--requests", "1", "--max-batch", "1",
    )  # fmt: skip
    try:
        wcode, wout, werr = finish(worker)
        code, _, err = finish(head)
    finally:
        head.kill()
    assert wcode == 2, werr
    line = one_error_line(werr)
    assert "refused this worker" in line and "FP16" in line and "FP32" in line, line
    assert classified(wout) == 0
    assert code == 0, err
    assert_each_frame_once(out, videos)
    refused = lines_with(err, "refused halfwidth")
    assert len(refused) == 1 and "FP16" in refused[0], err
    counters = worker_counters(err)
    assert counters["refused"] == 1 and counters["joined"] == 0, err


@pytest.mark.slow
def test_only_an_authorized_key_gets_work(
    other_hosts, clip_factory, model, head_keys, worker_keys, stranger_keys, tmp_path
):
    """Head with --keys and no local inference: the worker whose key is in authorized/ runs
    every frame; the one with an unknown key is refused (and never sees a frame)."""
    videos = clips(clip_factory, 2, 60, "keys")
    endpoint, port = bind_any()
    a, b = other_hosts.add(), other_hosts.add()
    stranger = start_worker(b, port, model, "stranger", "--keys", str(stranger_keys))
    trusted = start_worker(a, port, model, "trusted", "--keys", str(worker_keys))
    out = tmp_path / "results.jsonl"
    head = start_head(
        videos, model, out, "--workers", endpoint, "--keys", str(head_keys), "--no-local-infer"
    )
    try:
        code, _, err = finish(head)
    finally:
        head.kill()
    assert code == 0, err
    total = assert_each_frame_once(out, videos, err)
    tcode, tout, terr = finish(trusted)
    assert tcode == 0, terr
    assert classified(tout) == total
    stranger.terminate()  # it waits for a head that lets it in
    scode, sout, serr = finish(stranger, 60)
    assert scode == 0, serr
    assert classified(sout) == 0
    said = lines_with(serr, "refused this worker's key")
    assert len(said) == 1 and serr.strip() == said[0], serr  # one line, however many tries
    assert len(lines_with(err, "is not in")) == 1, err  # the head names the refused key once
    counters = worker_counters(err)
    assert counters["joined"] == 1 and counters["unauthorized"] >= 1, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "tcp://0.0.0.0:{port}"], "without --keys"),
        (["--workers", "tcp://*:{port}"], "without --keys"),
        (["--no-local-infer"], "--no-local-infer needs --workers"),
        (["--keys", "{keys}"], "needs --workers"),
    ],
    ids=["any-address", "star", "no-local-no-workers", "keys-no-workers"],
)
def test_head_options_refused_with_one_line(clip_factory, model, tmp_path, args, message):
    keys = make_keys(tmp_path / "keys")
    port = free_tcp_port("0.0.0.0")
    args = [a.format(port=port, keys=keys) for a in args]
    video = clip_factory(160, 96, 25, 10, name="refused")
    proc = run_cli(
        "ovstream", "run", str(video), "--model", str(model), "--publish", "none", *args,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in one_error_line(proc.stderr)


@pytest.mark.slow
def test_insecure_binds_on_every_address_and_runs(clip_factory, model, tmp_path):
    """With --insecure the head binds the worker link and the PUB socket on 0.0.0.0 (a warning
    each, once) and, with its local stage, runs to the end though no worker comes."""
    video = clip_factory(160, 96, 25, 30, name="insecure")
    out = tmp_path / "results.jsonl"
    endpoint, _ = bind_any()
    publish, _ = bind_any()
    proc = run_cli(
        "ovstream", "run", str(video), "--model", str(model), "--publish", publish,
        "--no-progress", "--output", str(out), "--workers", endpoint, "--insecure", timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warned = lines_with(proc.stderr, "without encryption")
    assert len(warned) == 2, proc.stderr
    assert endpoint in warned[0] and publish in warned[1], warned
    assert_each_frame_once(out, [video])
    assert worker_counters(proc.stderr)["joined"] == 0


def test_a_chunk_names_only_the_streams_it_holds_frames_of():
    """Chunks cut from one batch of two streams each name only their own stream: a chunk that
    named the other one too was rejected whole after that stream's end (its frames lost)."""
    both = messages.Batch.join([one_frame(0), one_frame(1)])
    both = messages.Batch(["a", "b"], np.array([[0, 0, 0], [1, 0, 0]]), both.times, both.data)
    queue = FrameQueue()
    queue.put(both)
    first, second = queue.take(1), queue.take(1)
    assert (first.streams, first.stream_ids()) == (["a"], ["a"])
    assert (second.streams, second.stream_ids()) == (["b"], ["b"])
    assert not queue


@pytest.mark.slow
def test_status_events_say_when_no_worker_is_there_to_run_frames(model, clip_factory):
    """With inference only on workers, every running source gets a `waiting_for_workers` status
    event while none is connected, and `workers_available` once one is; both follow the
    published schema, and the run then ends with every frame."""
    import jsonschema

    from stream.pipeline import Pipeline, PipelineConfig

    (video,) = clips(clip_factory, 1, 40, "waiting")
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    config = PipelineConfig(
        sources=[str(video)], model=str(model), publish=None, workers=endpoint, local_infer=False
    )
    pipeline = Pipeline(config)
    results: list[dict] = []
    workers: list[subprocess.Popen] = []

    def start_worker_once_waiting(p: Pipeline) -> None:
        waiting = [e for e in p.supervisor.status_events if e["event"] == "waiting_for_workers"]
        if waiting and not workers:
            worker = ["worker", "--connect", endpoint, "--model", str(model), "--once"]
            workers.append(start_cli("ovstream", *worker))

    try:
        summary = pipeline.run(
            on_result=results.append, progress=start_worker_once_waiting, progress_interval_s=0.1
        )
        assert summary.exit_code == 0 and len(results) == 40
        events = [e for e in pipeline.supervisor.status_events if "workers" in e]
        assert [e["event"] for e in events] == ["waiting_for_workers", "workers_available"]
        assert [e["workers"] for e in events] == [0, 1]
        schema = messages.load_status_schema()
        for event in events:
            jsonschema.validate(event, schema)
            assert event["stream_id"] == video.stem
    finally:
        for worker in workers:
            worker.terminate()
            worker.communicate(timeout=30)


@pytest.mark.slow
def test_ctrl_c_with_no_worker_to_run_frames_ends_at_once(model, clip_factory, tmp_path):
    """--no-local-infer and no worker: frames wait; Ctrl-C then gives them up with one line
    (they are counted as never classified) instead of waiting out the drain timeout."""
    (video,) = clips(clip_factory, 1, 60, "nobody")
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    head = start_cli(
        "ovstream", "run", str(video), "--model", str(model), "--publish", "none",
        "--output", str(tmp_path / "out.jsonl"), "--workers", endpoint, "--no-local-infer",
        "--no-progress",
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "out.jsonl").exists(), 60, "the run to start")
        time.sleep(3)  # frames reach infer and wait there (no assertion on time)
        head.send_signal(signal.SIGINT)
        _, err = head.communicate(timeout=30)  # the drain timeout is 60 s
        assert head.returncode == 0, err
        assert re.search(r"stopping with no worker connected: \d+ frame\(s\) not classified", err)
        assert "Traceback" not in err
        assert (tmp_path / "out.jsonl").read_text() == ""
    finally:
        if head.poll() is None:
            head.kill()
            head.communicate(timeout=10)


def test_a_once_worker_says_hello_again_after_a_reset_and_leaves_when_the_run_ends(model):
    """`--once` ends with the head's run, not when the head merely does not know its connection
    (a reconnect after a network blip): a plain `reset` makes it say hello again, a `reset` that
    says the run ended makes it exit 0. This test plays the head on a real ROUTER."""
    ctx = zmq.Context()
    head = ctx.socket(zmq.ROUTER)
    head.setsockopt(zmq.LINGER, 0)
    port = head.bind_to_random_port("tcp://127.0.0.1")
    worker = start_cli("ovstream", "-v", "worker", "--connect", f"tcp://127.0.0.1:{port}",
                       "--model", str(model), "--once", "--threads", "1")  # fmt: skip

    def next_command(want: str) -> tuple[bytes, dict]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if head.poll(1000):
                route, *parts = head.recv_multipart()
                meta = messages.decode(parts).meta
                if meta.get("command") == want:
                    return route, meta
        pytest.fail(f"no {want} from the worker within 60 s")

    def tell(route: bytes, command: str, **meta) -> None:
        parts = messages.encode(messages.COMMAND, "head", 0, {"command": command, **meta})
        head.send_multipart([route, *parts])

    try:
        route, _ = next_command("hello")
        tell(route, "welcome", max_batch=2)
        next_command("credit")
        tell(route, "reset")  # "who are you?"
        route, _ = next_command("hello")  # not gone: it says hello again
        assert worker.poll() is None
        tell(route, "welcome", max_batch=2)
        next_command("credit")
        tell(route, "reset", ended=True)
        code, _, err = finish(worker, 60)
    finally:
        worker.kill()
        worker.communicate(timeout=30)
        ctx.destroy(linger=0)
    assert code == 0, err
    assert "saying hello again" in err and "the head's run ended" in err, err


def test_a_worker_whose_inference_fails_exits_with_one_line(clip_factory, tmp_path):
    """A request OpenVINO failed wakes nobody; the worker must still notice, say why on one line
    and exit 1 (the head gets its frames back), not keep the chunk forever."""
    model = write_failing_model(tmp_path / "failing")
    (video,) = clips(clip_factory, 1, 20, "failing")
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    head = start_cli(
        "ovstream", "run", str(video), "--model", str(model), "--publish", "none",
        "--workers", endpoint, "--no-local-infer", "--no-progress",
    )  # fmt: skip
    worker = start_cli("ovstream", "worker", "--connect", endpoint, "--model", str(model))
    try:
        code, out, err = finish(worker, timeout=60)
        assert code == 1, err
        line = one_error_line(err)
        assert "inference failed: [cpu]reshape" in line, line
        assert classified(out) == 0
    finally:
        worker.kill()
        head.send_signal(signal.SIGINT)  # nothing left to run its frames: it gives them up
        finish(head, timeout=60)

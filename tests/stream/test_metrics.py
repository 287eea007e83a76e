"""`--metrics`: /metrics scraped over real HTTP and parsed by prometheus_client's own parser,
counters equal to the run's summary, /healthz as a probe, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.errors import UserError
from stream.ops.metrics import parse_address
from stream.ops.metrics_collectors import cumulative
from stream.pipeline import Pipeline, PipelineConfig, PipelineError
from tests.conftest import run_cli, start_cli
from tests.stream.conftest import wait_for


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted label items: value}}, through the official parser."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def healthz(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def per_stream(samples, name: str) -> dict[str, float]:
    return {dict(k)["stream_id"]: v for k, v in samples[name].items()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        (":9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_metrics_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:port", ":70000", "-1", "a:b:c"])
def test_bad_metrics_address_is_a_user_error(text):
    with pytest.raises(UserError, match="metrics address must be HOST:PORT"):
        parse_address(text)


def test_histogram_buckets_are_cumulative():
    counts = [0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 3, 1]
    buckets = cumulative(counts)
    assert buckets[0] == ("0.005", 0.0) and buckets[2] == ("0.025", 3.0)
    assert buckets[-2] == ("10.0", 6.0) and buckets[-1] == ("+Inf", 7.0)


@pytest.mark.slow
def test_scraped_counters_are_the_summary(model, clip_factory):
    """Two files through a pool of one capture worker (so one stream ends while the other is read):
    scraped during the run, then once every stream has ended; the last scrape equals the summary."""
    a = clip_factory(160, 90, 25, 40, name="metrics_a")
    b = clip_factory(160, 90, 25, 30, name="metrics_b")
    config = PipelineConfig(
        sources=[f"a={a}", f"b={b}"], model=str(model), publish=None, metrics=":0", jobs=1
    )
    pipeline = Pipeline(config)
    scrapes, health = [], []

    def progress(p: Pipeline) -> None:
        scrapes.append(scrape(p.metrics_url))
        health.append(healthz(p.metrics_url))

    summary = pipeline.run(progress=progress, progress_interval_s=0.0)
    assert summary.exit_code == 0
    assert all(code == 200 and body["status"] == "ok" for code, body in health)
    last = scrapes[-1]
    states = {
        dict(k)["stream_id"]: dict(k)["state"]
        for k, v in last["ovstream_source_state"].items()
        if v
    }
    assert states == {"a": "ended", "b": "ended"}
    for report in summary.sources:
        sid = report.stream_id
        assert per_stream(last, "ovstream_frames_classified_total")[sid] == report.published
        assert per_stream(last, "ovstream_frames_decoded_total")[sid] == report.decoded
        assert per_stream(last, "ovstream_frames_skipped_total")[sid] == report.skipped
        assert per_stream(last, "ovstream_frames_dropped_total")[sid] == report.dropped
        assert per_stream(last, "ovstream_source_reconnects_total")[sid] == report.reconnects
        assert per_stream(last, "ovstream_result_latency_seconds_count")[sid] == report.published
    assert {r.stream_id: r.published for r in summary.sources} == {"a": 40, "b": 30}
    rejected = sum(last["ovstream_messages_rejected_total"].values())
    assert rejected == summary.rejected == 0
    cpu = {dict(k)["stage"] for k in last["ovstream_stage_cpu_seconds_total"]}
    assert {"preprocess", "infer", "publish", "capture[#0]"} <= cpu
    assert ("stage", "infer") in {k[0] for k in last["ovstream_stage_queue_depth"]}
    # Counters never went down from one scrape to the next (the pool worker moved on meanwhile).
    for name in ("ovstream_frames_decoded_total", "ovstream_frames_classified_total"):
        for sid in ("a", "b"):
            values = [per_stream(s, name)[sid] for s in scrapes]
            assert values == sorted(values), (name, sid, values)


@pytest.mark.slow
def test_healthz_turns_503_when_a_stage_dies(model, clip_factory):
    clip = clip_factory(160, 90, 25, 200, name="metrics_long")
    config = PipelineConfig(sources=[str(clip)], model=str(model), publish=None, metrics=":0")
    pipeline = Pipeline(config)
    seen: list[tuple[int, dict]] = []

    def progress(p: Pipeline) -> None:
        if seen or not p.snapshot().get("results"):
            return
        seen.append(healthz(p.metrics_url))
        os.kill(p.pids["infer"], signal.SIGKILL)
        # The run cannot end while this callback holds the main thread.
        wait_for(lambda: healthz(p.metrics_url)[0] == 503, 20, "/healthz to say 503")
        seen.append(healthz(p.metrics_url))
        up = {dict(k)["stage"]: v for k, v in scrape(p.metrics_url)["ovstream_stage_up"].items()}
        assert up["infer"] == 0 and up["publish"] == 1

    with pytest.raises(PipelineError, match="stage infer died: killed by SIGKILL"):
        pipeline.run(progress=progress, progress_interval_s=0.0)
    assert seen[0] == (200, {"status": "ok"})
    assert seen[1] == (503, {"status": "failing", "reason": "stage infer is not running"})


@pytest.mark.slow
def test_healthz_says_which_source_failed(model, clip_factory, bad_inputs):
    clip = clip_factory(160, 90, 25, 60, name="metrics_ok")
    sources = [str(clip), f"gone={bad_inputs['missing']}"]
    config = PipelineConfig(sources=sources, model=str(model), publish=None, metrics=":0")
    pipeline = Pipeline(config)
    health = []
    summary = pipeline.run(lambda p: health.append(healthz(p.metrics_url)), progress_interval_s=0)
    assert summary.exit_code == 1
    code, body = health[-1]
    assert code == 503 and body["reason"].startswith("source gone failed: ")


@pytest.mark.slow
def test_cli_serves_metrics_while_running(lite0_model, clip_factory):
    clip = clip_factory(160, 90, 25, 150, name="metrics_cli")
    port = free_port()
    proc = start_cli(
        "ovstream", "run", str(clip), "--model", str(lite0_model), "--publish", "none",
        "--metrics", f":{port}", "--no-progress",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def classified() -> float:
        try:
            return sum(scrape(url).get("ovstream_frames_classified_total", {}).values())
        except (urllib.error.URLError, ConnectionError):
            return 0.0

    try:
        wait_for(lambda: classified() > 0 or proc.poll() is not None, 120, "a classified frame")
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, err
    assert "150 results" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_port_in_use_is_one_line(lite0_model, clip_factory):
    clip = clip_factory(160, 90, 25, 12, name="printed")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli(
            "ovstream", "run", str(clip), "--model", str(lite0_model), "--publish", "none",
            "--metrics", f"127.0.0.1:{port}", timeout=120,
        )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"ovstream: error: metrics address 127.0.0.1:{port} is in use\n"


def test_bad_metrics_option_is_one_line(lite0_model):
    proc = run_cli("ovstream", "run", "x.mp4", "--model", str(lite0_model), "--metrics", "x:y")
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "ovstream: error: metrics address must be HOST:PORT, :PORT or PORT, got 'x:y'\n"
    )


@pytest.mark.slow
def test_worker_metrics_match_the_head_and_the_worker(model, clip_factory):
    """A head with no local inference and one worker, both with --metrics: the head's per-worker
    counters and the worker's own equal the frames the worker reports when it exits."""
    clip = clip_factory(160, 90, 25, 60, name="metrics_worker")
    workers = f"tcp://127.0.0.1:{free_port()}"
    worker_metrics = f"127.0.0.1:{free_port()}"
    worker = start_cli(
        "ovstream", "worker", "--connect", workers, "--model", str(model),
        "--metrics", worker_metrics, "--name", "w1",
    )  # fmt: skip
    try:
        config = PipelineConfig(
            sources=[str(clip)],
            model=str(model),
            publish=None,
            metrics=":0",
            workers=workers,
            local_infer=False,
        )
        pipeline = Pipeline(config)
        scrapes = []
        summary = pipeline.run(
            progress=lambda p: scrapes.append(scrape(p.metrics_url)), progress_interval_s=0.0
        )
        assert summary.exit_code == 0 and summary.results == 60
        head = scrapes[-1]
        assert head["ovstream_workers_connected"][()] == 1
        done = {dict(k)["worker"]: v for k, v in head["ovstream_worker_frames_total"].items()}
        own = scrape(f"http://{worker_metrics}")
        assert own["ovstream_worker_frames_total"][()] == 60
        assert healthz(f"http://{worker_metrics}")[0] == 200
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "60 frame(s) classified" in out
        # The head's last scrape came before the final results, so at most what the worker did.
        assert set(done) == {"w1"} and 0 < done["w1"] <= 60
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)

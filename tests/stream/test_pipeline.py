"""End to end on real files: exactly one ordered result per frame, subscriber == JSON Lines,
graceful SIGINT, a killed stage, and a clear line for each bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import jsonschema
import psutil
import pytest
import zmq

from stream import Pipeline, PipelineConfig, PipelineError
from stream.wire.records import load_schema
from stream.wire.transport import TransportConfig, free_tcp_port
from tests.conftest import run_cli, start_cli

from .conftest import count_frames, wait_for

pytestmark = pytest.mark.slow


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_stream(records: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r["stream_id"], []).append(r["frame_index"])
    return out


@pytest.fixture(scope="module")
def clips(clip_factory) -> dict[str, Path]:
    """Three clips of different sizes, frame rates and lengths."""
    return {
        "wide": clip_factory(320, 180, 25, 30),
        "tiny": clip_factory(160, 90, 15, 20),
        "tall": clip_factory(180, 320, 30, 24),
    }


def test_every_frame_of_several_files_gives_one_result_in_order(clips, model, tmp_path):
    out = tmp_path / "results.jsonl"
    config = PipelineConfig(
        sources=[f"{name}={path}" for name, path in clips.items()],
        model=str(model),
        publish=None,
        output=str(out),
        topk=3,
    )
    with Pipeline(config) as pipeline:
        records = list(pipeline)
    summary = pipeline.summary
    assert summary.exit_code == 0 and summary.failure is None
    expected = {name: [i for i, _ in count_frames(path)] for name, path in clips.items()}
    assert by_stream(records) == expected
    assert read_jsonl(out) == records
    schema = load_schema()
    for record in records:
        jsonschema.validate(record, schema)
        assert len(record["topk"]) == 3
    assert {r.stream_id: r.published for r in summary.sources} == {
        k: len(v) for k, v in expected.items()
    }
    assert all(st.get("rejected", 0) == 0 for st in summary.stages.values())


def test_fps_sampling_over_tcp(clips, model, tmp_path):
    config = PipelineConfig(
        sources=[str(clips["wide"]), str(clips["tall"])],
        model=str(model),
        publish=None,
        fps=5,
        transport=TransportConfig(scheme="tcp"),
    )
    records = list(Pipeline(config))
    assert by_stream(records) == {
        "clip_320x180_25fps_30f": [i for i, _ in count_frames(clips["wide"], fps=5)],
        "clip_180x320_30fps_24f": [i for i, _ in count_frames(clips["tall"], fps=5)],
    }


def test_subscriber_receives_exactly_the_jsonl_records(clips, model, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    out = tmp_path / "results.jsonl"
    total = sum(len(count_frames(p)) for p in clips.values())
    sub = start_cli(
        "ovstream",
        "subscribe",
        endpoint,
        "--count",
        str(total),
        "--timeout",
        "120",
    )
    try:
        proc = run_cli(
            "ovstream",
            "run",
            *map(str, clips.values()),
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
        stdout, stderr = sub.communicate(timeout=60)
    finally:
        sub.kill()
    assert sub.returncode == 0, stderr
    assert stdout.splitlines() == out.read_text().splitlines()
    assert len(stdout.splitlines()) == total
    assert "3 source(s)" in proc.stderr


def test_topic_filter_keeps_one_stream(clips, model):
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    config = PipelineConfig(
        sources=[f"t={clips['tiny']}", f"tt={clips['wide']}"],
        model=str(model),
        publish=endpoint,
        wait_subscribers=1,
    )
    import threading

    from stream.subscribe import subscribe

    got: list[dict] = []

    def listen():
        for record in subscribe(endpoint, topic="t", timeout_s=60):
            got.append(record)
            if len(got) == 20:
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    Pipeline(config).run()
    listener.join(60)
    assert [r["frame_index"] for r in got] == list(range(20))
    assert {r["stream_id"] for r in got} == {"t"}  # not "tt", although ZeroMQ matches prefixes


def test_sigint_drains_and_exits_0(clip_factory, model, tmp_path):
    clip = clip_factory(160, 90, 25, 300, name="long")
    out = tmp_path / "results.jsonl"
    proc = start_cli(
        "ovstream",
        "run",
        str(clip),
        "--model",
        str(model),
        "--publish",
        "none",
        "--output",
        str(out),
        "--no-progress",
    )
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0, 120, "the first result")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    indices = [r["frame_index"] for r in read_jsonl(out)]
    assert indices == list(range(len(indices)))  # everything in flight came out, in order
    assert "Traceback" not in stderr
    if len(indices) < 300:
        assert "interrupted" in stderr


def test_killed_stage_stops_the_run_and_is_named(clip_factory, model, tmp_path):
    clip = clip_factory(160, 90, 25, 300, name="long")
    proc = start_cli(
        "ovstream",
        "run",
        str(clip),
        "--model",
        str(model),
        "--publish",
        "none",
        "--no-progress",
    )
    try:
        parent = psutil.Process(proc.pid)

        def infer_process():
            for child in parent.children(recursive=True):
                try:
                    if child.name() == "ovs-infer":
                        return child
                except psutil.NoSuchProcess:
                    pass
            return None

        wait_for(lambda: infer_process() is not None, 60, "the infer process")
        os.kill(infer_process().pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "stage infer died: killed by SIGKILL" in stderr
    assert "Traceback" not in stderr
    # all children are gone:
    assert not [
        c
        for c in psutil.Process().children(recursive=True)
        if c.pid != proc.pid and "ovs-" in c.name()
    ]


def test_a_killed_supervisor_leaves_no_stage_behind(clip_factory, model, tmp_path):
    """kill -9 of the main process: the kernel ends every stage with it (PR_SET_PDEATHSIG),
    captures and pool workers included, instead of leaving them to notice on their own."""
    files = [clip_factory(160, 90, 25, 300, name=f"orphan{i}") for i in range(3)]
    proc = start_cli(
        "ovstream",
        "run",
        *map(str, files),
        "--model",
        str(model),
        "--publish",
        "none",
        "--no-progress",
        "--jobs",
        "2",
    )
    try:
        parent = psutil.Process(proc.pid)

        def stages() -> list[psutil.Process]:
            alive = []
            for child in parent.children(recursive=True):
                try:
                    if child.name().startswith("ovs-"):
                        alive.append(child)
                except psutil.NoSuchProcess:
                    pass
            return alive

        wait_for(lambda: len(stages()) == 5, 60, "three stages and two capture workers")
        children = stages()
        proc.kill()
        proc.communicate(timeout=10)
        gone, alive = psutil.wait_procs(children, timeout=10)
    finally:
        proc.kill()
    assert not alive, [p.name() for p in alive]
    assert len(gone) == 5


def test_killed_stage_raises_from_the_python_api(clip_factory, model):
    clip = clip_factory(160, 90, 25, 300, name="long")
    config = PipelineConfig(
        sources=[str(clip)], model=str(model), publish=None, transport=TransportConfig(hwm=2)
    )
    pipeline = Pipeline(config)
    results = iter(pipeline)
    first = next(results)  # backpressure from this consumer keeps the run going
    assert first["frame_index"] == 0
    os.kill(pipeline.pids["preprocess"], signal.SIGKILL)
    with pytest.raises(PipelineError, match=r"stage preprocess died: killed by SIGKILL"):
        for _ in results:
            pass


def test_stop_from_the_python_api_drains(clip_factory, model):
    clip = clip_factory(160, 90, 25, 300, name="long")
    config = PipelineConfig(
        sources=[str(clip)], model=str(model), publish=None, transport=TransportConfig(hwm=2)
    )
    pipeline = Pipeline(config)
    indices = []
    for record in pipeline:
        indices.append(record["frame_index"])
        if len(indices) == 5:
            pipeline.stop()
    assert indices == list(range(len(indices))) and 5 <= len(indices) < 300
    assert pipeline.summary.interrupted and pipeline.summary.exit_code == 0
    # Every frame it reports decoded has its result: a frame in hand when the stop came (waiting
    # for room downstream) was not reached, like what the decoder still held.
    (report,) = pipeline.summary.sources
    assert report.stopped and report.skipped == 0
    assert report.decoded == report.published == len(indices)


BAD_SOURCES = [
    ("missing", 1, r"source missing: no such file: .*missing\.mp4"),
    ("not_video", 1, r"source notes: cannot read .*notes\.mp4 as video"),
    ("zero_frames", 1, r"source empty: .*empty\.mp4 has no video stream"),
    (
        "corrupt",
        0,
        r"warning: source corrupt: \d+ frame\(s\) skipped \(corrupt data\), \d+ classified",
    ),
]


@pytest.mark.parametrize("name,code,line", BAD_SOURCES, ids=[b[0] for b in BAD_SOURCES])
def test_bad_source_gives_one_line_and_the_others_go_on(
    name, code, line, bad_inputs, clips, model, tmp_path
):
    out = tmp_path / "results.jsonl"
    bad = bad_inputs[name]
    proc = run_cli(
        "ovstream",
        "run",
        str(clips["tiny"]),
        str(bad),
        "--model",
        str(model),
        "--publish",
        "none",
        "--output",
        str(out),
        "--no-progress",
        timeout=180,
    )
    assert proc.returncode == code, proc.stderr
    import re

    problems = [x for x in proc.stderr.splitlines() if "error" in x or "warning" in x]
    assert len(problems) == 1 and re.search(line, problems[0]), proc.stderr
    assert "Traceback" not in proc.stderr
    streams = by_stream(read_jsonl(out))
    assert streams["clip_160x90_15fps_20f"] == list(range(20))
    if name == "corrupt":
        assert streams["corrupt"] == [i for i, _ in count_frames(bad)]
    else:
        assert bad.stem not in streams


def broken_model(tmp_path: Path, model: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.json").write_text((model / "model.json").read_text())
    (folder / "model.xml").write_text("<net>not really</net>")
    (folder / "model.bin").write_bytes(b"\0" * 16)
    return folder


def test_model_folder_that_does_not_load(clips, model, tmp_path):
    proc = run_cli(
        "ovstream",
        "run",
        str(clips["tiny"]),
        "--model",
        str(broken_model(tmp_path, model)),
        "--publish",
        "none",
        "--no-progress",
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load model" in lines[0], proc.stderr


def test_not_a_model_folder(clips, tmp_path):
    proc = run_cli(
        "ovstream",
        "run",
        str(clips["tiny"]),
        "--model",
        str(tmp_path),
        "--publish",
        "none",
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ovstream: error: {tmp_path} is not a model folder: no model.json in it or in "
        "int8/fp32/fp16/ (make one with 'model-prep export')"
    ]


def test_publish_endpoint_in_use(clips, model, zctx):
    port = free_tcp_port()
    taken = zctx.socket(zmq.PUB)
    taken.bind(f"tcp://127.0.0.1:{port}")
    proc = run_cli(
        "ovstream",
        "run",
        str(clips["tiny"]),
        "--model",
        str(model),
        "--publish",
        f"tcp://127.0.0.1:{port}",
        "--no-progress",
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"ovstream: error: publish: cannot bind tcp://127.0.0.1:{port}: address already in use"
    ], proc.stderr


def test_unknown_device_lists_the_available_ones(clips, model):
    proc = run_cli(
        "ovstream",
        "run",
        str(clips["tiny"]),
        "--model",
        str(model),
        "--publish",
        "none",
        "--device",
        "NPU",
        "--no-progress",
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "available: CPU" in lines[0], proc.stderr


@pytest.mark.parametrize("many", [False, True], ids=["fewer_than_cores", "one_a_core"])
def test_decoders_get_one_thread_each_once_they_fill_the_cores(clips, model, many):
    """AUTO decoding: FFmpeg's threading while there are fewer decoders than cores, one thread a
    decoder once there are as many (the streams keep the cores busy, and one thread costs less
    CPU a frame); every frame still gives its result."""
    cores = os.cpu_count() or 1
    count = max(cores, 2) if many else 1
    path = clips["wide"]
    config = PipelineConfig(
        sources=[f"s{i}={path}" for i in range(count)], model=str(model), publish=None, jobs=count
    )
    with Pipeline(config) as pipeline:
        records = list(pipeline)
        threads = {
            name: state.stage.config.thread_count
            for name, state in pipeline.supervisor.states.items()
            if name.startswith("capture")
        }
    assert len(threads) == count
    assert set(threads.values()) == {1 if count >= cores else 0}
    assert len(records) == count * len(count_frames(path))
    assert pipeline.summary.exit_code == 0

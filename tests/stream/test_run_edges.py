"""Edges of `ovstream run` a new user hits: waiting for subscribers that never come, and the
summary saying everything it counted."""

from __future__ import annotations

import io

import pytest

from stream.pipeline import Pipeline, PipelineConfig, RunSummary, SourceReport
from stream.progress import print_summary
from stream.wire.transport import free_tcp_port
from tests.conftest import run_cli, write_failing_model


@pytest.mark.slow
def test_waiting_for_subscribers_that_never_come_goes_on_and_ends(clip_factory, model, tmp_path):
    """`--wait-subscribers 1` and nobody subscribes: after --subscriber-timeout the run goes on
    with a warning and ends by itself with every result (it used to hang for good)."""
    clip = clip_factory(160, 90, 25, 60, name="lonely60")
    out = tmp_path / "results.jsonl"
    proc = run_cli(
        "ovstream",
        "run",
        str(clip),
        "--model",
        str(model),
        "--publish",
        f"tcp://127.0.0.1:{free_tcp_port()}",
        "--wait-subscribers",
        "1",
        "--subscriber-timeout",
        "2",
        "--output",
        str(out),
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 60
    assert "ovstream: warning: publish: only 0 of 1 subscriber(s) after 2 s; going on" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_the_summary_says_what_publish_could_not_deliver(tmp_path):
    """Results a slow subscriber missed (PUB high-water mark) are in the summary, as are the
    rejections of every stage and of the supervisor (one count)."""
    config = PipelineConfig(sources=["a.mp4"], model=str(tmp_path), publish=None)
    summary = RunSummary(
        sources=[SourceReport("a", "a.mp4", frames=5, published=5, decoded=5)],
        seconds=1.0,
        results=5,
        stages={"publish": {"pub_dropped": 3}, "infer": {"requests": 2}},
        rejected=4,
    )
    out = io.StringIO()
    print_summary(summary, Pipeline(config), out)
    text = out.getvalue()
    assert "ovstream: warning: 3 message(s) not delivered to a subscriber too slow" in text
    assert "ovstream: warning: 4 malformed message(s) rejected" in text


def test_decoder_threads_reach_every_capture_of_run_and_batch(tmp_path):
    import argparse

    from stream import run
    from stream.geometry import Geometry
    from stream.jobs import cli as batch_cli

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    args = ["a.mp4", "b.mp4", "--model", "m", "--decoder-threads", "NONE"]
    config = run.config_from_args(parser.parse_args(args))
    assert {config.capture_config(s, Geometry()).thread_type for s in config.specs} == {"NONE"}
    assert run.config_from_args(parser.parse_args(args[:4])).decoder_threads == "AUTO"

    parser = argparse.ArgumentParser()
    batch_cli.add_arguments(parser)
    args = [str(tmp_path), "-m", "m", "-o", str(tmp_path / "out"), "--decoder-threads", "SLICE"]
    assert batch_cli.config_from_args(parser.parse_args(args)).decoder_threads == "SLICE"


def test_a_model_failing_inside_openvino_ends_the_run_with_one_line(tmp_path, clip_factory):
    """Nothing wakes infer for a request OpenVINO failed: the run must still end, non-zero,
    with OpenVINO's reason on one line, not hang waiting for the batch."""
    model = write_failing_model(tmp_path / "failing")
    clip = clip_factory(320, 180, 25, 20)
    result = run_cli(
        "ovstream", "run", str(clip), "--model", str(model), "--publish", "none", timeout=120
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "inference failed" in line]
    assert len(lines) == 1, result.stderr
    assert "reshape" in lines[0]

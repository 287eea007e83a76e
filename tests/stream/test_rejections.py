"""Garbage on every socket the pipeline listens on: each piece is rejected, logged once and
counted once, the run goes on to its end, and the summary's count is the number logged."""

from __future__ import annotations

import logging

import pytest
import zmq

from stream import Pipeline, PipelineConfig

pytestmark = pytest.mark.slow

# Every bound socket of a run, and the kind of socket a stranger would talk to it with.
LISTENERS = {
    "frames": zmq.PUSH,  # preprocess
    "tensors": zmq.PUSH,  # infer
    "logits": zmq.PUSH,  # publish
    "status": zmq.PUSH,  # publish
    "control": zmq.PUSH,  # supervisor
    "sink": zmq.PUSH,  # supervisor
    "command": zmq.DEALER,  # supervisor
}
GARBAGE = [[b"junk"], [b"x", b"not json"], [b"x", b'{"v": 99}', b"payload"]]


def test_garbage_on_every_socket_is_counted_as_logged(clip_factory, model, caplog):
    clip = clip_factory(160, 90, 25, 120, name="garbage120")
    config = PipelineConfig(sources=[f"g={clip}"], model=str(model), publish=None, jobs=1)
    ctx = zmq.Context()
    results = []
    try:
        with caplog.at_level(logging.WARNING), Pipeline(config) as pipeline:
            for record in pipeline:
                results.append(record)
                if len(results) == 1:  # every stage is running: now the garbage
                    endpoints = pipeline.supervisor.endpoints
                    for link, kind in LISTENERS.items():
                        sock = ctx.socket(kind)
                        sock.setsockopt(zmq.LINGER, 5000)
                        sock.connect(endpoints[link])
                        for parts in GARBAGE:
                            sock.send_multipart(parts)
                        sock.close()  # lingers until delivered
    finally:
        ctx.term()
    summary = pipeline.summary
    assert summary is not None and summary.exit_code == 0
    assert [r["frame_index"] for r in results] == list(range(120))
    logged = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(logged) == len(LISTENERS) * len(GARBAGE)
    assert summary.rejected == len(logged)

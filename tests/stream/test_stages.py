"""Each downstream stage in its own process on real sockets: malformed input is rejected and
counted, the stage goes on, passes its end of stream on and exits 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from stream.geometry import Geometry
from stream.stages.infer import InferConfig, InferStage
from stream.stages.preprocess import PreprocessConfig, PreprocessStage
from stream.stages.publish import PublishConfig, PublishStage
from stream.wire import messages
from stream.wire.transport import TransportConfig

from .conftest import recv_within, stage_process

META = {"frame_index": 0, "pts": 0.0, "capture_ts": 1700000000.0}


def frame_msg(seq, image, kind=messages.FRAME, stream="s", **meta):
    """A data message of one frame."""
    batch = messages.Batch.single(stream, seq, seq, 0.04 * seq, META["capture_ts"], image)
    return messages.encode_batch(kind, batch, meta)


def batch_msg(seqs, image, kind, stream="s"):
    """A data message of several frames of one stream."""
    batch = messages.Batch.join(
        [messages.Batch.single(stream, s, s, 0.04 * s, META["capture_ts"], image) for s in seqs]
    )
    return messages.encode_batch(kind, batch)


def eos(count, stream="s"):
    return messages.encode(messages.EOS, stream, count, {"count": count})


GARBAGE = [
    [b"junk"],
    [b"s", b"not json"],
    [b"s", json.dumps({"v": 2, "kind": "frame", "stream": "s", "seq": 0, "arrays": []}).encode()],
]


def credit(frames):
    return messages.encode(messages.COMMAND, "infer", 0, {"command": "credit", "frames": frames})


def preprocess_case(model, tmp_path):
    stage = PreprocessStage(PreprocessConfig(["s"], Geometry()), TransportConfig(), {})
    image = np.zeros((256, 455, 3), np.uint8)
    inputs = [
        *GARBAGE,
        frame_msg(0, image, stream="intruder"),  # unknown stream
        frame_msg(0, image),  # a full frame: prepared here
        frame_msg(0, image),  # repeated sequence number
        frame_msg(1, np.zeros((224, 224, 3), np.uint8), prepared=True),  # capture's: passed on
        frame_msg(2, np.zeros((4, 4), np.uint8)),  # not a BGR frame
        frame_msg(3, image, prepared=True),  # "prepared" but not the model input
        eos(4),
    ]
    return stage, "frames", "tensors", inputs, 2, 7


def infer_case(model, tmp_path):
    stage = InferStage(InferConfig(str(model), ["s"]), TransportConfig(), {})
    good = np.zeros((224, 224, 3), np.uint8)
    inputs = [
        *GARBAGE,
        frame_msg(0, good, messages.TENSOR),
        frame_msg(1, np.zeros((200, 200, 3), np.uint8), messages.TENSOR),  # wrong size
        frame_msg(2, good, messages.FRAME),  # wrong kind for this link
        frame_msg(3, good, messages.TENSOR),
        batch_msg([4, 5, 6], good, messages.TENSOR),  # one message, shared among requests
        eos(7),
    ]
    return stage, "tensors", "logits", inputs, 5, 5


def publish_case(model, tmp_path):
    config = PublishConfig(
        str(model), {"s": "a.mp4"}, publish=None, sink=True, output=str(tmp_path / "out.jsonl")
    )
    stage = PublishStage(config, TransportConfig(), {})
    logits = np.zeros(1000, np.float32)
    inputs = [
        *GARBAGE,
        frame_msg(1, logits, messages.LOGITS),  # out of order: held until 0 arrives
        frame_msg(0, logits, messages.LOGITS),
        frame_msg(0, logits, messages.LOGITS),  # a copy: dropped and counted, not rejected
        batch_msg([2, 3], np.ones(1000, np.float32), messages.LOGITS),
        eos(4),
    ]
    return stage, "logits", "sink", inputs, 4, 3


@pytest.mark.parametrize(
    "case", [preprocess_case, infer_case, publish_case], ids=["preprocess", "infer", "publish"]
)
def test_stage_rejects_malformed_messages_and_goes_on(case, model, tmp_path, zctx):
    stage, in_link, out_link, inputs, expected_out, expected_rejected = case(model, tmp_path)
    endpoints = {
        link: f"ipc://{tmp_path}/{link}.sock"
        for link in ("frames", "tensors", "demand", "logits", "control", "sink")
    }
    stage.endpoints = endpoints
    control = zctx.socket(zmq.PULL)
    control.bind(endpoints["control"])
    out = zctx.socket(zmq.PULL)
    out.bind(endpoints[out_link])
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoints[in_link])
    # Infer's credit on the demand link: this test plays infer for preprocess, preprocess for
    # infer (and reads what infer says it can take).
    demand = zctx.socket(zmq.PUSH if in_link == "frames" else zmq.PULL)
    demand.setsockopt(zmq.LINGER, 0)
    if in_link == "frames":
        demand.connect(endpoints["demand"])
        demand.send_multipart(credit(1))  # one frame: every batch after it waits for more
    elif in_link == "tensors":
        demand.bind(endpoints["demand"])
    with stage_process(stage) as proc:
        ready = messages.decode(recv_within(control, 60))
        assert ready.kind == messages.READY, ready.meta
        for parts in inputs:
            push.send_multipart(parts, copy=False)
        received = []
        if out_link == "sink":  # publish sends result records, not wire messages
            for _ in range(expected_out):
                topic, data = recv_within(out, 30)
                received.append(json.loads(bytes(data.buffer)))
            assert [r["frame_index"] for r in received] == [0, 1, 2, 3]
        else:
            while not received or received[-1].kind != messages.EOS:
                if in_link == "frames" and received:
                    demand.send_multipart(credit(1))  # infer took what came: room for more
                received.append(messages.decode(recv_within(out, 30)))
            frames = [row[:2] for m in received[:-1] for row in m.batch.rows()]
            assert sorted(frames) == sorted(set(frames)) and len(frames) == expected_out
        final = None
        while final is None:
            msg = messages.decode(recv_within(control, 30))
            if msg.kind == messages.STATS and msg.meta.get("final"):
                final = msg
        proc.join(30)
        assert proc.exitcode == 0
        assert final.meta["complete"] is True
        assert final.meta["stats"]["rejected"] == expected_rejected
        if in_link == "tensors":  # its queue's room, then each frame it ran, and the rejected
            credits = []
            while demand.poll(1000):
                credits.append(messages.decode(demand.recv_multipart()).meta["frames"])
            assert sum(credits) == 2 * stage.config.max_batch + expected_out + 1, credits
        if out_link == "sink":
            assert final.meta["stats"]["duplicates"] == 1
    if out_link == "sink":
        lines = (tmp_path / "out.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == received


def test_preprocess_gathers_frames_while_infer_has_no_credit(tmp_path, zctx):
    """Frames that come while infer has no credit wait and go on together as soon as it has
    some: one message per kind (shared memory, inside the message) in arrival order, the end of
    stream after them; with credit a frame alone goes on alone."""
    from stream.wire.shm import FramePool

    stage = PreprocessStage(PreprocessConfig(["s"], Geometry()), TransportConfig(), {})
    endpoints = {
        link: f"ipc://{tmp_path}/{link}.sock" for link in ("frames", "tensors", "demand", "control")
    }
    endpoints["shm"] = str(tmp_path)
    stage.endpoints = endpoints
    pool = FramePool.create(tmp_path, (224, 224, 3), slots=4)
    control, out = zctx.socket(zmq.PULL), zctx.socket(zmq.PULL)
    control.bind(endpoints["control"])
    out.bind(endpoints["tensors"])
    push, demand = zctx.socket(zmq.PUSH), zctx.socket(zmq.PUSH)
    for sock, link in ((push, "frames"), (demand, "demand")):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoints[link])

    def shared(seq):
        slot = pool.acquire()
        index, times = np.array([[0, seq, seq]]), np.array([[0.04 * seq, 1.0]])
        where = messages.Shared([pool.name], (224, 224, 3))
        batch = messages.Batch(["s"], index, times, np.array([[0, slot]]), where)
        return messages.encode_batch(messages.FRAME, batch, {"prepared": True})

    inline = np.zeros((224, 224, 3), np.uint8)
    with stage_process(stage):
        assert messages.decode(recv_within(control, 60)).kind == messages.READY
        for parts in [shared(0), shared(1), frame_msg(2, inline, prepared=True), shared(3)]:
            push.send_multipart(parts, copy=False)
        push.send_multipart(eos(4))
        assert not out.poll(500)  # no credit: nothing goes on
        demand.send_multipart(credit(1))
        got = [messages.decode(recv_within(out, 30)) for _ in range(4)]
        kinds = [(m.kind, m.batch.shared is not None if m.batch else None) for m in got]
        assert kinds == [("tensor", True), ("tensor", False), ("tensor", True), ("eos", None)]
        assert [[row[1] for row in m.batch.rows()] for m in got[:3]] == [[0, 1], [2], [3]]
        assert got[0].batch.data.tolist() == [[0, 0], [0, 1]]  # slot numbers, not pixels


def test_infer_finishes_when_nothing_reads_its_credit(model, tmp_path, zctx):
    """Credit that cannot be sent (preprocess gone after its last end of stream, or not reading)
    never holds infer up: one frame a request gives a credit message per frame, far more than
    the demand link's queue holds, and every frame still gets its result and the run ends."""
    stage = InferStage(InferConfig(str(model), ["s"], max_batch=1), TransportConfig(), {})
    endpoints = {
        link: f"ipc://{tmp_path}/{link}.sock" for link in ("tensors", "demand", "logits", "control")
    }
    stage.endpoints = endpoints  # nothing binds the demand link: its credit is never read
    control, out = zctx.socket(zmq.PULL), zctx.socket(zmq.PULL)
    control.bind(endpoints["control"])
    out.bind(endpoints["logits"])
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoints["tensors"])
    frames = 24
    with stage_process(stage) as proc:
        assert messages.decode(recv_within(control, 60)).kind == messages.READY
        good = np.zeros((224, 224, 3), np.uint8)
        for seq in range(frames):
            push.send_multipart(frame_msg(seq, good, messages.TENSOR), copy=False)
        push.send_multipart(eos(frames))
        received = []
        while not received or received[-1].kind != messages.EOS:
            received.append(messages.decode(recv_within(out, 30)))
        assert sorted(row[1] for m in received[:-1] for row in m.batch.rows()) == list(
            range(frames)
        )
        proc.join(30)
        assert proc.exitcode == 0

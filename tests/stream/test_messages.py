"""The wire format: round trips over real sockets, malformed messages, the result schema."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import zmq

from stream.wire import messages
from stream.wire.messages import MessageError, decode, encode, encode_batch
from stream.wire.transport import NOBLOCK, readable, recv_parts, send_parts

from .conftest import recv_within, wait_for


def two_stream_batch(image_shape=(90, 160, 3)):
    rng = np.random.default_rng(0)
    cam1 = messages.Batch.single(
        "cam1", 7, 3, 0.12, 1700000000.5, rng.integers(0, 256, image_shape, dtype=np.uint8)
    )
    cam2 = messages.Batch.single(
        "cam2", 0, 0, None, 1700000000.6, rng.integers(0, 256, image_shape, dtype=np.uint8)
    )
    cam1b = messages.Batch.single(
        "cam1", 8, 4, 0.16, 1700000000.7, rng.integers(0, 256, image_shape, dtype=np.uint8)
    )
    return messages.Batch.join([cam1, cam2, cam1b])


def test_a_batch_of_several_streams_round_trips_over_a_socket_without_copies(zctx, tmp_path):
    pull = zctx.socket(zmq.PULL)
    pull.bind(f"ipc://{tmp_path}/t.sock")
    push = zctx.socket(zmq.PUSH)
    push.connect(f"ipc://{tmp_path}/t.sock")
    batch = two_stream_batch()
    push.send_multipart(encode_batch(messages.FRAME, batch, {"prepared": True}), copy=False)
    msg = decode(recv_within(pull))
    assert msg.kind == "frame" and msg.meta == {"prepared": True}
    assert list(msg.batch.rows()) == [
        ("cam1", 7, 3, 0.12, 1700000000.5),
        ("cam2", 0, 0, None, 1700000000.6),
        ("cam1", 8, 4, 0.16, 1700000000.7),
    ]
    np.testing.assert_array_equal(msg.batch.data, batch.data)
    assert not msg.batch.data.flags.owndata  # a view of the received buffer


def test_take_gives_views_and_join_renumbers_streams():
    batch = two_stream_batch()
    head, tail = batch.take(0, 1), batch.take(1, 3)
    assert np.shares_memory(head.data, batch.data) and len(tail) == 2
    again = messages.Batch.join([tail, head])
    assert [r[:2] for r in again.rows()] == [("cam2", 0), ("cam1", 8), ("cam1", 7)]
    assert sorted(again.streams) == ["cam1", "cam2"]
    logits = again.with_data(np.zeros((3, 10), np.float32))
    assert logits.data.shape == (3, 10) and logits.streams == again.streams
    with pytest.raises(ValueError):
        again.with_data(np.zeros((2, 10), np.float32))


def test_a_slice_names_only_the_streams_it_holds():
    """A stage that has seen a stream's end rejects any batch naming it, so a slice of a
    batch (infer shares one among requests) must not name the other streams."""
    batch = two_stream_batch()  # cam1, cam2, cam1
    head = batch.take(0, 1)
    assert head.streams == ["cam1"] and head.stream_ids() == ["cam1"]
    assert batch.take(1, 3).stream_ids() == ["cam2", "cam1"]
    assert decode(
        encode_batch(messages.LOGITS, head.with_data(np.zeros((1, 4))))
    ).batch.streams == ["cam1"]


def test_eos_needs_no_payload():
    msg = decode(encode(messages.EOS, "a", 10, {"count": 10}))
    assert msg.kind == "eos" and msg.meta["count"] == 10 and msg.arrays == [] and msg.batch is None


def good():
    return encode_batch(messages.FRAME, two_stream_batch((2, 2, 3)))


def with_header(**changes):
    parts = good()
    header = json.loads(bytes(parts[1]))
    for key, value in changes.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


def with_part(i, array):
    """good() with payload part i (0 index, 1 times, 2 data) replaced, the header to match."""
    parts = good()
    header = json.loads(bytes(parts[1]))
    header["arrays"][i] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    parts[2 + i] = array.tobytes()
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


INDEX = np.array([[0, 7, 3], [1, 0, 0], [0, 8, 4]], np.int64)
TIMES = np.array([[0.12, 1.0], [np.nan, 1.0], [0.16, 1.0]])
SPEC = {"dtype": "uint8", "shape": [3, 2, 2, 3]}

MALFORMED = [
    ("one part", lambda: [b"s"], "part"),
    ("header not JSON", lambda: [b"s", b"\xff{", b""], "not JSON"),
    ("header not an object", lambda: [b"s", b"[1]"], "not a JSON object"),
    ("wrong version", lambda: with_header(v=99), "wire version"),
    ("version 1", lambda: with_header(v=1), "wire version"),
    ("no version", lambda: with_header(v=None), "wire version"),
    ("unknown kind", lambda: with_header(kind="bogus"), "unknown kind"),
    ("topic mismatch", lambda: [b"other", *good()[1:]], "does not match"),
    ("negative seq", lambda: with_header(seq=-1), "negative"),
    ("seq not int", lambda: with_header(seq="1"), "wrong type"),
    ("missing payload", lambda: good()[:4], "announces 3"),
    (
        "bad dtype",
        lambda: with_header(
            arrays=[*json.loads(bytes(good()[1]))["arrays"][:2], {"dtype": "object", "shape": [3]}]
        ),
        "dtype",
    ),
    (
        "bad shape",
        lambda: with_header(
            arrays=[*json.loads(bytes(good()[1]))["arrays"][:2], {"dtype": "uint8", "shape": [-2]}]
        ),
        "shape",
    ),
    (
        "size mismatch",
        lambda: with_header(
            arrays=[
                *json.loads(bytes(good()[1]))["arrays"][:2],
                {"dtype": "uint8", "shape": [3, 3, 3, 3]},
            ]
        ),
        "bytes",
    ),
    ("no streams", lambda: with_header(streams=None), "streams"),
    ("streams not strings", lambda: with_header(streams=["cam1", 2]), "streams"),
    ("streams repeat", lambda: with_header(streams=["cam1", "cam1"]), "distinct"),
    ("stream number out of range", lambda: with_header(streams=["cam1"]), "stream number"),
    ("a stream without frames", lambda: with_header(streams=["cam1", "cam2", "cam3"]), "no frame"),
    ("index not int64", lambda: with_part(0, INDEX.astype(np.int32)), "index"),
    ("index of the wrong width", lambda: with_part(0, INDEX[:, :2].copy()), "index"),
    ("negative frame index", lambda: with_part(0, INDEX * np.array([1, 1, -1])), "negative"),
    ("negative stream number", lambda: with_part(0, INDEX * np.array([-1, 1, 1])), "negative"),
    ("times of another length", lambda: with_part(1, TIMES[:2].copy()), "times"),
    (
        "capture time not finite",
        lambda: with_part(1, TIMES * np.array([1, np.nan])),
        "capture time",
    ),
    ("infinite pts", lambda: with_part(1, TIMES + np.array([np.inf, 0])), "infinite pts"),
    ("data of another length", lambda: with_part(2, np.zeros((2, 2, 2, 3), np.uint8)), "data"),
    (
        "no index",
        lambda: (
            with_header(arrays=[SPEC])
            and [
                good()[0],
                json.dumps({**json.loads(bytes(good()[1])), "arrays": [SPEC]}).encode(),
                good()[4],
            ]
        ),
        "index, times and data",
    ),
    (
        "eos without count",
        lambda: [
            b"s",
            json.dumps({"v": 2, "kind": "eos", "stream": "s", "seq": 0, "arrays": []}).encode(),
        ],
        "count",
    ),
]


@pytest.mark.parametrize("name,make,error", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_messages_are_rejected(name, make, error):
    with pytest.raises(MessageError, match=error):
        decode(make())


@pytest.mark.parametrize(
    "source,masked",
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("rtsp://token@cam/x", "rtsp://***@cam/x"),
        ("rtsp://cam.local/live", "rtsp://cam.local/live"),
        ("/videos/a:b@c.mp4", "/videos/a:b@c.mp4"),
    ],
)
def test_credentials_are_masked(source, masked):
    assert messages.mask_credentials(source) == masked


def test_result_records_follow_the_published_schema():
    schema = messages.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    record = messages.result_record(
        "cam1",
        "rtsp://u:p@h/x",
        {"frame_index": 3, "pts": 0.12, "capture_ts": 1700000000.5},
        [{"class_id": 281, "label": "tabby", "score": 0.9}],
        "resnet50",
        "INT8",
        1700000000.6,
    )
    jsonschema.validate(record, schema)
    assert record["source"] == "rtsp://u:***@h/x"
    assert record["latency_ms"] == pytest.approx(100.0, abs=0.01)
    line = messages.dump_result(record)
    assert json.loads(line) == record and b"\n" not in line
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**record, "topk": []}, schema)


def test_send_parts_and_recv_parts_carry_a_whole_message_over_a_real_socket(zctx, tmp_path):
    """The hot-path helpers: every part arrives, in order, the big one without a copy, and a
    drained socket reads as not readable."""
    pull = zctx.socket(zmq.PULL)
    pull.bind(f"ipc://{tmp_path}/t.sock")
    push = zctx.socket(zmq.PUSH)
    push.connect(f"ipc://{tmp_path}/t.sock")
    batch = two_stream_batch(image_shape=(224, 224, 3))  # 450 KB: over pyzmq's copy threshold
    send_parts(push, encode_batch(messages.TENSOR, batch))
    send_parts(push, encode(messages.EOS, "cam1", 9, {"count": 9}), NOBLOCK)
    if not pull.poll(10_000, zmq.POLLIN):
        pytest.fail("nothing arrived within 10 s")
    first = decode(recv_parts(pull, NOBLOCK))
    np.testing.assert_array_equal(first.batch.data, batch.data)
    assert first.batch.streams == ["cam1", "cam2"]
    wait_for(lambda: readable(pull), 10, "the end of stream")
    second = decode(recv_parts(pull))
    assert (second.kind, second.stream, second.meta) == ("eos", "cam1", {"count": 9})
    assert not readable(pull)
    with pytest.raises(zmq.Again):
        recv_parts(pull, NOBLOCK)


def test_send_parts_without_a_peer_queues_nothing(zctx, tmp_path):
    """A PUSH with nobody connected refuses a NOBLOCK message whole (zmq.Again on the first
    part): the next peer to connect never sees a stray part of it."""
    push = zctx.socket(zmq.PUSH)
    push.bind(f"ipc://{tmp_path}/t.sock")
    parts = encode(messages.EOS, "cam1", 3, {"count": 3})
    with pytest.raises(zmq.Again):
        send_parts(push, parts, NOBLOCK)
    pull = zctx.socket(zmq.PULL)
    pull.connect(f"ipc://{tmp_path}/t.sock")
    wait_for(lambda: _sent(push, parts), 10, "the peer to connect")
    msg = decode(recv_within(pull))
    assert (msg.kind, msg.seq) == ("eos", 3)  # the message sent once connected, whole
    assert not pull.poll(200, zmq.POLLIN)


def _sent(sock, parts) -> bool:
    try:
        send_parts(sock, parts, NOBLOCK)
    except zmq.Again:
        return False
    return True


def test_array_specs_are_checked_once_and_the_table_stays_bounded(monkeypatch):
    """Decode remembers the specs it checked: a shape seen before is accepted without the
    check, a new one is still checked, and ever new shapes cannot grow the table."""
    monkeypatch.setattr(messages, "_SPECS", {})
    monkeypatch.setattr(messages, "MAX_SPECS", 8)
    for n in range(1, 30):
        data = np.zeros((n, 4), np.float32)
        batch = messages.Batch(
            ["s"], np.array([[0, i, i] for i in range(n)], np.int64), np.zeros((n, 2)), data
        )
        assert len(decode(encode_batch(messages.LOGITS, batch)).batch) == n
        assert len(messages._SPECS) <= 8
    good = encode_batch(messages.LOGITS, batch)
    header = json.loads(bytes(good[1]))
    header["arrays"][2]["shape"] = [29, -4]  # a shape never seen: checked, and refused
    with pytest.raises(MessageError, match="shape"):
        decode([good[0], json.dumps(header).encode(), *good[2:]])
    for alike in ([29.0, 4], [29, 4.0]):  # equal to a shape seen, but not whole numbers
        header["arrays"][2]["shape"] = alike
        with pytest.raises(MessageError, match="shape"):
            decode([good[0], json.dumps(header).encode(), *good[2:]])
    header["arrays"][2]["shape"] = [29, 4]  # seen: the payload's size is still checked
    with pytest.raises(MessageError, match="bytes"):
        decode([good[0], json.dumps(header).encode(), *good[2:4], bytes(10)])

"""The wire format: round trips over real sockets, malformed messages, the result schema."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import zmq

from stream.wire import messages
from stream.wire.messages import MessageError, decode, encode

from .conftest import recv_within


def frame_meta(**kw):
    return {"frame_index": 3, "pts": 0.12, "capture_ts": 1700000000.5, **kw}


def test_round_trip_over_a_socket_is_zero_copy(zctx, tmp_path):
    pull = zctx.socket(zmq.PULL)
    pull.bind(f"ipc://{tmp_path}/t.sock")
    push = zctx.socket(zmq.PUSH)
    push.connect(f"ipc://{tmp_path}/t.sock")
    image = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    push.send_multipart(encode(messages.FRAME, "cam1", 7, frame_meta(), [image]), copy=False)
    msg = decode(recv_within(pull))
    assert (msg.kind, msg.stream, msg.seq) == ("frame", "cam1", 7)
    assert msg.meta["frame_index"] == 3 and msg.meta["pts"] == 0.12
    np.testing.assert_array_equal(msg.arrays[0], image)
    assert not msg.arrays[0].flags.owndata  # a view of the received buffer


def test_eos_needs_no_payload():
    msg = decode(encode(messages.EOS, "a", 10, {"count": 10}))
    assert msg.kind == "eos" and msg.meta["count"] == 10 and msg.arrays == []


def good():
    return encode(messages.FRAME, "s", 0, frame_meta(), [np.zeros((2, 2, 3), np.uint8)])


def with_header(**changes):
    parts = good()
    header = json.loads(bytes(parts[1]))
    for key, value in changes.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


MALFORMED = [
    ("one part", lambda: [b"s"], "part"),
    ("header not JSON", lambda: [b"s", b"\xff{", b""], "not JSON"),
    ("header not an object", lambda: [b"s", b"[1]"], "not a JSON object"),
    ("wrong version", lambda: with_header(v=99), "wire version"),
    ("no version", lambda: with_header(v=None), "wire version"),
    ("unknown kind", lambda: with_header(kind="bogus"), "unknown kind"),
    ("topic mismatch", lambda: [b"other", *good()[1:]], "does not match"),
    ("negative seq", lambda: with_header(seq=-1), "negative"),
    ("seq not int", lambda: with_header(seq="1"), "wrong type"),
    ("missing payload", lambda: good()[:2], "announces 1"),
    ("bad dtype", lambda: with_header(arrays=[{"dtype": "object", "shape": [2, 2, 3]}]), "dtype"),
    ("bad shape", lambda: with_header(arrays=[{"dtype": "uint8", "shape": [-2]}]), "shape"),
    (
        "size mismatch",
        lambda: with_header(arrays=[{"dtype": "uint8", "shape": [3, 3, 3]}]),
        "bytes",
    ),
    ("no frame_index", lambda: with_header(frame_index=None), "frame_index"),
    ("pts not a number", lambda: with_header(pts="soon"), "pts"),
    (
        "eos without count",
        lambda: [
            b"s",
            json.dumps({"v": 1, "kind": "eos", "stream": "s", "seq": 0, "arrays": []}).encode(),
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
        frame_meta(),
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

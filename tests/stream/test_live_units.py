"""The pure parts of live sources: backoff, credential scrubbing, source kinds and stream ids,
FFmpeg open arguments, the latest-frame slot, the sources file (bad-input table), and the status
and result records against their schemas."""

from __future__ import annotations

import threading
import time

import jsonschema
import pytest
import zmq

from stream.errors import UserError
from stream.sources.config_file import ConfigError, parse_sources_toml
from stream.sources.live import Backoff, LatestSlot, wait_unless_stopped
from stream.sources.live_errors import describe_error, scrub
from stream.sources.live_options import LiveOptions, default_stream_id, is_live_url, open_args
from stream.sources.spec import SourceSpec, parse_sources
from stream.subscribe import SubscribeTimeout, subscribe
from stream.wire import messages
from stream.wire.transport import free_tcp_port

# ------------------------------------------------------------------------------ backoff


def test_backoff_doubles_up_to_the_cap_and_resets():
    b = Backoff(0.5, 4.0, 2.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.failures == 6
    b.reset()
    assert b.next() == 0.5


@pytest.mark.parametrize("initial, cap, factor", [(0, 1, 2), (2, 1, 2), (1, 2, 0.5), (-1, 1, 2)])
def test_backoff_rejects_nonsense(initial, cap, factor):
    with pytest.raises(ValueError):
        Backoff(initial, cap, factor)


def test_wait_unless_stopped_returns_early_on_stop():
    checks = []

    def stop_on_third_check() -> bool:
        checks.append(1)
        return len(checks) == 3

    assert wait_unless_stopped(10.0, stop_on_third_check)
    assert len(checks) == 3  # it returned at the check that saw the stop, not after 10 s
    assert not wait_unless_stopped(0.05, lambda: False)


# ------------------------------------------------------------------------------ credentials

URL = "rtsp://alice:p%40ss%3Aw%2Frd@10.0.0.5:554/stream1"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            f"Server returned 401 Unauthorized: '{URL}'",
            "Server returned 401 Unauthorized: 'rtsp://alice:***@10.0.0.5:554/stream1'",
        ),
        ("auth failed for p@ss:w/rd", "auth failed for ***"),  # the decoded password
        ("nothing secret here", "nothing secret here"),
        ("", ""),
    ],
)
def test_scrub_takes_the_password_out(text, expected):
    assert scrub(text, URL) == expected


def test_scrub_without_a_password_changes_nothing():
    assert scrub("error at rtsp://cam/x", "rtsp://cam/x") == "error at rtsp://cam/x"


def test_describe_error_is_one_scrubbed_line():
    import av

    exc = av.error.HTTPUnauthorizedError(875574520, "Server returned 401 Unauthorized", URL)
    line = describe_error(exc, URL)
    assert "p@ss" not in line and "p%40ss" not in line and "\n" not in line


@pytest.mark.parametrize(
    "url, live, stream_id",
    [
        ("rtsp://alice:secret@cam.local:554/", True, "cam.local"),
        ("rtsp://alice:secret@cam.local/live/ch1", True, "ch1"),
        ("http://example.com/hls/index.m3u8", True, "index"),
        ("udp://239.0.0.1:1234", True, "239.0.0.1"),
        ("rtmp://server/app/key", True, "key"),
        ("/dev/video0", True, "video0"),
        ("videos/front door.mp4", False, "front door"),
        ("file:///data/clip.mkv", False, "clip"),
    ],
)
def test_source_kind_and_default_stream_id_never_use_credentials(url, live, stream_id):
    assert is_live_url(url) is live
    assert default_stream_id(url) == stream_id
    spec = SourceSpec.parse(url)
    assert spec.is_live is live and "secret" not in spec.stream_id


def test_duplicate_stream_ids_are_reported_without_the_password():
    with pytest.raises(UserError) as err:
        parse_sources(["rtsp://a:secret@h1/cam", "rtsp://b:secret@h2/cam"])
    assert "secret" not in str(err.value) and "NAME=SOURCE" in str(err.value)


def test_the_status_prefix_is_reserved():
    with pytest.raises(UserError, match="reserved"):
        parse_sources(["_status=a.mp4"])


# ------------------------------------------------------------------------------ open arguments


def test_rtsp_opens_over_tcp_with_little_buffering_and_bounded_waits():
    args = open_args("rtsp://cam/x", LiveOptions(open_timeout_s=3, stall_timeout_s=4))
    assert args["timeout"] == (3, 4)
    opts = args["options"]
    assert opts["rtsp_transport"] == "tcp" and opts["fflags"] == "nobuffer"
    assert opts["timeout"] == "4000000"


def test_udp_transport_device_format_and_extra_options():
    assert (
        open_args("rtsp://cam/x", LiveOptions(transport="udp"))["options"]["rtsp_transport"]
        == "udp"
    )
    dev = open_args("/dev/video2", LiveOptions(options={"video_size": "640x480"}))
    assert dev["format"] == "v4l2" and dev["options"]["video_size"] == "640x480"
    assert open_args("rtsp://c/x", LiveOptions(read_timeout_s=1.5))["timeout"][1] == 1.5


# ------------------------------------------------------------------------------ latest slot


def test_latest_slot_keeps_the_newest_and_counts_what_it_replaced():
    slot = LatestSlot()
    assert slot.take(0.0) is None
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(0.0) == 3 and slot.dropped == 2
    assert slot.take(0.01) is None
    slot.put(4)
    assert slot.discard() and slot.dropped == 3


def test_latest_slot_between_a_fast_producer_and_a_slow_consumer():
    slot = LatestSlot()
    taken: list[int] = []

    def consume() -> None:
        while not slot.closed:
            item = slot.take(0.05)
            if item is not None:
                taken.append(item)
                time.sleep(0.01)  # a slow pipeline

    worker = threading.Thread(target=consume)
    worker.start()
    for i in range(200):
        slot.put(i)
        time.sleep(0.001)
    time.sleep(0.05)
    slot.close()
    worker.join(5)
    assert not worker.is_alive()
    assert taken == sorted(taken) and taken[-1] == 199  # in order, and the newest got out
    assert len(taken) + slot.dropped == 200 and slot.dropped > 0


# ------------------------------------------------------------------------------ sources file

GOOD = """
[defaults]
fps = 2
stall_timeout = 3

[[source]]
name = "front"
url = "rtsp://admin:${CAM_PW}@10.0.0.5/stream1"
transport = "udp"
backoff_max = 30

[[source]]
url = "/dev/video0"
options = { video_size = "640x480" }

[[source]]
name = "lobby"
url = "lobby.mp4"
fps = 5
"""


def test_sources_file_with_defaults_per_source_keys_and_env_passwords():
    specs = parse_sources_toml(
        GOOD, "cams.toml", LiveOptions(open_timeout_s=7), environ={"CAM_PW": "s3cret"}
    )
    front, dev, lobby = specs
    assert front.stream_id == "front" and front.url == "rtsp://admin:s3cret@10.0.0.5/stream1"
    assert front.options.transport == "udp" and front.options.backoff_max_s == 30
    assert front.options.stall_timeout_s == 3 and front.options.open_timeout_s == 7
    assert front.fps == 2 and front.is_live
    assert dev.stream_id == "video0" and dev.options.options == {"video_size": "640x480"}
    assert lobby.fps == 5 and not lobby.is_live


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[[source]]\nurl = 'a.mp4'\nfsp = 2", "source 1: unknown key 'fsp'"),
        ("[[source]]\nname = 'x'", "source 1 ('x'): 'url' is required"),
        ("[[source]]\nurl = 'a.mp4'\nfps = -1", "'fps' must be a positive number, got -1"),
        ("[[source]]\nurl = 'a.mp4'\nfps = true", "'fps' must be a positive number"),
        ("[[source]]\nurl = 'rtsp://c/x'\ntransport = 'sctp'", "transport must be 'tcp' or 'udp'"),
        ("[[source]]\nurl = 'rtsp://c/x'\nstall_timeout = 0", "stall_timeout must be a positive"),
        (
            "[[source]]\nurl = 'rtsp://c/x'\nbackoff_max = 0.1",
            "backoff_max (0.1) must not be below backoff_initial",
        ),
        ("[[source]]\nurl = 'rtsp://c/x'\nlive = 'yes'", "'live' must be true or false"),
        ("[[source]]\nurl = 'rtsp://u:${NOPE}@c/x'", "${NOPE}, which is not set"),
        (
            "[[source]]\nname = 'a'\nurl = 'x.mp4'\n[[source]]\nname = 'a'\nurl = 'y.mp4'",
            "name 'a' already used by source 1",
        ),
        ("[[source]]\nname = '_status'\nurl = 'x.mp4'", "reserved"),
        ("[defaults]\nurl = 'x.mp4'\n[[source]]\nurl = 'y.mp4'", "[defaults] cannot set 'url'"),
        ("[camera]\nurl = 'x'", "unknown table or key 'camera'"),
        ("fps = 2", "no sources"),
        ("[[source]\nurl = 'x'", "not valid TOML"),
    ],
)
def test_sources_file_bad_input_gives_one_line_per_problem(text, problem):
    with pytest.raises(ConfigError) as err:
        parse_sources_toml(text, "cams.toml", environ={})
    assert any(problem in p for p in err.value.problems), err.value.problems
    assert all(p.startswith("cams.toml") and "\n" not in p for p in err.value.problems)


def test_sources_file_reports_every_problem():
    text = "[[source]]\nurl = 'a.mp4'\nfps = 0\ntransport = 'x'\n[[source]]\nbogus = 1"
    with pytest.raises(ConfigError) as err:
        parse_sources_toml(text, "c.toml")
    assert len(err.value.problems) == 4, err.value.problems


# ------------------------------------------------------------------------------ records


def test_status_events_follow_their_schema_and_mask_the_password():
    schema = messages.load_status_schema()
    for event, fields in [
        ("connecting", {"attempt": 1}),
        ("connected", {"attempt": 1, "elapsed_ms": 310.5}),
        ("disconnected", {"reason": "stalled: no frame for 5 s"}),
        ("reconnect_scheduled", {"delay_s": 0.5, "attempt": 2}),
        ("error", {"attempt": 2, "reason": "cannot connect: Connection refused"}),
        ("end_of_stream", {"stopped": True}),
    ]:
        record = messages.status_record(
            "cam", URL, event, time.time(), frames=10, sent=9, dropped=1, **fields
        )
        jsonschema.validate(record, schema)
        assert "p%40ss" not in messages.dump_result(record).decode()
    with pytest.raises(ValueError):
        messages.status_record("cam", URL, "exploded", 0.0)


def test_live_frames_without_pts_give_results_with_null_pts():
    import numpy as np

    batch = messages.Batch.single("cam", 0, 7, None, 1700000000.25, np.zeros((2, 2, 3), np.uint8))
    msg = messages.decode(messages.encode_batch(messages.FRAME, batch))
    [(_, _, frame_index, pts, capture_ts)] = msg.batch.rows()
    assert pts is None
    record = messages.result_record(
        "cam",
        URL,
        {"frame_index": frame_index, "pts": pts, "capture_ts": capture_ts},
        [{"class_id": 1, "label": "x", "score": 0.5}],
        "m",
        "INT8",
        1700000000.5,
    )
    jsonschema.validate(record, messages.load_schema())
    assert record["pts"] is None and record["latency_ms"] == 250.0


def test_subscribe_separates_results_from_status_events():
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    status = messages.status_record(
        "cam", "rtsp://c/x", "connected", 1.0, frames=0, sent=0, dropped=0
    )
    result = {"stream_id": "cam", "frame_index": 0}
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            pub.send_multipart([b"_status/cam", messages.dump_result(status)])
            pub.send_multipart([b"cam", messages.dump_result(result)])
            pub.send_multipart([b"other", messages.dump_result({**result, "stream_id": "other"})])
            time.sleep(0.02)

    worker = threading.Thread(target=publish)
    worker.start()
    try:

        def first(events: str, n: int = 6) -> list[dict]:
            got = []
            for rec in subscribe(endpoint, "cam", timeout_s=5, events=events):
                got.append(rec)
                if len(got) == n:
                    return got
            return got

        assert all("event" not in r for r in first("results"))
        assert all(r["event"] == "connected" for r in first("status"))
        both = first("all", 10)
        assert {"event" in r for r in both} == {True, False}
        assert all(r["stream_id"] == "cam" for r in both)
        with pytest.raises(UserError):
            next(subscribe(endpoint, events="nope"))
    finally:
        stop.set()
        worker.join(5)
        pub.close()
        ctx.term()
    assert SubscribeTimeout  # the type callers catch

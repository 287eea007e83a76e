"""`--annotate DIR` on live sources: capture sends copies of its frames over the annotate link,
the annotator matches them to results and writes segments of `--annotate-segment` seconds, the
one being written only ever under `.part`. Real PyAV, ZeroMQ, OpenVINO and RTSP server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
import zmq

from stream import PipelineConfig
from stream.errors import UserError
from stream.ops.annotate import Mark
from stream.ops.annotate_link import (
    AnnotateLink,
    FrameTap,
    TapError,
    TapFrame,
    decode_tap,
    encode_tap,
)
from stream.ops.annotate_live import Annotation, LiveAnnotator, segment_seconds
from stream.ops.annotate_segments import SegmentWriter
from stream.sources.spec import SourceSpec
from stream.wire.transport import TransportConfig
from tests.conftest import run_cli, start_cli
from tests.stream.conftest import wait_for

EXIT_TIMEOUT_S = 30.0


def planes(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A random yuv420p frame as the (h*3/2, w) array the link carries."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height * 3 // 2, width), dtype=np.uint8)


def tap_frame(index: int, t: float, width: int = 64, height: int = 48) -> TapFrame:
    return TapFrame("cam", index, t, 1000.0 + t, width, height, planes(width, height, index))


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_link_message_round_trips():
    image = planes(64, 48)
    parts = encode_tap("cam", 7, 0.28, 1234.5, image, 1, 2)
    tap = decode_tap([bytes(parts[0]), parts[1].tobytes()])
    assert (tap.stream_id, tap.frame_index, tap.pts, tap.capture_ts) == ("cam", 7, 0.28, 1234.5)
    assert (tap.width, tap.height, tap.color_range, tap.colorspace) == (64, 48, 1, 2)
    assert np.array_equal(tap.planes, image)
    no_pts = decode_tap([encode_tap("cam", 0, None, 99.0, image)[0], image.tobytes()])
    assert no_pts.pts is None and no_pts.time == 99.0


def header(**changes) -> bytes:
    fields = {"v": 1, "stream_id": "cam", "frame_index": 3, "pts": 0.1, "capture_ts": 5.0}
    fields.update(width=64, height=48, color_range=0, colorspace=2)
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v != "DROP"}).encode()


PAYLOAD = bytes(64 * 48 * 3 // 2)
BAD_MESSAGES = [
    ([header()], "expected 2 parts (header, planes), got 1"),
    ([b"\xff\xfe", PAYLOAD], "header is not JSON"),
    ([b"[1, 2]", PAYLOAD], "header is not a JSON object"),
    ([header(v=2), PAYLOAD], "version: expected 1, got 2"),
    ([header(stream_id=""), PAYLOAD], "stream_id: expected a name, got ''"),
    ([header(frame_index="3"), PAYLOAD], "frame_index: expected int, got '3'"),
    ([header(frame_index=-1), PAYLOAD], "frame_index: expected >= 0, got -1"),
    ([header(frame_index=True), PAYLOAD], "frame_index: expected int, got True"),
    ([header(width=63), PAYLOAD], "size: expected even sides of 2..16384, got 63x48"),
    ([header(height=0), PAYLOAD], "size: expected even sides of 2..16384, got 64x0"),
    ([header(), PAYLOAD[:-1]], "planes: expected 4608 bytes, got 4607"),
    ([header(capture_ts="DROP"), PAYLOAD], "capture_ts: expected float, got None"),
    ([header(pts=float("nan")), PAYLOAD], "pts: expected a finite number, got nan"),
]


@pytest.mark.parametrize("parts, error", BAD_MESSAGES, ids=[e for _, e in BAD_MESSAGES])
def test_malformed_link_messages_are_rejected_with_a_reason(parts, error):
    with pytest.raises(TapError) as info:
        decode_tap(parts)
    assert str(info.value) == error


@pytest.mark.parametrize("value", [0, -1, float("nan")])
def test_a_segment_length_must_be_positive(value):
    with pytest.raises(UserError, match="--annotate-segment: expected seconds > 0"):
        segment_seconds(value)


def test_segments_are_cut_by_stream_time_and_renamed_when_closed(tmp_path):
    """25 fps for 2.5 s in 1 s segments: three files of 25, 25 and 13 frames; the open one is
    only ever `.part`; the stream's clock going back (a reconnect) starts a new one; a second
    writer into the same folder numbers on."""
    writer = SegmentWriter(tmp_path, "cam", segment_s=1.0)
    folder = tmp_path / "cam"
    for i in range(63):
        writer.write(tap_frame(i, 10 + i / 25), Mark("tabby", 0.9, 10 + i / 25, i))
        names = {p.name for p in folder.iterdir()}  # (the muxer creates a file lazily)
        finals = {f"cam-{n:05d}.mp4" for n in range(i // 25)}
        assert names - finals <= {f"cam-{i // 25:05d}.mp4.part"} and finals <= names
    assert writer.close() == folder / "cam-00002.mp4"
    counts = [frame_count(folder / f"cam-{n:05d}.mp4") for n in range(3)]
    assert counts == [25, 25, 13] and writer.frames == 63 and writer.segments == 3
    with av.open(str(folder / "cam-00001.mp4")) as container:
        times = [round(f.time, 3) for f in container.decode(video=0)]
    assert times[:3] == [0.0, 0.04, 0.08]  # each segment starts at 0
    for i, t in enumerate([5.0, 5.04, 1.0]):  # back to 1.0: a new segment
        writer.write(tap_frame(100 + i, t), Mark("tabby", 0.9, t, 100 + i))
    writer.close()
    again = SegmentWriter(tmp_path, "cam", segment_s=1.0)
    again.write(tap_frame(0, 0.0), Mark("tabby", 0.9, 0.0, 0))
    again.close()
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"cam-{n:05d}.mp4" for n in range(6)]
    assert [frame_count(folder / n) for n in names[3:]] == [2, 1, 1]


def record(index: int, t: float) -> dict:
    return {
        "stream_id": "cam",
        "frame_index": index,
        "pts": t,
        "topk": [{"label": "tabby", "class_id": 281, "score": 0.9}],
    }


def test_live_annotator_matches_frames_to_results_over_a_real_link(tmp_path):
    """Frames 0..39 sent over the link (a real PUSH socket, as capture's FrameTap sends them),
    results for the even ones only: the odd frames are discarded, and a result whose frame never
    came (frame 50) is counted as missing, so written + missing == results."""
    annotator = LiveAnnotator(tmp_path, [SourceSpec.parse("cam=rtsp://h/s")], segment_s=0.5)
    ctx = zmq.Context()
    stats: dict = {}
    tap = FrameTap(AnnotateLink(annotator.link.endpoint, (64, 48)), "cam", stats)
    try:
        tap.open(ctx, TransportConfig())
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(planes(96, 64, i), format="yuv420p")
            assert tap.send(i, i / 25, time.time(), frame)  # scaled to 64x48 on the way
        for i in range(0, 40, 2):
            annotator.on_result(record(i, i / 25))
        annotator.on_result(record(50, 2.0))
        annotator.on_stream_end("cam")
        stats_out = annotator.close(timeout_s=30)
    finally:
        tap.sock.close(linger=0)
        ctx.term()
    assert stats["annotate_sent"] == 40 and stats["annotate_dropped"] == 0
    assert (stats_out.frames, stats_out.missing, stats_out.errors) == (20, 1, [])
    names = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert names == ["cam-00000.mp4", "cam-00001.mp4", "cam-00002.mp4"]
    # 0.5 s segments from the first frame's time: 0-0.48, 0.56-1.04, 1.12-1.52
    assert [frame_count(tmp_path / "cam" / n) for n in names] == [7, 7, 6]
    assert stats_out.segments == 3
    with av.open(str(tmp_path / "cam" / names[0])) as container:
        first = next(container.decode(video=0))
    assert (first.width, first.height) == (64, 48)


def test_a_stream_id_that_cannot_name_a_file_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"stream id '\.\.' cannot name a file"):
        Annotation(tmp_path, [SourceSpec.parse("..=rtsp://h/s")])
    assert list(tmp_path.iterdir()) == []


def test_annotation_off_means_no_link_for_any_capture():
    config = PipelineConfig(sources=["cam=rtsp://h/s", "a.mp4"], model="m", publish=None)
    assert config.annotate is None
    assert all(config.capture_config(s).annotate is None for s in config.specs)
    link = AnnotateLink("ipc:///tmp/x.sock")
    config.annotate = link
    live, file = (config.capture_config(s) for s in config.specs)
    assert live.annotate == link and file.annotate is None  # files are decoded again instead


@pytest.mark.parametrize(
    "args, line",
    [
        (["--annotate", "{tmp}", "--annotate-segment", "0"], "expected seconds > 0, got 0"),
        (["--annotate-segment", "5"], "--annotate-segment needs --annotate DIR"),
    ],
)
def test_a_bad_segment_length_is_one_line_and_exit_2(tmp_path, args, line):
    args = [a.replace("{tmp}", str(tmp_path / "ann")) for a in args]
    proc = run_cli("ovstream", "run", "cam=rtsp://h/s", *args, "--model", str(tmp_path))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and line in proc.stderr, proc.stderr
    assert proc.stderr.startswith("ovstream: error: --annotate-segment")


SUMMARY = re.compile(
    r"annotated live: (\d+) frame\(s\) in (\d+) segment\(s\), (\d+) without a source frame "
    r"\((\d+) dropped on the link\), ([\d.]+) ms/frame \(\+([\d.]+) ms/frame copying in capture\)"
)


@pytest.mark.slow
@pytest.mark.rtsp
def test_a_live_run_writes_whole_segments_a_frame_per_result(
    rtsp_server, clip_factory, model, tmp_path
):
    """A live source and a file in one run: the file's video as before, the live one in
    segments."""
    clip = clip_factory(320, 180, 25, 100, name="live", gop=25)
    file = clip_factory(320, 180, 25, 40, name="annotate_cat")
    server = rtsp_server(file=clip, path="/cam")
    out, folder = tmp_path / "results.jsonl", tmp_path / "ann"
    proc = start_cli(
        "ovstream",
        "run",
        f"cam={server.url}",
        f"file={file}",
        "--model",
        str(model),
        "--publish",
        "none",
        "--output",
        str(out),
        "--annotate",
        str(folder),
        "--annotate-segment",
        "1",
        "--no-progress",
    )
    seen_part = set()

    def segments_only_final_or_part() -> bool:
        """While running: one `.part` at most, every final name whole (decodes to the end)."""
        if proc.poll() is not None:
            pytest.fail(f"ovstream exited ({proc.returncode}):\n{proc.communicate()[1]}")
        names = sorted(p.name for p in (folder / "cam").glob("cam-*"))
        parts = [n for n in names if n.endswith(".mp4.part")]
        assert len(parts) <= 1, names
        seen_part.update(parts)
        done = [n for n in names if n.endswith(".mp4")]
        for name in done:
            assert frame_count(folder / "cam" / name) > 0
        return len(done) >= 3 and bool(seen_part)

    try:
        wait_for(lambda: (folder / "cam").is_dir(), 60, "the stream's annotate folder")
        wait_for(segments_only_final_or_part, 90, "three closed segments")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"no exit within {EXIT_TIMEOUT_S} s of SIGINT:\n{proc.communicate()[1]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    names = sorted(p.name for p in (folder / "cam").iterdir())
    assert all(n.endswith(".mp4") for n in names), names  # no .part left
    assert len(names) > 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    results = [r for r in records if r["stream_id"] == "cam"]
    assert len(results) + 40 == len(records)
    assert frame_count(folder / "file.mp4") == 40
    assert "ovstream: annotated 1 video(s), 40 frame(s) in " in err
    written = sum(frame_count(folder / "cam" / n) for n in names)
    match = SUMMARY.search(err)
    assert match, err
    frames, segments, missing, dropped = (int(g) for g in match.groups()[:4])
    assert (frames, segments) == (written, len(names))
    assert written + missing == len(results)
    if missing == 0 and dropped == 0:
        assert written == len(results)
    assert float(match.group(5)) > 0

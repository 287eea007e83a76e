"""The rtsp_server fixture serves a real stream: PyAV decodes it bit-exactly over TCP and UDP, and
stall/resume, stop/start, kill and basic auth behave as a live camera would."""

from __future__ import annotations

import hashlib
import time
from itertools import pairwise
from pathlib import Path

import av
import pytest

pytestmark = pytest.mark.rtsp

FPS = 25
CLIP_FRAMES = 20


def open_rtsp(url: str, transport: str = "tcp", read_timeout: float = 5.0):
    """Open like a live capture would: explicit transport, socket and PyAV open/read timeouts."""
    # FFmpeg >= 5 calls the RTSP socket I/O timeout `timeout` (microseconds); `stimeout` is gone.
    options = {"rtsp_transport": transport, "timeout": str(5_000_000)}
    return av.open(url, options=options, timeout=(10.0, read_timeout))


def decode(container, n: int) -> list[av.VideoFrame]:
    """The next `n` frames (each packet read bounded by the container's read timeout)."""
    frames = []
    for frame in container.decode(video=0):
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


def digest(frame: av.VideoFrame) -> str:
    return hashlib.md5(frame.to_ndarray().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def clip(clip_factory) -> Path:
    return clip_factory(320, 180, FPS, CLIP_FRAMES, name="rtsp_clip")


@pytest.fixture(scope="module")
def clip_digests(clip) -> list[str]:
    with av.open(str(clip)) as container:
        return [digest(f) for f in container.decode(video=0)]


def assert_continues_clip(frames: list[av.VideoFrame], clip_digests: list[str]) -> None:
    """Frames are the clip's frames, in order, wrapping around at its end, bit for bit."""
    got = [digest(f) for f in frames]
    assert got[0] in clip_digests, "first frame is not a frame of the clip"
    start = clip_digests.index(got[0])
    expected = [clip_digests[(start + i) % len(clip_digests)] for i in range(len(got))]
    assert got == expected


def test_file_over_tcp_loops_bit_exact_with_increasing_timestamps(rtsp_server, clip, clip_digests):
    server = rtsp_server(file=clip, path="/cam")
    assert server.url == f"rtsp://127.0.0.1:{server.port}/cam"
    with open_rtsp(server.url) as container:
        frames = decode(container, 2 * CLIP_FRAMES + 5)  # crosses the loop point twice
    assert {(f.width, f.height) for f in frames} == {(320, 180)}
    assert_continues_clip(frames, clip_digests)
    times = [f.time for f in frames if f.time is not None]  # FFmpeg gives the very first none
    assert len(times) >= len(frames) - 1
    assert all(b > a for a, b in pairwise(times)), times


def test_file_over_udp(rtsp_server, clip, clip_digests):
    server = rtsp_server(file=clip)
    with open_rtsp(server.url, transport="udp") as container:
        frames = decode(container, 10)
    assert len(frames) == 10
    assert_continues_clip(frames, clip_digests)


def test_live_pattern(rtsp_server):
    server = rtsp_server(pattern="320x240@25")
    with open_rtsp(server.url) as container:
        frames = decode(container, 10)
    assert [(f.width, f.height) for f in frames] == [(320, 240)] * 10


def test_once_plays_the_file_once_then_ends(rtsp_server, clip, clip_digests):
    server = rtsp_server(file=clip, once=True)
    with open_rtsp(server.url) as container:
        frames = decode(container, 10 * CLIP_FRAMES)  # ends by itself long before that
    assert [digest(f) for f in frames] == clip_digests


def test_stall_stops_frames_and_resume_restarts_them(rtsp_server, clip, clip_digests):
    server = rtsp_server(file=clip)
    with open_rtsp(server.url, read_timeout=1.0) as container:
        before = decode(container, 5)
        server.stall()
        # Frames already received (FFmpeg buffers about a second while probing the stream) still
        # come out at once; then a read times out, and keeps doing so.
        drained = []
        t0 = time.monotonic()
        with pytest.raises(av.ExitError):  # a read times out: frames stopped
            for frame in container.decode(video=0):
                drained.append(frame)
                assert len(drained) <= 2 * FPS, "frames keep arriving during a stall"
        with pytest.raises(av.ExitError):
            decode(container, 1)
        stalled_for = time.monotonic() - t0
        server.resume()
        after = decode(container, 10)
    assert stalled_for >= 1.9
    # Nothing was lost: the stream carries on from where it stopped, bit-exact...
    assert_continues_clip(before + drained + after, clip_digests)
    # ...with timestamps that jump over the stall, as a camera's would. (The first frames out
    # after resume can be pre-stall ones that the decoder held back to reorder B-frames.)
    last_before = max(f.time for f in before + drained if f.time is not None)
    first_after = max(f.time for f in after if f.time is not None)
    assert first_after - last_before >= stalled_for - 0.5


def test_stop_then_start_on_the_same_port(rtsp_server, clip, clip_digests):
    server = rtsp_server(file=clip)
    url, port = server.url, server.port
    with open_rtsp(url, read_timeout=5.0) as container:
        decode(container, 5)
        assert server.stop() == 0  # SIGTERM is a clean exit
        try:
            rest = decode(container, 1000)  # what was buffered, then end of stream
        except av.FFmpegError:
            rest = None  # or an error (at the latest the 5 s read timeout): the client is told
        assert rest is None or len(rest) < 1000
    with pytest.raises(ConnectionRefusedError):
        open_rtsp(url)
    server.start()
    assert (server.url, server.port) == (url, port)
    with open_rtsp(server.url) as container:
        assert_continues_clip(decode(container, 5), clip_digests)


def test_kill_then_start_again(rtsp_server, clip):
    server = rtsp_server(file=clip)
    with open_rtsp(server.url) as container:
        decode(container, 3)
    assert server.kill() == -9
    server.start()
    with open_rtsp(server.url) as container:
        assert len(decode(container, 3)) == 3


def test_wrong_path_is_404(rtsp_server, clip):
    server = rtsp_server(file=clip, path="/cam")
    with pytest.raises(av.error.HTTPNotFoundError):
        open_rtsp(server.url.replace("/cam", "/nope"))


@pytest.mark.parametrize(
    "user, password",
    [(None, None), ("alice", "wrong"), ("bob", "p@ss:w/rd"), ("alice", "")],
    ids=["no-credentials", "wrong-password", "wrong-user", "empty-password"],
)
def test_basic_auth_refuses_bad_credentials(rtsp_server, clip, user, password):
    server = rtsp_server(file=clip, user="alice", password="p@ss:w/rd")
    url = server.url if user is None else server.url_for(user, password)
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(url)


def test_basic_auth_accepts_the_right_password(rtsp_server, clip):
    server = rtsp_server(file=clip, user="alice", password="p@ss:w/rd")
    assert server.url_for() == f"rtsp://alice:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}/stream"
    with open_rtsp(server.url_for()) as container:
        assert len(decode(container, 3)) == 3

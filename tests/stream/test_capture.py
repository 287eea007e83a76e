"""Capture's pure parts on real decoded video: sources, sampling, early downscale, bad files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from stream.errors import UserError
from stream.geometry import Geometry, prepare
from stream.sources.decode import (
    DecodeCounters,
    PtsSampler,
    WindowScaler,
    decode_frames,
    open_source,
)
from stream.sources.spec import SourceSpec, parse_sources

from .conftest import count_frames


@pytest.mark.parametrize(
    "text,stream_id,url",
    [
        ("videos/front door.mp4", "front door", "videos/front door.mp4"),
        ("cam1=videos/a.mp4", "cam1", "videos/a.mp4"),
        ("rtsp://u:p@cam/live", "live", "rtsp://u:p@cam/live"),
        ("back=rtsp://cam/x?y=1", "back", "rtsp://cam/x?y=1"),
        ("dir/a=b.mp4", "a=b", "dir/a=b.mp4"),
    ],
)
def test_source_spec(text, stream_id, url):
    assert SourceSpec.parse(text) == SourceSpec(stream_id, url)


def test_duplicate_stream_ids_are_refused():
    with pytest.raises(UserError, match="NAME=SOURCE"):
        parse_sources(["a/x.mp4", "b/x.mp4"])


def test_sampler_keeps_one_frame_per_period():
    pts = [i / 25 for i in range(100)]  # 4 s at 25 fps

    def kept(fps):
        sampler = PtsSampler(fps)
        return sum(sampler.keep(t) for t in pts)

    assert kept(1.0) == 4
    assert kept(5.0) == 20
    assert kept(None) == 100
    assert kept(100.0) == 100  # never more than there are


def test_sampler_starts_at_the_first_pts():
    sampler = PtsSampler(2.0)
    assert [sampler.keep(t) for t in (10.0, 10.2, 10.5, 10.9, 11.0)] == [
        True,
        False,
        True,
        False,
        True,
    ]


@pytest.mark.parametrize("size", [(1920, 1080), (640, 360), (160, 90), (180, 320)])
def test_decoder_side_window_gives_what_prepare_gives(clip_factory, size):
    """Capture's crop+scale on the YUV frame == prepare() on the full BGR frame (same window)."""
    geometry = Geometry()
    clip = clip_factory(*size, 25, 3)
    scaler = WindowScaler(geometry)
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            a = scaler(frame)
            b = prepare(frame.to_ndarray(format="bgr24"), geometry)
            assert a.shape == b.shape == (224, 224, 3) and a.dtype == np.uint8
            assert a.flags.c_contiguous
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """A frame of either format as BGR; i420 with the BT.601 limited-range conversion that
    OpenVINO's I420 input applies (and OpenCV's)."""
    import cv2

    if frame.shape[-1] == 3:
        return frame
    return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_YUV2BGR_I420)


@pytest.mark.parametrize("fmt", ["bgr", "i420"])
@pytest.mark.parametrize(
    ("colorspace", "color_range"), [("ITU601", "MPEG"), ("ITU709", "MPEG"), ("ITU709", "JPEG")]
)
def test_decoder_side_window_honours_the_frames_colour_tags(photos, colorspace, color_range, fmt):
    """BT.601/BT.709, limited/full range: the scaler's BGR is what PyAV's conversion gives, and
    its I420 is BT.601 limited range whatever the source's tags (what OpenVINO converts from)."""
    import cv2

    img = cv2.resize(photos["coffee"], (1280, 720), interpolation=cv2.INTER_CUBIC)
    frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(
        format="yuv420p", dst_colorspace=colorspace, dst_color_range=color_range
    )
    scaled = WindowScaler(Geometry(), fmt)(frame)
    assert scaled.shape == Geometry().frame_shape(fmt) and scaled.flags.c_contiguous
    got = as_bgr(scaled).astype(int)
    expected = prepare(frame.to_ndarray(format="bgr24"), Geometry()).astype(int)
    assert np.abs(got - expected).mean() < 2.0
    # The photo itself; i420 has its chroma at half the input size, and re-matrixes BT.709
    # (measured: 2.1-3.1 against 1.7-2.2 for bgr).
    bound = 3.0 if fmt == "bgr" else 3.5
    assert np.abs(got - prepare(img, Geometry()).astype(int)).mean() < bound


def test_an_untagged_conversion_of_bt709_would_be_caught(photos):
    """The check above can fail: BT.709 planes read as BT.601 are off by more than its bound."""
    import cv2

    img = cv2.resize(photos["coffee"], (1280, 720), interpolation=cv2.INTER_CUBIC)
    frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range="JPEG"
    )
    misread = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
    assert np.abs(misread.astype(int) - img).mean() > 3.0


@pytest.mark.parametrize("fmt", ["bgr", "i420"])
@pytest.mark.parametrize(
    "pix_fmt",
    ["yuv420p", "yuvj420p", "nv12", "yuv420p10le", "yuyv422", "yuv422p", "yuv444p", "bgra"],
)
def test_decoder_side_window_handles_every_pixel_layout(photos, pix_fmt, fmt):
    """Semi-planar (NV12: hardware decoders), packed 4:2:2 (YUYV: webcams) and 10-bit frames
    are cropped at an odd offset (x=163 at 640x360) without misplacing their chroma."""
    import cv2

    img = cv2.resize(photos["coffee"], (640, 360), interpolation=cv2.INTER_CUBIC)
    assert Geometry().source_window(640, 360)[0] % 2 == 1
    frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format=pix_fmt)
    got = as_bgr(WindowScaler(Geometry(), fmt)(frame)).astype(int)
    expected = prepare(frame.to_ndarray(format="bgr24"), Geometry()).astype(int)
    assert np.abs(got - expected).mean() < 2.5


def test_window_scaler_follows_a_change_of_frame_size(clip_factory):
    """A live stream can come back at another resolution: the scaler rebuilds its filters."""
    geometry = Geometry(policy="resize", width=160, height=120)
    scaler = WindowScaler(geometry)
    for size in [(640, 360), (320, 240), (640, 360)]:
        with av.open(str(clip_factory(*size, 25, 2))) as container:
            frame = next(container.decode(video=0))
            out = scaler(frame)
            expected = prepare(frame.to_ndarray(format="bgr24"), geometry)
        assert out.shape == (120, 160, 3)
        assert np.abs(out.astype(int) - expected.astype(int)).mean() < 2.0


@pytest.mark.parametrize("thread_type", ["AUTO", "NONE"])
def test_decode_counts_every_frame(clip_factory, thread_type):
    clip = clip_factory(320, 180, 30, 25)
    container, stream = open_source(str(clip))
    stream.thread_type = thread_type
    counters = DecodeCounters()
    got = [(i, round(p, 6)) for i, p, _ in decode_frames(container, stream, counters)]
    container.close()
    assert got == [(i, round(p, 6)) for i, p in count_frames(clip)]
    assert counters.decoded == 25 and counters.skipped == 0


def test_corrupt_packets_are_skipped_and_counted(bad_inputs):
    clip = bad_inputs["corrupt"]
    container, stream = open_source(str(clip))
    counters = DecodeCounters()
    got = [i for i, _, _ in decode_frames(container, stream, counters)]
    container.close()
    expected = count_frames(clip)
    assert len(got) == len(expected) == counters.decoded
    assert 0 < counters.decoded < 40
    assert counters.skipped == 40 - counters.decoded
    assert counters.decode_errors >= 1


@pytest.mark.parametrize(
    "name,error",
    [
        ("missing", "no such file"),
        ("not_video", "cannot read .* as video"),
        ("zero_frames", "no video stream"),
    ],
)
def test_unreadable_sources_give_one_line(bad_inputs, name, error):
    with pytest.raises(UserError, match=error) as info:
        open_source(str(bad_inputs[name]))
    assert "\n" not in str(info.value)

"""The one geometric policy: sizes, centring, and early downscaling giving the same input."""

import numpy as np
import pytest

from stream.geometry import Geometry, prepare


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ((1920, 1080), (455, 256)),
        ((640, 360), (455, 256)),
        ((360, 640), (256, 455)),
        ((256, 256), (256, 256)),
        ((100, 50), (512, 256)),
    ],
)
def test_scaled_size_keeps_aspect_with_shorter_side_256(src, expected):
    assert Geometry().scaled_size(*src) == expected


@pytest.mark.parametrize("shape", [(1080, 1920), (360, 640), (640, 360), (50, 100), (224, 224)])
def test_prepare_gives_contiguous_u8_model_input(shape):
    frame = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = prepare(frame, Geometry())
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_prepare_crops_the_centre():
    frame = np.zeros((256, 512, 3), np.uint8)
    frame[:, 144:368] = 255  # the 224 central columns
    out = prepare(frame, Geometry())
    assert out.min() == 255


def test_prepare_keeps_channel_order():
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[..., 0] = 200  # blue in BGR
    out = prepare(frame, Geometry())
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_pre_scaled_frame_skips_the_resize_and_matches():
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    g = Geometry()
    import cv2

    small = cv2.resize(big, g.scaled_size(1280, 720), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(prepare(small, g), prepare(big, g))


def test_stretch_policy():
    out = prepare(
        np.zeros((100, 300, 3), np.uint8), Geometry(policy="resize", width=160, height=120)
    )
    assert out.shape == (120, 160, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "fit"}, "policy must be one of"),
        ({"width": 0}, "positive"),
        ({"resize_shorter": 100}, "must be >= the crop"),
    ],
)
def test_bad_geometry_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Geometry(**kwargs)


@pytest.mark.parametrize("frame", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32)])
def test_prepare_rejects_non_bgr_frames(frame):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        prepare(frame, Geometry())

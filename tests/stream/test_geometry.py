"""The one geometric policy: sizes, centring, and early downscaling giving the same input."""

import cv2
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


@pytest.mark.parametrize(
    ("src", "window"),
    [
        ((1920, 1080), (489, 68, 945, 945)),
        ((640, 360), (163, 22, 315, 315)),
        ((360, 640), (22, 163, 315, 315)),
        ((256, 256), (16, 16, 224, 224)),
        ((100, 50), (28, 3, 44, 44)),
    ],
)
def test_source_window_is_the_centre_crop_in_source_pixels(src, window):
    assert Geometry().source_window(*src) == window


@pytest.mark.parametrize("width", range(57, 2000, 97))
@pytest.mark.parametrize("height", [33, 224, 361, 1080])
def test_source_window_is_inside_the_frame(width, height):
    x, y, w, h = Geometry().source_window(width, height)
    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
    # The square crop stays square, up to torchvision's truncation of the resized long side.
    assert abs(w - h) <= 1 + 0.005 * max(w, h)


def test_crop_first_matches_torchvision_order_on_a_photo(photos):
    """Window then resize == resize the whole frame then centre-crop, up to sub-pixel rounding:
    close, and no whole-pixel shift of torchvision's crop would match better."""
    g = Geometry()
    for img in photos.values():
        for size in [(1920, 1080), (640, 360), (300, 500)]:
            frame = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
            got = prepare(frame, g).astype(int)
            whole = cv2.resize(frame, g.scaled_size(*size), interpolation=cv2.INTER_AREA)
            h, w = whole.shape[:2]
            top, left = round((h - 224) / 2), round((w - 224) / 2)

            def diff(dx, dy, whole=whole, top=top, left=left, got=got):
                crop = whole[top + dy : top + dy + 224, left + dx : left + dx + 224]
                return np.abs(crop.astype(int) - got).mean()

            assert diff(0, 0) < 4.0
            assert diff(0, 0) == min(diff(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))


def test_stretch_policy_window_is_the_whole_frame():
    assert Geometry(policy="resize").source_window(300, 100) == (0, 0, 300, 100)


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


def test_input_problem_names_what_is_wrong():
    g = Geometry()
    assert g.input_problem(np.zeros((224, 224, 3), np.uint8)) is None
    assert "uint8[224, 224, 3]" in g.input_problem(np.zeros((200, 224, 3), np.uint8))
    assert "float32" in g.input_problem(np.zeros((224, 224, 3), np.float32))

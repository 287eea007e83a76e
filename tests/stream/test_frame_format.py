"""Frames between the stages as I420 (YUV 4:2:0 at the model's input size, half the bytes of BGR)
or BGR: the shapes, OpenVINO's conversion inside the compiled model, the run's choice, and
preprocess turning any other frame into the run's format."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream import PipelineConfig
from stream.errors import UserError
from stream.geometry import Geometry, prepare, to_frame_format
from stream.model import compile_model, load_info, softmax
from stream.stages.preprocess import to_tensors
from stream.wire import messages
from tests.conftest import run_cli


def test_frame_shapes_and_what_is_not_one():
    g = Geometry()
    assert g.frame_shape("bgr") == (224, 224, 3)
    assert g.frame_shape("i420") == (336, 224, 1)
    assert g.i420_fits and not Geometry(width=225, height=224).i420_fits
    assert g.shape_problem((336, 224, 1), fmt="i420") is None
    assert g.shape_problem((224, 224, 3), fmt="i420") == (
        "uint8[224, 224, 3] is not the model input i420 uint8[336, 224, 1]"
    )
    assert g.shape_problem((336, 224, 1)) is not None  # bgr
    with pytest.raises(ValueError, match="frame format"):
        g.frame_shape("nv12")


def test_to_frame_format_is_opencvs_bt601_i420(photos):
    image = prepare(photos["coffee"], Geometry())
    assert to_frame_format(image, "bgr") is image
    planes = to_frame_format(image, "i420")
    assert planes.shape == (336, 224, 1) and planes.dtype == np.uint8
    back = cv2.cvtColor(planes[..., 0], cv2.COLOR_YUV2BGR_I420)
    assert np.abs(back.astype(int) - image).mean() < 3.0  # 4:2:0 keeps a quarter of the chroma


def test_the_i420_model_converts_as_opencv_does(model, photos):
    """The same I420 planes: through the compiled model's own conversion, or converted to BGR by
    OpenCV and run on the BGR model, give the same classes and nearly the same scores."""
    info = load_info(model)
    bgr = compile_model(info, batch=2)
    i420 = compile_model(info, batch=2, frame_format="i420")
    assert str(i420.inputs[0].get_partial_shape()) == "[2,336,224,1]"
    images = np.stack([prepare(photos[name], Geometry()) for name in ("chelsea", "coffee")])
    planes = np.stack([to_frame_format(image, "i420") for image in images])
    via_opencv = np.stack([cv2.cvtColor(p[..., 0], cv2.COLOR_YUV2BGR_I420) for p in planes])
    a = softmax(bgr(via_opencv)[0])
    b = softmax(i420(planes)[0])
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() < 0.005, np.abs(a - b).max()  # measured: 0.0016
    # And against the photos' BGR itself: the coffee is espresso either way.
    assert b[1].argmax() == softmax(bgr(images)[0])[1].argmax() == 967


def test_the_run_chooses_i420_where_it_fits(model):
    config = PipelineConfig(sources=["a.mp4"], model=str(model))
    assert config.resolved_frame_format(Geometry()) == "i420"
    assert config.resolved_frame_format(Geometry(width=225, height=225)) == "bgr"
    forced = PipelineConfig(sources=["a.mp4"], model=str(model), frame_format="i420")
    with pytest.raises(UserError, match="needs an even model input size.*225x224"):
        forced.resolved_frame_format(Geometry(width=225, height=224))
    with pytest.raises(UserError, match="frame format must be one of auto, bgr, i420"):
        PipelineConfig(sources=["a.mp4"], model=str(model), frame_format="rgb")


def test_an_unknown_frame_format_is_a_usage_error():
    proc = run_cli("ovstream", "run", "x.mp4", "-m", "m", "--frame-format", "nv12", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "ovstream: error: argument --frame-format: invalid choice: 'nv12' (choose from 'auto', "
        "'bgr', 'i420') (see ovstream run --help)"
    ]


def frame_message(image: np.ndarray, prepared: bool) -> messages.Message:
    batch = messages.Batch.single("s", 0, 0, 0.0, 1.0, image)
    return messages.decode(messages.encode_batch(messages.FRAME, batch, {"prepared": prepared}))


def test_preprocess_makes_the_runs_frames_of_any_bgr_frame(photos):
    g = Geometry()
    frame = cv2.resize(photos["chelsea"], (455, 256))
    batch = to_tensors(frame_message(frame, prepared=False), g, "i420")
    assert batch.data.shape == (1, 336, 224, 1)
    assert (batch.data[0] == to_frame_format(prepare(frame, g), "i420")).all()
    prepared = to_frame_format(prepare(frame, g), "i420")
    passed = to_tensors(frame_message(prepared, prepared=True), g, "i420")
    assert (passed.data[0] == prepared).all()
    with pytest.raises(ValueError, match="not the model input i420"):  # a bgr run's frame
        to_tensors(frame_message(prepare(frame, g), prepared=True), g, "i420")

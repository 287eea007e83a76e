"""Step 2: ONNX -> OpenVINO IR with the preprocessing built in, saved as FP32 and FP16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

from stream.errors import UserError, first_line
from stream.model import ModelInfo
from stream.remote.identity import record_digests

_COLOR = {"BGR": ColorFormat.BGR, "RGB": ColorFormat.RGB}


def to_openvino(onnx_path: Path, normalization: dict[str, Any]) -> ov.Model:
    """Convert the ONNX file and embed preprocessing: u8 NHWC BGR in, normalised NCHW RGB inside.

    After this, callers only crop/resize (stream.geometry); type conversion, colour order and
    mean/scale cannot be got wrong by a caller because the model does them itself.
    """
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise UserError(
            f"OpenVINO could not convert {onnx_path}: {first_line(exc)[:300]}"
        ) from None
    ppp = PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(
        _COLOR[normalization["input_color_order"]]
    )
    inp.model().set_layout(ov.Layout("NCHW"))
    steps = inp.preprocess().convert_element_type(ov.Type.f32)
    if normalization["color_order"] != normalization["input_color_order"]:
        steps.convert_color(_COLOR[normalization["color_order"]])
    steps.mean(list(map(float, normalization["mean"]))).scale(
        list(map(float, normalization["scale"]))
    )
    ppp.output().tensor().set_element_type(ov.Type.f32)
    return ppp.build()


def save_precision(model: ov.Model, folder: Path, info: ModelInfo, fp16: bool) -> Path:
    """Write model.xml/.bin (weights compressed to FP16 or kept FP32) and model.json, which
    records their sha256 (`files`: the model's identity for remote workers)."""
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=fp16)
    info.save(folder)
    record_digests(folder)
    return folder

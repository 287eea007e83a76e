"""Step 1: PyTorch -> ONNX (named input/output, dynamic batch axis)."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from stream.errors import UserError, first_line

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(model: torch.nn.Module, path: Path, width: int, height: int) -> Path:
    """Write `model` as ONNX with input `input` (N,3,H,W float) and output `logits` (N,classes).

    Uses the TorchScript-based exporter: it handles models that `torch.export` cannot trace
    (EfficientNet-Lite's dynamic `view`), and writes one self-contained file.
    """
    dummy = torch.zeros(1, 3, height, width)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:
        raise UserError(f"ONNX export failed: {first_line(exc)[:300]}") from None
    return path


def library_versions() -> dict[str, str]:
    import numpy
    import onnx
    import openvino
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "openvino": openvino.__version__,
        "numpy": numpy.__version__,
    }


def parity_photos() -> list:
    """Real photographs for the parity check (scikit-image ships them; BGR u8)."""
    import cv2
    from skimage import data

    return [
        cv2.cvtColor(getattr(data, n)(), cv2.COLOR_RGB2BGR)
        for n in ("chelsea", "coffee", "astronaut")
    ]


def export_model(arch: str, weights: str, output: Path, name: str | None = None) -> dict[str, Any]:
    """PyTorch -> ONNX -> IR (FP32, FP16) with the parity check; returns a summary.

    Everything is built in a staging folder and moved into `output` only when the parity check
    passed, so a failed export leaves `output` as it was.
    """
    from model_prep import convert, parity, sources
    from model_prep.files import folder_size_mb, staged_output
    from stream.model import ModelInfo

    source = sources.build(arch, weights)
    name = name or arch
    with staged_output(output) as stage:
        (stage / "onnx").mkdir()
        log.info("exporting %s to ONNX", arch)
        onnx_path = export_onnx(
            source.model,
            stage / "onnx" / "model.onnx",
            source.geometry.width,
            source.geometry.height,
        )
        log.info("converting to OpenVINO IR")
        ov_model = convert.to_openvino(onnx_path, source.normalization)
        info = ModelInfo(
            name=name,
            arch=arch,
            precision="FP32",
            geometry=source.geometry,
            labels=source.labels,
            normalization={
                **source.normalization,
                "applied_in": "ir",
                "input": "u8 NHWC " + source.normalization["input_color_order"],
            },
            source=source.info,
            versions=library_versions(),
        )
        convert.save_precision(ov_model, stage / "fp32", info, fp16=False)
        result = parity.check(source, str(stage / "fp32" / "model.xml"), parity_photos())
        print(result.line(), file=sys.stderr)
        if not result.passed:
            raise UserError(f"export of {arch} failed the parity check: {result.line()}")
        for precision in ("fp32", "fp16"):
            info.precision = precision.upper()
            info.extra = {"parity_fp32_vs_torch": result.to_dict()}
            convert.save_precision(ov_model, stage / precision, info, fp16=precision == "fp16")
        sizes = {p: round(folder_size_mb(stage / p), 2) for p in ("fp32", "fp16")}
    return {
        "output": str(output),
        "arch": arch,
        "weights": source.info,
        "parity": result.to_dict(),
        "size_mb": sizes,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model_prep.sources import LITE0

    parser.add_argument(
        "--arch",
        default=LITE0,
        help=f"{LITE0} (default; pretrained weights ship offline) or any "
        "torchvision classification model, e.g. resnet50",
    )
    parser.add_argument(
        "--weights",
        default="pretrained",
        help="'pretrained' (default), 'random', a checkpoint file (.pth), or a "
        "torchvision weights name such as IMAGENET1K_V2",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="model folder to write: fp32/, fp16/ (model.xml/.bin/.json), onnx/",
    )
    parser.add_argument("--name", help="model name recorded in model.json (default: --arch)")


def run(args: argparse.Namespace) -> int:
    summary = export_model(args.arch, args.weights, args.output, args.name)
    sizes = ", ".join(f"{k} {v} MB" for k, v in summary["size_mb"].items())
    print(f"wrote {summary['output']}: {sizes}")
    return 0

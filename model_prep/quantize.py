"""Step 4: INT8 post-training quantization of the FP32 IR with NNCF -> DIR/int8/.

Calibration frames come from image folders and/or videos (sampled evenly), through the runtime's
own geometric preprocessing, fed as the u8 BGR NHWC batch-1 tensors the IR takes. With
`--max-drop X --val DIR`, NNCF's accuracy control keeps the most sensitive layers in floating
point until top-1 accuracy on the labelled folder is within X of FP32's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_prep import media
from stream.errors import UserError, first_line
from stream.model import ModelInfo, load_info
from stream.remote.identity import record_digests

log = logging.getLogger(__name__)

PRESETS = ("performance", "mixed")
WEIGHTED_OPS = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}
INT_TYPES = {"i8", "u8", "i4", "u4"}


@dataclass
class QuantizeOptions:
    """How to quantize; checked on construction."""

    subset_size: int = 300
    """Calibration samples NNCF uses (its guidance: 300); more frames are thinned evenly."""
    preset: str = "performance"
    """`performance` (symmetric activations) or `mixed` (asymmetric activations)."""
    fast_bias_correction: bool = True
    """NNCF's fast bias correction (default) or the slower, sometimes more accurate full one."""
    frames_per_video: int = media.DEFAULT_FRAMES_PER_VIDEO
    """Frames sampled evenly across each video file."""
    max_drop: float | None = None
    """Accuracy control: largest allowed absolute top-1 drop (0.01 = one point); needs `val`."""
    val: Path | None = None
    """Labelled validation folder for accuracy control (sub-folders named by class)."""
    wnids: Path | None = None
    """WordNet id list (one per line, class order) when validation folders are WordNet ids."""

    def __post_init__(self) -> None:
        if self.subset_size < 1:
            raise UserError(f"--subset-size must be at least 1, got {self.subset_size}")
        if self.preset not in PRESETS:
            raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.frames_per_video < 1:
            raise UserError(f"--frames-per-video must be at least 1, got {self.frames_per_video}")
        if self.max_drop is not None and self.val is None:
            raise UserError("--max-drop needs a labelled validation folder: add --val DIR")
        if self.val is not None and self.max_drop is None:
            raise UserError("--val is used by accuracy control: add --max-drop X (e.g. 0.01)")
        if self.max_drop is not None and not 0.0 <= self.max_drop < 1.0:
            raise UserError(
                f"--max-drop is a fraction of top-1 accuracy in [0, 1), got {self.max_drop}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def calibration_frames(
    paths: list[Path], info: ModelInfo, options: QuantizeOptions
) -> media.FrameSet:
    """Prepared calibration frames, thinned evenly to `subset_size`; unreadable files counted."""
    files = media.find_media(paths, "calibration")
    frames = media.load_frames(
        files, info.geometry, options.frames_per_video, "loading calibration data"
    )
    media.report_skipped(frames, "calibration")
    keep = media.even_indices(len(frames.frames), options.subset_size)
    if len(keep) < len(frames.frames):
        frames.frames = [frames.frames[i] for i in keep]
        frames.origins = [frames.origins[i] for i in keep]
    return frames


def quantize_ptq(model: Any, frames: list[np.ndarray], options: QuantizeOptions) -> Any:
    """nncf.quantize on an openvino.Model with batch-1 u8 NHWC frames."""
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(list(media.batches(frames))),
        preset=nncf.QuantizationPreset(options.preset),
        subset_size=min(options.subset_size, len(frames)),
        fast_bias_correction=options.fast_bias_correction,
    )


def top1_validation(compiled: Any, items: Any) -> tuple[float, list[float]]:
    """NNCF validation_fn: top-1 accuracy over (batch, target) items, and each item's hit."""
    output = compiled.output(0)
    hits = [float(int(np.argmax(compiled(x)[output])) == int(t)) for x, t in items]
    return (float(np.mean(hits)) if hits else 0.0), hits


class _RevertedOps(logging.Handler):
    """Collects the operations NNCF's accuracy control reverted to floating point (it logs them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "reverted back to the floating-point precision" in text:
            self.names += [line.strip() for line in text.splitlines()[1:] if line.strip()]


def quantize_accuracy_control(
    model: Any, frames: list[np.ndarray], val: media.Labelled, options: QuantizeOptions
) -> tuple[Any, list[str]]:
    """nncf.quantize_with_accuracy_control against top-1 on `val`; returns (model, reverted ops)."""
    import nncf

    items = [(f[None], t) for f, t in zip(val.frames.frames, val.targets, strict=True)]
    handler = _RevertedOps()
    nncf_log = logging.getLogger("nncf")
    nncf_log.addHandler(handler)
    old_level = nncf_log.level
    nncf_log.setLevel(min(old_level or logging.INFO, logging.INFO))
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(list(media.batches(frames))),
            nncf.Dataset(items),
            validation_fn=top1_validation,
            max_drop=float(options.max_drop or 0.0),
            drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf.QuantizationPreset(options.preset),
            subset_size=min(options.subset_size, len(frames)),
            fast_bias_correction=options.fast_bias_correction,
        )
    finally:
        nncf_log.removeHandler(handler)
        nncf_log.setLevel(old_level)
    return quantized, handler.names


def _reaches_int(output: Any, depth: int = 6) -> bool:
    """True if a weight input is stored as integers (or fake-quantized) a few ops upstream."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_element_type().get_type_name() in INT_TYPES
    if depth == 0:
        return False
    return any(_reaches_int(inp.get_source_output(), depth - 1) for inp in node.inputs())


def float_weighted_ops(model: Any) -> tuple[int, list[str]]:
    """(number of weighted ops, names of those whose weights are not INT8) in an openvino.Model."""
    weighted = [op for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED_OPS]
    floats = [
        op.get_friendly_name()
        for op in weighted
        if not _reaches_int(op.input(1).get_source_output())
    ]
    return len(weighted), floats


def accuracy_on(model_path: Path, val: media.Labelled) -> float:
    """Top-1 accuracy of an IR on the labelled set (f32 inference precision for the float parts)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return top1_validation(
        compiled, [(f[None], t) for f, t in zip(val.frames.frames, val.targets, strict=True)]
    )[0]


def quantize_folder(folder: Path, calib: list[Path], options: QuantizeOptions) -> dict[str, Any]:
    """Quantize `folder/fp32` into `folder/int8` (written whole or not at all); a summary."""
    import openvino as ov

    from model_prep.files import folder_size_mb, staged_output

    folder = Path(folder)
    if not (folder / "fp32" / "model.json").is_file():
        raise UserError(
            f"{folder} has no fp32/ model to quantize (make one with 'model-prep export')"
        )
    info = load_info(folder / "fp32")
    val = (
        media.labelled_folder(
            options.val, info.labels, info.geometry, options.wnids, options.frames_per_video
        )
        if options.val
        else None
    )
    frames = calibration_frames(calib, info, options)
    import nncf  # after the inputs are checked: importing it takes seconds

    model = ov.Core().read_model(info.xml)
    facts: dict[str, Any] = {
        "sources": frames.used,
        "skipped": frames.skipped,
        "samples": len(frames.frames),
        "options": options.to_dict(),
        "nncf": nncf.__version__,
    }
    log.info("quantizing %s with %d calibration samples", info.xml, len(frames.frames))
    try:
        if val is None:
            quantized = quantize_ptq(model, frames.frames, options)
        else:
            quantized, reverted = quantize_accuracy_control(model, frames.frames, val, options)
    except (nncf.errors.ValidationError, nncf.errors.UnsupportedModelError) as exc:
        raise UserError(f"NNCF could not quantize {info.xml}: {first_line(exc)}") from None
    total, floats = float_weighted_ops(quantized)
    facts["weighted_ops"] = total
    facts["weighted_ops_in_float"] = floats
    with staged_output(folder / "int8") as stage:
        ov.save_model(quantized, str(stage / "model.xml"), compress_to_fp16=False)
        if val is not None:
            facts["accuracy_control"] = {
                "max_drop": options.max_drop,
                "metric": "top-1",
                "drop_type": "absolute",
                "val": str(options.val),
                "val_samples": len(val.targets),
                "classes": val.classes,
                "reverted_to_float": reverted,
                "fp32_top1": accuracy_on(info.xml, val),
                "int8_top1": accuracy_on(stage / "model.xml", val),
            }
        out = ModelInfo(
            **{
                **info.__dict__,
                "precision": "INT8",
                "path": None,
                "versions": {**info.versions, "nncf": nncf.__version__},
                "extra": {"calibration": facts},
            }
        )
        out.save(stage)
        record_digests(stage)
        size = folder_size_mb(stage)
    fp32_size = folder_size_mb(folder / "fp32")
    return {
        "output": str(folder / "int8"),
        "samples": len(frames.frames),
        "skipped": len(frames.skipped),
        "size_mb": round(size, 2),
        "size_vs_fp32": round(size / fp32_size, 3),
        "weighted_ops": total,
        "weighted_ops_in_float": floats,
        "accuracy_control": facts.get("accuracy_control"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="DIR", help="model folder with fp32/")
    parser.add_argument(
        "--calib",
        type=Path,
        nargs="+",
        required=True,
        metavar="PATH",
        help="calibration image folders, image files and/or video files",
    )
    parser.add_argument(
        "--subset-size",
        type=int,
        default=300,
        help="calibration samples (default 300, NNCF's guidance)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="performance",
        help="NNCF preset: performance (default, symmetric) or mixed",
    )
    parser.add_argument(
        "--fast-bias-correction",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fast bias correction (default on)",
    )
    parser.add_argument(
        "--frames-per-video",
        type=int,
        default=media.DEFAULT_FRAMES_PER_VIDEO,
        help=f"frames sampled evenly from each video (default {media.DEFAULT_FRAMES_PER_VIDEO})",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        help="accuracy control: largest absolute top-1 drop allowed on --val (e.g. 0.01)",
    )
    parser.add_argument(
        "--val",
        type=Path,
        metavar="DIR",
        help="labelled folder for --max-drop: sub-folders named by class index, "
        "label name or WordNet id (with --wnids)",
    )
    parser.add_argument(
        "--wnids",
        type=Path,
        metavar="FILE",
        help="WordNet ids in class order, e.g. ImageNet's LOC_synset_mapping.txt",
    )


def run(args: argparse.Namespace) -> int:
    options = QuantizeOptions(
        args.subset_size,
        args.preset,
        args.fast_bias_correction,
        args.frames_per_video,
        args.max_drop,
        args.val,
        args.wnids,
    )
    summary = quantize_folder(args.folder, args.calib, options)
    print(
        f"wrote {summary['output']}: {summary['size_mb']} MB "
        f"({summary['size_vs_fp32']:.0%} of FP32), {summary['samples']} calibration samples, "
        f"{len(summary['weighted_ops_in_float'])}/{summary['weighted_ops']} weighted ops in float"
    )
    ac = summary["accuracy_control"]
    if ac:
        print(
            f"accuracy control: top-1 FP32 {ac['fp32_top1']:.1%} -> INT8 {ac['int8_top1']:.1%} "
            f"on {ac['val_samples']} samples; reverted to float: "
            f"{', '.join(ac['reverted_to_float']) or 'none'}"
        )
    sys.stdout.flush()
    return 0

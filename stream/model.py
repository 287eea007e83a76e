"""Model folders: the `model.json` metadata shared by model_prep and the runtime, and compilation.

A model folder is self-contained: `model.xml`, `model.bin`, `model.json`. The IR takes u8 NHWC BGR
frames of the input size; `model.json` says what was built into it and how frames are cropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.errors import UserError, first_line
from stream.geometry import Geometry

log = logging.getLogger(__name__)

METADATA_FILE = "model.json"
METADATA_VERSION = 1
PRECISIONS = ("int8", "fp32", "fp16")  # preference order when a parent folder is given
PERFORMANCE_HINTS = {"throughput": "THROUGHPUT", "latency": "LATENCY"}


@dataclass
class ModelInfo:
    """What `model.json` records about one precision of a prepared model."""

    name: str
    """Model name, e.g. `efficientnet-lite0`."""
    arch: str
    """Architecture the weights belong to."""
    precision: str
    """`FP32`, `FP16` or `INT8`."""
    geometry: Geometry
    """Resize/crop policy applied before the IR (see stream.geometry)."""
    labels: list[str]
    """Class names, indexed by class id."""
    normalization: dict[str, Any] = field(default_factory=dict)
    """What the IR does itself: input colour order, conversion to RGB, mean and scale."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the weights came from: kind, path or name, sha256."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions used to build the IR."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything a later step adds (parity results, calibration facts)."""
    path: Path | None = None
    """Folder this was loaded from (not written)."""

    @property
    def xml(self) -> Path:
        assert self.path is not None
        return self.path / "model.xml"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data["geometry"] = self.geometry.to_dict()
        return {"format_version": METADATA_VERSION, **data}

    def save(self, folder: Path) -> None:
        (folder / METADATA_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> ModelInfo:
        return cls(
            name=data["name"],
            arch=data["arch"],
            precision=data["precision"],
            geometry=Geometry.from_dict(data["geometry"]),
            labels=list(data["labels"]),
            normalization=data.get("normalization", {}),
            source=data.get("source", {}),
            versions=data.get("versions", {}),
            extra=data.get("extra", {}),
            path=path,
        )


def resolve_model_dir(path: str | Path) -> Path:
    """The folder holding model.json: `path` itself, or its best precision sub-folder."""
    folder = Path(path)
    if not folder.exists():
        raise UserError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise UserError(f"--model must be a model folder, not a file: {folder}")
    if (folder / METADATA_FILE).is_file():
        return folder
    for precision in PRECISIONS:
        if (folder / precision / METADATA_FILE).is_file():
            log.info("using %s from %s", precision, folder)
            return folder / precision
    raise UserError(
        f"{folder} is not a model folder: no {METADATA_FILE} in it or in "
        f"{'/'.join(PRECISIONS)}/ (make one with 'model-prep export')"
    )


def load_info(path: str | Path) -> ModelInfo:
    """Read and check a model folder's metadata; every problem is a one-line UserError."""
    folder = resolve_model_dir(path)
    meta = folder / METADATA_FILE
    try:
        data = json.loads(meta.read_text())
        info = ModelInfo.from_dict(data, path=folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{meta} is not valid model metadata: {exc}") from None
    for name in ("model.xml", "model.bin"):
        if not (folder / name).is_file():
            raise UserError(f"model folder {folder} has no {name}")
    return info


def check_device(core: Any, device: str) -> None:
    """Fail with the list of available devices when `device` is not one of them."""
    available = list(core.available_devices)
    base = device.split(":", 1)[0].split(".", 1)[0]
    if base in ("AUTO", "MULTI", "HETERO"):
        return
    if device not in available and base not in {d.split(".")[0] for d in available}:
        raise UserError(
            f"device {device!r} is not available here; available: {', '.join(available) or 'none'}"
            " (or AUTO)"
        )


REQUEST_BATCH = 4
"""Frames one OpenVINO request takes, on a model compiled for exactly that many: a batch of up to
`--max-batch` frames runs as requests of this many, and what is left over as requests of one
frame. OpenVINO's CPU plugin runs a static input faster than the bounded batch axis it replaced,
and 4 frames faster than 2, 3, 6 or 8 for EfficientNet-Lite0 (ResNet50 INT8 is flat from 4 to 6):
measured in infer's loop alone and in the pipeline (README, Throughput)."""


def request_batch(max_batch: int) -> int:
    """Frames in one request of a batch of up to `max_batch`."""
    return max(1, min(REQUEST_BATCH, max_batch))


def compile_model(
    info: ModelInfo,
    device: str = "CPU",
    mode: str = "throughput",
    config: dict[str, Any] | None = None,
    core: Any = None,
    batch: int = 1,
    frame_format: str = "bgr",
) -> Any:
    """Read and compile the IR with a performance hint; returns openvino.CompiledModel.

    `batch`: frames one request takes, as a static shape (the plugin plans its memory once; an
    IR whose batch is already fixed keeps it). `frame_format` i420: the model takes frames as one
    I420 plane (N x H*3/2 x W x 1, `Geometry.frame_shape`) and OpenVINO's colour conversion to
    the IR's BGR runs inside the compiled model."""
    return compile_batches(info, device, mode, config, core, (batch,), frame_format)[0]


def compile_batches(
    info: ModelInfo,
    device: str,
    mode: str,
    config: dict[str, Any] | None,
    core: Any,
    batches: tuple[int, ...],
    frame_format: str = "bgr",
) -> list[Any]:
    """`compile_model` once for each of `batches` (once for a size given twice), reading the IR
    once. An IR whose batch is fixed compiles once, as it is."""
    import openvino as ov

    core = core or ov.Core()
    check_device(core, device)
    props: dict[str, Any] = {"PERFORMANCE_HINT": PERFORMANCE_HINTS[mode]}
    props.update(config or {})
    try:
        model = core.read_model(info.xml)
        dynamic = model.inputs[0].get_partial_shape()[0].is_dynamic
        compiled = []
        for batch in dict.fromkeys(batches) if dynamic else batches[:1]:
            sized = model.clone()
            if dynamic:
                g = info.geometry
                sized.reshape(ov.PartialShape([batch, g.height, g.width, 3]))
            if frame_format == "i420":
                sized = i420_input(sized, info.geometry)
            compiled.append(core.compile_model(sized, device, props))
        return compiled
    except RuntimeError as exc:
        raise UserError(f"cannot load model {info.xml}: {first_line(exc)}") from None


def i420_input(model: Any, geometry: Geometry) -> Any:
    """`model` (u8 NHWC BGR input, as model-prep makes it) taking I420 frames instead: OpenVINO's
    PrePostProcessor adds its BT.601 I420 -> BGR conversion in front of the input."""
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    shape = model.inputs[0].get_partial_shape()
    want = [geometry.height, geometry.width, 3]
    if shape.rank.get_length() != 4 or [d.get_length() for d in list(shape)[1:]] != want:
        raise UserError(f"i420 frames need a u8 N x {want} (NHWC BGR) input, the model has {shape}")
    if not geometry.i420_fits:
        raise UserError(f"i420 frames need an even input size, the model's is {want[1]}x{want[0]}")
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_color_format(
        ColorFormat.I420_SINGLE_PLANE
    )
    ppp.input().model().set_layout(ov.Layout("NHWC"))
    ppp.input().preprocess().convert_color(ColorFormat.BGR)
    return ppp.build()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk(logits: np.ndarray, labels: list[str], k: int = 5) -> list[dict[str, Any]]:
    """Top-k classes of one logit vector as [{"class_id", "label", "score"}], softmax scores."""
    return topk_batch(np.asarray(logits).reshape(1, -1), labels, k)[0]


def top_indices(rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest values of each row, largest first (the lower index first among
    equals). For the few classes a result lists, k passes of argmax over all rows cost a fifth of
    one `argpartition` along the rows."""
    if k > 16:
        return np.argsort(-rows, axis=1, kind="stable")[:, :k]
    work = rows.copy()
    out = np.empty((rows.shape[0], k), dtype=np.int64)
    every = np.arange(rows.shape[0])
    for j in range(k):
        best = work.argmax(axis=1)
        out[:, j] = best
        work[every, best] = -np.inf
    return out


def topk_batch(logits: np.ndarray, labels: list[str], k: int = 5) -> list[list[dict[str, Any]]]:
    """`topk` of each row of `logits` [N, classes], with one softmax and one partial sort for all
    the rows."""
    rows = np.asarray(logits, dtype=np.float32)
    rows = rows.reshape(rows.shape[0], -1)
    k = max(1, min(k, rows.shape[1]))
    peak = rows.max(axis=1, keepdims=True)
    total = np.exp(rows - peak).sum(axis=1, keepdims=True, dtype=np.float64)
    idx = top_indices(rows, k)
    top = np.take_along_axis(rows, idx, axis=1).astype(np.float64)
    scores = np.round(np.exp(top - peak) / total, 6)
    n_labels = len(labels)
    return [
        [
            {"class_id": i, "label": labels[i] if i < n_labels else str(i), "score": score}
            for i, score in zip(row_idx, row_scores, strict=True)
        ]
        for row_idx, row_scores in zip(idx.tolist(), scores.tolist(), strict=True)
    ]

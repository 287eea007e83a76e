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


def compile_model(
    info: ModelInfo,
    device: str = "CPU",
    mode: str = "throughput",
    config: dict[str, Any] | None = None,
    core: Any = None,
) -> Any:
    """Read and compile the IR with a performance hint; returns openvino.CompiledModel."""
    import openvino as ov

    core = core or ov.Core()
    check_device(core, device)
    props: dict[str, Any] = {"PERFORMANCE_HINT": PERFORMANCE_HINTS[mode]}
    props.update(config or {})
    try:
        model = core.read_model(info.xml)
        if model.inputs[0].get_partial_shape().is_dynamic:
            # One frame per request: a static shape lets the plugin plan memory once.
            model.reshape([1, info.geometry.height, info.geometry.width, 3])
        return core.compile_model(model, device, props)
    except RuntimeError as exc:
        raise UserError(f"cannot load model {info.xml}: {first_line(exc)}") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk(logits: np.ndarray, labels: list[str], k: int = 5) -> list[dict[str, Any]]:
    """Top-k classes of one logit vector as [{"class_id", "label", "score"}], softmax scores."""
    vec = np.asarray(logits).reshape(-1)
    probs = softmax(vec)
    k = max(1, min(k, vec.size))
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [
        {
            "class_id": int(i),
            "label": labels[i] if i < len(labels) else str(int(i)),
            "score": round(float(probs[i]), 6),
        }
        for i in idx
    ]

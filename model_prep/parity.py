"""Step 3: PyTorch and the IR on the same frames through the same preprocessing must agree."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from model_prep.sources import Source, torch_input
from stream.geometry import Geometry, prepare

MAX_ABS_LOGIT_DIFF = 1e-3


@dataclass
class Parity:
    """How far the IR's logits are from PyTorch's on the same inputs."""

    frames: int
    max_abs_diff: float
    top1_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"parity {verdict}: {self.frames} frames, max |Δlogit| {self.max_abs_diff:.2e} "
            f"(limit {MAX_ABS_LOGIT_DIFF:.0e}), top-1 agreement {self.top1_agreement:.1%}"
        )


def parity_frames(
    geometry: Geometry, photos: list[np.ndarray], random_count: int = 4
) -> np.ndarray:
    """Model inputs (N,H,W,3 u8 BGR): photos through the geometric policy, and random frames."""
    rng = np.random.default_rng(0)
    frames = [prepare(p, geometry) for p in photos]
    for _ in range(random_count):
        h, w = rng.integers(geometry.height, 2 * geometry.height), rng.integers(geometry.width, 720)
        frames.append(prepare(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), geometry))
    return np.stack(frames)


def torch_logits(source: Source, frames: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return source.model(torch_input(frames, source.normalization)).numpy()


def ir_logits(compiled: Any, frames: np.ndarray) -> np.ndarray:
    """Logits of a compiled IR, one frame at a time (works for static and dynamic batch)."""
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: f[None]})[0].copy() for f in frames])


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    diff = float(np.abs(reference - candidate).max())
    agree = float((reference.argmax(1) == candidate.argmax(1)).mean())
    return Parity(len(reference), diff, agree, diff <= MAX_ABS_LOGIT_DIFF and agree == 1.0)


def check(source: Source, xml: str, photos: list[np.ndarray]) -> Parity:
    """Run PyTorch and the FP32 IR (compiled with f32 precision, so BF16/FP16 CPUs don't differ)."""
    import openvino as ov

    frames = parity_frames(source.geometry, photos)
    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compare(torch_logits(source, frames), ir_logits(compiled, frames))

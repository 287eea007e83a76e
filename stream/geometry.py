"""The one geometric preprocessing policy: how a frame of any size becomes the model's input.

Every caller uses it: single-image classification, the pipeline's preprocess stage, calibration,
validation and the export-time parity check. Colour conversion and normalisation are *not* here;
they are built into the OpenVINO IR, which takes u8 NHWC BGR tensors of the model's input size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

POLICIES = ("resize_shorter_center_crop", "resize")


@dataclass(frozen=True)
class Geometry:
    """Resize-and-crop policy recorded in `model.json`."""

    width: int = 224
    """Model input width in pixels."""
    height: int = 224
    """Model input height in pixels."""
    policy: str = "resize_shorter_center_crop"
    """`resize_shorter_center_crop` (torchvision's Resize+CenterCrop) or `resize` (stretch)."""
    resize_shorter: int = 256
    """With `resize_shorter_center_crop`: the length of the shorter side after the resize."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"geometry policy must be one of {POLICIES}, got {self.policy!r}")
        if min(self.width, self.height) < 1:
            raise ValueError(f"input size must be positive, got {self.width}x{self.height}")
        if self.policy == "resize_shorter_center_crop" and self.resize_shorter < min(
            self.width, self.height
        ):
            raise ValueError(
                f"resize_shorter ({self.resize_shorter}) must be >= the crop "
                f"({self.width}x{self.height})"
            )

    def scaled_size(self, src_width: int, src_height: int) -> tuple[int, int]:
        """(width, height) of the frame after the resize step, before the crop."""
        if self.policy == "resize":
            return self.width, self.height
        short = min(src_width, src_height)
        # Same rounding as torchvision.transforms.functional.resize with an int size.
        if src_width <= src_height:
            return self.resize_shorter, int(self.resize_shorter * src_height / short)
        return int(self.resize_shorter * src_width / short), self.resize_shorter

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        return cls(
            **{k: data[k] for k in ("width", "height", "policy", "resize_shorter") if k in data}
        )


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging to shrink (anti-aliased), bilinear to enlarge."""
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def prepare(frame: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Turn an HxWx3 u8 BGR frame of any size into the model's input (contiguous u8 BGR HxWx3).

    A frame that a decoder already scaled to `geometry.scaled_size(...)` skips the resize, so the
    pipeline can downscale early (in the decoder) and still go through this one function.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 frame, got shape {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    if geometry.policy == "resize":
        out = resize(frame, (geometry.width, geometry.height))
    else:
        sw, sh = geometry.scaled_size(w, h)
        if (sw, sh) != (w, h):  # a frame the decoder already scaled keeps its size here
            frame = resize(frame, (sw, sh))
            h, w = sh, sw
        top = int(round((h - geometry.height) / 2.0))
        left = int(round((w - geometry.width) / 2.0))
        out = frame[top : top + geometry.height, left : left + geometry.width]
    return np.ascontiguousarray(out)

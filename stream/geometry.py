"""The one geometric preprocessing policy: how a frame of any size becomes the model's input.

The policy is a source window (`Geometry.source_window`): the part of a frame that becomes the
model input when it is resized to the input size. For the default, torchvision's
Resize(256)+CenterCrop(224), the window is the centre crop mapped back to source pixels, so
cropping first and resizing once gives the same input (up to the window's rounding to whole
source pixels) for a fraction of the work: a 1080p frame is cropped to 945x945, not resized
whole to 455x256 and then cropped.

Two executors apply the same window: `prepare` (OpenCV, for images: classification, calibration,
validation, the export-time parity check) and the capture stage's decoder-side scaler (FFmpeg's
crop and scale filters, for video frames). Colour conversion and normalisation are *not* here;
they are built into the OpenVINO IR, which takes u8 NHWC BGR tensors of the model's input size.

Frames travel between the stages in one of two `FRAME_FORMATS` at the model's input size:
`bgr` (H x W x 3) or `i420` (YUV 4:2:0, the decoder's own kind of colour, as one plane of
H*3/2 x W x 1: half the bytes). For i420 the infer stage puts OpenVINO's colour conversion in
front of the IR (`stream.model.compile_model`), the way OpenVINO takes decoded video.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

POLICIES = ("resize_shorter_center_crop", "resize")
FRAME_FORMATS = ("bgr", "i420")
"""How frames of the model's input size travel between the stages (see the module's text)."""


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

    def source_window(self, src_width: int, src_height: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the part of a source frame that becomes the model input.

        Resizing this window to the input size is the policy. Offsets and sizes are rounded to
        whole source pixels (a shift of at most half a source pixel from torchvision's order of
        resize-then-crop) and the window stays inside the frame.
        """
        if self.policy == "resize":
            return 0, 0, src_width, src_height
        sw, sh = self.scaled_size(src_width, src_height)
        sx, sy = sw / src_width, sh / src_height
        # The centre crop in resized coordinates, as prepare() did it before the crop moved first.
        left = round((sw - self.width) / 2.0)
        top = round((sh - self.height) / 2.0)
        width = min(src_width, max(1, round(self.width / sx)))
        height = min(src_height, max(1, round(self.height / sy)))
        return (
            _offset(left / sx, width, src_width),
            _offset(top / sy, height, src_height),
            width,
            height,
        )

    @property
    def i420_fits(self) -> bool:
        """Whether frames of this input size can be i420 (4:2:0 needs an even width and height)."""
        return self.width % 2 == 0 and self.height % 2 == 0

    def frame_shape(self, fmt: str = "bgr") -> tuple[int, int, int]:
        """The shape of one frame of the model's input in `fmt` (one of FRAME_FORMATS)."""
        if fmt == "i420":
            return (self.height * 3 // 2, self.width, 1)
        if fmt != "bgr":
            raise ValueError(f"frame format must be one of {FRAME_FORMATS}, got {fmt!r}")
        return (self.height, self.width, 3)

    def input_problem(
        self, array: np.ndarray, batched: bool = False, fmt: str = "bgr"
    ) -> str | None:
        """None if `array` is the model's input in `fmt` (bgr: height x width x 3 uint8; with
        `batched`, N such inputs), else why not."""
        return self.shape_problem(array.shape[1:] if batched else array.shape, array.dtype, fmt)

    def shape_problem(
        self, shape: tuple[int, ...], dtype: Any = np.uint8, fmt: str = "bgr"
    ) -> str | None:
        """None if one frame of this shape and dtype is the model's input in `fmt`, else why
        not."""
        want = self.frame_shape(fmt)
        if np.dtype(dtype) != np.uint8 or tuple(shape) != want:
            return f"{np.dtype(dtype)}{list(shape)} is not the model input {fmt} uint8{list(want)}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        return cls(
            **{k: data[k] for k in ("width", "height", "policy", "resize_shorter") if k in data}
        )


def _offset(offset: float, length: int, total: int) -> int:
    """`offset` rounded to a whole pixel, keeping [offset, offset + length) inside [0, total)."""
    return max(0, min(round(offset), total - length))


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging to shrink (anti-aliased), bilinear to enlarge."""
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def prepare(frame: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Turn an HxWx3 u8 BGR frame of any size into the model's input (contiguous u8 BGR HxWx3)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 frame, got shape {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    x, y, ww, wh = geometry.source_window(w, h)
    out = resize(frame[y : y + wh, x : x + ww], (geometry.width, geometry.height))
    return np.ascontiguousarray(out)


def to_frame_format(image: np.ndarray, fmt: str) -> np.ndarray:
    """A model input made by `prepare` (u8 BGR) as a frame of `fmt` (i420: OpenCV's BT.601
    conversion, the one OpenVINO's undoes)."""
    if fmt == "bgr":
        return image
    h, w = image.shape[:2]
    return cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).reshape(h * 3 // 2, w, 1)

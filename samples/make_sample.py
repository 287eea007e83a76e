#!/usr/bin/env python3
"""Make the bundled sample video: H.264 MP4 of scikit-image's `chelsea` and `coffee` photos with
camera motion (a slow pan and zoom over each photo), so every frame is a real photograph.

    python samples/make_sample.py samples/sample.mp4

Tests import `write_clip` to generate clips of other sizes, frame rates and lengths.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def photos(names: Sequence[str] = ("chelsea", "coffee")) -> list[np.ndarray]:
    """scikit-image's bundled photographs as BGR u8 arrays (no download)."""
    from skimage import data

    return [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in names]


def motion_frames(
    images: Sequence[np.ndarray], width: int, height: int, frames: int
) -> Iterator[np.ndarray]:
    """`frames` BGR frames of width x height: each photo in turn, panned and zoomed slowly."""
    per_photo = max(1, -(-frames // len(images)))
    for i in range(frames):
        img = images[min(i // per_photo, len(images) - 1)]
        t = (i % per_photo) / max(1, per_photo - 1)
        ih, iw = img.shape[:2]
        # Crop window keeps the output aspect ratio and zooms from 100 % to 85 % while panning.
        aspect = width / height
        cw = min(iw, ih * aspect) * (1.0 - 0.15 * t)
        ch = cw / aspect
        cx = iw / 2 + (t - 0.5) * (iw - cw) * 0.5
        cy = ih / 2 + (0.5 - t) * (ih - ch) * 0.3
        x0, y0 = int(max(0, cx - cw / 2)), int(max(0, cy - ch / 2))
        crop = img[y0 : y0 + int(ch), x0 : x0 + int(cw)]
        interp = cv2.INTER_AREA if crop.shape[1] > width else cv2.INTER_LINEAR
        yield cv2.resize(crop, (width, height), interpolation=interp)


def write_clip(
    path: str | Path,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    frames: int = 50,
    images: Sequence[np.ndarray] | None = None,
    crf: int = 23,
    gop: int | None = None,
) -> Path:
    """Encode an H.264 (yuv420p) MP4 of `frames` frames; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images if images is not None else photos()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        if gop:
            stream.options["g"] = str(gop)
        for img in motion_frames(images, width, height, frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(Path(__file__).with_name("sample.mp4")))
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args(argv)
    path = write_clip(args.output, args.width, args.height, args.fps, args.frames)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {args.frames} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

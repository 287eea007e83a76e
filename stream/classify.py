"""Classify image files with a prepared model: any image size, the shared geometric policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream.errors import UserError
from stream.geometry import prepare
from stream.model import ModelInfo, compile_model, load_info, topk


def read_image(path: Path) -> np.ndarray:
    """BGR u8 pixels of an image file, or a UserError that says why not."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UserError(f"{path}: not an image OpenCV can decode")
    return image


class Classifier:
    """A compiled model that takes BGR images of any size and returns top-k classes."""

    def __init__(self, model: str | Path, device: str = "CPU", mode: str = "latency") -> None:
        self.info: ModelInfo = load_info(model)
        self.compiled = compile_model(self.info, device, mode)
        self.request = self.compiled.create_infer_request()

    def logits(self, image_bgr: np.ndarray) -> np.ndarray:
        tensor = prepare(image_bgr, self.info.geometry)[None]
        return self.request.infer({0: tensor})[0][0].copy()

    def classify(self, image_bgr: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
        return topk(self.logits(image_bgr), self.info.labels, k)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        help="model folder (a precision folder, or its parent: int8 > fp32 > fp16)",
    )
    parser.add_argument("--topk", "-k", type=int, default=5, help="classes to show (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per image")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (CPU, AUTO, GPU, NPU)")


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    classifier = Classifier(args.model, args.device)
    failed = 0
    for path in args.images:
        try:
            result = classifier.classify(read_image(path), args.topk)
        except UserError as exc:
            print(f"ovstream: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"image": str(path), "topk": result}), flush=True)
        else:
            best = ", ".join(f"{r['label']} ({r['class_id']}) {r['score']:.3f}" for r in result)
            print(f"{path}: {best}", flush=True)
    return 1 if failed else 0

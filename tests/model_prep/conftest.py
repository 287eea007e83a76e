"""Fixtures for quantize/validate/bench: calibration and labelled folders, INT8 models (session)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

SAMPLE_VIDEO = ROOT / "samples" / "sample.mp4"
# Small on purpose (2 cores, shared machine): 2 photos + 20 sample-video frames.
CALIB_ARGS = ("--subset-size", "24", "--frames-per-video", "20")


def copy_model(src: Path, dest: Path, precisions=("fp32", "fp16")) -> Path:
    """A private copy of an exported model folder, so INT8 output never touches shared fixtures."""
    for p in precisions:
        shutil.copytree(src / p, dest / p)
    return dest


def write_images(folder: Path, images: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        assert cv2.imwrite(str(folder / name), image)
    return folder


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory, photos) -> Path:
    """The two photos as JPEG/PNG plus two files that are neither image nor video."""
    folder = write_images(
        tmp_path_factory.mktemp("calib"),
        {"chelsea.jpg": photos["chelsea"], "coffee.png": photos["coffee"]},
    )
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return folder


@pytest.fixture(scope="session")
def labelled_dir(tmp_path_factory, photos) -> Path:
    """Class folders named by label name, by index, and by index with a suffix; flipped copies."""
    root = tmp_path_factory.mktemp("labelled")
    for folder, image in (
        ("tabby", photos["chelsea"]),
        ("967", photos["coffee"]),
        ("968_cup", photos["coffee"][40:, 60:]),
    ):
        write_images(root / folder, {"a.jpg": image, "b.jpg": image[:, ::-1]})
    return root


def quantize(model: Path, calib: Path, *extra: str):
    proc = run_cli(
        "model-prep",
        "quantize",
        str(model),
        "--calib",
        str(calib),
        str(SAMPLE_VIDEO),
        *CALIB_ARGS,
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="session")
def lite0_int8(lite0_model, calib_dir, tmp_path_factory) -> tuple[Path, str]:
    """(folder with fp32/, fp16/, int8/ of the pretrained default, quantize's stderr)."""
    folder = copy_model(lite0_model, tmp_path_factory.mktemp("q") / "lite0")
    return folder, quantize(folder, calib_dir).stderr


@pytest.fixture(scope="session")
def resnet50_int8(resnet50_random, calib_dir, tmp_path_factory) -> Path:
    folder = copy_model(resnet50_random, tmp_path_factory.mktemp("q") / "resnet50", ("fp32",))
    quantize(folder, calib_dir, "--preset", "mixed", "--no-fast-bias-correction")
    return folder


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())

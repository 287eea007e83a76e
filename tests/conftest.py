"""Shared fixtures: real photographs, generated videos, and exported models (session-scoped)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_sample_maker():
    spec = importlib.util.spec_from_file_location(
        "make_sample", ROOT / "samples" / "make_sample.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_sample = _load_sample_maker()


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """scikit-image's chelsea (a cat) and coffee (espresso) photos as BGR u8 arrays."""
    chelsea, coffee = make_sample.photos(("chelsea", "coffee"))
    return {"chelsea": chelsea, "coffee": coffee}


@pytest.fixture(scope="session")
def clip_factory(tmp_path_factory):
    """make(width, height, fps, frames, name=None) -> Path of a generated H.264 MP4 (cached)."""
    folder = tmp_path_factory.mktemp("clips")
    cache: dict[tuple, Path] = {}

    def make(width=320, height=180, fps=25, frames=30, name=None, **kw) -> Path:
        key = (width, height, fps, frames, name, tuple(sorted(kw.items())))
        if key not in cache:
            stem = name or f"clip_{width}x{height}_{fps}fps_{frames}f"
            cache[key] = make_sample.write_clip(
                folder / f"{stem}.mp4", width, height, fps, frames, **kw
            )
        return cache[key]

    return make


def cli_command(tool: str, *args: str) -> list[str]:
    """The command line of a console entry point (`ovstream` or `model-prep`) in this venv."""
    module = {"ovstream": "stream.cli", "model-prep": "model_prep.cli"}[tool]
    return [sys.executable, "-m", module, *args]


def run_cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run a console entry point as a real subprocess, to the end (with a timeout)."""
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )


def start_cli(*args: str) -> subprocess.Popen:
    """Start a console entry point in the background, stdout/stderr piped as text; the caller
    waits for it with a timeout (communicate/wait) and kills it in a `finally`."""
    return subprocess.Popen(
        cli_command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="session")
def lite0_model(tmp_path_factory) -> Path:
    """The pretrained default (EfficientNet-Lite0) exported to fp32/ and fp16/ IR folders."""
    out = tmp_path_factory.mktemp("models") / "lite0"
    proc = run_cli("model-prep", "export", "--arch", "efficientnet-lite0", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def resnet50_random(tmp_path_factory) -> Path:
    """ResNet50 with random weights (seeded), exported to fp32/ and fp16/ IR folders."""
    out = tmp_path_factory.mktemp("models") / "resnet50"
    proc = run_cli(
        "model-prep", "export", "--arch", "resnet50", "--weights", "random", "--output", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    return out


def failing_ir(offset: int):
    """An IR (u8 [?,224,224,3] -> f32 [?,997]) that fails inside OpenVINO at run time, never at
    compile time: its 997 logits a frame are reshaped to N * (p + `offset`) rows, p the first
    pixel of the request's first frame, which fits only where p + offset is 1 (997 is prime).
    `offset` 2: it always fails; 0: it fails unless that pixel is 1."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    frame = ops.parameter([-1, 224, 224, 3], ov.Type.u8, name="input")
    one = np.array([1, 1, 1, 1])
    first = ops.slice(frame, np.array([0, 0, 0, 0]), np.array([2**31, 1, 1, 3]), one)
    pixels = ops.reshape(ops.convert(first, ov.Type.f32), np.array([-1, 3]), False)
    logits = ops.matmul(pixels, np.ones((3, 997), np.float32), False, False)
    n = ops.gather(ops.shape_of(frame), np.array([0]), np.array(0))
    p = ops.convert(
        ops.reshape(ops.slice(first, np.array([0, 0, 0, 0]), one, one), [1], False), ov.Type.i64
    )
    rows = ops.multiply(n, ops.add(p, np.array([offset], np.int64)))
    bad = ops.reshape(logits, ops.concat([rows, np.array([-1])], 0), False)
    out = ops.reshape(bad, ops.concat([n, np.array([997])], 0), False)
    return ov.Model([out], [frame], "failing")


def write_failing_model(folder):
    """A model folder whose IR always fails inside OpenVINO at run time (`failing_ir`)."""
    import openvino as ov

    from stream.geometry import Geometry
    from stream.model import ModelInfo

    folder.mkdir()
    ov.save_model(failing_ir(offset=2), folder / "model.xml")
    ModelInfo(
        name="failing",
        arch="failing",
        precision="FP32",
        geometry=Geometry(),
        labels=[f"class {i}" for i in range(997)],
        source={"kind": "built in tests/conftest.py"},
    ).save(folder)
    return folder

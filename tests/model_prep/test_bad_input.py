"""model-prep on bad input: one clear line on stderr, exit 2, nothing half-written; and nothing
but model-prep's own lines on the terminal."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import run_cli
from tests.model_prep.conftest import CALIB_ARGS, copy_model, write_images

# (command args with {model}/{tmp} placeholders, files to create under tmp, expected stderr)
CASES = {
    "no calibration files": (
        ["quantize", "{model}", "--calib", "{tmp}/empty"],
        {"empty/": None},
        "no calibration files found in {tmp}/empty",
    ),
    "calibration path missing": (
        ["quantize", "{model}", "--calib", "{tmp}/nowhere"],
        {},
        "calibration path not found: {tmp}/nowhere",
    ),
    "no readable calibration file": (
        ["quantize", "{model}", "--calib", "{tmp}/junk"],
        {"junk/a.txt": b"text", "junk/b.mp4": b"\x00" * 999, "junk/c.jpg": b"not a jpeg"},
        "none of the 3 calibration files could be read as an image or a video",
    ),
    "--max-drop without --val": (
        ["quantize", "{model}", "--calib", "{tmp}/img", "--max-drop", "0.01"],
        {"img/a.png": "photo"},
        "--max-drop needs a labelled validation folder: add --val DIR",
    ),
    "--val classes unknown (quantize)": (
        ["quantize", "{model}", "--calib", "{tmp}/img", "--max-drop", "0.01", "--val", "{tmp}/val"],
        {"img/a.png": "photo", "val/espresso/a.png": "photo", "val/not_a_class/b.png": "photo"},
        "validation class folder 'not_a_class' in {tmp}/val is not a class index (0-999)",
    ),
    "--images classes unknown (validate)": (
        ["validate", "{model}", "--images", "{tmp}/val"],
        {"val/n01440764/a.png": "photo"},
        "validation class folder 'n01440764' in {tmp}/val is not a class index (0-999), WordNet id "
        "or label name of this model (WordNet ids need --wnids FILE)",
    ),
    "no model to quantize": (
        ["quantize", "{tmp}/empty", "--calib", "{tmp}/img"],
        {"empty/": None, "img/a.png": "photo"},
        "{tmp}/empty has no fp32/ model to quantize",
    ),
    "bench without any IR": (
        ["bench", "{tmp}/empty"],
        {"empty/onnx/model.onnx": b"x"},
        "bench: no IR in {tmp}/empty",
    ),
    "bench --json into a folder": (
        ["bench", "{model}", "--json", "{tmp}"],
        {},
        "--json must be a file path, not a folder",
    ),
}


@pytest.fixture(scope="module")
def plain_model(lite0_model, tmp_path_factory):
    return copy_model(lite0_model, tmp_path_factory.mktemp("plain") / "lite0", ("fp32",))


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_gives_one_clear_line(case, plain_model, photos, tmp_path):
    args, files, message = CASES[case]
    for rel, content in files.items():
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        elif content == "photo":
            write_images(path.parent, {path.name: photos["coffee"]})
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    fill = {"model": str(plain_model), "tmp": str(tmp_path)}
    proc = run_cli("model-prep", *[a.format(**fill) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"model-prep: error: {message.format(**fill)}")
    # Nothing half-written: no INT8 folder, no staging folder, no report.
    assert sorted(p.name for p in plain_model.iterdir()) == ["fp32"]
    assert not list(tmp_path.rglob("int8")) and not list(tmp_path.rglob(".*tmp*"))


# --- checkpoints that are not what --weights needs --------------------------------------------


def _zip_without_checkpoint(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")


def _cut_short(path):
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Custom:
    """Pickled into a checkpoint: weights_only loading refuses it."""


def _with_an_object(path):
    import torch

    torch.save({"state_dict": {}, "extra": Custom()}, path)


# (what to write at the .pth path, the complete reason after 'cannot load checkpoint PATH: ')
BAD_CHECKPOINTS = {
    "random bytes": (
        lambda p: p.write_bytes(bytes(range(256)) * 20),
        "not a PyTorch checkpoint (unpickling failed: ",
    ),
    "zip, not a checkpoint": (
        _zip_without_checkpoint,
        "not a PyTorch checkpoint (a zip archive without torch.save's layout: "
        "file in archive is not in a subdirectory: notes.txt)",
    ),
    "checkpoint cut short": (
        _cut_short,
        "not a PyTorch checkpoint (a damaged or cut-short zip archive: "
        "failed finding central directory)",
    ),
    "empty file": (lambda p: p.write_bytes(b""), "not a PyTorch checkpoint (empty or cut short)"),
    "pickled Python object": (
        _with_an_object,
        "it holds Python objects besides tensors (tests.model_prep.test_bad_input.Custom); "
        "only a plain state dict loads without running code from the file",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS), ids=list(BAD_CHECKPOINTS))
def test_bad_checkpoint_gives_one_complete_line(case, tmp_path):
    write, reason = BAD_CHECKPOINTS[case]
    path = tmp_path / "garbage.pth"
    write(path)
    out = tmp_path / "out"
    proc = run_cli("model-prep", "export", "--arch", "resnet50", "--weights", str(path), "-o", out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"model-prep: error: cannot load checkpoint {path}: {reason}")
    assert "weights_only" not in lines[0] and proc.stdout == ""
    assert not out.exists()


# --- nothing but model-prep's own lines on the terminal ----------------------------------------


def test_a_failed_download_prints_only_the_error(tmp_path):
    """torch.hub's 'Downloading: ...' line (on stdout) stays off the terminal; offline is forced
    with a proxy nobody listens on, and TORCH_HOME empty so nothing is cached."""
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "hub"), "https_proxy": dead}
    env |= {"HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": ""}
    args = ("export", "--arch", "resnet18", "--weights", "IMAGENET1K_V1", "-o", tmp_path / "m")
    proc = run_cli("model-prep", *map(str, args), env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "model-prep: error: cannot download torchvision weights ResNet18_Weights.IMAGENET1K_V1 "
        "(offline?); pass the file instead: --weights /path/to/resnet18-f37072fd.pth"
    ]


@pytest.mark.slow
def test_quantize_keeps_torchs_cuda_notice_off_the_terminal(plain_model, calib_dir, tmp_path):
    """With CUDA_HOME set and no GPU, torch logs 'No CUDA runtime is found' when NNCF loads
    torch.utils.cpp_extension: a debug record (-vv), not a warning on the terminal."""
    model = copy_model(plain_model, tmp_path / "m", ("fp32",))
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}
    args = ("quantize", str(model), "--calib", str(calib_dir), *CALIB_ARGS)
    quiet = run_cli("model-prep", *args, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "CUDA" not in quiet.stderr
    assert f"wrote {model}/int8" in quiet.stdout
    shutil.rmtree(model / "int8")
    debug = run_cli("model-prep", "-vv", *args, env=env)
    assert debug.returncode == 0, debug.stderr
    import torch

    if not torch.cuda.is_available():
        assert "No CUDA runtime is found" in debug.stderr

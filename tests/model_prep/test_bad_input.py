"""quantize/validate/bench on bad input: one clear line on stderr, exit 2, nothing half-written."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tests.model_prep.conftest import copy_model, write_images

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

"""ovstream classify: real images of any size through the shared policy and OpenVINO."""

from __future__ import annotations

import json

import cv2
import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("images")
    chelsea, coffee = folder / "chelsea.jpg", folder / "coffee.png"
    cv2.imwrite(str(chelsea), photos["chelsea"])
    # A portrait, enlarged copy: size and aspect must not matter.
    cv2.imwrite(
        str(coffee), cv2.resize(cv2.rotate(photos["coffee"], cv2.ROTATE_90_CLOCKWISE), (800, 1200))
    )
    return chelsea, coffee


def test_classify_json_lines(lite0_model, image_files):
    proc = run_cli(
        "ovstream",
        "classify",
        "--model",
        str(lite0_model),
        "--json",
        "--topk",
        "3",
        *map(str, image_files),
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in image_files]
    for r in records:
        assert len(r["topk"]) == 3
        scores = [t["score"] for t in r["topk"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
        assert set(r["topk"][0]) == {"class_id", "label", "score"}
    assert records[0]["topk"][0]["class_id"] in range(281, 286)
    assert records[1]["topk"][0]["class_id"] in (967, 968)


def test_classify_text_output(lite0_model, image_files):
    proc = run_cli(
        "ovstream", "classify", "--model", str(lite0_model / "fp16"), str(image_files[1])
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{image_files[1]}: ") and "(967)" in proc.stdout


def _not_an_image(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("hello")
    return [str(path)], "not an image"


def _empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    return [str(path)], "not an image"


BAD_CLASSIFY = {
    "missing image": lambda t: ([str(t / "missing.jpg")], "no such file"),
    "folder as image": lambda t: ([str(t)], "not a file"),
    "not an image": _not_an_image,
    "empty file": _empty_file,
}


@pytest.mark.parametrize("case", BAD_CLASSIFY)
def test_bad_image_gives_one_line_and_others_still_classified(
    lite0_model, image_files, tmp_path, case
):
    args, message = BAD_CLASSIFY[case](tmp_path)
    proc = run_cli("ovstream", "classify", "--model", str(lite0_model), *args, str(image_files[0]))
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(image_files[0]) in proc.stdout  # the good image was still classified


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        (lambda t: ["--model", str(t)], "is not a model folder"),
        (lambda t: ["--model", str(t / "nope")], "model folder not found"),
        (
            lambda t: ["--model", str(t / "model"), "--device", "NPU"],
            "device 'NPU' is not available",
        ),
    ],
    ids=["no model.json", "missing folder", "absent device"],
)
def test_bad_model_or_device(lite0_model, image_files, tmp_path, model_args, message):
    (tmp_path / "model").symlink_to(lite0_model / "fp32")
    proc = run_cli("ovstream", "classify", *model_args(tmp_path), str(image_files[0]))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_model_xml(lite0_model, image_files, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "model.bin"):
        (broken / name).symlink_to(lite0_model / "fp32" / name)
    (broken / "model.xml").write_text("<net><broken")
    proc = run_cli("ovstream", "classify", "--model", str(broken), str(image_files[0]))
    assert proc.returncode == 2
    assert "cannot load model" in proc.stderr and "Traceback" not in proc.stderr

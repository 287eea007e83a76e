"""model-prep quantize: real NNCF on the real FP32 IRs, calibrated on photos and video frames."""

from __future__ import annotations

import openvino as ov
import pytest

from model_prep import media
from model_prep.quantize import QuantizeOptions
from stream.errors import UserError
from stream.geometry import prepare
from stream.model import load_info
from tests.model_prep.conftest import SAMPLE_VIDEO, copy_model, quantize, read_json

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (967, 968)  # espresso, cup


def ir_mb(folder) -> float:
    return sum((folder / f).stat().st_size for f in ("model.xml", "model.bin")) / 1e6


@pytest.mark.slow
def test_int8_default_is_self_contained_with_calibration_facts(lite0_int8, calib_dir):
    folder, stderr = lite0_int8
    assert {p.name for p in (folder / "int8").iterdir()} == {"model.xml", "model.bin", "model.json"}
    assert ir_mb(folder / "int8") <= 0.30 * ir_mb(folder / "fp32")
    info = load_info(folder / "int8")
    assert info.precision == "INT8" and len(info.labels) == 1000 and "nncf" in info.versions
    calib = info.extra["calibration"]
    assert sorted(calib["sources"]) == sorted(
        [str(calib_dir / "chelsea.jpg"), str(calib_dir / "coffee.png"), str(SAMPLE_VIDEO)]
    )
    assert sorted(calib["skipped"]) == [str(calib_dir / "broken.mp4"), str(calib_dir / "notes.txt")]
    assert calib["samples"] == 22  # 2 photos + 20 evenly sampled video frames
    assert calib["options"]["subset_size"] == 24 and calib["options"]["preset"] == "performance"
    assert calib["weighted_ops_in_float"] == []
    assert "skipped 2 unreadable calibration file(s)" in stderr
    assert not list(folder.glob(".*tmp-*")), "staging folder left behind"


@pytest.mark.slow
def test_int8_default_still_classifies_the_photos(lite0_int8, photos):
    info = load_info(lite0_int8[0] / "int8")
    compiled = ov.Core().compile_model(str(info.xml), "CPU")
    top1 = {
        name: int(compiled(prepare(img, info.geometry)[None])[0].argmax())
        for name, img in photos.items()
    }
    assert top1["chelsea"] in CAT_CLASSES
    assert top1["coffee"] in COFFEE_CLASSES


@pytest.mark.slow
def test_int8_resnet50_random_with_options(resnet50_int8):
    assert ir_mb(resnet50_int8 / "int8") <= 0.30 * ir_mb(resnet50_int8 / "fp32")
    options = load_info(resnet50_int8 / "int8").extra["calibration"]["options"]
    assert options["preset"] == "mixed" and options["fast_bias_correction"] is False
    model = ov.Core().read_model(resnet50_int8 / "int8" / "model.xml")
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) > 50


@pytest.mark.slow
def test_accuracy_control_records_its_facts(lite0_model, calib_dir, labelled_dir, tmp_path):
    folder = copy_model(lite0_model, tmp_path / "m", ("fp32",))
    proc = quantize(folder, calib_dir, "--max-drop", "0.5", "--val", str(labelled_dir))
    ac = read_json(folder / "int8" / "model.json")["extra"]["calibration"]["accuracy_control"]
    assert ac["max_drop"] == 0.5 and ac["val_samples"] == 6
    assert ac["classes"] == {"tabby": 281, "967": 967, "968_cup": 968}
    assert ac["fp32_top1"] - ac["int8_top1"] <= 0.5
    assert isinstance(ac["reverted_to_float"], list)
    assert "accuracy control: top-1 FP32" in proc.stdout


def test_calibration_frames_are_sampled_evenly_across_the_video():
    frames = media.video_frames(SAMPLE_VIDEO, 10)
    assert [i for i, _ in frames] == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert frames[0][1].shape == (360, 640, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"subset_size": 0}, "--subset-size must be at least 1"),
        ({"preset": "fast"}, "--preset must be one of"),
        ({"max_drop": 0.01}, "--max-drop needs a labelled validation folder"),
        ({"val": "v"}, "--val is used by accuracy control"),
        ({"max_drop": 2.0, "val": "v"}, "--max-drop is a fraction"),
    ],
)
def test_options_are_checked(kwargs, message):
    with pytest.raises(UserError, match=message):
        QuantizeOptions(**kwargs)

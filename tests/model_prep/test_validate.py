"""model-prep validate: every precision and PyTorch on the same frames, both modes."""

from __future__ import annotations

import numpy as np
import pytest

from model_prep import media
from model_prep.validate import fidelity
from tests.conftest import run_cli
from tests.model_prep.conftest import SAMPLE_VIDEO, read_json

VARIANTS = ["PyTorch", "FP32", "FP16", "INT8"]


@pytest.mark.slow
def test_labelled_mode_reports_accuracy_per_precision(lite0_int8, labelled_dir):
    folder = lite0_int8[0]
    proc = run_cli("model-prep", "validate", str(folder), "--images", str(labelled_dir))
    assert proc.returncode == 0, proc.stderr
    report = read_json(folder / "reports" / "validate.json")
    assert report["mode"] == "labelled" and report["samples"] == 6
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == VARIANTS
    assert rows["FP32"]["top5"] == 1.0 and rows["FP32"]["top1_drop_vs_ref"] == 0.0
    assert rows["PyTorch"]["top1"] == rows["FP32"]["top1"]
    assert rows["INT8"]["top5"] >= 5 / 6
    assert "| INT8 |" in proc.stdout and "top-1 drop vs FP32" in proc.stdout
    assert (folder / "reports" / "validate.md").read_text() in proc.stdout


@pytest.mark.slow
def test_unlabelled_mode_reports_fidelity_on_photos_and_video_frames(lite0_int8, calib_dir):
    folder = lite0_int8[0]
    proc = run_cli(
        "model-prep",
        "validate",
        str(folder),
        "--images",
        str(calib_dir),
        str(SAMPLE_VIDEO),
        "--frames-per-video",
        "10",
    )
    assert proc.returncode == 0, proc.stderr
    report = read_json(folder / "reports" / "validate.json")
    assert (
        report["mode"] == "unlabelled" and report["samples"] == 12 and len(report["skipped"]) == 2
    )
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == VARIANTS and "top1" not in rows["FP32"]
    assert rows["PyTorch"]["vs_ref"]["top1_agreement"] == 1.0
    assert rows["FP32"]["vs_pytorch"]["max_abs_dlogit"] < 1e-3
    int8 = rows["INT8"]["vs_ref"]
    assert int8["confident_frames"] > 0 and int8["confident_agreement"] >= 0.98
    assert int8["ref_top1_in_top5"] >= 0.9 and 0 < int8["mean_kl"] < 0.5


def test_fidelity_metrics():
    ref = np.array([[5.0, 0.0, 0.0], [1.0, 1.1, 0.0]])
    same = fidelity(ref, ref)
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] == 0.0 and same["max_abs_dlogit"] == 0
    flipped = fidelity(ref, np.array([[5.0, 0.0, 0.0], [1.2, 1.1, 0.0]]))
    assert flipped["top1_agreement"] == 0.5
    assert flipped["confident_frames"] == 1 and flipped["confident_agreement"] == 1.0
    assert flipped["ref_top1_in_top5"] == 1.0 and flipped["mean_kl"] > 0


LABELS = ["tench", "goldfish", "tabby", "tiger cat"]


@pytest.mark.parametrize(
    "name, wnids, expected",
    [
        ("2", None, 2),
        ("0003_tiger_cat", None, 3),
        ("tabby", None, 2),
        ("Tiger_Cat", None, 3),
        ("tiger-cat", None, 3),
        ("n01443537", ["n01440764", "n01443537", "n02123045", "n02123159"], 1),
        ("n01443537", None, None),
        ("7", None, None),
        ("dog", None, None),
    ],
)
def test_class_folder_names(name, wnids, expected):
    assert media.class_index(name, LABELS, wnids) == expected


@pytest.mark.slow
def test_runtime_precision_can_be_validated_too(lite0_int8, labelled_dir):
    from model_prep.validate import validate_folder

    report = validate_folder(lite0_int8[0], [labelled_dir], precision="default")
    assert report["inference_precision"] == "default" and report["mode"] == "labelled"
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == VARIANTS and rows["FP32"]["top5"] == 1.0

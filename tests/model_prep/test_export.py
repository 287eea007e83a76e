"""model-prep export: real torch -> ONNX -> OpenVINO, the parity check, the pretrained default."""

from __future__ import annotations

import hashlib
import json

import onnx
import openvino as ov
import pytest
import torch

from model_prep import parity, sources
from stream.classify import Classifier
from stream.geometry import prepare
from stream.model import load_info
from tests.conftest import run_cli

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (967, 968)  # espresso, cup


def test_export_writes_self_contained_precisions(lite0_model):
    for precision in ("fp32", "fp16"):
        folder = lite0_model / precision
        assert {p.name for p in folder.iterdir()} == {"model.xml", "model.bin", "model.json"}
        info = load_info(folder)
        assert info.precision == precision.upper()
        assert info.arch == "efficientnet-lite0" and len(info.labels) == 1000
        assert info.labels[967] == "espresso"
        assert (
            info.normalization["mean"] == [127.0] * 3 and info.normalization["scale"] == [128.0] * 3
        )
        assert info.normalization["input_color_order"] == "BGR"
        assert info.normalization["color_order"] == "RGB"
        assert info.geometry.width == 224 and info.geometry.resize_shorter == 256
        assert info.extra["parity_fp32_vs_torch"]["passed"] is True
        assert set(info.versions) >= {"torch", "openvino", "onnx"}
    packaged = sources.lite0_checkpoint()
    assert info.source["sha256"] == hashlib.sha256(packaged.read_bytes()).hexdigest()
    # FP16 weights are half the size of FP32 ones.
    fp32 = (lite0_model / "fp32" / "model.bin").stat().st_size
    fp16 = (lite0_model / "fp16" / "model.bin").stat().st_size
    assert 0.45 < fp16 / fp32 < 0.55
    assert not list(lite0_model.parent.glob(".*tmp-*")), "staging folder left behind"


def test_onnx_is_kept_with_named_io_and_dynamic_batch(resnet50_random):
    model = onnx.load(str(resnet50_random / "onnx" / "model.onnx"), load_external_data=False)
    assert model.opset_import[0].version >= 13
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_ir_takes_u8_nhwc_bgr_frames(resnet50_random):
    model = ov.Core().read_model(resnet50_random / "fp32" / "model.xml")
    (inp,) = model.inputs
    assert inp.get_element_type() == ov.Type.u8
    shape = inp.get_partial_shape()
    assert (
        shape[1].get_length() == 224 and shape[2].get_length() == 224 and shape[3].get_length() == 3
    )
    assert shape[0].is_dynamic


def test_parity_check_catches_a_colour_order_mistake(photos):
    """The check that guards every export must fail when BGR/RGB is wrong."""
    source = sources.build("efficientnet-lite0")
    frames = parity.parity_frames(source.geometry, list(photos.values()))
    good = parity.torch_logits(source, frames)
    swapped = parity.torch_logits(source, frames[..., ::-1].copy())
    assert parity.compare(good, good).passed
    result = parity.compare(good, swapped)
    assert not result.passed and result.max_abs_diff > 100 * parity.MAX_ABS_LOGIT_DIFF


@pytest.mark.parametrize("runner", ["pytorch", "fp32", "fp16"])
def test_pretrained_default_classifies_real_photos(lite0_model, photos, runner):
    if runner == "pytorch":
        source = sources.build("efficientnet-lite0")

        def top1(img):
            frames = prepare(img, source.geometry)[None]
            return int(parity.torch_logits(source, frames)[0].argmax())
    else:
        classifier = Classifier(lite0_model / runner)

        def top1(img):
            return classifier.classify(img, 1)[0]["class_id"]

    assert top1(photos["chelsea"]) in CAT_CLASSES
    assert top1(photos["coffee"]) in COFFEE_CLASSES


def test_resnet50_random_export_passes_parity(resnet50_random):
    info = load_info(resnet50_random / "fp32")
    assert info.source == {"kind": "random", "seed": 0}
    parity_result = info.extra["parity_fp32_vs_torch"]
    assert parity_result["passed"] and parity_result["max_abs_diff"] <= 1e-3


def _wrong_arch_checkpoint(tmp_path):
    path = tmp_path / "resnet18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)
    return ["--arch", "resnet50", "--weights", str(path)], "does not fit resnet50"


def _corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x80\x02 this is not a checkpoint" * 10)
    return ["--arch", "resnet50", "--weights", str(path)], "cannot load checkpoint"


def _not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    return ["--arch", "resnet50", "--weights", str(path)], "does not hold a state dict"


BAD_EXPORTS = {
    "missing checkpoint": lambda t: (
        ["--arch", "resnet50", "--weights", str(t / "nope.pth")],
        "checkpoint not found",
    ),
    "corrupt checkpoint": _corrupt_checkpoint,
    "not a state dict": _not_a_state_dict,
    "wrong architecture": _wrong_arch_checkpoint,
    "unknown architecture": lambda t: (
        ["--arch", "resnet9000"],
        "unknown architecture 'resnet9000'",
    ),
    "unknown weights name": lambda t: (
        ["--arch", "resnet18", "--weights", "IMAGENET9K"],
        "no torchvision weights 'IMAGENET9K'",
    ),
}


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_bad_export_input_gives_one_line_and_writes_nothing(tmp_path, case):
    args, message = BAD_EXPORTS[case](tmp_path)
    out = tmp_path / "out"
    proc = run_cli("model-prep", "export", *args, "--output", str(out))
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_cli(
        "model-prep",
        "export",
        "--arch",
        "resnet18",
        "--weights",
        "random",
        "--output",
        str(blocker / "model"),
    )
    assert proc.returncode != 0
    assert "cannot write to output folder" in proc.stderr and "Traceback" not in proc.stderr


def test_failed_export_leaves_an_existing_model_alone(lite0_model, tmp_path):
    before = (lite0_model / "fp32" / "model.json").read_text()
    proc = run_cli(
        "model-prep",
        "export",
        "--arch",
        "resnet50",
        "--weights",
        str(tmp_path / "missing.pth"),
        "--output",
        str(lite0_model),
    )
    assert proc.returncode != 0
    assert (lite0_model / "fp32" / "model.json").read_text() == before
    assert json.loads(before)["arch"] == "efficientnet-lite0"


def test_offline_torchvision_weights_name_says_which_file_to_pass(tmp_path, monkeypatch):
    """Without network (or a cached file), naming torchvision weights fails with the file name."""
    env = {
        "TORCH_HOME": str(tmp_path / "torch-home"),
        "PATH": "/usr/bin:/bin",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    proc = run_cli(
        "model-prep",
        "export",
        "--arch",
        "resnet18",
        "--weights",
        "IMAGENET1K_V1",
        "--output",
        str(tmp_path / "out"),
        env=env,
    )
    assert proc.returncode != 0
    assert "--weights /path/to/resnet18-f37072fd.pth" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

#!/usr/bin/env python3
"""Issue 3's measurements, reproducible: INT8 speed/size (ResNet50), INT8 fidelity of the
pretrained default, and the accuracy-control demo. Every step is a `model-prep` command; the
outputs (Markdown and JSON) land in OUT.

    .venv/bin/python benchmarks/model_prep_bench.py OUT [--duration 10]

Speed is measured, never asserted; the machine may be shared, so each table records the load.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"


def prep(*args: str, log: Path | None = None) -> str:
    """Run one model-prep command; its stdout (and stderr into `log`) is kept."""
    proc = subprocess.run(
        [sys.executable, "-m", "model_prep.cli", *args], cwd=ROOT, capture_output=True, text=True
    )
    if log:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        sys.exit(f"model-prep {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def photos(folder: Path) -> Path:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee", "astronaut"):
        cv2.imwrite(
            str(folder / f"{name}.jpg"), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR)
        )
    return folder


def zoomed_crops(folder: Path, photo_dir: Path, count: int = 25) -> Path:
    """Small random crops (20-45 % of each side) of the cat and coffee photos: ambiguous frames."""
    rng = np.random.default_rng(2)
    for name in ("chelsea", "coffee"):
        img = cv2.imread(str(photo_dir / f"{name}.jpg"))
        h, w = img.shape[:2]
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            s = rng.uniform(0.2, 0.45)
            ch, cw = int(h * s), int(w * s)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            cv2.imwrite(str(folder / name / f"{i:02d}.jpg"), img[y : y + ch, x : x + cw])
    return folder


def pseudo_labelled(folder: Path, crops: Path, model: Path) -> Path:
    """The crops filed under FP32's own top-1 class index (no labelled ImageNet data offline)."""
    import openvino as ov

    from stream.geometry import prepare
    from stream.model import load_info

    info = load_info(model / "fp32")
    compiled = ov.Core().compile_model(str(info.xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for path in sorted(crops.rglob("*.jpg")):
        top1 = int(compiled(prepare(cv2.imread(str(path)), info.geometry)[None])[0].argmax())
        dest = folder / f"{top1:03d}"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / f"{path.parent.name}_{path.name}")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--duration", default="10")
    args = parser.parse_args()
    out, work = args.out, args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    dur = ("--duration", args.duration)
    pics = photos(work / "photos")
    calib = ("--calib", str(pics), str(SAMPLE), "--frames-per-video", "100")

    # 1. ResNet50 (random weights are as fast as real ones): FP32/FP16/INT8 and PyTorch.
    r50 = work / "resnet50"
    prep("export", "--arch", "resnet50", "--weights", "random", "--output", str(r50))
    prep("quantize", str(r50), *calib, log=out / "resnet50_quantize.txt")
    (out / "resnet50_bench.md").write_text(
        prep("bench", str(r50), *dur, "--json", str(out / "resnet50_bench.json"))
    )

    # 2. Fidelity of the INT8 default on photos + sample-video frames, and on zoomed crops.
    lite = work / "lite0"
    prep("export", "--output", str(lite))
    prep("quantize", str(lite), *calib, log=out / "lite0_quantize.txt")
    for name, images in (
        ("photos_video", [str(pics), str(SAMPLE)]),
        ("zoomed_crops", [str(zoomed_crops(work / "crops", pics))]),
    ):
        text = prep(
            "validate",
            str(lite),
            "--images",
            *images,
            "--mode",
            "unlabelled",
            "--frames-per-video",
            "100",
        )
        (out / f"lite0_fidelity_{name}.md").write_text(text)
        shutil.copy(lite / "reports" / "validate.json", out / f"lite0_fidelity_{name}.json")
    (out / "lite0_bench.md").write_text(
        prep("bench", str(lite), *dur, "--json", str(out / "lite0_bench.json"))
    )

    # 3. Accuracy control on a labelled folder: which layers stay in float, and the speed cost.
    val = pseudo_labelled(work / "val", work / "crops", lite)
    ac = work / "lite0_ac"
    shutil.copytree(lite / "fp32", ac / "fp32")
    (out / "lite0_accuracy_control.md").write_text(
        prep(
            "quantize",
            str(ac),
            *calib,
            "--max-drop",
            "0.02",
            "--val",
            str(val),
            log=out / "lite0_accuracy_control.log",
        )
    )
    (out / "lite0_accuracy_control_validate.md").write_text(
        prep("validate", str(ac), "--images", str(val))
    )
    (out / "lite0_accuracy_control_bench.md").write_text(
        prep("bench", str(ac), *dur, "--json", str(out / "lite0_accuracy_control_bench.json"))
    )
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

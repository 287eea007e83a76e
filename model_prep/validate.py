"""Step 5: every precision of a model (and PyTorch) on the same frames -> accuracy and fidelity.

Labelled mode (`--images DIR` whose entries are class sub-folders named by class index, label
name, or WordNet id with `--wnids`): top-1/top-5 accuracy per precision and the drop against FP32.
Both modes: agreement with FP32 (overall, on frames FP32 is confident about, FP32's top-1 within
the candidate's top-5), mean KL divergence, |Δlogit|, and agreement with PyTorch. The report is
printed and written to DIR/reports/validate.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from model_prep import media, precisions
from stream.errors import UserError
from stream.model import ModelInfo, softmax

CONFIDENT = 0.5
TORCH_BATCH = 16


def ir_logits(info: ModelInfo, frames: np.ndarray, precision: str = "f32") -> np.ndarray:
    """Logits of one IR, one frame per request. Float parts run in f32 by default, so a CPU that
    would pick bf16 (AMX) doesn't blur the comparison of the model files; `default` measures what
    the runtime gets on this CPU instead."""
    import openvino as ov

    from model_prep.parity import ir_logits as run

    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    return run(ov.Core().compile_model(str(info.xml), "CPU", config), frames)


def torch_logits(source: Any, frames: np.ndarray) -> np.ndarray:
    from model_prep.parity import torch_logits as run

    return np.concatenate(
        [run(source, frames[i : i + TORCH_BATCH]) for i in range(0, len(frames), TORCH_BATCH)]
    )


def accuracy(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy."""
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return {
        "top1": float((top5[:, 0] == targets).mean()),
        "top5": float((top5 == targets[:, None]).any(axis=1).mean()),
    }


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How closely `candidate` follows `reference` on the same frames."""
    p, q = softmax(reference), softmax(candidate)
    ref_top1 = reference.argmax(1)
    agree = ref_top1 == candidate.argmax(1)
    confident = p.max(1) >= CONFIDENT
    cand_top5 = np.argsort(-candidate, axis=1)[:, :5]
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(1)
    diff = np.abs(reference - candidate)
    return {
        "top1_agreement": float(agree.mean()),
        "confident_frames": int(confident.sum()),
        "confident_agreement": float(agree[confident].mean()) if confident.any() else None,
        "ref_top1_in_top5": float((cand_top5 == ref_top1[:, None]).any(1).mean()),
        "mean_kl": float(kl.mean()),
        "max_abs_dlogit": float(diff.max()),
        "mean_abs_dlogit": float(diff.mean()),
    }


def is_labelled(paths: list[Path]) -> bool:
    """One folder whose non-hidden entries are all sub-folders."""
    if len(paths) != 1 or not paths[0].is_dir():
        return False
    entries = [e for e in paths[0].iterdir() if not e.name.startswith(".")]
    return bool(entries) and all(e.is_dir() for e in entries)


def validate_folder(
    folder: Path,
    images: list[Path],
    mode: str = "auto",
    wnids: Path | None = None,
    frames_per_video: int = media.DEFAULT_FRAMES_PER_VIDEO,
    precision: str = "f32",
) -> dict[str, Any]:
    """Run every variant on the same prepared frames and return the report as a dict."""
    found = precisions.present(folder, "validate")
    ref = precisions.reference(found)
    labelled = is_labelled(images) if mode == "auto" else mode == "labelled"
    targets = None
    if labelled:
        if len(images) != 1:
            raise UserError("labelled mode takes one folder of class sub-folders")
        data = media.labelled_folder(images[0], ref.labels, ref.geometry, wnids, frames_per_video)
        frame_set, targets = data.frames, np.array(data.targets)
    else:
        frame_set = media.load_frames(
            media.find_media(images, "validation"), ref.geometry, frames_per_video, "loading images"
        )
        media.report_skipped(frame_set, "validation")
    frames = frame_set.array()
    source, why = precisions.torch_source(ref)
    logits: dict[str, np.ndarray] = {}
    if source is not None:
        logits["PyTorch"] = torch_logits(source, frames)
    for name, info in media.progress(list(found.items()), "running precisions"):
        logits[name.upper()] = ir_logits(info, frames, precision)
    ref_name = ref.precision.upper()
    rows = []
    for name, values in logits.items():
        row: dict[str, Any] = {"variant": name}
        if targets is not None:
            row.update(accuracy(values, targets))
            row["top1_drop_vs_ref"] = accuracy(logits[ref_name], targets)["top1"] - row["top1"]
        row["vs_ref"] = fidelity(logits[ref_name], values)
        if "PyTorch" in logits:
            row["vs_pytorch"] = fidelity(logits["PyTorch"], values)
        rows.append(row)
    ref_probs = softmax(logits[ref_name]).max(1)
    return {
        "model": ref.name,
        "arch": ref.arch,
        "folder": str(folder),
        "mode": "labelled" if labelled else "unlabelled",
        "samples": len(frames),
        "files": len(frame_set.used),
        "skipped": frame_set.skipped,
        "reference": ref_name,
        "reference_mean_top1_prob": float(ref_probs.mean()),
        "confident_threshold": CONFIDENT,
        "inference_precision": precision,
        "pytorch": {"available": source is not None, "reason": why},
        "rows": rows,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (accuracy in labelled mode, fidelity always)."""
    ref = report["reference"]
    lines = [
        f"### {report['model']}: {report['samples']} frames from {report['files']} files "
        f"({report['mode']}), IR float parts in {report['inference_precision']}, reference {ref} "
        f"(mean top-1 probability {report['reference_mean_top1_prob']:.2f})",
        "",
    ]
    if report["mode"] == "labelled":
        lines += [f"| variant | top-1 | top-5 | top-1 drop vs {ref} |", "|---|---:|---:|---:|"]
        for r in report["rows"]:
            lines.append(
                f"| {r['variant']} | {_pct(r['top1'])} | {_pct(r['top5'])} | "
                f"{100 * r['top1_drop_vs_ref']:+.1f} pt |"
            )
        lines.append("")
    lines += [
        f"| variant | top-1 agree {ref} | on confident (n) | {ref} top-1 in top-5 | mean KL | "
        f"max/mean abs Δlogit vs {ref} | top-1 agree PyTorch | max/mean abs Δlogit vs PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        f, t = r["vs_ref"], r.get("vs_pytorch")
        torch_cols = (
            (
                f"{_pct(t['top1_agreement'])} | "
                f"{t['max_abs_dlogit']:.3g} / {t['mean_abs_dlogit']:.3g}"
            )
            if t
            else "– | –"
        )
        lines.append(
            f"| {r['variant']} | {_pct(f['top1_agreement'])} | "
            f"{_pct(f['confident_agreement'])} ({f['confident_frames']}) | "
            f"{_pct(f['ref_top1_in_top5'])} | {f['mean_kl']:.4f} | "
            f"{f['max_abs_dlogit']:.3g} / {f['mean_abs_dlogit']:.3g} | {torch_cols} |"
        )
    if not report["pytorch"]["available"]:
        lines += ["", f"PyTorch row left out: {report['pytorch']['reason']}"]
    if report["skipped"]:
        lines += ["", f"Skipped {len(report['skipped'])} unreadable file(s)."]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict[str, Any], text: str) -> Path:
    """DIR/reports/validate.json and .md, written whole or not at all."""
    from model_prep.files import staged_output

    with staged_output(Path(folder) / "reports") as stage:
        (stage / "validate.json").write_text(json.dumps(report, indent=2) + "\n")
        (stage / "validate.md").write_text(text)
    return Path(folder) / "reports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", type=Path, metavar="DIR", help="model folder (fp32/, fp16/, int8/)"
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        metavar="PATH",
        help="image folders/files and videos; or one folder of class sub-folders",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "labelled", "unlabelled"),
        default="auto",
        help="auto (default): labelled when --images is one folder holding only sub-folders",
    )
    parser.add_argument(
        "--wnids",
        type=Path,
        metavar="FILE",
        help="WordNet ids in class order, for sub-folders named like n01440764",
    )
    parser.add_argument(
        "--frames-per-video",
        type=int,
        default=media.DEFAULT_FRAMES_PER_VIDEO,
        help="frames sampled evenly from each video",
    )
    parser.add_argument(
        "--inference-precision",
        choices=("f32", "bf16", "f16", "default"),
        default="f32",
        help="precision of the IRs' float parts: f32 (default, compares the model files), or "
        "default: what the runtime picks on this CPU (bf16 on AMX)",
    )


def run(args: argparse.Namespace) -> int:
    report = validate_folder(
        args.folder,
        args.images,
        args.mode,
        args.wnids,
        args.frames_per_video,
        args.inference_precision,
    )
    text = markdown(report)
    out = write_report(args.folder, report, text)
    print(text)
    print(f"wrote {out}/validate.json and validate.md")
    return 0

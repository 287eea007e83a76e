"""Step 6: the side-by-side speed table for one model on this machine, every row in one run.

Rows: PyTorch eager FP32 (torch threads = cores; batch 1), OpenVINO FP32, FP16 and INT8 (those
present). Latency: LATENCY hint, one request, batch 1, median and p90. Throughput: pure
inference measured as `benchmark_app` measures it (`model_prep.ceiling.pure_throughput`: THROUGHPUT
hint, OPTIMAL_NUMBER_OF_INFER_REQUESTS requests with inputs filled once), and `benchmark_app`
itself on the same IR next to it, with the ratio; a row outside ±5 % gets a warning line.
PyTorch's throughput is its batch-1 loop's frames per second. Inputs are u8 frames; the IR
converts and normalises them itself, and the PyTorch row pays the same conversion
(`sources.torch_input`) every frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_prep import ceiling, precisions
from stream.errors import UserError, first_line
from stream.model import ModelInfo

WARMUP = 3


@dataclass
class BenchOptions:
    """How long and where to measure; checked on construction."""

    duration: float = 10.0
    """Seconds per measurement (each row measures latency and throughput for this long)."""
    device: str = "CPU"
    """OpenVINO device."""
    inference_precision: str | None = None
    """INFERENCE_PRECISION_HINT for every OpenVINO row (f32, bf16, f16); None = the device's."""
    benchmark_app: bool = True
    """Also run OpenVINO's benchmark_app on every OpenVINO row's IR, for the same duration."""

    def __post_init__(self) -> None:
        if not self.duration > 0:
            raise UserError(f"--duration must be positive seconds, got {self.duration}")
        if self.inference_precision not in (None, "f32", "bf16", "f16"):
            raise UserError(
                f"--inference-precision must be f32, bf16 or f16, got {self.inference_precision!r}"
            )


@dataclass
class Row:
    """One line of the table."""

    variant: str
    latency_median_ms: float
    latency_p90_ms: float
    throughput_fps: float
    requests: int
    """Parallel infer requests in the throughput run (1 for PyTorch)."""
    size_mb: float
    runs_as: str = "f32"
    """Precision the float parts actually run in (OpenVINO picks bf16 on AMX CPUs by default)."""
    speedup_vs_pytorch: float | None = None
    """Throughput relative to PyTorch eager."""
    speedup_vs_fp32: float | None = None
    """Throughput relative to OpenVINO FP32."""
    benchmark_app_fps: float | None = None
    """benchmark_app's throughput on the same IR and precision, in the same run."""
    vs_benchmark_app: float | None = None
    """throughput_fps / benchmark_app_fps: within 0.95-1.05 or the run warns."""
    benchmark_app_problem: str | None = None
    """Why there is no benchmark_app figure, when there is none."""
    benchmark_app_warning: str | None = None
    """The warning line when throughput and benchmark_app differ by more than 5 %."""
    throughput_runs_fps: list[float] | None = None
    """Our throughput runs (before and after benchmark_app); throughput_fps is their mean."""


def ir_size_mb(info: ModelInfo) -> float:
    """model.xml + model.bin in MB."""
    return sum((info.xml.parent / f).stat().st_size for f in ("model.xml", "model.bin")) / 1e6


def timed_loop(step: Callable[[], Any], duration: float) -> tuple[list[float], float]:
    """Call `step` for `duration` seconds (after warm-up); returns (per-call ms, elapsed s)."""
    for _ in range(WARMUP):
        step()
    times: list[float] = []
    start = time.perf_counter()
    end = start + duration
    now = start
    while now < end or not times:
        t0 = time.perf_counter()
        step()
        now = time.perf_counter()
        times.append((now - t0) * 1e3)
    return times, now - start


def _compile(core: Any, info: ModelInfo, opts: BenchOptions, hint: str, f32: bool) -> Any:
    """Compile with batch 1 made static, as the runtime (`stream.model.compile_model`) and
    benchmark_app's `-shape [1,H,W,3]` do: a dynamic batch runs slower on CPU."""
    config = {"PERFORMANCE_HINT": hint}
    if f32 or opts.inference_precision:
        config["INFERENCE_PRECISION_HINT"] = "f32" if f32 else opts.inference_precision
    try:
        model = core.read_model(str(info.xml))
        if model.inputs[0].get_partial_shape().is_dynamic:
            model.reshape([1, info.geometry.height, info.geometry.width, 3])
        return core.compile_model(model, opts.device, config)
    except RuntimeError as exc:
        raise UserError(f"cannot compile {info.xml} for {opts.device}: {first_line(exc)}") from None


def ov_latency(
    core: Any, info: ModelInfo, frame: np.ndarray, opts: BenchOptions, f32: bool = False
) -> tuple[list[float], str]:
    """(per-inference ms, precision it runs as) with the LATENCY hint, batch 1, one request."""
    compiled = _compile(core, info, opts, "LATENCY", f32)
    request = compiled.create_infer_request()
    request.set_input_tensor(0, _tensor(frame))
    times, _ = timed_loop(request.infer, opts.duration)
    return times, runs_as(compiled)


def runs_as(compiled: Any) -> str:
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    except RuntimeError:  # a device without the property
        return "default"


def ov_throughput(
    core: Any, info: ModelInfo, frame: np.ndarray, opts: BenchOptions, f32: bool = False
) -> ceiling.Ceiling:
    """Pure inference as benchmark_app measures it, and benchmark_app itself unless disabled."""
    compiled = _compile(core, info, opts, "THROUGHPUT", f32)
    return ceiling.honest_ceiling(
        compiled,
        frame,
        opts.duration,
        info.xml if opts.benchmark_app else None,
        opts.device,
        "f32" if f32 else opts.inference_precision,
    )


def _tensor(frame: np.ndarray) -> Any:
    import openvino as ov

    return ov.Tensor(np.ascontiguousarray(frame[None]))


def torch_row(source: Any, frame: np.ndarray, opts: BenchOptions) -> Row:
    """PyTorch eager FP32, threads = cores, batch 1, input conversion included."""
    import torch

    from model_prep.sources import torch_input

    torch.set_num_threads(os.cpu_count() or 1)
    batch = frame[None]

    def step() -> None:
        with torch.inference_mode():
            source.model(torch_input(batch, source.normalization))

    times, elapsed = timed_loop(step, opts.duration)
    size = sum(t.numel() * t.element_size() for t in source.model.state_dict().values()) / 1e6
    return Row(
        "PyTorch eager FP32",
        float(np.median(times)),
        float(np.percentile(times, 90)),
        len(times) / elapsed,
        1,
        size,
    )


def ov_row(
    core: Any, variant: str, info: ModelInfo, frame: np.ndarray, opts: BenchOptions, f32: bool
) -> Row:
    times, precision = ov_latency(core, info, frame, opts, f32)
    pure = ov_throughput(core, info, frame, opts, f32)
    median, p90 = float(np.median(times)), float(np.percentile(times, 90))
    row = Row(variant, median, p90, pure.fps, pure.requests, ir_size_mb(info), precision)
    row.throughput_runs_fps = pure.runs_fps
    if pure.app is not None:
        row.benchmark_app_fps = pure.app.fps
        row.vs_benchmark_app = pure.vs_app
        row.benchmark_app_problem = pure.app.problem
        row.benchmark_app_warning = pure.warning(variant)
    return row


def bench_folder(folder: Path, opts: BenchOptions) -> dict[str, Any]:
    """Measure every row for the model in `folder`; returns the table and machine facts."""
    import openvino as ov

    found = precisions.present(folder, "bench")
    ref = precisions.reference(found)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (ref.geometry.height, ref.geometry.width, 3), dtype=np.uint8)
    core = ov.Core()
    rows: list[Row] = []
    load_before = os.getloadavg()
    source, why = precisions.torch_source(ref)
    if source is not None:
        rows.append(torch_row(source, frame, opts))
        del source
    for name, info in found.items():
        rows.append(ov_row(core, f"OpenVINO {name.upper()}", info, frame, opts, False))
        if name == "fp32" and rows[-1].runs_as != "f32":
            # The device runs FP32 IRs in bf16 (AMX) by default: also show true f32.
            rows.append(ov_row(core, "OpenVINO FP32, f32 forced", info, frame, opts, True))
    torch_fps = rows[0].throughput_fps if rows[0].variant.startswith("PyTorch") else None
    fp32_fps = next((r.throughput_fps for r in rows if r.variant == "OpenVINO FP32"), None)
    for r in rows:
        r.speedup_vs_pytorch = r.throughput_fps / torch_fps if torch_fps else None
        r.speedup_vs_fp32 = r.throughput_fps / fp32_fps if fp32_fps else None
    return {
        "model": ref.name,
        "arch": ref.arch,
        "folder": str(folder),
        "device": opts.device,
        "duration_s": opts.duration,
        "benchmark_app": opts.benchmark_app,
        "cpu": core.get_property(opts.device, "FULL_DEVICE_NAME"),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "openvino": ov.__version__,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "pytorch": {"available": torch_fps is not None, "reason": why},
        "rows": [asdict(r) for r in rows],
    }


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['model']} on {result['cpu']} ({result['cores']} cores), "
        f"{result['duration_s']:g} s per measurement, OpenVINO {result['openvino']}",
        "",
        "| variant | runs as | latency median (ms) | latency p90 (ms) | throughput (FPS) | "
        "benchmark_app (FPS) | ratio | requests | size (MB) | speed-up vs PyTorch | vs FP32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    warnings = []
    for r in result["rows"]:
        app, vs = r.get("benchmark_app_fps"), r.get("vs_benchmark_app")
        lines.append(
            f"| {r['variant']} | {r['runs_as']} | {r['latency_median_ms']:.1f} | "
            f"{r['latency_p90_ms']:.1f} | {r['throughput_fps']:.1f} | "
            f"{'–' if app is None else f'{app:.1f}'} | {'–' if vs is None else f'{vs:.3f}'} | "
            f"{r['requests']} | {r['size_mb']:.1f} | "
            f"{_x(r['speedup_vs_pytorch'])} | {_x(r['speedup_vs_fp32'])} |"
        )
        if r.get("benchmark_app_warning"):
            warnings.append(r["benchmark_app_warning"])
    load = result["load_average_1min"]
    lines += [
        "",
        "Speed-ups are throughput ratios; 'vs FP32' is against the OpenVINO FP32 row as the "
        "device runs it by default. Throughput is pure inference measured as benchmark_app "
        "measures it (the mean of a run before and one after benchmark_app); 'benchmark_app' is "
        "OpenVINO's own tool on the same IR for as long, and 'ratio' ours / its (they must "
        "agree within 5 %). 1-minute load "
        f"average before/after: {load['before']:.2f}/{load['after']:.2f} on "
        f"{result['cores']} cores.",
    ]
    if warnings:
        lines += ["", *warnings]
    if not result["pytorch"]["available"]:
        lines += ["", f"PyTorch row left out: {result['pytorch']['reason']}"]
    return "\n".join(lines) + "\n"


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", type=Path, metavar="DIR", help="model folder (fp32/, fp16/, int8/)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measurement (default 10)"
    )
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    parser.add_argument(
        "--inference-precision",
        choices=("f32", "bf16", "f16"),
        help="precision for the float parts of every OpenVINO row (default: the device's choice)",
    )
    parser.add_argument(
        "--no-benchmark-app",
        dest="benchmark_app",
        action="store_false",
        help="do not run OpenVINO's benchmark_app next to each OpenVINO row",
    )


def run(args: argparse.Namespace) -> int:
    opts = BenchOptions(args.duration, args.device, args.inference_precision, args.benchmark_app)
    if args.json and args.json.is_dir():
        raise UserError(f"--json must be a file path, not a folder: {args.json}")
    result = bench_folder(args.folder, opts)
    print(markdown(result))
    if args.json:
        write_json(args.json, result)
    return 0

"""The honest ceiling: pure inference measured the way OpenVINO's `benchmark_app` measures it,
and `benchmark_app` itself on the same IR, so a bench can show that the two agree.

`pure_throughput` does what benchmark_app's inference-only mode does (openvino/tools/benchmark,
`Benchmark.async_inference_only`): the THROUGHPUT hint's streams, an `AsyncInferQueue` of the
compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS, every request's input tensor filled once
before the loop, and a loop that only restarts the next idle request (`start_async()` with no
inputs: no per-inference Python allocation or dictionary), ending on a whole round of requests.
Passing the frame to every `start_async` instead, as the benches did before, measured 40 % of
benchmark_app on machines with many cores.

`benchmark_app_throughput` runs the installed `benchmark_app -hint throughput -t N -shape ...`
on the same IR and parses its "Throughput: X FPS" line. `honest_ceiling` runs ours, then
benchmark_app, then ours again and compares benchmark_app with the mean of the two, so a load that
drifts during the run (a shared machine) moves both sides alike; the spread between our two runs
is reported, and `agreement_warning` says when the two differ by more than `AGREEMENT` (5 %).
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AGREEMENT = 0.05
"""Our pure inference and benchmark_app must agree within this fraction, or the bench says so."""
WARMUP_S = 1.0
_THROUGHPUT_LINE = re.compile(r"Throughput:\s*([0-9]+(?:\.[0-9]+)?)\s*FPS")


def process_cpu_s() -> float:
    """CPU seconds of this process, all threads (OpenVINO's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class PureThroughput:
    """Pure inference of one compiled model, benchmark_app's way."""

    fps: float
    """Inferences per second over the whole loop, its final wait included."""
    requests: int
    """Infer requests in flight (the compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS)."""
    frames: int
    seconds: float
    cpu_ms_per_frame: float
    """Process CPU per inference during the loop: what OpenVINO itself spends on one frame."""


def pure_throughput(
    compiled: Any, frame: np.ndarray, seconds: float, warmup_s: float = WARMUP_S
) -> PureThroughput:
    """Run `compiled` (THROUGHPUT hint) on `frame` (H, W, C: batch 1; or N, H, W, C: a batch
    of N a request) for `seconds`."""
    import openvino as ov

    nreq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, nreq)
    batch = np.ascontiguousarray(frame if frame.ndim == 4 else frame[None])
    for request in queue:  # each request its own input, filled once
        request.set_input_tensor(0, ov.Tensor(batch.copy()))
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        queue.start_async()
    queue.wait_all()
    requests = 0
    cpu0 = process_cpu_s()
    start = time.perf_counter()
    elapsed = 0.0
    # Like benchmark_app: run for `seconds`, then finish the round so every request ran as often.
    while elapsed < seconds or requests % nreq:
        queue.start_async()  # waits for an idle request when all are busy
        requests += 1
        elapsed = time.perf_counter() - start
    queue.wait_all()
    elapsed = time.perf_counter() - start
    cpu = process_cpu_s() - cpu0
    frames = requests * batch.shape[0]
    return PureThroughput(frames / elapsed, nreq, frames, elapsed, cpu * 1e3 / frames)


@dataclass
class BenchmarkApp:
    """What `benchmark_app` said about the same IR (fps None: it could not be run or parsed)."""

    fps: float | None
    command: list[str]
    problem: str | None = None


def benchmark_app_path() -> str | None:
    """The benchmark_app installed with this Python's openvino, else one on PATH."""
    beside = Path(sys.executable).with_name("benchmark_app")
    if beside.is_file():
        return str(beside)
    return shutil.which("benchmark_app")


def parse_throughput(output: str) -> float | None:
    """The FPS of benchmark_app's "[ INFO ] Throughput:   123.45 FPS" line, None if absent."""
    found = _THROUGHPUT_LINE.findall(output)
    return float(found[-1]) if found else None


def benchmark_app_throughput(
    xml: Path | str,
    seconds: float,
    shape: tuple[int, ...],
    device: str = "CPU",
    inference_precision: str | None = None,
) -> BenchmarkApp:
    """Run `benchmark_app -m xml -hint throughput -t seconds -shape [..]` and parse its FPS."""
    exe = benchmark_app_path()
    shape_arg = "[" + ",".join(str(d) for d in shape) + "]"
    # -t takes whole seconds; never less than one.
    command = [exe or "benchmark_app", "-m", str(xml), "-d", device, "-hint", "throughput"]
    command += ["-t", str(max(1, round(seconds))), "-shape", shape_arg]
    if inference_precision:
        command += ["-infer_precision", inference_precision]
    if exe is None:
        return BenchmarkApp(None, command, "benchmark_app is not installed")
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds * 3 + 120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return BenchmarkApp(None, command, f"benchmark_app did not run: {exc}")
    fps = parse_throughput(proc.stdout)
    if fps is None or proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return BenchmarkApp(None, command, f"benchmark_app exit {proc.returncode}: {tail[0]}")
    return BenchmarkApp(fps, command)


def ratio(ours: float, theirs: float | None) -> float | None:
    """ours / benchmark_app's, None without a benchmark_app figure."""
    return ours / theirs if theirs else None


def agreement_warning(
    ours: float, app: BenchmarkApp, what: str = "pure inference", spread: float | None = None
) -> str | None:
    """A one-line warning when our figure and benchmark_app's differ by more than 5 %."""
    if app.fps is None:
        return f"WARNING: no benchmark_app figure to check {what} against ({app.problem})"
    r = ours / app.fps
    if abs(r - 1.0) <= AGREEMENT:
        return None
    noisy = ""
    if spread is not None and spread > AGREEMENT:
        noisy = f"; our runs before and after it differed by {spread:.0%}: the machine is busy"
    return (
        f"WARNING: {what} {ours:.1f} FPS vs benchmark_app {app.fps:.1f} FPS: ratio {r:.3f}, "
        f"outside ±{AGREEMENT:.0%}{noisy}; the ceiling is not trustworthy in this run"
    )


@dataclass
class Ceiling:
    """Pure inference (ours, the mean of the runs before and after benchmark_app) and
    benchmark_app's figure on the same IR, measured back to back."""

    fps: float
    requests: int
    cpu_ms_per_frame: float
    runs_fps: list[float]
    """Our runs' FPS: before benchmark_app and after it (one run without benchmark_app)."""
    app: BenchmarkApp | None
    """None when benchmark_app was not asked for."""

    @property
    def spread(self) -> float:
        """(max - min) / mean of our runs: how much the machine moved during the measurement."""
        return (max(self.runs_fps) - min(self.runs_fps)) / self.fps

    @property
    def app_fps(self) -> float | None:
        return self.app.fps if self.app else None

    @property
    def vs_app(self) -> float | None:
        """ours / benchmark_app's; None without a benchmark_app figure."""
        return ratio(self.fps, self.app_fps)

    def warning(self, what: str = "pure inference") -> str | None:
        if self.app is None:
            return None
        return agreement_warning(self.fps, self.app, what, self.spread)


def honest_ceiling(
    compiled: Any,
    frame: np.ndarray,
    seconds: float,
    xml: Path | str | None = None,
    device: str = "CPU",
    inference_precision: str | None = None,
) -> Ceiling:
    """Pure inference of `compiled` on `frame`; with `xml`, benchmark_app on that IR between two
    runs of ours (`seconds` each), compared with their mean."""
    runs = [pure_throughput(compiled, frame, seconds)]
    app = None
    if xml is not None:
        shape = (1, *frame.shape)
        app = benchmark_app_throughput(xml, seconds, shape, device, inference_precision)
        runs.append(pure_throughput(compiled, frame, seconds))
    fps = [r.fps for r in runs]
    cpu = sum(r.cpu_ms_per_frame for r in runs) / len(runs)
    return Ceiling(sum(fps) / len(fps), runs[0].requests, cpu, fps, app)

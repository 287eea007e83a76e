#!/usr/bin/env python3
"""Remote infer workers: frames per second with 1 and 2 workers, the head's dispatch CPU per frame,
and what CURVE costs.

    .venv/bin/python benchmarks/workers_bench.py [--model DIR] [--frames N]

The head is the Python API `Pipeline` in this process with `workers` on a loopback endpoint and no
local inference (`--no-local-infer`); each worker is `ovstream worker --threads 1 --once`, pinned
with `taskset` to one core of its own. Per run:

- FPS: results per second in the steady state (from 10 % to 90 % of the results, timed as they
  reach this process), so start-up and the workers' compile are left out;
- head dispatch CPU: CPU seconds of the infer stage's process (psutil, over the same window) per
  frame. With no local inference that process only moves tensors to workers and logits back (and,
  with keys, encrypts and decrypts them on its ZeroMQ I/O thread);
- CURVE: the 2-worker run again with keys made by `ovstream keys`: the difference in FPS and in
  the head's CPU per frame.

The model defaults to ResNet50 INT8 with random weights, made once under --workdir by
`model-prep export --weights random` and `model-prep quantize` (a few calibration frames: speed,
not accuracy, is measured). Results: benchmarks/results/workers_bench.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.config import FRAME_FORMAT_CHOICES  # noqa: E402
from stream.pipeline import Pipeline, PipelineConfig  # noqa: E402
from stream.remote.keys import create_keys  # noqa: E402
from stream.wire.transport import free_tcp_port  # noqa: E402
from tests.conftest import make_sample  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "workers_bench.txt"
WORKER_END_S = 60
THREAD_KINDS = ("main", "zmq io", "other")


@dataclass
class Run:
    label: str
    workers: int
    keys: bool
    frames: int
    fps: float
    head_cpu_ms: float
    """Infer stage CPU per frame over the steady window."""
    per_worker: dict[str, int]
    worker_busy: list[float]
    """Each worker's CPU over the steady window, as a share of one core."""
    head_threads: dict[str, float]
    """Of head_cpu_ms: ms per frame by thread (main, zmq io, other)."""
    chunk: float
    """Frames per batch sent to a worker, on average."""


def cpu_s(pid: int) -> float:
    """CPU seconds of every thread of `pid` so far, in nanoseconds' precision (schedstat), not
    the clock ticks (10 ms) of psutil's cpu_times."""
    return sum(thread_cpu_s(pid).values())


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of `pid`'s threads so far, summed by kind: the main thread (Python), ZeroMQ's
    I/O threads, and the rest (OpenVINO's, the authenticator's...)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            comm = (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
        kind = "other"
        if task.name == str(pid):
            kind = "main"
        elif comm.startswith("ZMQbg/IO"):
            kind = "zmq io"
        out[kind] = out.get(kind, 0.0) + ns / 1e9
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def ensure_model(workdir: Path, clip: Path) -> Path:
    """ResNet50 INT8 (random weights) under `workdir`, made if missing."""
    folder = workdir / "resnet50"
    if not (folder / "int8" / "model.xml").exists():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        steps = [
            ["model_prep.cli", "export", "--arch", "resnet50", "--weights", "random"],
            ["model_prep.cli", "quantize", str(folder), "--calib", str(clip)],
        ]
        steps[0] += ["--output", str(folder)]
        steps[1] += ["--subset-size", "32"]
        for step in steps:
            print("making the model:", " ".join(step[1:3]), flush=True)
            subprocess.run(cli(*step), check=True, env=env, cwd=ROOT, timeout=1800)
    return folder / "int8"


def start_worker(endpoint: str, model: Path, core: int, name: str, keys: Path | None):
    argv = ["taskset", "-c", str(core)]
    argv += cli("stream.cli", "worker", "--connect", endpoint, "--model", str(model))
    argv += ["--threads", "1", "--requests", "2", "--once", "--name", name]
    if keys is not None:
        argv += ["--keys", str(keys)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def measure(
    clip: Path, model: Path, cores: list[int], keys_dir: Path | None, fmt: str = "auto"
) -> Run:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    worker_keys = None
    if keys_dir is not None:
        worker_keys = keys_dir / "worker-side"
        if not worker_keys.exists():
            worker_keys.mkdir(mode=0o700)
            (worker_keys / "server.key").write_bytes((keys_dir / "server.key").read_bytes())
            secret = keys_dir / "clients" / "worker.key_secret"
            (worker_keys / "worker.key_secret").write_bytes(secret.read_bytes())
            (worker_keys / "worker.key_secret").chmod(0o600)
    workers = [
        start_worker(endpoint, model, core, f"w{i}", worker_keys) for i, core in enumerate(cores)
    ]
    config = PipelineConfig(
        sources=[str(clip)],
        model=str(model),
        publish=None,
        workers=endpoint,
        local_infer=False,
        keys=str(keys_dir) if keys_dir is not None else None,
        frame_format=fmt,
    )
    total = len(make_sample_frames(clip))
    lo, hi = int(total * 0.1), int(total * 0.9)
    marks: dict[str, tuple[float, dict[str, float], list[float]]] = {}
    count = 0
    pipeline = Pipeline(config)

    def on_result(_record: dict) -> None:
        nonlocal count
        count += 1
        if count in (lo, hi):
            busy = [cpu_s(w.pid) for w in workers]
            cpu = thread_cpu_s(pipeline.pids["infer"])
            marks["lo" if count == lo else "hi"] = (time.monotonic(), cpu, busy)

    try:
        summary = pipeline.run(on_result=on_result)
    finally:
        for proc in workers:
            try:
                proc.wait(timeout=WORKER_END_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    (t0, c0, w0), (t1, c1, w1) = marks["lo"], marks["hi"]
    per_worker = {
        name: int(stats.get("frames", 0))
        for name, stats in summary.stages["infer"]["workers"]["per_worker"].items()
    }
    return Run(
        label=f"{len(cores)} worker(s){' + CURVE' if keys_dir else ''}",
        workers=len(cores),
        keys=keys_dir is not None,
        frames=summary.results,
        fps=(hi - lo) / (t1 - t0),
        head_cpu_ms=(sum(c1.values()) - sum(c0.values())) * 1e3 / (hi - lo),
        head_threads={k: (c1[k] - c0.get(k, 0.0)) * 1e3 / (hi - lo) for k in sorted(c1)},
        chunk=summary.stages["infer"]["frames"] / max(1, summary.stages["infer"]["requests_done"]),
        per_worker=per_worker,
        worker_busy=[(b - a) / (t1 - t0) for a, b in zip(w0, w1, strict=True)],
    )


def make_sample_frames(clip: Path) -> list[int]:
    import av

    with av.open(str(clip)) as container:
        return [0 for _ in container.decode(video=0)]


def cpu_name() -> str:
    import openvino as ov

    return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: ResNet50 INT8, made in --workdir)")
    parser.add_argument("--frames", type=int, default=600, help="frames of the test clip")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "workers-bench"))
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument(
        "--frame-format",
        choices=FRAME_FORMAT_CHOICES,
        default="auto",
        help="frames to the workers (ovstream run --frame-format; auto: i420 for 224x224)",
    )
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    clip = make_sample.write_clip(workdir / f"clip_{args.frames}.mp4", 320, 180, 25, args.frames)
    model = Path(args.model) if args.model else ensure_model(workdir, clip)
    keys = workdir / "keys"
    if not (keys / "server.key").exists():
        create_keys(keys, ("worker",))
    cores = sorted(os.sched_getaffinity(0))
    two = cores[:2] if len(cores) >= 2 else cores * 2
    fmt = args.frame_format
    runs = [
        measure(clip, model, [two[-1]], None, fmt),
        measure(clip, model, two, None, fmt),
        measure(clip, model, two, keys, fmt),
    ]
    for run in runs:
        print(run, flush=True)
    one, both, curve = runs
    lines = [
        f"workers_bench: {cpu_name()}, {len(cores)} core(s) ({os.cpu_count()} online); "
        f"{platform.platform()}; load average {os.getloadavg()[0]:.2f}",
        f"model {model} ; clip {args.frames} frames 320x180; frames {fmt};"
        " head --no-local-infer on loopback;"
        " each worker --threads 1 --requests 2, pinned to one core with taskset"
        f" (cores {two}); FPS and head CPU over the steady 10-90 % of the results",
        "",
        f"{'run':<20} {'results':>7} {'FPS':>7} {'head infer CPU ms/frame':>24}"
        f" {'main · zmq io · other':>22} {'chunk':>5}  worker CPU (cores)  frames per worker",
    ]
    for run in runs:
        busy = " ".join(f"{b:.2f}" for b in run.worker_busy)
        threads = " · ".join(f"{run.head_threads.get(k, 0.0):.3f}" for k in THREAD_KINDS)
        lines.append(
            f"{run.label:<20} {run.frames:>7} {run.fps:>7.1f} {run.head_cpu_ms:>24.3f}"
            f" {threads:>22} {run.chunk:>5.1f}  {busy:>18}  {run.per_worker}"
        )
    lines += [
        "",
        f"2 workers / 1 worker: {both.fps / one.fps:.2f}x (target >= 1.8)",
        f"head dispatch CPU per frame: {both.head_cpu_ms:.3f} ms with 2 workers, "
        f"{one.head_cpu_ms:.3f} ms with 1 (target <= 0.1 ms)",
        f"CURVE: {curve.head_cpu_ms - both.head_cpu_ms:+.3f} ms head CPU per frame, "
        f"FPS {curve.fps:.1f} vs {both.fps:.1f} ({(curve.fps / both.fps - 1) * 100:+.1f} %)",
    ]
    if len(cores) <= 2:
        lines.append(
            f"note: this machine has {len(cores)} core(s): with two workers each pinned to one, "
            "the head's capture, preprocess, infer and publish processes share those same cores,"
            " so the 2-worker figure is CPU-bound here and understates what two machines give."
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

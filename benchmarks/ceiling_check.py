#!/usr/bin/env python3
"""Ceiling check: our pure inference, the loop the benches used before, and benchmark_app, taking
turns on the same IR, several rounds, so their ratios can be told from a shared machine's noise.

    .venv/bin/python benchmarks/ceiling_check.py models/resnet50/int8 --rounds 3 --seconds 5

Each round runs, `seconds` each: the old loop (an AsyncInferQueue given the frame on every
`start_async`, its callback counting), `model_prep.ceiling.pure_throughput` (benchmark_app's way)
and `benchmark_app -hint throughput`. Prints each round and the median of the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_prep.ceiling import benchmark_app_throughput, pure_throughput  # noqa: E402
from stream.model import compile_model, load_info  # noqa: E402


def old_loop_fps(compiled, frame: np.ndarray, seconds: float) -> float:
    """The benches' loop before #13: the frame passed to every start_async, a Python callback."""
    import openvino as ov

    nreq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, nreq)
    done = [0]
    queue.set_callback(lambda request, userdata: done.__setitem__(0, done[0] + 1))
    batch = frame[None]
    warm = time.perf_counter() + 1.0
    while time.perf_counter() < warm:
        queue.start_async({0: batch})
    queue.wait_all()
    done[0] = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.start_async({0: batch})
    queue.wait_all()
    return done[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder (a parent picks int8/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default="CPU")
    args = parser.parse_args(argv)

    import openvino as ov

    info = load_info(args.model)
    compiled = compile_model(info, args.device, "throughput")
    frame = np.random.default_rng(0).integers(
        0, 256, (info.geometry.height, info.geometry.width, 3), dtype=np.uint8
    )
    shape = (1, *frame.shape)
    cpu = ov.Core().get_property(args.device, "FULL_DEVICE_NAME")
    print(
        f"{info.name} {info.precision} on {cpu} ({os.cpu_count()} cores), OpenVINO "
        f"{ov.__version__}, {args.seconds:g} s per measurement, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'round':>5} {'old loop':>9} {'ours':>8} {'b_app':>8} {'ours/b_app':>10} {'old/b_app':>9}"
    )
    ours_ratio, old_ratio = [], []
    for i in range(args.rounds):
        old = old_loop_fps(compiled, frame, args.seconds)
        ours = pure_throughput(compiled, frame, args.seconds).fps
        app = benchmark_app_throughput(info.xml, args.seconds, shape, args.device)
        if app.fps is None:
            print(f"benchmark_app: {app.problem}", file=sys.stderr)
            return 1
        ours_ratio.append(ours / app.fps)
        old_ratio.append(old / app.fps)
        print(
            f"{i + 1:>5} {old:9.1f} {ours:8.1f} {app.fps:8.1f} {ours_ratio[-1]:10.3f}"
            f" {old_ratio[-1]:9.3f}",
            flush=True,
        )
    print(
        f"median ours/b_app {statistics.median(ours_ratio):.3f}, old/b_app "
        f"{statistics.median(old_ratio):.3f}; load {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

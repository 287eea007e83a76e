#!/usr/bin/env python3
"""Live-source benchmark: one real-time RTSP stream through the pipeline, for minutes.

    .venv/bin/python benchmarks/live_bench.py --model models/resnet50/int8 --minutes 10

It starts the test suite's GStreamer RTSP server (tests/rtsp/server.py, Debian's python3-gi)
serving a generated 640x360 H.264 clip in a loop at 25 fps, and measures, in one run:
- the model's single-request latency: LATENCY hint, batch 1, synchronous infer, median and p95
  over a few hundred requests (no pipeline running);
- capture->publish latency (`latency_ms` of the results) p50/p95 per time window, so any growth
  over the run is visible, with the result rate and the frames dropped to keep up;
- reconnects: the server is killed, left down until the capture's backoff reached its cap,
  and started again after a random extra 0..cap s (anywhere in the retry cycle); the time
  from the server being ready to the `connected` status event and to the first new result,
  next to the backoff cap (the promise: within cap + 2 s).
Prints a table and writes everything as JSON (--json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream import Pipeline, PipelineConfig  # noqa: E402
from stream.config import FRAME_FORMAT_CHOICES  # noqa: E402
from stream.model import compile_model, load_info  # noqa: E402
from stream.sources.live_options import LiveOptions  # noqa: E402
from tests.rtsp.fixtures import RtspServer, gst_rtsp_unavailable  # noqa: E402


def make_sample_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_sample", ROOT / "samples" / "make_sample.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def single_request_latency(model: str, seconds: float = 10.0) -> dict[str, float]:
    """Median/p95 ms of one synchronous request, LATENCY hint, batch 1."""
    info = load_info(model)
    compiled = compile_model(info, "CPU", "latency")
    request = compiled.create_infer_request()
    frame = np.random.default_rng(0).integers(
        0, 256, (1, info.geometry.height, info.geometry.width, 3), dtype=np.uint8
    )
    warm_until = time.perf_counter() + 2.0
    while time.perf_counter() < warm_until:
        request.infer({0: frame})
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        request.infer({0: frame})
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": statistics.median(times), "p95_ms": percentile(times, 95), "n": len(times)}


class Run:
    """The pipeline on the server's stream; collects results (status events: the supervisor)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.results: list[tuple[float, float, int]] = []  # (publish_ts, latency_ms, index)
        pipeline.start(collect=True)
        self.supervisor = pipeline.supervisor

    def pump(self, seconds: float, until: Any = None) -> bool:
        """Collect for `seconds` (or until `until()` is true); False once the run has ended."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.supervisor.finished:
                return False
            for record in self.supervisor.step(100):
                self.results.append(
                    (record["publish_ts"], record["latency_ms"], record["frame_index"])
                )
            if until is not None and until():
                return True
        return True


def window_rows(results: list[tuple[float, float, int]], t0: float, window_s: float) -> list[dict]:
    rows = []
    if not results:
        return rows
    end = results[-1][0]
    start = t0
    while start < end:
        chunk = [r for r in results if start <= r[0] < start + window_s]
        if chunk:
            lat = [r[1] for r in chunk]
            idx = [r[2] for r in chunk]
            rows.append(
                {
                    "from_s": round(start - t0, 1),
                    "results": len(chunk),
                    "fps": round(len(chunk) / window_s, 2),
                    "p50_ms": round(percentile(lat, 50), 1),
                    "p95_ms": round(percentile(lat, 95), 1),
                    "max_ms": round(max(lat), 1),
                    "frames_spanned": idx[-1] - idx[0] + 1,
                }
            )
        start += window_s
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (e.g. .../resnet50/int8)")
    parser.add_argument("--minutes", type=float, default=3.0, help="steady-state run length")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per latency window")
    parser.add_argument("--fps", type=int, default=25, help="stream frame rate (25-30)")
    parser.add_argument("--size", default="640x360", help="stream size WxH")
    parser.add_argument("--mode", choices=("latency", "throughput"), default="latency")
    parser.add_argument(
        "--frame-format",
        choices=FRAME_FORMAT_CHOICES,
        default="auto",
        help="frames between the stages (ovstream run --frame-format)",
    )
    parser.add_argument("--backoff-max", type=float, default=4.0, help="capture's backoff cap (s)")
    parser.add_argument("--reconnects", type=int, default=3, help="kill/restart rounds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random down times")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    reason = gst_rtsp_unavailable()
    if reason:
        print(f"live_bench: {reason}", file=sys.stderr)
        return 2
    width, height = (int(v) for v in args.size.split("x"))

    work = Path(tempfile.mkdtemp(prefix="live-bench-"))
    clip = make_sample_module().write_clip(
        work / "clip.mp4", width, height, args.fps, args.fps * 10, gop=args.fps
    )
    print(f"model {args.model}; measuring single-request latency (LATENCY hint, batch 1)...")
    single = single_request_latency(args.model)
    print(f"  single request: p50 {single['p50_ms']:.2f} ms, p95 {single['p95_ms']:.2f} ms")

    log_dir = work / "server"
    log_dir.mkdir()
    server = RtspServer(file=clip, path="/cam", log_dir=log_dir).start()
    live = LiveOptions(backoff_max_s=args.backoff_max, stall_timeout_s=5.0)
    config = PipelineConfig(
        sources=[f"cam={server.url}"],
        model=args.model,
        publish=None,
        mode=args.mode,
        live=live,
        frame_format=args.frame_format,
    )
    report: dict[str, Any] = {
        "model": args.model,
        "stream": f"{args.size}@{args.fps} H.264 over RTSP/TCP",
        "mode": args.mode,
        "frame_format": args.frame_format,
        "single_request": single,
        "backoff_max_s": args.backoff_max,
    }
    try:
        with Pipeline(config) as pipeline:
            run = Run(pipeline)
            run.pump(60, until=lambda: len(run.results) >= args.fps * 2)  # connected, warm
            t0 = time.time()
            print(f"steady state for {args.minutes:g} min...")
            run.pump(args.minutes * 60)
            steady = [r for r in run.results if r[0] >= t0]
            capture = pipeline.supervisor.stats("capture[cam]") if pipeline.supervisor else {}
            report["windows"] = window_rows(steady, t0, args.window)
            lat = [r[1] for r in steady]
            report["steady"] = {
                "seconds": round(time.time() - t0, 1),
                "results": len(steady),
                "p50_ms": round(percentile(lat, 50), 2),
                "p95_ms": round(percentile(lat, 95), 2),
                "decoded": capture.get("decoded"),
                "dropped": capture.get("dropped"),
            }
            report["reconnects"] = []
            rng = random.Random(args.seed)
            for round_no in range(args.reconnects):
                server.kill()
                down_at = time.time()
                # stay down until the backoff reached its cap, then a random part of one more
                # wait, so the server comes back anywhere in the capture's retry cycle
                run.pump(args.backoff_max * 2 + 3 + rng.uniform(0, args.backoff_max))
                server.start()
                ready = time.time()
                seen = len(pipeline.status_events)
                n = len(run.results)

                def back(n: int = n) -> bool:
                    return len(run.results) > n

                run.pump(60, until=back)
                events = pipeline.status_events[seen:]
                connected = next((e["ts"] for e in events if e["event"] == "connected"), None)
                delays = [
                    e["delay_s"]
                    for e in pipeline.status_events
                    if e["event"] == "reconnect_scheduled" and e["ts"] >= down_at
                ]
                row = {
                    "round": round_no + 1,
                    "down_s": round(ready - down_at, 1),
                    "last_delay_s": delays[-1] if delays else None,
                    "connected_after_s": round(connected - ready, 2) if connected else None,
                    "first_result_after_s": (
                        round(run.results[n][0] - ready, 2) if len(run.results) > n else None
                    ),
                }
                report["reconnects"].append(row)
                run.pump(5)
            pipeline.stop()
            run.pump(30)
            if pipeline.supervisor.failure:
                print(
                    f"live_bench: pipeline failed: {pipeline.supervisor.failure}", file=sys.stderr
                )
        summary = pipeline.summary
        report["summary"] = {
            "decoded": summary.sources[0].decoded,
            "published": summary.sources[0].published,
            "dropped": summary.sources[0].dropped,
            "reconnects": summary.sources[0].reconnects,
        }
    finally:
        server.stop()

    print(
        f"\nstream {report['stream']}, mode {args.mode}, model single request "
        f"p50 {single['p50_ms']:.2f} ms"
    )
    print(f"{'window':>8} {'results':>8} {'fps':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for w in report["windows"]:
        print(
            f"{w['from_s']:>7.0f}s {w['results']:>8} {w['fps']:>6.1f} {w['p50_ms']:>8.1f} "
            f"{w['p95_ms']:>8.1f} {w['max_ms']:>8.1f}"
        )
    s = report["steady"]
    ratio = s["p50_ms"] / single["p50_ms"]
    print(
        f"steady: {s['results']} results in {s['seconds']} s, latency p50 {s['p50_ms']} ms "
        f"({ratio:.2f} x single request), p95 {s['p95_ms']} ms; decoded {s['decoded']}, "
        f"dropped {s['dropped']}"
    )
    report["steady"]["p50_over_single"] = round(ratio, 3)
    for r in report["reconnects"]:
        print(
            f"reconnect {r['round']}: server down {r['down_s']} s "
            f"(backoff at {r['last_delay_s']} s, "
            f"cap {args.backoff_max:g} s); connected {r['connected_after_s']} s and first result "
            f"{r['first_result_after_s']} s after the server was ready"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

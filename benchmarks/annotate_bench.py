#!/usr/bin/env python3
"""What `--annotate` costs per frame, and that it costs nothing when off.

    .venv/bin/python benchmarks/annotate_bench.py --model models/default --json out.json

Per frame size (640x360 and 1920x1080, generated H.264 clips of the sample's photographs), in
CPU-bound steps of the annotator, best of --repeat runs, ms per frame:
- decode: PyAV decoding alone (`decode_frames`, as the annotator reads the file again);
- + draw: decoding, and drawing the label box on each frame (`annotate_frame`);
- + encode: the whole of `write_annotated`, decode + draw + libx264 (crf 18, veryfast) + MP4.
Then the sample through the pipeline (`Pipeline.run`) without and with an `Annotator`: the
run's wall time, the extra wait for the videos after the run, and whether the annotate module
was imported at all and the pipeline delivered results to the main process without it.
With --live S: `ovstream run` on a live RTSP stream (tests/rtsp/server.py, GStreamer, a 640x360
25 fps clip looping) for S seconds, without and with `--annotate --annotate-segment 10`: results
per second both ways, and the live annotator's summary line (ms/frame drawing and encoding in
the main process, ms/frame copying in capture, frames without a source frame).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream import Pipeline, PipelineConfig  # noqa: E402
from stream.sources.decode import DecodeCounters, decode_frames, open_source  # noqa: E402


def make_sample_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_sample", ROOT / "samples" / "make_sample.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_ms(fn: Any, frames: int, repeat: int) -> float:
    """Best ms per frame of `fn()` over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / frames


def per_frame_costs(folder: Path, width: int, height: int, frames: int, repeat: int) -> dict:
    from stream.ops.annotate import Mark, annotate_frame, write_annotated

    clip = make_sample_module().write_clip(
        folder / f"clip_{height}p.mp4", width, height, 25, frames
    )
    marks = {i: Mark("tabby, tabby cat", 0.8765, i / 25, i) for i in range(frames)}

    def decode() -> None:
        container, stream = open_source(str(clip))
        for _ in decode_frames(container, stream, DecodeCounters()):
            pass
        container.close()

    def draw() -> None:
        container, stream = open_source(str(clip))
        for index, _, frame in decode_frames(container, stream, DecodeCounters()):
            annotate_frame(frame, marks[index], (width, height))
        container.close()

    def encode() -> None:
        write_annotated(str(clip), marks, folder / f"out_{height}p.mp4")

    row = {"size": f"{width}x{height}", "frames": frames}
    row["decode_ms"] = best_ms(decode, frames, repeat)
    row["decode_draw_ms"] = best_ms(draw, frames, repeat)
    row["decode_draw_encode_ms"] = best_ms(encode, frames, repeat)
    row["draw_ms"] = row["decode_draw_ms"] - row["decode_ms"]
    row["encode_ms"] = row["decode_draw_encode_ms"] - row["decode_draw_ms"]
    return row


def pipeline_runs(model: str, folder: Path) -> dict:
    """The sample without and with an Annotator, in this process."""
    sample = str(ROOT / "samples" / "sample.mp4")
    config = PipelineConfig(sources=[sample], model=model, publish=None)
    out: dict[str, Any] = {}
    pipeline = Pipeline(config)
    t0 = time.perf_counter()
    pipeline.run()
    out["off_run_s"] = time.perf_counter() - t0
    out["off_results"] = pipeline.summary.results if pipeline.summary else 0
    out["off_annotate_imported"] = "stream.ops.annotate" in sys.modules
    out["off_results_delivered_to_main"] = bool(pipeline.supervisor and pipeline.supervisor.collect)

    from stream.ops.annotate import Annotator

    annotator = Annotator(folder / "ann", config.specs)
    pipeline = Pipeline(config)
    t0 = time.perf_counter()
    pipeline.run(on_result=annotator.on_result, on_stream_end=annotator.on_stream_end)
    out["on_run_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    stats = annotator.close()
    out["on_wait_after_run_s"] = time.perf_counter() - t1
    out["on_annotated_frames"] = stats.frames
    out["on_annotate_ms_per_frame"] = stats.ms_per_frame
    return out


def live_runs(model: str, folder: Path, seconds: float) -> dict:
    """A live RTSP stream classified for `seconds`, without and with --annotate."""
    clip = make_sample_module().write_clip(folder / "live.mp4", 640, 360, 25, 250, gop=25)
    server = subprocess.Popen(
        ["/usr/bin/python3", str(ROOT / "tests/rtsp/server.py"), "--port", "0"]
        + ["--path", "/cam", "--file", str(clip)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out: dict[str, Any] = {}
    try:
        assert server.stdout is not None
        line = ""
        while not line.startswith("READY"):  # "READY rtsp://..." once it listens
            line = server.stdout.readline()
            if not line:
                raise RuntimeError("RTSP server exited before READY")
        url = line.split()[1]
        for mode in ("off", "on"):
            args = [sys.executable, "-m", "stream.cli", "run", f"cam={url}", "--model", model]
            args += ["--publish", "none", "--no-progress"]
            if mode == "on":
                args += ["--annotate", str(folder / "ann"), "--annotate-segment", "10"]
            run = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
            time.sleep(seconds)  # a benchmark of a fixed length, not a synchronisation
            run.send_signal(signal.SIGINT)
            _, err = run.communicate(timeout=60)
            results = re.search(r"(\d+) result\(s\) from 1 source\(s\) in ([\d.]+) s", err)
            if run.returncode != 0 or not results:
                raise RuntimeError(f"ovstream run ({mode}) failed:\n{err}")
            out[f"{mode}_results"] = int(results.group(1))
            out[f"{mode}_results_per_s"] = int(results.group(1)) / float(results.group(2))
            if mode == "on":
                out["summary"] = next(
                    x for x in err.splitlines() if "annotated live:" in x
                ).removeprefix("ovstream: ")
    finally:
        server.terminate()
        server.wait(10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder for the pipeline runs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument(
        "--live", type=float, metavar="S", help="also run a live RTSP stream for S s each way"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="annotate-bench-") as tmp:
        folder = Path(tmp)
        runs = pipeline_runs(args.model, folder)  # first: the module must not be imported yet
        rows = [
            per_frame_costs(folder, 640, 360, 200, args.repeat),
            per_frame_costs(folder, 1920, 1080, 100, args.repeat),
        ]
        live = live_runs(args.model, folder, args.live) if args.live else None
    print(f"{'size':>10} {'decode':>8} {'+draw':>8} {'+encode':>8}   ms/frame (draw, encode)")
    for r in rows:
        print(
            f"{r['size']:>10} {r['decode_ms']:8.2f} {r['decode_draw_ms']:8.2f} "
            f"{r['decode_draw_encode_ms']:8.2f}   ({r['draw_ms']:.2f}, {r['encode_ms']:.2f})"
        )
    print(
        f"sample, annotate off: {runs['off_results']} results in {runs['off_run_s']:.2f} s; "
        f"annotate module imported: {runs['off_annotate_imported']}; results delivered to the "
        f"main process: {runs['off_results_delivered_to_main']}"
    )
    print(
        f"sample, annotate on:  run {runs['on_run_s']:.2f} s, then "
        f"{runs['on_wait_after_run_s']:.2f} s waiting for the video; "
        f"{runs['on_annotated_frames']} frames, "
        f"{runs['on_annotate_ms_per_frame']:.2f} ms/frame"
    )
    if live:
        print(
            f"live 640x360 25 fps, {args.live:g} s: annotate off {live['off_results_per_s']:.1f} "
            f"results/s, on {live['on_results_per_s']:.1f} results/s; {live['summary']}"
        )
    if args.json:
        figures = {"sizes": rows, "pipeline": runs, "live": live}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

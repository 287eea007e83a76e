#!/usr/bin/env python3
"""Pipeline benchmark: end-to-end FPS against the honest ceiling of this machine, in one run.

    .venv/bin/python benchmarks/pipeline_bench.py --model models/resnet50   # picks int8/

For each generated H.264 clip (1080p and 640x360 by default) it measures:
- pure inference FPS of the same IR, measured as OpenVINO's benchmark_app measures it
  (`model_prep.ceiling.pure_throughput`: THROUGHPUT hint, the optimal number of requests, each
  input filled once, no per-inference Python work), and benchmark_app itself on the same IR in
  the same run, with the ratio (a warning line when they differ by more than 5 %);
- decode-only CPU per frame (PyAV, same threading as capture; process CPU time), and decode plus
  the model input as capture makes it (window crop, resize, BGR in one swscale pass);
- limit = 1 / (1/pure_fps + decode_cpu_s_per_frame / cores), the ceiling when decoding and
  inference share the cores, and the pipeline's ratio to it;
- the pipeline's end-to-end FPS (steady state: from the result at 10 % of the run to the last,
  by publish time; the FPS over the wall time including start-up is reported too);
- with `--rounds N`, the ceiling and the pipeline N times a row, alternated, each round's ratio
  printed and the row's figures taken from the round with the median ratio (on a shared VM one
  pure run can read 10 % off the next);
- the naive single-process loop (cv2.VideoCapture, cv2 resize via prepare, synchronous infer);
- peak memory of all pipeline processes (sampled RSS sum) and capture->publish latency p50/p95;
- CPU per frame of each process in the steady state, and what is left of their sum after
  decoding with the one resize as capture does them (its decoder threads: FFmpeg's frame threads
  for fewer streams than cores, one thread otherwise) and OpenVINO's own CPU per inference (from
  the pure run): the pipeline's overhead, against the issue's target of 0.3 ms (and, beside it,
  against the cheapest decoding, which charges frame threads' cost to the pipeline);
- the same two costs while they share the cores (`shared_cores`: the decoder paced at the
  limit's FPS in another process, the pure loop beside it), the shared limit they allow, and the
  overhead split into what sharing adds to them and the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_prep.ceiling import WARMUP_S, Ceiling, honest_ceiling, pure_throughput  # noqa: E402
from stream import Pipeline, PipelineConfig  # noqa: E402
from stream.config import FRAME_FORMAT_CHOICES, resolve_frame_format  # noqa: E402
from stream.geometry import prepare  # noqa: E402
from stream.model import ModelInfo, compile_model, load_info, request_batch  # noqa: E402
from stream.sources.decode import WindowScaler  # noqa: E402
from stream.stages.capture import auto_thread_count  # noqa: E402
from stream.stages.preprocess import DEFAULT_MAX_BATCH  # noqa: E402

PACE_BURST = 8
"""Frames the paced decoder of `shared_cores` decodes each time it wakes."""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_clip(folder: Path, width: int, height: int, frames: int, fps: int = 25) -> Path:
    path = folder / f"bench_{width}x{height}_{fps}fps_{frames}f.mp4"
    if not path.exists():
        spec = importlib.util.spec_from_file_location(
            "make_sample", ROOT / "samples/make_sample.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        module.write_clip(path, width, height, fps, frames)
    return path


def random_frame(info: ModelInfo) -> np.ndarray:
    """The one input the pure-inference runs use (seeded random pixels, the IR's BGR input)."""
    return np.random.default_rng(0).integers(
        0, 256, (info.geometry.height, info.geometry.width, 3), dtype=np.uint8
    )


def pure_inference(compiled: Any, info: ModelInfo, device: str, seconds: float) -> Ceiling:
    """Pure inference of `compiled` (the IR, THROUGHPUT hint) on one random frame as
    benchmark_app measures it, and benchmark_app itself on the same IR between two runs of
    ours."""
    return honest_ceiling(compiled, random_frame(info), seconds, info.xml, device)


def own_requests(info: ModelInfo, device: str, fmt: str, seconds: float) -> dict[str, float]:
    """Pure inference (`pure_throughput`) of OpenVINO as infer runs it: requests of
    `request_batch` frames of the default --max-batch, on the model compiled for exactly that
    many, taking frames of `fmt`."""
    batch = request_batch(DEFAULT_MAX_BATCH)
    compiled = compile_model(info, device, "throughput", batch=batch, frame_format=fmt)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (batch, *info.geometry.frame_shape(fmt)), dtype=np.uint8)
    run = pure_throughput(compiled, frames, seconds)
    return {"batch": batch, "pure_fps": run.fps, "pure_cpu_ms": run.cpu_ms_per_frame}


def decode_cpu_per_frame(
    clip: Path, info: ModelInfo, scale: bool, fmt: str = "bgr"
) -> dict[int, float]:
    """Process CPU seconds per frame to decode the clip (and, with `scale`, make the model input
    from it as capture does: crop the window and resize, converting to BGR or not (i420), in one
    swscale pass), by decoder threads: 0 (FFmpeg's frame threads, what capture uses for fewer
    streams than cores) and 1 (what it uses for as many as cores or more). The limit takes the
    cheaper, so it assumes the cheapest decoding; the overhead takes capture's."""
    return {threads: decode_cpu(clip, info, scale, threads, fmt) for threads in (0, 1)}


def decode_cpu(clip: Path, info: ModelInfo, scale: bool, threads: int, fmt: str = "bgr") -> float:
    """`decode_cpu_per_frame` with `threads` decoder threads (0: FFmpeg's choice, AUTO)."""
    scaler = WindowScaler(info.geometry, fmt)
    start = cpu_seconds()
    n = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        for frame in container.decode(stream):
            if scale:
                scaler(frame)
            n += 1
    return (cpu_seconds() - start) / n


def paced_decode(clip: str, model: str, fmt: str, fps: float, seconds: float, conn: Any) -> None:
    """Child process of `shared_cores`: decode `clip` (from the start again at its end) and make
    the model input as capture does, one decoder thread, `fps` frames a second in bursts of
    `PACE_BURST` (as a capture decodes when infer frees slots), for `seconds`; sends
    (frames, CPU seconds) on `conn`."""
    info = load_info(model)
    scaler = WindowScaler(info.geometry, fmt)
    out = np.empty(info.geometry.frame_shape(fmt), np.uint8)
    frames = looped_frames(clip)
    scaler(next(frames), out)  # opened and warm
    conn.send("ready")
    n = 0
    start, cpu0 = time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        wait = start + (n + PACE_BURST) / fps - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        for _ in range(PACE_BURST):
            scaler(next(frames), out)
            n += 1
    conn.send((n, cpu_seconds() - cpu0))
    frames.close()


def looped_frames(clip: str) -> Any:
    """The clip's frames, one decoder thread, from the start again at its end, without end."""
    while True:
        with av.open(clip) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            yield from container.decode(stream)


def shared_cores(
    compiled: Any, info: ModelInfo, clip: Path, fmt: str, fps: float, seconds: float
) -> dict[str, float]:
    """Decoding with the resize and pure inference, each measured while the other runs: the
    decoder (another process) paced at `fps`, the pipeline's ideal rate, and the pure-inference
    loop as `pure_inference` runs it. What each then costs a frame, against what it costs alone,
    is what sharing the cores adds before the pipeline does anything."""
    import multiprocessing as mp

    decoding_s = seconds + WARMUP_S + 0.5  # the pure loop's warm-up and run, and a margin
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    decoder = ctx.Process(
        target=paced_decode,
        args=(str(clip), str(info.path), fmt, fps, decoding_s, theirs),
        daemon=True,
    )
    decoder.start()
    try:
        if not ours.poll(60) or ours.recv() != "ready":
            raise RuntimeError("the paced decoder did not start")
        pure = pure_throughput(compiled, random_frame(info), seconds)
        if not ours.poll(60):
            raise RuntimeError("the paced decoder did not report")
        frames, cpu = ours.recv()
    finally:
        decoder.join(10)
        if decoder.is_alive():
            decoder.kill()
            decoder.join(10)
    return {
        "pure_fps": pure.fps,
        "pure_cpu_ms": pure.cpu_ms_per_frame,
        "decode_scale_ms": cpu * 1e3 / frames,
        "decoded_fps": frames / decoding_s,
    }


def naive_loop_fps(clip: Path, info: ModelInfo, device: str) -> float:
    """The seed's loop: OpenCV capture, full-size resize, synchronous inference, one process."""
    compiled = compile_model(info, device, "latency")
    request = compiled.create_infer_request()
    cap = cv2.VideoCapture(str(clip))
    n = 0
    start = time.perf_counter()
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            request.infer({0: prepare(frame, info.geometry)[None]})
            request.get_output_tensor(0).data.copy()
            n += 1
    finally:
        cap.release()
    return n / (time.perf_counter() - start)


def tree_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def pipeline_run(
    clip: Path, model: str, device: str, workdir: Path, streams: int = 1, fmt: str = "auto"
) -> dict[str, Any]:
    """The pipeline on `streams` copies of `clip` at once (each its own capture process)."""
    out = workdir / f"{clip.stem}x{streams}.jsonl"
    sources = [f"{clip.stem}_{i}={clip}" for i in range(streams)]
    config = PipelineConfig(
        sources=sources,
        model=model,
        device=device,
        publish=None,
        output=str(out),
        jobs=streams,
        frame_format=fmt,
    )
    pipeline = Pipeline(config)
    peak = [0.0]
    cpu_samples: list[tuple[float, dict[str, float]]] = []

    def sample(p: Pipeline) -> None:
        peak[0] = max(peak[0], tree_rss_mb([os.getpid(), *p.pids.values()]))
        cpu = {"supervisor": cpu_seconds()}
        read = []
        for name, pid in p.pids.items():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                kind = name.split("[")[0]  # the captures of all streams together
                cpu[kind] = cpu.get(kind, 0.0) + times.user + times.system
                read.append(name)
        cpu["_processes"] = hash(frozenset(read))  # steady_stage_ms compares like with like
        cpu_samples.append((time.time(), cpu))

    wall_start = time.perf_counter()
    summary = pipeline.run(progress=sample, progress_interval_s=0.2)
    wall = time.perf_counter() - wall_start
    records = [json.loads(line) for line in out.read_text().splitlines()]
    publish = sorted(r["publish_ts"] for r in records)
    latency = sorted(r["latency_ms"] for r in records)
    # Steady state: from the result at 10 % of the run to the last, so start-up (compilation,
    # first inferences, the queues filling) is left out; fps_with_startup keeps it.
    first = len(publish) // 10
    steady = (len(publish) - 1 - first) / (publish[-1] - publish[first])
    return {
        "frames": len(records),
        "fps": steady,
        "fps_with_startup": len(records) / wall,
        "latency_p50_ms": statistics.median(latency),
        "latency_p95_ms": latency[min(len(latency) - 1, int(0.95 * len(latency)))],
        "peak_rss_mb_sampled": peak[0],
        "sum_stage_max_rss_mb": sum(s.get("max_rss_mb", 0) for s in summary.stages.values()),
        "stage_cpu_s": {k: v.get("cpu_s") for k, v in summary.stages.items()},
        "stage_ms": steady_stage_ms(cpu_samples, publish[first], publish[-1], publish),
    }


def steady_stage_ms(
    samples: list[tuple[float, dict[str, float]]], start: float, end: float, publish: list[float]
) -> dict[str, float]:
    """CPU ms per result of each process, from the first sample inside the steady-state window
    to the last one in which every process still runs (capture ends before the last results);
    results counted by publish time. Empty if the run was too short to tell."""
    inside = [(t, cpu) for t, cpu in samples if start <= t <= end]
    if len(inside) < 2:
        return {}
    t0, a = inside[0]
    t1, b = [(t, cpu) for t, cpu in inside if cpu["_processes"] == a["_processes"]][-1]
    results = sum(t0 <= t < t1 for t in publish)
    if results == 0:
        return {}
    return {k: (b[k] - a[k]) * 1e3 / results for k in b if k in a and k != "_processes"}


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (a parent picks int8/)")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--sizes", default="1920x1080,640x360", help="clip sizes, WxH,WxH")
    parser.add_argument("--frames", type=int, default=800, help="frames per clip")
    parser.add_argument(
        "--streams", default="1", help="streams at once, each a copy of the clip: N or N,M,..."
    )
    parser.add_argument(
        "--pure-seconds",
        type=float,
        default=5.0,
        help="how long each pure-inference run and benchmark_app run (two of ours, one of it)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="per row, measure the ceiling and run the pipeline this many times, alternated;"
        " the row's figures are those of the round with the median ratio",
    )
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ovstream-bench"))
    parser.add_argument(
        "--frame-format",
        choices=FRAME_FORMAT_CHOICES,
        default="auto",
        help="the pipeline's frames between stages (ovstream run --frame-format)",
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    info = load_info(args.model)
    fmt = resolve_frame_format(args.frame_format, info.geometry)
    cores = os.cpu_count() or 1
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    clips = [make_clip(workdir, w, h, args.frames) for w, h in sizes]

    import openvino as ov

    cpu = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(
        f"model {info.name} {info.precision} ({info.path}), device {args.device}, {cores} cores"
        f" of {cpu}; oneDNN ISA cap: {isa_cap or 'none'}; load average {os.getloadavg()[0]:.2f};"
        f" frames between stages: {fmt}",
        flush=True,
    )
    stream_counts = [int(n) for n in args.streams.split(",")]
    rows = []
    for clip, (w, h), streams in (
        (c, size, n) for c, size in zip(clips, sizes, strict=True) for n in stream_counts
    ):
        decodes = decode_cpu_per_frame(clip, info, scale=False)
        decode_scales = decode_cpu_per_frame(clip, info, scale=True, fmt=fmt)
        decode, decode_scale = min(decodes.values()), min(decode_scales.values())
        decode_scale_capture = decode_scales[auto_thread_count(streams, cores)]
        rounds = []
        for k in range(args.rounds):  # alternated: a slow spell of the machine hits both
            compiled = compile_model(info, args.device, "throughput")  # for both pure runs
            ceiling = pure_inference(compiled, info, args.device, args.pure_seconds)
            warning = ceiling.warning()
            if warning:
                print(warning, flush=True)
            limit = 1.0 / (1.0 / ceiling.fps + decode / cores)
            if k == 0:
                shared = shared_cores(compiled, info, clip, fmt, limit, args.pure_seconds)
            del compiled  # gone before the pipeline runs: this process's memory counts in its peak
            pipe = pipeline_run(clip, str(info.path), args.device, workdir, streams, fmt)
            rounds.append((pipe["fps"] / limit, ceiling, limit, warning, pipe))
        by_ratio = sorted(rounds, key=lambda r: r[0])
        _, ceiling, limit, warning, pipe = by_ratio[(len(rounds) - 1) // 2]
        pure, nreq = ceiling.fps, ceiling.requests
        own = own_requests(info, args.device, fmt, args.pure_seconds)
        naive = naive_loop_fps(clip, info, args.device)
        row = {
            "clip": f"{w}x{h}" + (f"*{streams}" if len(stream_counts) > 1 else ""),
            "streams": streams,
            "frame_format": fmt,
            "frames": pipe["frames"],
            "requests": nreq,
            "pure_fps": pure,
            "pure_cpu_ms": ceiling.cpu_ms_per_frame,
            "pure_runs_fps": ceiling.runs_fps,
            "benchmark_app_fps": ceiling.app_fps,
            "pure_vs_benchmark_app": ceiling.vs_app,
            "benchmark_app_problem": ceiling.app.problem if ceiling.app else None,
            "ceiling_warning": warning,
            "decode_ms": decode * 1e3,
            "decode_scale_ms": decode_scale * 1e3,
            "decode_threads_ms": {str(k): v * 1e3 for k, v in decodes.items()},
            "decode_scale_threads_ms": {str(k): v * 1e3 for k, v in decode_scales.items()},
            "decode_scale_capture_ms": decode_scale_capture * 1e3,
            "limit_fps": limit,
            "pipeline_fps": pipe["fps"],
            "ratio": pipe["fps"] / limit,
            "rounds": [
                {
                    "pure_fps": c.fps,
                    "benchmark_app_fps": c.app_fps,
                    "limit_fps": lim,
                    "pipeline_fps": p["fps"],
                    "ratio": ratio,
                    "ceiling_warning": w,
                }
                for ratio, c, lim, w, p in rounds
            ],
            "naive_fps": naive,
            **pipe,
        }
        ms = pipe["stage_ms"]
        row["cpu_ms_total"] = sum(ms.values()) if ms else None
        row["overhead_ms"] = (
            row["cpu_ms_total"] - decode_scale_capture * 1e3 - ceiling.cpu_ms_per_frame
            if ms
            else None
        )
        # Against the cheapest decoding instead (before: FFmpeg's frame threads counted here).
        row["overhead_cheapest_ms"] = (
            row["cpu_ms_total"] - decode_scale * 1e3 - ceiling.cpu_ms_per_frame if ms else None
        )
        # Sharing the cores: what decoding and OpenVINO cost a frame while the other runs.
        row["shared"] = shared
        row["sharing_ms"] = (shared["decode_scale_ms"] - decode_scales[1] * 1e3) + (
            shared["pure_cpu_ms"] - ceiling.cpu_ms_per_frame
        )
        row["limit_shared_fps"] = cores * 1e3 / (shared["decode_scale_ms"] + shared["pure_cpu_ms"])
        row["ratio_shared"] = pipe["fps"] / row["limit_shared_fps"]
        # OpenVINO as the pipeline runs it: requests of its batch, static, in its frame format.
        row["own"] = own
        row["limit_own_fps"] = 1.0 / (1.0 / own["pure_fps"] + decode / cores)
        row["ratio_own"] = pipe["fps"] / row["limit_own_fps"]
        row["overhead_own_ms"] = (
            row["cpu_ms_total"] - decode_scale_capture * 1e3 - own["pure_cpu_ms"] if ms else None
        )
        rows.append(row)
        print(json.dumps(row), flush=True)

    header = (
        f"{'clip':>11} {'pure':>6} {'b_app':>6} {'ratio':>5} {'dec ms':>6} {'dec+sc':>6}"
        f" {'limit':>6} {'pipe':>6} "
        f"{'ratio':>5} {'naive':>6} {'wall*':>6} {'p50 ms':>7} {'p95 ms':>7} {'peak MB':>8}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['clip']:>11} {r['pure_fps']:6.1f} {_fmt(r['benchmark_app_fps'], 6, 1)}"
            f" {_fmt(r['pure_vs_benchmark_app'], 5, 2)} {r['decode_ms']:6.2f}"
            f" {r['decode_scale_ms']:6.2f}"
            f" {r['limit_fps']:6.1f} {r['pipeline_fps']:6.1f} {r['ratio']:5.2f}"
            f" {r['naive_fps']:6.1f}"
            f" {r['fps_with_startup']:6.1f} {r['latency_p50_ms']:7.1f} {r['latency_p95_ms']:7.1f}"
            f" {r['peak_rss_mb_sampled']:8.0f}"
        )
    print(
        "pure = pure inference FPS measured as benchmark_app does (mean of a run before and one"
        " after benchmark_app); b_app = benchmark_app's FPS"
        " on the same IR, ratio = pure/b_app (must be within 0.95-1.05); dec ms = decode-only"
        " CPU ms/frame (the cheaper of FFmpeg threading and one thread); dec+sc = with "
        "capture's crop+resize to the model input; limit = 1/(1/pure + dec/cores); "
        "pipe = steady-state end-to-end FPS;"
        " wall* = FPS including start-up; peak MB = sampled RSS sum of all processes"
    )
    for r in rows:
        if r["ceiling_warning"]:
            print(f"{r['clip']:>11}  {r['ceiling_warning']}")
    if args.rounds > 1:
        print(
            f"\nRounds (ceiling and pipeline measured {args.rounds} times a row, alternated; the"
            " table shows the round with the median ratio): pipeline / limit FPS = ratio"
        )
        for r in rows:
            parts = ", ".join(
                f"{x['pipeline_fps']:.1f} / {x['limit_fps']:.1f} = {x['ratio']:.2f}"
                for x in r["rounds"]
            )
            print(f"{r['clip']:>11}  {parts}")
    print("\nCPU ms per frame by process, steady state (sum -> the FPS two cores allow):")
    for r in rows:
        ms = r["stage_ms"]
        if ms:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
            total = sum(ms.values())
            print(f"{r['clip']:>11}  {parts} = {total:.2f} -> {cores * 1e3 / total:.0f} FPS")
    print(
        "\nOverhead: CPU ms per frame beyond decoding with the one resize as capture does them"
        " (dec+sc with capture's decoder threads: FFmpeg's frame threads for fewer streams than"
        " cores, one thread otherwise) and OpenVINO (pure run's CPU per inference), summed over"
        " all processes (target <= 0.3 ms); in brackets, against the cheapest decoding (dec+sc):"
    )
    for r in rows:
        if r["overhead_ms"] is not None:
            threads = auto_thread_count(r["streams"], cores)
            print(
                f"{r['clip']:>11}  {r['cpu_ms_total']:.2f}"
                f" - dec+sc {r['decode_scale_capture_ms']:.2f}"
                f" ({'frame threads' if threads == 0 else 'one thread'})"
                f" - OpenVINO {r['pure_cpu_ms']:.2f} = {r['overhead_ms']:.2f} ms"
                f" ({r['overhead_cheapest_ms']:.2f})"
            )
    print(
        "\nSharing the cores: decoding with the resize (one thread, paced at the limit's FPS, in "
        "another process) and pure inference, each measured while the other runs; CPU ms a "
        "frame alone -> shared; shared limit = cores / (dec+sc + OpenVINO, shared); the "
        "overhead split into what sharing adds to decoding and OpenVINO and the rest:"
    )
    for r in rows:
        sh = r["shared"]
        line = (
            f"{r['clip']:>11}  dec+sc {r['decode_scale_threads_ms']['1']:.2f}"
            f" -> {sh['decode_scale_ms']:.2f},"
            f" OpenVINO {r['pure_cpu_ms']:.2f} -> {sh['pure_cpu_ms']:.2f}"
            f" ({sh['pure_fps']:.1f} FPS); shared limit {r['limit_shared_fps']:.1f},"
            f" pipeline {r['pipeline_fps']:.1f} = {r['ratio_shared']:.2f} of it"
        )
        if r["overhead_ms"] is not None:
            rest = r["overhead_ms"] - r["sharing_ms"]
            line += f"; overhead {r['overhead_ms']:.2f} = sharing {r['sharing_ms']:.2f}"
            line += f" + the rest {rest:.2f} ms"
        print(line)
    print(
        "\nOpenVINO as the pipeline runs it: pure inference (as above) of requests of"
        f" {request_batch(DEFAULT_MAX_BATCH)} frames on the model compiled for that many, taking"
        f" {fmt} frames (benchmark_app's figure above is for 1 BGR frame a request); the limit,"
        " ratio and overhead against it:"
    )
    for r in rows:
        own = r["own"]
        line = (
            f"{r['clip']:>11}  pure {own['pure_fps']:.1f} FPS, {own['pure_cpu_ms']:.2f} ms a frame;"
            f" limit {r['limit_own_fps']:.1f}, pipeline {r['pipeline_fps']:.1f}"
            f" = {r['ratio_own']:.2f} of it"
        )
        if r["overhead_own_ms"] is not None:
            line += f"; overhead {r['overhead_own_ms']:.2f} ms"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

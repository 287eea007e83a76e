#!/usr/bin/env python3
"""Batch benchmark: `ovstream batch` over many short clips, against `ovstream run` on one long one.

    .venv/bin/python benchmarks/batch_bench.py --model models/default --json out.json

In one run, on generated H.264 clips (1,000 clips of 2 s 640x360 by default):
- `ovstream run` on one clip holding as many frames as all the clips together (the clips'
  packets concatenated, no re-encoding): its FPS (results / the run's time, start-up included);
- `ovstream batch` over the clips with --jobs = cores: aggregate FPS the same way, the ratio to
  the single clip, the most capture processes alive at once and the peak RSS of all the job's
  processes together (sampled sum);
- start-up for 10,000 listed inputs (`@list.txt` of hard links to the clips): from the command's
  launch to its first result written, and the in-process input expansion + job state sync;
- crash and resume: the whole job killed with SIGKILL at random moments (`--kills`), rerun each
  time, then run to the end; every output is checked line by line against an independent PyAV
  frame count, and the frames decoded in total (outputs + the partial outputs each kill threw
  away) are compared with the frames in the inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.jobs.inputs import expand_inputs  # noqa: E402
from stream.jobs.state import JobState  # noqa: E402

FPS_LINE = re.compile(r"in ([\d.]+) s \(([\d.]+) FPS\)")


def load_sample_maker() -> Any:
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "samples/make_sample.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def ovstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream.cli", *args]


def frame_indices(path: Path) -> list[int]:
    """Frames PyAV decodes from `path`, counted independently of stream.capture."""
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            with contextlib.suppress(av.FFmpegError):
                n += len(packet.decode())
    return list(range(n))


def concatenate(src: Path, times: int, dst: Path) -> Path:
    """One clip made of `src` repeated `times` times (packets copied, timestamps shifted)."""
    if dst.exists():
        return dst
    with av.open(str(src)) as probe:
        vs = probe.streams.video[0]
        step = int(vs.duration or 0) or None
    with av.open(str(dst), "w") as out:
        ostream = None
        offset = 0
        for _ in range(times):
            with av.open(str(src)) as inp:
                ist = inp.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(ist)
                last = 0
                for packet in inp.demux(ist):
                    if packet.dts is None:
                        continue
                    last = max(last, packet.pts + packet.duration)
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = ostream
                    out.mux(packet)
                offset += step or last
    return dst


def make_clips(workdir: Path, n: int, seconds: float, width: int, height: int) -> list[Path]:
    """`n` clips (copies of a few distinct generated ones), in workdir/clips/NNN/."""
    folder = workdir / f"clips_{n}_{seconds:g}s_{width}x{height}"
    done = folder / ".complete"
    paths = [folder / f"{i // 100:03d}" / f"clip{i:05d}.mp4" for i in range(n)]
    if done.exists():
        return paths
    maker = load_sample_maker()
    frames = int(round(seconds * 25))
    sources = workdir / (folder.name + "_sources")
    distinct = [
        maker.write_clip(sources / f"src{k}.mp4", width, height, 25, frames, crf=23 + k)
        for k in range(min(5, n))
    ]
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(distinct[i % len(distinct)], path)
    done.write_text("ok")
    return paths


class Sampler:
    """Peak RSS (sum over a process and its descendants) and most capture processes at once."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_rss_mb = 0.0
        self.most_captures = 0

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss, captures = 0, 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
                captures += p.name().startswith("ovs-cap")
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        self.most_captures = max(self.most_captures, captures)


def run_measured(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a command to its end, sampling its process tree; FPS from its summary line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    sampler = Sampler(proc.pid)
    try:
        while proc.poll() is None:
            sampler.sample()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.25)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{cmd[3:5]} took more than {timeout} s")
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(timeout=30)
    wall = time.perf_counter() - t0
    m = FPS_LINE.search(stderr)
    if not m:
        raise RuntimeError(f"no summary in: {stderr[-2000:]}")
    return {
        "rc": proc.returncode,
        "seconds": float(m.group(1)),
        "fps": float(m.group(2)),
        "wall_s": wall,
        "peak_rss_mb": sampler.peak_rss_mb,
        "most_captures": sampler.most_captures,
        "stderr_tail": stderr[-600:],
    }


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError("processes of the killed job survived")


def part_lines(out: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in out.rglob(".*.jsonl.part"))


def startup(model: str, clips: list[Path], workdir: Path, listed: int) -> dict[str, Any]:
    """Launch -> first result written, for `listed` inputs in an @list (hard links)."""
    folder = workdir / f"listed_{listed}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(listed):
            sub = folder / f"{i // 1000:02d}"
            sub.mkdir(exist_ok=True)
            os.link(clips[i % len(clips)], sub / f"v{i:05d}.mp4")
        (folder / ".complete").write_text("ok")
    listing = workdir / f"list_{listed}.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(folder.glob("*/*.mp4"))))

    out = workdir / "out_startup"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    inputs = expand_inputs([f"@{listing}"])
    t_expand = time.perf_counter() - t0
    out.mkdir()
    with JobState(out) as state:
        state.sync(inputs.files)
    t_sync = time.perf_counter() - t0
    shutil.rmtree(out)

    args = ["batch", f"@{listing}", "--model", model, "--out", str(out), "--publish", "none"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ovstream(*args, "--no-progress"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first = None
    try:
        while time.perf_counter() - t0 < 300 and proc.poll() is None:
            if out.exists() and any(p.stat().st_size for p in out.rglob(".*.part")):
                first = time.perf_counter() - t0
                break
            time.sleep(0.02)
    finally:
        kill_group(proc)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "inputs": listed,
        "expand_s": t_expand,
        "expand_and_sync_s": t_sync,
        "launch_to_first_result_s": first,
    }


def crash_and_resume(
    model: str, clips: list[Path], workdir: Path, jobs: int, kills: int, full_s: float, seed: int
) -> dict[str, Any]:
    out = workdir / "out_crash"
    shutil.rmtree(out, ignore_errors=True)
    folder = clips[0].parents[1]
    args = ["batch", str(folder), "--model", model, "--out", str(out), "--jobs", str(jobs)]
    args += ["--publish", "none", "--no-progress"]
    rng = random.Random(seed)
    thrown_away = 0
    moments = []
    for _ in range(kills):
        delay = 3.0 + rng.uniform(0.05, 0.25) * full_s  # start-up, then a random share
        proc = subprocess.Popen(
            ovstream(*args),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=delay)
        finally:
            finished = proc.poll() is not None
            kill_group(proc)
        lost = part_lines(out)
        thrown_away += lost
        moments.append({"after_s": round(delay, 1), "finished": finished, "partial_lines": lost})
    final = subprocess.run(
        ovstream(*args), cwd=ROOT, capture_output=True, text=True, timeout=full_s * 3 + 300
    )
    # every output exact against an independent PyAV count (copies of a few sources)
    expected: dict[str, list[int]] = {}
    total_in = 0
    bad = []
    for clip in clips:
        key = str(clip.stat().st_size)
        if key not in expected:
            expected[key] = frame_indices(clip)
        want = expected[key]
        total_in += len(want)
        sid = clip.relative_to(folder).as_posix()
        result = out / f"{sid}.jsonl"
        got = (
            [json.loads(x)["frame_index"] for x in result.read_text().splitlines()]
            if result.exists()
            else None
        )
        if got != want:
            bad.append(sid)
    db = JobState(out)
    status = db.summary()
    db.close()
    written = status.frames
    return {
        "kills": moments,
        "final_rc": final.returncode,
        "final_tail": final.stderr[-400:],
        "outputs_exact": len(clips) - len(bad),
        "outputs_wrong": bad[:20],
        "frames_in_inputs": total_in,
        "frames_in_outputs": written,
        "frames_thrown_away": thrown_away,
        "decoded_ratio": (written + thrown_away) / total_in if total_in else None,
        "leftover_parts": len(list(out.rglob("*.part"))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--jobs", type=int, default=0, help="default: cores")
    parser.add_argument("--listed", type=int, default=10_000, help="inputs for the start-up run")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--skip", default="", help="comma list of: single,batch,startup,crash")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ovstream-batch"))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    width, height = (int(v) for v in args.size.split("x"))
    jobs = args.jobs or os.cpu_count() or 1
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines()
         if line.startswith("Model name")), "?",
    )  # fmt: skip
    figures: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "clips": args.clips,
        "clip": f"{args.seconds:g} s {width}x{height} 25 fps H.264",
        "jobs": jobs,
        "model": args.model,
    }
    t = time.perf_counter()
    clips = make_clips(workdir, args.clips, args.seconds, width, height)
    figures["clips_frames_each"] = len(frame_indices(clips[0]))
    print(f"clips ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    if "single" not in skip:
        long_clip = concatenate(
            clips[0], args.clips, workdir / f"long_{args.clips}x{clips[0].stem}.mp4"
        )
        cmd = ovstream("run", str(long_clip), "--model", args.model, "--publish", "none")
        figures["single"] = run_measured(cmd + ["--no-progress"], timeout=7200)
        print(f"single clip: {figures['single']['fps']:.1f} FPS", file=sys.stderr)

    if "batch" not in skip:
        out = workdir / "out_batch"
        shutil.rmtree(out, ignore_errors=True)
        cmd = ovstream("batch", str(clips[0].parents[1]), "--model", args.model, "--out")
        cmd += [str(out), "--jobs", str(jobs), "--publish", "none", "--no-progress"]
        figures["batch"] = run_measured(cmd, timeout=7200)
        if "single" in figures:
            figures["batch"]["ratio_to_single"] = figures["batch"]["fps"] / figures["single"]["fps"]
        print(f"batch: {figures['batch']['fps']:.1f} FPS", file=sys.stderr)

    if "startup" not in skip:
        figures["startup"] = startup(args.model, clips, workdir, args.listed)
        print(f"start-up: {figures['startup']}", file=sys.stderr)

    if "crash" not in skip:
        full_s = figures.get("batch", {}).get("wall_s") or 60.0
        figures["crash"] = crash_and_resume(
            args.model, clips, workdir, jobs, args.kills, full_s, args.seed
        )

    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

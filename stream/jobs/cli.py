"""Classify many video files as one resumable job: one JSON Lines file per video.

    ovstream batch clips/ more/*.mp4 @list.txt --model models/default --out results/
    ovstream batch --status results/

INPUT is a file, a folder (searched recursively for video files), a glob pattern or @list.txt
(one path per line). Each video's results go to OUT/<path relative to the inputs' common
folder>.jsonl (the records of `ovstream run`, in frame order), renamed into place when complete;
the job's state is in OUT/job.sqlite. Run the same command again after a crash or Ctrl-C: done
files are skipped, unfinished ones redone from their first frame, failed ones kept failed unless
--retry-failed. Exit 1 if any file failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from stream.batch import BatchConfig, BatchProgress, BatchSummary, job_status, run_batch
from stream.errors import UserError
from stream.jobs.state import StatusSummary
from stream.progress import StatusLine
from stream.run import (
    add_inference_arguments,
    inference_options,
    positive_float,
    publish_endpoint,
)
from stream.stages.publish import DEFAULT_PUBLISH

PROG = "ovstream"


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="video file, folder (searched recursively), glob pattern or @list.txt",
    )
    parser.add_argument("--model", "-m", metavar="DIR", help="model folder (made by model-prep)")
    parser.add_argument("--out", "-o", metavar="DIR", help="output folder (results and state)")
    parser.add_argument(
        "--status", metavar="OUT", help="print the state of the job in OUT (running or not)"
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="decode at most N files at once (default: the number of cores)",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="run files that failed before again"
    )
    parser.add_argument(
        "--restart", action="store_true", help="forget the job's state and outputs, start over"
    )
    parser.add_argument(
        "--publish",
        default=DEFAULT_PUBLISH,
        metavar="ENDPOINT",
        help=f"PUB endpoint to bind, or 'none' (default {DEFAULT_PUBLISH})",
    )
    parser.add_argument(
        "--wait-subscribers",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="hold results until N subscribers have connected to --publish",
    )
    parser.add_argument(
        "--fps", type=positive_float, metavar="F", help="classify F frames per second (by pts)"
    )
    add_inference_arguments(parser)
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics (with the job's files by status) and /healthz here "
        "(:PORT or PORT: 127.0.0.1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    if not args.inputs:
        raise UserError("no inputs: give files, folders, patterns or @list.txt (or --status OUT)")
    if not args.model:
        raise UserError("--model DIR is required")
    if not args.out:
        raise UserError("--out DIR is required")
    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    return BatchConfig(
        inputs=list(args.inputs),
        model=args.model,
        out=args.out,
        jobs=args.jobs,
        retry_failed=args.retry_failed,
        restart=args.restart,
        publish=publish_endpoint(args.publish),
        wait_subscribers=args.wait_subscribers,
        fps=args.fps,
        metrics=args.metrics,
        **inference_options(args),
    )


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class ProgressLine(StatusLine):
    """Files done / total, frames per second and ETA."""

    def __call__(self, p: BatchProgress) -> None:
        if not self.due(p.elapsed_s):
            return
        failed = f" ({p.failed} failed)" if p.failed else ""
        eta = "?" if p.eta_s is None else duration(p.eta_s)
        self.show(
            f"[{p.elapsed_s:7.1f}s] files {p.finished}/{p.total}{failed} | "
            f"{p.frames} frames, {p.fps:.1f} fps | ETA {eta}"
        )


def print_summary(s: BatchSummary, out: TextIO) -> None:
    """Done, failed with reasons, skipped as already done, frames, wall time."""
    done_total = s.total - len(s.failed) - s.pending
    print(
        f"{PROG}: batch: {s.total} file(s): {done_total} done ({s.done} now, {s.skipped_done} "
        f"skipped as already done), {len(s.failed)} failed, {s.pending} not finished; "
        f"{s.frames} frames in {s.seconds:.1f} s ({s.fps:.1f} FPS); results in {s.out}",
        file=out,
    )
    if s.redone:
        print(f"{PROG}: {s.redone} file(s) redone (interrupted or changed)", file=out)
    for sid, reason in s.failed:
        print(f"{PROG}: error: {sid}: {reason}", file=out)
    if s.failure:
        print(f"{PROG}: error: {s.failure}", file=out)
    elif s.interrupted:
        print(
            f"{PROG}: interrupted: {s.pending} file(s) left; run the same command to go on",
            file=out,
        )


def format_status(out_dir: str, status: StatusSummary, pid: int | None) -> str:
    c = status.counts
    state = f"running (pid {pid})" if pid else "not running"
    lines = [
        f"job {out_dir}: {state}",
        f"  {status.total} file(s): {c['done']} done, {c['failed']} failed, "
        f"{c['running']} running, {c['pending']} pending",
        f"  {status.frames} frames in done files",
    ]
    if status.not_listed:
        lines.append(f"  {status.not_listed} file(s) of earlier runs not in the last run's inputs")
    lines += [f"  running: {sid}" for sid in status.running]
    lines += [f"  failed: {sid}: {reason}" for sid, reason in status.failed]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.status:
        if args.inputs:
            raise UserError("--status OUT takes no INPUT")
        status, pid = job_status(args.status)
        print(format_status(args.status, status, pid))
        return 0
    config = config_from_args(args)
    progress = ProgressLine(sys.stderr, enabled=not args.no_progress)

    def warn(text: str) -> None:
        progress.clear()
        print(f"{PROG}: warning: {text}", file=sys.stderr)

    try:
        summary = run_batch(config, progress=progress, warn=warn)
    finally:
        progress.clear()
    print_summary(summary, sys.stderr)
    return summary.exit_code

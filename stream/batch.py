"""Python API for batch jobs: classify thousands of video files, bounded, resumable, exactly once.

    from stream.batch import BatchConfig, run_batch

    if __name__ == "__main__":  # stages start with multiprocessing's spawn
        summary = run_batch(BatchConfig(inputs=["clips/"], model="models/default", out="results"))
        print(summary.done, summary.failed, summary.exit_code)

One JSON Lines file per video (`OUT/<stream id>.jsonl`, the records of `ovstream run`, in frame
order), each written under a hidden temporary name and renamed when complete; the job's state in
`OUT/job.sqlite` (`stream.jobs.state`). Running the same job again skips files that are done,
redoes those a killed run left unfinished, and keeps failed ones failed unless `retry_failed`.
At most `jobs` files are decoded at once, by the pipeline's pool of capture processes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prometheus_client.core import GaugeMetricFamily, Metric

from stream.errors import UserError
from stream.jobs.inputs import expand_inputs
from stream.jobs.state import FileRow, JobState, StatusSummary
from stream.jobs.writer import OutputWriter, discard_parts, output_path
from stream.model import load_info
from stream.ops.metrics import parse_address
from stream.pipeline import Pipeline, PipelineConfig, PipelineError, SourceReport
from stream.sources.spec import SourceSpec
from stream.stages.preprocess import DEFAULT_MAX_BATCH
from stream.stages.publish import DEFAULT_PUBLISH
from stream.wire.transport import TransportConfig

log = logging.getLogger(__name__)

LOCK_NAME = "job.lock"


@dataclass
class BatchConfig:
    """A batch job; checked on construction."""

    inputs: list[str]
    """Files, folders (searched recursively for video files), glob patterns, `@list.txt`."""
    model: str
    """Model folder (a precision folder, or a parent with int8/fp32/fp16 sub-folders)."""
    out: str
    """Output folder: one `<stream id>.jsonl` per video and the job state `job.sqlite`."""
    jobs: int = 0
    """At most this many files decoded at once (capture processes); 0 = the number of cores."""
    retry_failed: bool = False
    """Run files that failed in an earlier run again."""
    restart: bool = False
    """Forget the job's state and outputs and start over."""
    publish: str | None = DEFAULT_PUBLISH
    """PUB endpoint to bind for results (topic = stream id); None = no PUB socket."""
    wait_subscribers: int = 0
    """Hold results until this many subscribers have subscribed to `publish`."""
    device: str = "CPU"
    """OpenVINO device."""
    fps: float | None = None
    """Classify this many frames per second of video (by pts); None = every frame."""
    mode: str = "throughput"
    """OpenVINO performance hint: `throughput` or `latency`."""
    topk: int = 5
    """Classes per result."""
    requests: int = 0
    """Infer requests in flight; 0 = the device's optimal number."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Frames one inference request takes at most (see PipelineConfig.max_batch)."""
    workers: str | None = None
    """Remote infer workers' endpoint (see PipelineConfig.workers)."""
    local_infer: bool = True
    worker_timeout_s: float = 5.0
    keys: str | None = None
    """CURVE keys folder (see PipelineConfig.keys)."""
    insecure: bool = False
    """Allow binding `workers` and `publish` on a non-loopback address without keys."""
    secure_publish: bool = False
    decoder_threads: str = "AUTO"
    """FFmpeg decoder threading: AUTO, FRAME, SLICE or NONE."""
    frame_format: str = "auto"
    """Frames between the stages (see PipelineConfig.frame_format)."""
    transport: TransportConfig = field(default_factory=TransportConfig)
    """Links between the stages."""
    metrics: str | None = None
    """Serve `/metrics` (the pipeline's, plus `ovstream_batch_files{status}`) and `/healthz` on
    `HOST:PORT` while the job runs; None = off."""

    def __post_init__(self) -> None:
        if self.metrics is not None:
            parse_address(self.metrics)
        if isinstance(self.inputs, str):
            raise UserError("inputs must be a list of paths, not one string")
        self.inputs = [str(x) for x in self.inputs]
        if not self.inputs:
            raise UserError("no inputs: give files, folders, patterns or @list.txt")
        if not isinstance(self.jobs, int) or self.jobs < 0:
            raise UserError(f"jobs must be a whole number >= 0, got {self.jobs!r}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise UserError(f"--out {self.out} exists and is not a folder")
        if self.restart and self.retry_failed:
            raise UserError("--restart already runs every file; drop --retry-failed")
        from stream.remote.security import check_head_binds

        # Before the job's state is touched; the run's PipelineConfig warns about --insecure.
        check_head_binds(
            self.workers, self.publish, self.keys, self.secure_publish, self.insecure, warn=False
        )

    @property
    def max_jobs(self) -> int:
        return self.jobs or os.cpu_count() or 1


@dataclass
class BatchProgress:
    """Where a running job stands, passed to the progress callback."""

    total: int
    """Files in the job."""
    finished: int
    """Files done or failed (this run and before)."""
    failed: int
    frames: int
    """Results written in this run."""
    elapsed_s: float
    todo: int
    """Files this run set out to process."""
    finished_now: int
    """Of those, finished so far."""

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at this run's rate of finished files; None before the first one."""
        if self.finished_now == 0 or self.elapsed_s <= 0:
            return None
        return (self.todo - self.finished_now) * self.elapsed_s / self.finished_now


@dataclass
class BatchSummary:
    """The outcome of a batch run (and the state of its job)."""

    total: int
    """Files in the job."""
    done: int
    """Files done in this run."""
    failed: list[tuple[str, str]]
    """(stream id, reason) of every failed file of the job, this run's and kept ones."""
    failed_now: int
    """Of those, failed in this run."""
    skipped_done: int
    """Done in an earlier run and unchanged: skipped."""
    redone: int
    """Left unfinished by a killed run, or changed since: run again."""
    pending: int
    """Not finished (the run was stopped or a stage died)."""
    frames: int
    """Results written in this run."""
    seconds: float
    out: str
    interrupted: bool = False
    failure: str | None = None
    """Why the pipeline stopped early (a stage died), if it did."""
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every file is done; 1 when a file failed, a stage died or files are left."""
        if self.failed or self.failure:
            return 1
        return 0 if self.pending == 0 or self.interrupted else 1

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class JobLock:
    """An exclusive lock on an output folder (`job.lock`, flock: freed by the kernel when the
    holder dies, even by SIGKILL), so two jobs never write the same outputs."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK_NAME
        self.file: IO[str] | None = None

    def acquire(self) -> None:
        f = open(self.path, "a+")  # noqa: SIM115 (closed in release)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise UserError(
                f"another batch job (pid {pid}) is running in {self.path.parent}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def running_pid(out_dir: Path) -> int | None:
    """The pid of the job running in `out_dir`, or None when none is."""
    path = out_dir / LOCK_NAME
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        return None


def run_batch(
    config: BatchConfig,
    progress: Callable[[BatchProgress], None] | None = None,
    warn: Callable[[str], None] = log.warning,
) -> BatchSummary:
    """Run (or resume) a job to its end; returns its summary. User errors raise UserError."""
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}") from None
    load_info(config.model)  # fail fast on a folder that is not a model
    lock = JobLock(out)
    lock.acquire()
    try:
        return _run_locked(config, out, progress, warn)
    finally:
        lock.release()


def _run_locked(
    config: BatchConfig,
    out: Path,
    progress: Callable[[BatchProgress], None] | None,
    warn: Callable[[str], None],
) -> BatchSummary:
    t0 = time.monotonic()
    inputs = expand_inputs(config.inputs)
    for text in inputs.warnings:
        warn(text)
    with JobState(out) as state:
        discarded = discard_parts(out)
        if discarded:
            log.info("discarded %d partial output(s) of an interrupted run", discarded)
        if config.restart:
            for sid in state.reset():
                output_path(out, sid).unlink(missing_ok=True)
        sync = state.sync(
            inputs.files,
            retry_failed=config.retry_failed,
            output_exists=lambda sid: output_path(out, sid).is_file(),
        )
        for sid in sync.stale_outputs:
            output_path(out, sid).unlink(missing_ok=True)
        total = len(inputs.files)
        run = _Run(config, state, out, total, sync.todo, t0, progress)
        run.finished_before = sync.skipped_done + sync.kept_failed + len(sync.failed_now)
        run.failed_count = sync.kept_failed + len(sync.failed_now)
        if sync.todo:
            run.execute()
        status = state.summary()
    return BatchSummary(
        total=total,
        done=run.done,
        failed=status.failed,
        failed_now=run.failed_now + len(sync.failed_now),
        skipped_done=sync.skipped_done,
        redone=sync.interrupted + sync.changed,
        pending=status.counts["pending"] + status.counts["running"],
        frames=run.frames,
        seconds=time.monotonic() - t0,
        out=str(out),
        interrupted=run.interrupted,
        failure=run.failure,
        warnings=list(inputs.warnings),
    )


class _Run:
    """One pipeline over a job's pending files, writing their outputs as they end."""

    def __init__(
        self,
        config: BatchConfig,
        state: JobState,
        out: Path,
        total: int,
        todo: list[FileRow],
        t0: float,
        progress: Callable[[BatchProgress], None] | None,
    ) -> None:
        self.config = config
        self.state = state
        self.total = total
        self.todo = todo
        self.t0 = t0
        self.progress = progress
        self.writer = OutputWriter(out, state, {r.stream_id: r.path for r in todo})
        self.done = self.failed_now = self.frames = 0
        self.finished_before = self.failed_count = 0
        self.interrupted = False
        self.failure: str | None = None

    def execute(self) -> None:
        cfg = self.config
        sources = [SourceSpec(r.stream_id, r.path, live=False) for r in self.todo]
        pipeline_config = PipelineConfig(
            sources=sources,
            model=cfg.model,
            device=cfg.device,
            publish=cfg.publish,
            wait_subscribers=cfg.wait_subscribers,
            fps=cfg.fps,
            mode=cfg.mode,
            topk=cfg.topk,
            requests=cfg.requests,
            max_batch=cfg.max_batch,
            workers=cfg.workers,
            local_infer=cfg.local_infer,
            worker_timeout_s=cfg.worker_timeout_s,
            keys=cfg.keys,
            insecure=cfg.insecure,
            secure_publish=cfg.secure_publish,
            decoder_threads=cfg.decoder_threads,
            frame_format=cfg.frame_format,
            transport=cfg.transport,
            jobs=cfg.max_jobs,
            metrics=cfg.metrics,
        )
        pipeline = Pipeline(pipeline_config, extra_metrics=self.file_metrics)
        try:
            pipeline.run(
                progress=self.tick, on_result=self.on_result, on_stream_end=self.on_stream_end
            )
        except PipelineError as exc:
            self.failure = str(exc)
        finally:
            self.writer.close()
            summary = pipeline.summary
            self.interrupted = bool(summary and summary.interrupted)
        self.tick()

    def file_counts(self) -> dict[str, int]:
        """The job's files by status now: done (before this run too), failed, pending."""
        finished = self.finished_before + self.done + self.failed_now
        return {
            "done": finished - self.failed_count,  # failed_count: before and now
            "failed": self.failed_count,
            "pending": self.total - finished,
        }

    def file_metrics(self) -> Iterator[Metric]:
        """`/metrics`: the job's files by status (served from the pipeline's HTTP thread; reads
        counters only, never the job's SQLite connection)."""
        files = GaugeMetricFamily(
            "ovstream_batch_files", "Files of the batch job by status", labels=["status"]
        )
        for status, count in self.file_counts().items():
            files.add_metric([status], count)
        yield files

    def on_result(self, record: dict[str, Any]) -> None:
        self.writer.write(record)
        self.frames += 1

    def on_stream_end(self, stream_id: str, report: SourceReport) -> None:
        outcome = self.writer.finish(stream_id, report.published, report.error, report.stopped)
        if outcome.status == "done":
            self.done += 1
        elif outcome.status == "failed":
            self.failed_now += 1
            self.failed_count += 1
        self.tick()

    def tick(self, _pipeline: Any = None) -> None:
        if self.progress is None:
            return
        finished_now = self.done + self.failed_now
        self.progress(
            BatchProgress(
                total=self.total,
                finished=self.finished_before + finished_now,
                failed=self.failed_count,
                frames=self.frames,
                elapsed_s=time.monotonic() - self.t0,
                todo=len(self.todo),
                finished_now=finished_now,
            )
        )


# -- --status ------------------------------------------------------------------------------------


def job_status(out: str | os.PathLike[str]) -> tuple[StatusSummary, int | None]:
    """The state of the job in `out` (running or not) and the pid running it, if one is."""
    folder = Path(out)
    with JobState(folder, create=False) as state:
        summary = state.summary()
    return summary, running_pid(folder)

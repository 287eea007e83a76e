"""Python API: run a pipeline on sources and iterate over its results.

    from stream import Pipeline, PipelineConfig

    config = PipelineConfig(sources=["cam1=a.mp4", "b.mp4"], model="models/resnet50", publish=None)
    with Pipeline(config) as pipeline:
        for result in pipeline:          # dicts as in stream/schemas/result.schema.json
            print(result["stream_id"], result["frame_index"], result["topk"][0]["label"])
    print(pipeline.summary)

Live sources (rtsp://, http(s)://, udp://, rtmp://, /dev/videoN) run until `stop()` (or SIGINT),
reconnecting as needed; `sources` may mix strings and `SourceSpec`s with per-source settings
(`stream.sources.config_file.load_sources_file` reads them from TOML). Their status events
(stream/schemas/status.schema.json) collect in `pipeline.status_events` while iterating.

`Pipeline.run()` runs to the end without collecting results (they go to `publish` / `output`)
and returns the same `RunSummary`. A stage that dies raises `PipelineError` naming it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stream.config import PipelineConfig
from stream.errors import UserError
from stream.model import load_info
from stream.ops.metrics import ExtraMetrics, MetricsServer
from stream.reports import RunSummary, SourceReport, source_report
from stream.stages.capture import CaptureConfig, CaptureStage, auto_thread_count
from stream.stages.infer import InferConfig, InferStage
from stream.stages.preprocess import (
    PreprocessConfig,
    PreprocessStage,
)
from stream.stages.publish import PublishConfig, PublishStage
from stream.supervisor import Supervisor
from stream.wire.shm import make_run_dir
from stream.wire.transport import TransportConfig, free_tcp_port, resolve_endpoints

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "PipelineConfig", "PipelineError", "RunSummary", "SourceReport"]


def status_endpoint(endpoints: dict[str, str], transport: TransportConfig) -> str:
    """Endpoint of the status link (captures -> publish), next to the other links."""
    frames = endpoints["frames"]
    if frames.startswith("ipc://"):
        return frames[: -len("frames.sock")] + "status.sock"
    return f"tcp://{transport.host}:{free_tcp_port(transport.host)}"


class PipelineError(RuntimeError):
    """The pipeline stopped because a stage died; the message names the stage and the reason."""


class Pipeline:
    """capture (one process per source) -> preprocess -> infer -> publish, supervised."""

    def __init__(self, config: PipelineConfig, extra_metrics: ExtraMetrics | None = None) -> None:
        """`extra_metrics`: with `config.metrics`, a callable returning more metric families
        (`prometheus_client.core.*MetricFamily`) for each scrape."""
        self.config = config
        self.extra_metrics = extra_metrics
        self.summary: RunSummary | None = None
        self.supervisor: Supervisor | None = None
        self.metrics: MetricsServer | None = None
        self._run_dir: Path | None = None
        self._shm_dir: str | None = None
        self._t0 = 0.0
        self.started_at = 0.0
        """`time.monotonic()` when the stages were started; 0 before."""
        self._old_handlers: dict[int, Any] = {}
        self._specs = {spec.stream_id: spec for spec in config.specs}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, collect: bool = False) -> None:
        """Check the model, start every stage; `collect` = deliver results to the iterator."""
        cfg = self.config
        info = load_info(cfg.model)  # fail fast on a folder that is not a model
        model_dir = str(info.path)
        fmt = cfg.resolved_frame_format(info.geometry)
        if cfg.metrics is not None and self.metrics is None:
            self.metrics = MetricsServer(self, cfg.metrics, self.extra_metrics)  # port in use: now
        self._run_dir = Path(tempfile.mkdtemp(prefix="ovstream-"))
        endpoints = resolve_endpoints(cfg.transport, self._run_dir)
        endpoints["status"] = status_endpoint(endpoints, cfg.transport)
        streams = [s.stream_id for s in cfg.specs]
        stages = [
            PublishStage(
                PublishConfig(
                    model=model_dir,
                    sources={s.stream_id: s.masked_url for s in cfg.specs},
                    topk=cfg.topk,
                    publish=cfg.publish,
                    output=cfg.output,
                    sink=collect,
                    wait_subscribers=cfg.wait_subscribers,
                    subscriber_timeout_s=cfg.subscriber_timeout_s,
                    mqtt=cfg.mqtt,
                    mqtt_qos=cfg.mqtt_qos,
                    keys=cfg.keys if cfg.secure_publish else None,
                ),
                cfg.transport,
                endpoints,
            ),
            InferStage(
                InferConfig(
                    model_dir,
                    streams,
                    cfg.device,
                    cfg.requests,
                    dict(cfg.ov_config),
                    cfg.mode,
                    cfg.max_batch,
                    cfg.workers,
                    cfg.local_infer,
                    cfg.worker_timeout_s,
                    cfg.keys,
                    fmt,
                ),
                cfg.transport,
                endpoints,
            ),
            PreprocessStage(
                PreprocessConfig(streams, info.geometry, cfg.max_batch, fmt),
                cfg.transport,
                endpoints,
            ),
        ]
        files = [spec for spec in cfg.specs if not spec.is_live]
        pool = len(files) > cfg.max_jobs
        for spec in cfg.specs:
            if spec.is_live or not pool:
                capture = cfg.capture_config(spec, info.geometry)
                stages.append(CaptureStage(capture, cfg.transport, endpoints))
        if pool:
            worker = CaptureConfig(
                None,
                info.geometry,
                cfg.fps,
                cfg.decoder_threads,
                cfg.live,
                frame_format=fmt,
                max_batch=cfg.max_batch,
            )
            for k in range(cfg.max_jobs):
                stages.append(CaptureStage(worker, cfg.transport, endpoints, worker=k))
        captures = sum(isinstance(s, CaptureStage) for s in stages)
        threads = auto_thread_count(captures, os.cpu_count() or 1)
        if cfg.decoder_threads == "AUTO" and threads:
            for stage in stages:  # the streams keep every core busy: one thread a decoder
                if isinstance(stage, CaptureStage):
                    stage.config.thread_count = threads
        if cfg.transport.shared_memory:
            self._shm_dir = make_run_dir(captures, info.geometry.frame_shape(fmt))
            if self._shm_dir:
                endpoints["shm"] = self._shm_dir  # the stages hold this same dict
        downstream = {s.name: "preprocess" for s in stages if isinstance(s, CaptureStage)}
        downstream.update(preprocess="infer", infer="publish")
        queue = [{"stream_id": f.stream_id, "url": f.url, "fps": f.fps} for f in files]
        self.supervisor = Supervisor(
            stages,
            endpoints,
            cfg.transport,
            collect=collect,
            startup_timeout_s=cfg.startup_timeout_s,
            drain_timeout_s=cfg.drain_timeout_s,
            streams=streams,
            files=queue if pool else [],
            downstream=downstream,
        )
        self._t0 = self.started_at = time.monotonic()
        self.supervisor.start()

    @property
    def status_events(self) -> list[dict[str, Any]]:
        """Status events received so far (when iterating over results), oldest first."""
        return self.supervisor.status_events if self.supervisor else []

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each stage, by stage name (`capture[ID]`, preprocess, infer, publish)."""
        return self.supervisor.pids if self.supervisor else {}

    @property
    def metrics_url(self) -> str | None:
        """`http://HOST:PORT` of `/metrics` and `/healthz` once started with `config.metrics`."""
        return self.metrics.url if self.metrics is not None else None

    def stop(self) -> None:
        """Graceful stop: captures stop reading, everything in flight is still published."""
        if self.supervisor is not None:
            self.supervisor.request_stop()

    def close(self) -> None:
        """Stop any stage still running, the metrics server, and remove the run's temporary
        folder."""
        if self.supervisor is not None:
            self.supervisor.close()
            if self.summary is None:
                self.summary = self._summarise()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for folder in (self._run_dir, self._shm_dir):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._run_dir = self._shm_dir = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- running --------------------------------------------------------------------------------

    def run(
        self,
        progress: Callable[[Pipeline], None] | None = None,
        progress_interval_s: float = 0.5,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        on_stream_end: Callable[[str, SourceReport], None] | None = None,
    ) -> RunSummary:
        """Run to the end (SIGINT/SIGTERM drain and stop); returns the summary.

        Raises PipelineError if a stage died. Results go to `publish`/`output`, and to
        `on_result` (in frame order per stream) when it is given; `on_stream_end` is called
        once per stream, after its last result, with its report.
        """
        last = 0.0
        with self._signals():
            if self.supervisor is None:
                self.start(collect=on_result is not None or on_stream_end is not None)
            assert self.supervisor is not None
            try:
                while not self.supervisor.finished:
                    for record in self.supervisor.step(100):
                        if on_result is not None:
                            on_result(record)
                    self._stream_ends(on_stream_end)
                    if progress and time.monotonic() - last >= progress_interval_s:
                        last = time.monotonic()
                        progress(self)
            finally:
                self.close()
        return self._finish()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.results()

    def results(self) -> Iterator[dict[str, Any]]:
        """Start (if needed) and yield every result record, in frame order per stream."""
        with self._signals():
            if self.supervisor is None:
                self.start(collect=True)
            assert self.supervisor is not None
            if not self.supervisor.collect:
                raise RuntimeError("this pipeline was started without collect=True")
            try:
                while not self.supervisor.finished:
                    yield from self.supervisor.step(100)
                    self._stream_ends(None)
            finally:
                self.close()
        self._finish()

    def _stream_ends(self, callback: Callable[[str, SourceReport], None] | None) -> None:
        sup = self.supervisor
        assert sup is not None
        ended, sup.ended = sup.ended, []
        if callback is None:
            return
        for stream_id, report in ended:
            spec = self._specs.get(stream_id)
            if spec is not None:
                callback(stream_id, source_report(spec, report))

    def _finish(self) -> RunSummary:
        assert self.summary is not None
        if self.summary.failure:
            if self.summary.failure_is_user_error:
                raise UserError(self.summary.failure)
            raise PipelineError(self.summary.failure)
        return self.summary

    # -- helpers --------------------------------------------------------------------------------

    def _signals(self) -> Any:
        pipeline = self

        class _Handlers:
            def __enter__(self) -> None:
                if threading.current_thread() is not threading.main_thread():
                    return
                for sig in (signal.SIGINT, signal.SIGTERM):
                    pipeline._old_handlers[sig] = signal.signal(sig, pipeline._on_signal)

            def __exit__(self, *exc: Any) -> None:
                for sig, old in pipeline._old_handlers.items():
                    signal.signal(sig, old)
                pipeline._old_handlers.clear()

        return _Handlers()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        sup = self.supervisor
        if sup is None:
            return
        if sup.stopping:
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            sup.abort(f"interrupted by a second {signal.Signals(signum).name}")
        else:
            log.info(
                "%s: stopping capture, draining what is in flight", signal.Signals(signum).name
            )
            sup.request_stop()

    def snapshot(self) -> dict[str, Any]:
        """Live counters: per active stream frames captured and published; files done; in
        flight."""
        sup = self.supervisor
        if sup is None:
            return {}
        publish = sup.stats("publish")
        published = publish.get("published", {})
        streams = {}
        for sid, stats in self._reading().items():
            if sid in sup.stream_reports or sid not in published:
                continue  # ended
            streams[sid] = {
                "captured": int(stats.get("frames", 0)),
                "published": int(published.get(sid, 0)),
                "live": bool(stats.get("live", False)),
                "dropped": int(stats.get("dropped", 0)),
                "state": stats.get("state"),
            }
        captured = sum(s["captured"] for s in streams.values())
        done = sum(s["published"] for s in streams.values())
        return {
            "elapsed_s": time.monotonic() - self._t0,
            "streams": streams,
            "ended": len(sup.stream_reports),
            "total": len(self.config.specs),
            "results": int(publish.get("results", 0)),
            "in_flight": max(0, captured - done),
            "waiting_subscribers": publish.get("waiting_subscribers"),
            "workers": sup.stats("infer").get("workers"),
        }

    def stream_counters(self) -> dict[str, dict[str, Any]]:
        """Per stream, its counters now, as the summary and `/metrics` read them: its end report
        once publish has seen its end; else its capture's counters (a pool worker's, kept by the
        supervisor, once the worker moved on) with publish's `published` and `latency`; for a
        stream not started, none. `ended` says which; `error` is set if the source failed."""
        sup = self.supervisor
        if sup is None:
            return {}
        publish = sup.stats("publish")
        published = publish.get("published") or {}
        latency = publish.get("latency") or {}
        reading = self._reading()
        reports, ends = dict(sup.stream_reports), dict(sup.capture_ends)
        errors = dict(sup.source_errors)
        out = {}
        for spec in self.config.specs:
            sid = spec.stream_id
            if sid in reports:
                counters = {**reports[sid], "ended": True}
            else:
                counters = dict(ends.get(sid) or reading.get(sid) or {})
                counters.update(
                    ended=False, published=int(published.get(sid, 0)), latency=latency.get(sid)
                )
            counters["live"] = spec.is_live
            if sid in errors:
                counters["error"] = errors[sid]
            out[sid] = counters
        return out

    def _reading(self) -> dict[str, dict[str, Any]]:
        """Each capture's last counters, by the stream it reads (or read last)."""
        assert self.supervisor is not None
        reading = {}
        for state in self.supervisor.capture_states():
            stats = dict(state.stats)
            if "stream" in stats:
                reading[stats["stream"]] = stats
        return reading

    def _summarise(self) -> RunSummary:
        sup = self.supervisor
        assert sup is not None
        counters = self.stream_counters()
        reports = []
        for spec in self.config.specs:
            report = counters[spec.stream_id]
            if not report["ended"]:  # the run ended before this stream did
                report.setdefault("stopped", sup.interrupted)
            reports.append(source_report(spec, report))
        return RunSummary(
            sources=reports,
            seconds=time.monotonic() - self._t0,
            results=sum(r.published for r in reports),
            interrupted=sup.interrupted,
            failure=sup.failure,
            failure_is_user_error=sup.failure_is_user_error,
            stages={name: dict(s.stats) for name, s in sup.states.items()},
            rejected=sup.rejected_control
            + sum(int(s.stats.get("rejected", 0)) for s in sup.states.values()),
        )

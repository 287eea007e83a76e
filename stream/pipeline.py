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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.errors import UserError
from stream.model import PERFORMANCE_HINTS, load_info
from stream.ops.annotate_link import AnnotateLink
from stream.ops.metrics import ExtraMetrics, MetricsServer, parse_address
from stream.ops.mqtt import parse_mqtt_url
from stream.sources.live import LiveOptions
from stream.sources.spec import SourceSpec, parse_sources
from stream.stages.capture import CaptureConfig, CaptureStage
from stream.stages.infer import InferConfig, InferStage
from stream.stages.preprocess import (
    DEFAULT_MAX_BATCH,
    MAX_BATCH_LIMIT,
    PreprocessConfig,
    PreprocessStage,
)
from stream.stages.publish import DEFAULT_PUBLISH, PublishConfig, PublishStage
from stream.supervisor import Supervisor
from stream.wire.transport import TransportConfig, check_endpoint, free_tcp_port, resolve_endpoints

log = logging.getLogger(__name__)


def status_endpoint(endpoints: dict[str, str], transport: TransportConfig) -> str:
    """Endpoint of the status link (captures -> publish), next to the other links."""
    frames = endpoints["frames"]
    if frames.startswith("ipc://"):
        return frames[: -len("frames.sock")] + "status.sock"
    return f"tcp://{transport.host}:{free_tcp_port(transport.host)}"


class PipelineError(RuntimeError):
    """The pipeline stopped because a stage died; the message names the stage and the reason."""


@dataclass
class PipelineConfig:
    """Everything a run needs; checked on construction."""

    sources: list[str | SourceSpec]
    """Sources as `SOURCE` or `NAME=SOURCE` strings (the stream id defaults to the file stem or
    the URL's last path segment), or `SourceSpec`s with per-source settings."""
    model: str
    """Model folder (a precision folder, or a parent with int8/fp32/fp16 sub-folders)."""
    device: str = "CPU"
    """OpenVINO device: CPU, AUTO, GPU, NPU... (checked against the available devices)."""
    publish: str | None = DEFAULT_PUBLISH
    """PUB endpoint to bind for results (topic = stream id); None = no PUB socket."""
    output: str | None = None
    """JSON Lines file for results; None = none."""
    fps: float | None = None
    """Classify this many frames per second (files: by pts; live: by capture time); None = every
    frame (a live source still drops frames the pipeline has no room for)."""
    mode: str = "throughput"
    """OpenVINO performance hint: `throughput` (most frames per second) or `latency` (lowest
    delay per frame; one request at a time unless `requests` says otherwise)."""
    live: LiveOptions = field(default_factory=LiveOptions)
    """Transport, timeouts and backoff of live sources that do not set their own."""
    topk: int = 5
    """Classes per result."""
    requests: int = 0
    """Infer requests in flight; 0 = the device's optimal number."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Frames one inference request takes at most: whatever is waiting, shared among the free
    requests, never waiting for more (see stream/stages/infer.py); 1 = a request per frame."""
    ov_config: dict[str, Any] = field(default_factory=dict)
    """Extra OpenVINO compile properties."""
    workers: str | None = None
    """Bind this endpoint (`tcp://ADDR:PORT`) for remote infer workers (`ovstream worker`);
    None = local inference only."""
    local_infer: bool = True
    """Also run inference here; False = only on remote workers."""
    worker_timeout_s: float = 5.0
    """A worker silent this long is dropped and the frames it held run elsewhere."""
    keys: str | None = None
    """Folder made by `ovstream keys`: the worker link uses CURVE and accepts only the clients in
    its `authorized/`; None = plain tcp (loopback only, unless `insecure`)."""
    insecure: bool = False
    """Allow binding `workers` on a non-loopback address without keys."""
    secure_publish: bool = False
    """With `keys`: the results' PUB socket uses CURVE too (subscribers: `ovstream subscribe
    --keys`, their public keys in `keys/authorized`)."""
    decoder_threads: str = "AUTO"
    """FFmpeg decoder threading: AUTO, FRAME, SLICE or NONE."""
    wait_subscribers: int = 0
    """Hold results until this many subscribers have subscribed to `publish`."""
    subscriber_timeout_s: float = 30.0
    """How long to wait for them before going on anyway."""
    transport: TransportConfig = field(default_factory=TransportConfig)
    """Links between the stages (ipc in a temporary folder by default)."""
    startup_timeout_s: float = 120.0
    """A stage that is not ready after this long fails the run (model compilation included)."""
    drain_timeout_s: float = 60.0
    """After a stop request, give up draining after this long."""
    jobs: int = 0
    """At most this many files are decoded at once, by a pool of capture workers that each take
    the next file when they finish one; 0 = the number of CPU cores. Live sources each have a
    capture process of their own on top."""
    mqtt: str | None = None
    """Also publish results and status events to an MQTT broker:
    `mqtt://[user:pass@]HOST[:PORT]/PREFIX` (see stream/ops/mqtt.py for the topics); None = off."""
    mqtt_qos: int = 0
    """QoS of the MQTT messages: 0 (at most once, the default) or 1 (at least once)."""
    metrics: str | None = None
    """Serve `/metrics` (Prometheus) and `/healthz` on `HOST:PORT` (`:PORT` or `PORT`: loopback;
    port 0: any free one, see `Pipeline.metrics_url`); None = off."""
    annotate: AnnotateLink | None = None
    """Where live captures send copies of their frames for annotated video (set from
    `stream.ops.annotate_live.LiveAnnotator.link`); None = no copies."""

    def __post_init__(self) -> None:
        if self.jobs < 0:
            raise UserError(f"jobs must be >= 0, got {self.jobs}")
        if isinstance(self.sources, str):
            raise UserError("sources must be a list of paths, not one string")
        self.sources = [s if isinstance(s, SourceSpec) else str(s) for s in self.sources]
        self.specs: list[SourceSpec] = parse_sources(self.sources)
        if self.mode not in PERFORMANCE_HINTS:
            raise UserError(f"mode must be one of {sorted(PERFORMANCE_HINTS)}, got {self.mode!r}")
        if self.publish is not None:
            check_endpoint(self.publish)
        if self.topk < 1:
            raise UserError(f"topk must be at least 1, got {self.topk}")
        if not 1 <= self.max_batch <= MAX_BATCH_LIMIT:
            raise UserError(f"max_batch must be 1..{MAX_BATCH_LIMIT}, got {self.max_batch}")
        if self.workers is not None:
            from stream.remote.security import check_bind

            check_endpoint(self.workers)
            if not self.workers.startswith("tcp://"):
                raise UserError(f"--workers must be a tcp:// endpoint, got {self.workers!r}")
            check_bind(self.workers, self.keys, self.insecure)
        elif not self.local_infer:
            raise UserError("--no-local-infer needs --workers (somewhere to run inference)")
        elif self.keys and not self.secure_publish:
            raise UserError(
                "--keys secures the worker link (and with --secure-publish the PUB "
                "socket): it needs --workers or --secure-publish"
            )
        if self.secure_publish and not self.keys:
            raise UserError("--secure-publish needs --keys DIR")
        if self.secure_publish and self.publish is None:
            raise UserError("--secure-publish needs a PUB socket (not --publish none)")
        if self.worker_timeout_s <= 0:
            raise UserError(f"worker timeout must be positive, got {self.worker_timeout_s}")
        if self.wait_subscribers < 0:
            raise UserError(f"wait_subscribers must be >= 0, got {self.wait_subscribers}")
        if self.metrics is not None:
            parse_address(self.metrics)
        if self.mqtt is not None:
            parse_mqtt_url(self.mqtt)
        if self.mqtt_qos not in (0, 1):
            raise UserError(f"mqtt_qos must be 0 or 1, got {self.mqtt_qos}")
        for spec in self.specs:
            self.capture_config(spec)  # checks fps and threading

    @property
    def max_jobs(self) -> int:
        """Capture workers for files: `jobs`, or the number of cores."""
        return self.jobs or os.cpu_count() or 1

    def capture_config(self, spec: SourceSpec, geometry: Any = None) -> CaptureConfig:
        """The capture settings of one source: its own where it has them, else the pipeline's."""
        kw = {} if geometry is None else {"geometry": geometry}
        return CaptureConfig(
            spec,
            fps=spec.fps if spec.fps is not None else self.fps,
            thread_type=self.decoder_threads,
            live=spec.options or self.live,
            annotate=self.annotate if spec.is_live else None,
            **kw,
        )


@dataclass
class SourceReport:
    """How one source went."""

    stream_id: str
    source: str
    frames: int = 0
    """Frames sent to inference (all decoded frames, or the sampled ones)."""
    published: int = 0
    """Results published for it."""
    decoded: int = 0
    skipped: int = 0
    """Frames lost to corrupt data."""
    live: bool = False
    """Read as a live source."""
    dropped: int = 0
    """Live: frames dropped to keep up with real time."""
    reconnects: int = 0
    """Live: connection attempts after the first."""
    last_error: str | None = None
    """Live: the last connection problem (the source itself does not fail; it reconnects)."""
    error: str | None = None
    """Why the source failed, if it did."""
    stopped: bool = False
    """Reading stopped early on request."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunSummary:
    """The outcome of a run."""

    sources: list[SourceReport]
    seconds: float
    results: int
    interrupted: bool = False
    failure: str | None = None
    """Set when a stage died or could not start."""
    failure_is_user_error: bool = False
    """The failure is the user's to fix (a model that does not load, an endpoint in use)."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Final counters of every stage (frames, rejected, cpu_s, max_rss_mb...)."""
    rejected: int = 0
    """Malformed or unexpected messages rejected, by every stage and the supervisor."""

    @property
    def exit_code(self) -> int:
        """0 ok (also after a requested stop), 2 a user error, 1 if a source or a stage failed."""
        if self.failure and self.failure_is_user_error:
            return 2
        if self.failure or any(not s.ok for s in self.sources):
            return 1
        return 0

    @property
    def fps(self) -> float:
        return self.results / self.seconds if self.seconds > 0 else 0.0


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
                ),
                cfg.transport,
                endpoints,
            ),
            PreprocessStage(
                PreprocessConfig(streams, info.geometry, cfg.max_batch), cfg.transport, endpoints
            ),
        ]
        files = [spec for spec in cfg.specs if not spec.is_live]
        pool = len(files) > cfg.max_jobs
        for spec in cfg.specs:
            if spec.is_live or not pool:
                capture = cfg.capture_config(spec, info.geometry)
                stages.append(CaptureStage(capture, cfg.transport, endpoints))
        if pool:
            worker = CaptureConfig(None, info.geometry, cfg.fps, cfg.decoder_threads, cfg.live)
            for k in range(cfg.max_jobs):
                stages.append(CaptureStage(worker, cfg.transport, endpoints, worker=k))
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
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

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


def source_report(spec: SourceSpec, counters: dict[str, Any]) -> SourceReport:
    """A source's report from its end-of-stream counters (or its capture's last ones)."""
    return SourceReport(
        stream_id=spec.stream_id,
        source=spec.masked_url,
        frames=int(counters.get("count", counters.get("frames", 0)) or 0),
        published=int(counters.get("published", 0) or 0),
        decoded=int(counters.get("decoded", 0) or 0),
        skipped=int(counters.get("skipped", 0) or 0),
        live=spec.is_live,
        dropped=int(counters.get("dropped", 0) or 0),
        reconnects=int(counters.get("reconnects", 0) or 0),
        last_error=counters.get("last_error"),
        error=counters.get("error"),
        stopped=bool(counters.get("stopped", False)),
    )

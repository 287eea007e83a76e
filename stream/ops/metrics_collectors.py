"""The `ovstream_*` metric families, built on each scrape from what the pipeline already holds.

Nothing is counted twice: `PipelineCollector` builds its families from the numbers the run's
summary prints: `Pipeline.stream_counters()` per stream (the capture's and publish's reports while
a stream runs, its end report once it ended) and every stage's last STATS report. A caller adds
its own families with `extra` (a callable returning more of them on each scrape), so another
command built on the pipeline can publish its gauges on the same endpoint. `WorkerCollector` is
`ovstream worker --metrics`' counterpart. Served by stream/ops/metrics.py.

A collector runs on the HTTP server's threads: it only reads the supervisor's state (whole-dict
copies, which the GIL makes atomic), never changes it.
"""

from __future__ import annotations

import collections
import resource
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from stream.stages.publish import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from stream.pipeline import Pipeline

RATE_WINDOW_S = 10.0
"""`ovstream_results_per_second` is the rate over the scrapes of about this many last seconds."""
SOURCE_STATES = (
    "pending",
    "reading",
    "connecting",
    "connected",
    "disconnected",
    "reconnect_scheduled",
    "error",
    "ended",
    "failed",
)
"""`ovstream_source_state`: pending (not started), reading (a file), the live states of the
status events, ended, failed (for good)."""
ExtraMetrics = Callable[[], Iterable[Metric]]


class PipelineCollector(Collector):
    """Builds every `ovstream_*` family from the pipeline's state on each scrape."""

    def __init__(self, pipeline: Pipeline, extra: ExtraMetrics | None = None) -> None:
        self.pipeline = pipeline
        self.extra = extra
        self._samples: dict[str, collections.deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:  # two scrapes at once would mix their rate samples
            yield from self._collect()
        if self.extra is not None:
            yield from self.extra()

    def _collect(self) -> Iterable[Metric]:
        pipeline = self.pipeline
        sup = pipeline.supervisor
        streams = pipeline.stream_counters()
        labels = ["stream_id"]
        counters = {
            "decoded": ("ovstream_frames_decoded", "Frames the decoder produced."),
            "published": ("ovstream_frames_classified", "Frames classified and published."),
            "dropped": ("ovstream_frames_dropped", "Live: frames dropped to keep up."),
            "skipped": ("ovstream_frames_skipped", "Frames lost to corrupt data."),
            "reconnects": (
                "ovstream_source_reconnects",
                "Live: connection attempts after the first.",
            ),
        }
        families = {k: CounterMetricFamily(n, d, labels=labels) for k, (n, d) in counters.items()}
        state = GaugeMetricFamily(
            "ovstream_source_state",
            "1 for the state the source is in.",
            labels=["stream_id", "state"],
        )
        rate = GaugeMetricFamily(
            "ovstream_results_per_second",
            f"Results per second over the last ~{RATE_WINDOW_S:g} s of scrapes.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "ovstream_result_latency_seconds",
            "Capture->publish latency of each result (its latency_ms).",
            labels=labels,
        )
        now = time.monotonic()
        elapsed = max(1e-9, now - pipeline.started_at) if pipeline.started_at else 0.0
        for sid, c in streams.items():
            for key, family in families.items():
                family.add_metric([sid], int(c.get(key) or 0))
            current = source_state(c)
            for name in SOURCE_STATES:
                state.add_metric([sid, name], 1.0 if name == current else 0.0)
            rate.add_metric([sid], self._rate(sid, int(c.get("published") or 0), now, elapsed))
            hist = c.get("latency")
            if isinstance(hist, dict):
                latency.add_metric([sid], cumulative(hist["counts"]), hist["sum"])
        yield from families.values()
        yield state
        yield rate
        yield latency
        if sup is None:
            return
        stages = {name: dict(s.stats) for name, s in sup.states.items()}
        up = GaugeMetricFamily(
            "ovstream_stage_up", "1 while the stage process runs.", labels=["stage"]
        )
        rejected = CounterMetricFamily(
            "ovstream_messages_rejected",
            "Malformed or unexpected messages rejected.",
            labels=["stage"],
        )
        cpu = stage_cpu_family()
        rss = GaugeMetricFamily(
            "ovstream_stage_max_rss_bytes", "Peak resident memory of the stage.", labels=["stage"]
        )
        for name, state_ in sup.states.items():
            up.add_metric([name], 1.0 if alive(state_.process) else 0.0)
            stats = stages[name]
            rejected.add_metric([name], int(stats.get("rejected", 0)))
            if "cpu_s" in stats:
                cpu.add_metric([name], float(stats["cpu_s"]))
                rss.add_metric([name], float(stats.get("max_rss_mb", 0)) * 1024 * 1024)
        rejected.add_metric(["supervisor"], sup.rejected_control)
        yield from (up, rejected, cpu, rss)
        yield queue_depths(streams, stages)
        infer = stages.get("infer", {})
        yield GaugeMetricFamily(
            "ovstream_infer_requests_in_flight",
            "Inference requests running now.",
            value=int(infer.get("inflight", 0)),
        )
        yield GaugeMetricFamily(
            "ovstream_infer_requests",
            "Inference requests available.",
            value=int(infer.get("requests", 0)),
        )
        if isinstance(infer.get("workers"), dict):
            yield from worker_families(infer["workers"])
        publish = stages.get("publish", {})
        yield CounterMetricFamily(
            "ovstream_duplicate_results_dropped",
            "Second results of a frame (a worker's late answer) dropped by publish.",
            value=int(publish.get("duplicates", 0)),
        )
        yield CounterMetricFamily(
            "ovstream_pub_dropped",
            "Messages a subscriber too slow for the PUB socket's high-water mark missed.",
            value=int(publish.get("pub_dropped", 0)),
        )
        if pipeline.config.mqtt:
            yield CounterMetricFamily(
                "ovstream_mqtt_dropped",
                "Results not sent to the MQTT broker (not connected, or too slow).",
                value=int(publish.get("mqtt_dropped", 0)),
            )
            yield CounterMetricFamily(
                "ovstream_mqtt_messages_sent",
                "Results and status events handed to the MQTT connection.",
                value=int(publish.get("mqtt_published", 0)),
            )
            yield GaugeMetricFamily(
                "ovstream_mqtt_connected",
                "1 while connected to the MQTT broker.",
                value=1.0 if publish.get("mqtt_connected") else 0.0,
            )

    def _rate(self, sid: str, published: int, now: float, elapsed: float) -> float:
        samples = self._samples.setdefault(sid, collections.deque())
        samples.append((now, published))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        t0, n0 = samples[0]
        if now > t0:
            return (published - n0) / (now - t0)
        return published / elapsed if elapsed else 0.0  # first scrape: the run's average


def worker_families(workers: dict[str, Any]) -> Iterable[Metric]:
    """The head's view of its remote workers (`--workers`), from the infer stage's reports."""
    yield GaugeMetricFamily(
        "ovstream_workers_connected",
        "Remote workers connected now.",
        value=int(workers.get("connected", 0)),
    )
    per = workers.get("per_worker") or {}
    done = CounterMetricFamily(
        "ovstream_worker_frames", "Frames a worker returned results for.", labels=["worker"]
    )
    inflight = GaugeMetricFamily(
        "ovstream_worker_frames_in_flight",
        "Frames sent to a worker, unanswered.",
        labels=["worker"],
    )
    for name, w in per.items():
        done.add_metric([name], int(w.get("frames", 0)))
        inflight.add_metric([name], int(w.get("inflight", 0)))
    yield done
    yield inflight
    yield CounterMetricFamily(
        "ovstream_worker_frames_resent",
        "Frames handed to another worker after theirs went silent, closed its connection or "
        "restarted.",
        value=int(workers.get("resent", 0)),
    )
    yield CounterMetricFamily(
        "ovstream_worker_late_results",
        "Results of a worker that came after its frames had been re-sent (dropped).",
        value=int(workers.get("late", 0)),
    )
    refused = CounterMetricFamily(
        "ovstream_workers_refused", "Workers refused, by reason.", labels=["reason"]
    )
    refused.add_metric(["model"], int(workers.get("refused", 0)))
    refused.add_metric(["key"], int(workers.get("unauthorized", 0)))
    yield refused


class WorkerCollector(Collector):
    """`ovstream worker --metrics`: the worker's own counters."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self) -> Iterable[Metric]:
        w = self.worker
        local = w.local
        yield GaugeMetricFamily(
            "ovstream_worker_connected",
            "1 while a head has welcomed this worker.",
            value=1.0 if w.welcomed else 0.0,
        )
        yield CounterMetricFamily(
            "ovstream_worker_frames", "Frames this worker classified.", value=int(w.frames)
        )
        yield GaugeMetricFamily(
            "ovstream_worker_frames_in_flight",
            "Frames running on this worker's requests now.",
            value=int(local.frames_inflight) if local is not None else 0,
        )
        yield GaugeMetricFamily(
            "ovstream_infer_requests",
            "Inference requests available.",
            value=int(local.requests) if local is not None else 0,
        )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = stage_cpu_family()
        cpu.add_metric(["worker"], usage.ru_utime + usage.ru_stime)
        yield cpu


def stage_cpu_family() -> CounterMetricFamily:
    """`ovstream_stage_cpu_seconds`, of the pipeline's stages or of a worker."""
    return CounterMetricFamily(
        "ovstream_stage_cpu_seconds", "CPU time of the stage process.", labels=["stage"]
    )


def source_state(counters: dict[str, Any]) -> str:
    """The `ovstream_source_state` of one stream's counters (see SOURCE_STATES)."""
    if counters.get("error"):
        return "failed"
    if counters.get("ended"):
        return "ended"
    if "stream" not in counters:
        return "pending"
    if not counters.get("live"):
        return "reading"
    state = str(counters.get("state") or "connecting")
    return "ended" if state == "end_of_stream" else state


def cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last above every bound) -> Prometheus' cumulative `le` buckets."""
    out, total = [], 0
    for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), counts, strict=True):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out


def queue_depths(streams: dict[str, dict[str, Any]], stages: dict[str, dict[str, Any]]) -> Metric:
    """Frames sent to each stage that it has not passed on yet, from the stages' last reports
    (every 0.5 s, so approximate): preprocess's queue, infer's queue and requests, publish's
    queue and reorder buffer."""
    family = GaugeMetricFamily(
        "ovstream_stage_queue_depth",
        "Frames waiting for or inside the stage (from the stages' last reports).",
        labels=["stage"],
    )
    captured = sum(int(c.get("frames") or c.get("count") or 0) for c in streams.values())
    pre = int(stages.get("preprocess", {}).get("frames", 0))
    inf = int(stages.get("infer", {}).get("frames", 0))
    pub = int(stages.get("publish", {}).get("results", 0))
    for name, into, out in (
        ("preprocess", captured, pre),
        ("infer", pre, inf),
        ("publish", inf, pub),
    ):
        family.add_metric([name], float(max(0, into - out)))
    return family


def alive(process: Any) -> bool:
    """Is a stage process running? (Its sentinel, not `exitcode`: that would reap it from this
    thread, under the main thread's feet.)"""
    if process is None:
        return False
    try:
        return not wait([process.sentinel], 0)
    except (OSError, ValueError):
        return False

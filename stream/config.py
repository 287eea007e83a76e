"""`PipelineConfig`: everything a run is told, checked when it is made (one-line UserErrors)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from stream.errors import UserError
from stream.geometry import FRAME_FORMATS, Geometry
from stream.model import PERFORMANCE_HINTS
from stream.ops.annotate_link import AnnotateLink
from stream.ops.metrics import parse_address
from stream.ops.mqtt import parse_mqtt_url
from stream.sources.live import LiveOptions
from stream.sources.spec import SourceSpec, parse_sources
from stream.stages.capture import CaptureConfig
from stream.stages.preprocess import DEFAULT_MAX_BATCH, MAX_BATCH_LIMIT
from stream.stages.publish import DEFAULT_PUBLISH
from stream.wire.transport import TransportConfig, check_endpoint

FRAME_FORMAT_CHOICES = ("auto", *FRAME_FORMATS)
"""What `--frame-format` and `PipelineConfig.frame_format` accept."""


def resolve_frame_format(requested: str, geometry: Geometry) -> str:
    """The frame format of a run asked for `requested` (one of FRAME_FORMAT_CHOICES) with a
    model of `geometry`: auto is i420 where it fits, else bgr; UserError if it cannot be."""
    if requested == "auto":
        return "i420" if geometry.i420_fits else "bgr"
    if requested == "i420" and not geometry.i420_fits:
        raise UserError(
            f"--frame-format i420 needs an even model input size, this model's is "
            f"{geometry.width}x{geometry.height} (use bgr)"
        )
    return requested


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
    """Frames handed on together at most: a file capture's message, preprocess's batch, one
    inference request (whatever is waiting, shared among the free requests, never waiting for
    more; see stream/stages/infer.py); 1 = a frame at a time."""
    ov_config: dict[str, Any] = field(default_factory=dict)
    """Extra OpenVINO compile properties."""
    workers: str | None = None
    """Bind this endpoint (`tcp://ADDR:PORT`) for remote infer workers (`ovstream worker`);
    None = local inference only."""
    local_infer: bool = True
    """Also run inference here; False = only on remote workers."""
    worker_timeout_s: float = 5.0
    """A worker silent this long is dropped and the frames it held run elsewhere (one whose
    connection closes is dropped at once)."""
    keys: str | None = None
    """Folder made by `ovstream keys`: the worker link uses CURVE and accepts only the clients in
    its `authorized/`; None = plain tcp (loopback only, unless `insecure`)."""
    insecure: bool = False
    """Allow binding `workers`, and `publish`, on a non-loopback address without keys (the PUB
    socket counts as keyed only with `secure_publish`)."""
    secure_publish: bool = False
    """With `keys`: the results' PUB socket uses CURVE too (subscribers: `ovstream subscribe
    --keys`, their public keys in `keys/authorized`)."""
    decoder_threads: str = "AUTO"
    """FFmpeg decoder threading: AUTO, FRAME, SLICE or NONE."""
    frame_format: str = "auto"
    """How frames of the model's input size travel between the stages: `i420` (YUV 4:2:0, half
    the bytes; OpenVINO converts to BGR inside the compiled model), `bgr`, or `auto` (i420 where
    the model's input size is even, else bgr). See `stream.geometry.FRAME_FORMATS`."""
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
            check_endpoint(self.workers)
            if not self.workers.startswith("tcp://"):
                raise UserError(f"--workers must be a tcp:// endpoint, got {self.workers!r}")
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
        from stream.remote.security import check_head_binds

        check_head_binds(self.workers, self.publish, self.keys, self.secure_publish, self.insecure)
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
        if self.frame_format not in FRAME_FORMAT_CHOICES:
            known = ", ".join(FRAME_FORMAT_CHOICES)
            raise UserError(f"frame format must be one of {known}, got {self.frame_format!r}")
        for spec in self.specs:
            self.capture_config(spec)  # checks fps and threading

    @property
    def max_jobs(self) -> int:
        """Capture workers for files: `jobs`, or the number of cores."""
        return self.jobs or os.cpu_count() or 1

    def resolved_frame_format(self, geometry: Geometry) -> str:
        """The frame format of a run of a model of `geometry` (`resolve_frame_format`)."""
        return resolve_frame_format(self.frame_format, geometry)

    def capture_config(self, spec: SourceSpec, geometry: Any = None) -> CaptureConfig:
        """The capture settings of one source: its own where it has them, else the pipeline's."""
        kw = {}
        if geometry is not None:
            kw = {"geometry": geometry, "frame_format": self.resolved_frame_format(geometry)}
        return CaptureConfig(
            spec,
            fps=spec.fps if spec.fps is not None else self.fps,
            thread_type=self.decoder_threads,
            live=spec.options or self.live,
            annotate=self.annotate if spec.is_live else None,
            max_batch=self.max_batch,
            **kw,
        )

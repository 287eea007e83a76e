"""Publish stage: logits -> result records, in frame order per stream, on PUB and to a file.

Results arrive in inference completion order; a reorder buffer per stream releases them by
sequence number. Each record (see `stream/schemas/result.schema.json`) goes out as
`[stream_id, JSON]` on a PUB socket (bound; topic = stream id), as one line of the optional JSON
Lines file, and, for the Python API, to the supervisor over the sink link. The PUB socket never
blocks the pipeline: a subscriber too slow for its high-water mark loses messages (counted).
`wait_subscribers` holds publishing until that many subscriptions arrived (seen through XPUB),
so a subscriber started first receives every record.

Status events of the sources (stream/schemas/status.schema.json) arrive from the captures on
the `status` link and go out on the same PUB socket under the topic `_status/<stream_id>`, and to
the sink for the Python API; they are not written to the JSON Lines file, which holds results.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zmq

from stream.errors import UserError
from stream.model import load_info, topk_batch
from stream.ops.mqtt import MqttPublisher, parse_mqtt_url
from stream.results_file import output_problem
from stream.stages.base import Stage, StreamTracker
from stream.wire import messages
from stream.wire.transport import (
    NOBLOCK,
    TransportConfig,
    open_socket,
    receive_message,
    send,
    send_parts,
)

log = logging.getLogger(__name__)

DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"
PUB_HWM = 10000
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds of the capture->publish latency histogram (Prometheus' defaults); +Inf last."""


@dataclass
class PublishConfig:
    """Where results go."""

    model: str
    """Model folder: name, precision and labels of the records."""
    sources: dict[str, str]
    """Stream id -> source (path or URL; credentials are masked in records)."""
    topk: int = 5
    """Classes per result."""
    publish: str | None = DEFAULT_PUBLISH
    """PUB endpoint to bind; None = no PUB socket."""
    output: str | None = None
    """JSON Lines file to write; None = none."""
    sink: bool = False
    """Also push every record to the supervisor (the Python API's iterator)."""
    wait_subscribers: int = 0
    """Hold results until this many subscriptions arrived on the PUB socket."""
    subscriber_timeout_s: float = 30.0
    """Give up waiting for subscribers after this long (with a warning)."""
    mqtt: str | None = None
    """`mqtt://[user:pass@]HOST[:PORT]/PREFIX` to publish results and status events to."""
    mqtt_qos: int = 0
    """QoS of those MQTT messages: 0 (at most once) or 1 (at least once)."""
    keys: str | None = None
    """CURVE keys folder (`ovstream keys`): the PUB socket encrypts and takes only subscribers
    whose public keys are in its `authorized/`; None = plain."""

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise UserError(f"--topk must be at least 1, got {self.topk}")
        if self.mqtt is not None:
            parse_mqtt_url(self.mqtt)
        if self.mqtt_qos not in (0, 1):
            raise UserError(f"MQTT QoS must be 0 or 1, got {self.mqtt_qos}")
        problem = self.output and output_problem(self.output, self.sources.values())
        if problem:
            raise UserError(problem)


class LatencyHistogram:
    """Capture->publish latency of one stream in fixed buckets: plain lists, so it travels in the
    stage's STATS as JSON. `counts[i]` counts latencies <= LATENCY_BUCKETS_S[i] and above the bound
    before (the last one, above every bound); the reader accumulates them."""

    @staticmethod
    def new() -> dict[str, Any]:
        return {"counts": [0] * (len(LATENCY_BUCKETS_S) + 1), "sum": 0.0}

    @staticmethod
    def observe(hist: dict[str, Any], seconds: float) -> None:
        hist["counts"][bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        hist["sum"] += seconds


class Reorderer:
    """Releases items of one stream in sequence order (0, 1, 2, ...)."""

    def __init__(self) -> None:
        self.next = 0
        self.held: dict[int, Any] = {}

    def add(self, seq: int, item: Any) -> list[Any]:
        """Items now ready, in order (empty while an earlier one is missing)."""
        if seq < self.next or seq in self.held:
            raise ValueError(f"sequence {seq} already seen")
        self.held[seq] = item
        ready = []
        while self.next in self.held:
            ready.append(self.held.pop(self.next))
            self.next += 1
        return ready

    def finish(self, count: int) -> tuple[list[Any], int]:
        """At end of stream: the rest in order, and how many of the `count` never came."""
        rest = [self.held.pop(s) for s in sorted(self.held)]
        missing = max(0, count - self.next - len(rest))
        self.next = max(self.next, count)
        return rest, missing


def make_records(
    batch: messages.Batch,
    sources: dict[str, str],
    labels: list[str],
    k: int,
    model: str,
    precision: str,
) -> list[tuple[str, int, dict[str, Any]]]:
    """(stream, seq, result record) of each frame of one LOGITS batch: one softmax and top-k for
    the batch. `sources`: stream id -> source, credentials already masked."""
    now = time.time()
    tops = topk_batch(batch.data, labels, k)
    return [
        (
            stream,
            seq,
            messages.record_fields(
                stream, sources[stream], frame_index, pts, capture_ts, top, model, precision, now
            ),
        )
        for (stream, seq, frame_index, pts, capture_ts), top in zip(batch.rows(), tops, strict=True)
    ]


class PublishStage(Stage):
    """PULL logits (bound), reorder, publish."""

    name = "publish"

    def __init__(
        self, config: PublishConfig, transport: TransportConfig, endpoints: dict[str, str]
    ) -> None:
        super().__init__(transport, endpoints)
        self.config = config
        self._in: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self._sink: zmq.Socket | None = None
        self._status: zmq.Socket | None = None
        self._file: IO[bytes] | None = None
        self._mqtt: MqttPublisher | None = None
        self._published: dict[str, int] = {}
        self._auth: Any = None
        self._last_status: dict[str, dict[str, Any]] = {}
        self._latency: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        cfg = self.config
        info = load_info(cfg.model)
        self._in = self.socket(zmq.PULL, "logits", bind=True)
        if cfg.publish:
            if cfg.keys:
                self._pub = self._secure_pub(cfg.publish, cfg.keys)
            else:
                self._pub = open_socket(
                    self.ctx, zmq.XPUB, cfg.publish, True, self.transport, PUB_HWM, 2000
                )
            self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        if cfg.output:
            try:
                Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(  # noqa: SIM115 (closed in close)
                    cfg.output, "wb"
                )
            except OSError as exc:
                raise UserError(f"cannot write {cfg.output}: {exc.strerror}") from None
        if cfg.sink:
            self._sink = self.socket(zmq.PUSH, "sink", bind=False)
        if "status" in self.endpoints:
            self._status = self.socket(zmq.PULL, "status", bind=True, hwm=1000, linger_ms=0)
        if cfg.mqtt:
            self._mqtt = MqttPublisher(parse_mqtt_url(cfg.mqtt), cfg.mqtt_qos)
            self._mqtt.start()  # before READY: a broker that is up gets the first result
            self.stats.update(self._mqtt.stats())
        self.report(messages.READY)
        self._wait_for_subscribers()

        tracker = StreamTracker(list(cfg.sources), ordered=False)
        orders = {s: Reorderer() for s in cfg.sources}
        masked = {s: messages.mask_credentials(src) for s, src in cfg.sources.items()}
        self._published = published = {s: 0 for s in cfg.sources}  # streams not ended yet
        self._latency = latency = {s: LatencyHistogram.new() for s in cfg.sources}  # the same

        def check_logits(msg: messages.Message) -> str | None:
            if msg.batch is not None and msg.batch.data.ndim != 2:
                return f"logits of {', '.join(msg.batch.streams)}: shape {msg.batch.data.shape}"
            return None

        self.stats.update(
            published=published,
            latency=latency,
            results=0,
            lost=0,
            duplicates=0,
            pub_dropped=0,
            subscriptions=0,
            status=0,
        )
        timeout = self.transport.io_timeout_ms
        while not tracker.done and not self.should_stop():
            if self._mqtt is not None:
                self.stats.update(self._mqtt.stats())
            self.tick()
            self._drain_subscriptions()
            self._forward_status()
            kinds = (messages.LOGITS, messages.EOS, messages.STATUS)
            msg = self.receive_checked(self._in, timeout, "logits", kinds, tracker, check_logits)
            if msg is None:
                continue
            if msg.kind == messages.STATUS:
                self._workers_event(msg)
                continue
            if msg.kind == messages.EOS:
                rest, missing = orders[msg.stream].finish(int(msg.meta["count"]))
                if missing:
                    self.stats["lost"] += missing
                    log.warning("stream %r: %d frame(s) never reached publish", msg.stream, missing)
                if not self._release(msg.stream, rest):
                    return
                self._end_stream(msg, published.pop(msg.stream), latency.pop(msg.stream))
                continue
            assert msg.batch is not None
            made = make_records(msg.batch, masked, info.labels, cfg.topk, info.name, info.precision)
            for stream, seq, record in made:
                try:
                    ready = orders[stream].add(seq, record)
                except ValueError:
                    self.stats["duplicates"] += 1
                    log.warning("stream %r: frame %d arrived twice; dropped the copy", stream, seq)
                    continue
                if not self._release(stream, ready):
                    return
            if self._file is not None:
                self._file.flush()  # once a message: a reader sees results as they go out
        self._forward_status()
        if self._mqtt is not None:
            self._mqtt.flush()  # bounded; what is left is counted as dropped
            self.stats.update(self._mqtt.stats())
        self.complete = tracker.done
        self.tick(force=True)

    def _release(self, stream: str, records: list[dict[str, Any]]) -> bool:
        """Publish records of `stream` now in order; False if stopped while blocked."""
        for record in records:
            if not self._emit(record):
                return False
            self._published[stream] += 1
            LatencyHistogram.observe(
                self._latency[stream], record["publish_ts"] - record["capture_ts"]
            )
            self.stats["results"] += 1
        return True

    def _end_stream(self, msg: messages.Message, count: int, latency: dict[str, Any]) -> None:
        """After a stream's last result: tell the supervisor (and the sink) it is complete."""
        self._forward_status()  # its end_of_stream event, sent by capture before the EOS
        self.eos_seen(msg, published=count, latency=latency)
        if self._sink is not None:
            report = {**msg.meta, "stream_id": msg.stream, "published": count}
            parts = [b"", messages.SINK_END, json.dumps(report).encode()]
            send(self._sink, parts, self.should_stop)

    def _forward_status(self) -> None:
        """Publish every status event waiting on the status link (never blocks)."""
        if self._status is None:
            return
        while True:
            msg, problem = receive_message(self._status, 0)
            if msg is None:
                if problem:
                    self.reject(problem)
                    continue
                return
            record = msg.meta.get("status")
            if msg.kind != messages.STATUS or not isinstance(record, dict):
                self.reject(f"unexpected {msg.kind} message on the status link")
                continue
            self._last_status[msg.stream] = record
            self._emit_status(msg.stream, record)

    def _emit_status(self, stream: str, record: dict[str, Any]) -> None:
        self.stats["status"] += 1
        data = messages.dump_result(record)
        topic = messages.status_topic(stream).encode()
        if self._pub is not None:
            try:
                send_parts(self._pub, [topic, data], NOBLOCK)
            except zmq.Again:
                self.stats["pub_dropped"] += 1
        if self._mqtt is not None:
            self._mqtt.publish_status(stream, data)
        if self._sink is not None:
            send(self._sink, [topic, data], self.should_stop)

    def _workers_event(self, msg: messages.Message) -> None:
        """Infer's word on the remote workers, as a status event of every source still running,
        with that source's counters as of its last event."""
        event, workers = msg.meta.get("event"), msg.meta.get("workers")
        if event not in ("waiting_for_workers", "workers_available") or not isinstance(
            workers, int
        ):
            self.reject(f"status from infer: bad event {event!r}")
            return
        self._forward_status()  # the sources' own events first
        now = time.time()
        for stream in self._published:  # the streams that have not ended
            last = self._last_status.get(stream, {})
            record = messages.status_record(
                stream,
                self.config.sources[stream],
                event,
                now,
                frames=int(last.get("frames", 0)),
                sent=int(last.get("sent", 0)),
                dropped=int(last.get("dropped", 0)),
                workers=workers,
            )
            self._emit_status(stream, record)

    def _emit(self, record: dict[str, Any]) -> bool:
        data = messages.dump_result(record)
        topic = record["stream_id"].encode()
        if self._pub is not None:
            try:
                send_parts(self._pub, [topic, data], NOBLOCK)
            except zmq.Again:
                self.stats["pub_dropped"] += 1
        if self._file is not None:
            self._file.write(data + b"\n")
        if self._mqtt is not None:
            self._mqtt.publish_result(record["stream_id"], data)
        if self._sink is not None:
            return send(self._sink, [topic, data], self.should_stop)
        return True

    def _drain_subscriptions(self) -> int:
        """Read pending (un)subscription messages from XPUB; returns new subscriptions."""
        if self._pub is None:
            return 0
        new = 0
        while True:
            try:
                event = self._pub.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                new += 1
        self.stats["subscriptions"] = self.stats.get("subscriptions", 0) + new
        return new

    def _wait_for_subscribers(self) -> None:
        want = self.config.wait_subscribers
        if not want or self._pub is None:
            return
        deadline = time.monotonic() + self.config.subscriber_timeout_s
        seen = 0
        while seen < want and not self.should_stop():
            self.stats["waiting_subscribers"] = want - seen
            self.tick()
            if time.monotonic() > deadline:
                log.warning(
                    "publish: only %d of %d subscriber(s) after %.0f s; going on",
                    seen,
                    want,
                    self.config.subscriber_timeout_s,
                )
                break
            if self._pub.poll(self.transport.io_timeout_ms, zmq.POLLIN):
                seen += self._drain_subscriptions()
        self.stats["subscriptions"] = seen
        self.stats["waiting_subscribers"] = 0

    def _secure_pub(self, endpoint: str, keys_dir: str) -> zmq.Socket:
        """The XPUB socket as a CURVE server, subscribers checked against `authorized/`."""
        from stream.remote.security import bind_curve_server

        sock = self.ctx.socket(zmq.XPUB)
        self._sockets.append(sock)
        sock.setsockopt(zmq.SNDHWM, PUB_HWM)
        sock.setsockopt(zmq.LINGER, 2000)
        self._auth = bind_curve_server(self.ctx, sock, endpoint, keys_dir)
        return sock

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._mqtt is not None:
            self._mqtt.close()
            self._mqtt = None
        if self._file is not None:
            self._file.close()
            self._file = None

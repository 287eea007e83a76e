"""What `ovstream run` (and `batch`) show on a terminal: the progress line and the summary."""

from __future__ import annotations

from typing import TextIO

from stream.ops.mqtt import parse_mqtt_url
from stream.pipeline import Pipeline, RunSummary

PROG = "ovstream"


class StatusLine:
    """One status line on stderr: rewritten in place on a terminal (at most every 0.5 s), a plain
    line every `every_s` seconds on a pipe or in a log."""

    def __init__(self, out: TextIO, enabled: bool, every_s: float = 5.0) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = out.isatty()
        self.every_s = every_s
        self.last = -1e9
        self.width = 0

    def due(self, now: float) -> bool:
        """Whether a line may be shown at `now` (seconds); if so, the clock starts again."""
        if not self.enabled or now - self.last < (0.5 if self.tty else self.every_s):
            return False
        self.last = now
        return True

    def show(self, line: str) -> None:
        if self.tty:
            self.out.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def clear(self) -> None:
        if self.enabled and self.tty and self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.out.flush()
            self.width = 0


class Progress(StatusLine):
    """Results and FPS per source, sources done, requests in flight."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        super().__init__(out, enabled)
        self.prev: dict[str, tuple[float, int]] = {}

    def __call__(self, pipeline: Pipeline) -> None:
        if not self.enabled:
            return
        snap = pipeline.snapshot()
        if not snap or not self.due(snap["elapsed_s"]):
            return
        now = snap["elapsed_s"]
        parts = []
        for sid, counts in snap["streams"].items():
            t0, n0 = self.prev.get(sid, (0.0, 0))
            fps = (counts["published"] - n0) / (now - t0) if now > t0 else 0.0
            self.prev[sid] = (now, counts["published"])
            text = f"{sid} {counts['published']} ({fps:.1f} fps"
            if counts.get("live"):
                text += f", {counts['dropped']} dropped"
                state = counts.get("state")
                if state and state != "connected":
                    text += f", {str(state).replace('_', ' ')}"
            parts.append(text + ")")
        if snap["total"] > pipeline.config.max_jobs:  # a pool of captures: how far along
            parts.insert(0, f"{snap['ended']}/{snap['total']} sources done")
        if snap.get("waiting_subscribers"):
            parts.insert(0, f"waiting for {snap['waiting_subscribers']} subscriber(s)")
        if snap.get("workers") is not None:
            parts.append(workers_text(snap["workers"], pipeline.config.local_infer))
        self.show(f"[{now:6.1f}s] " + " | ".join(parts) + f" | in flight {snap['in_flight']}")


def workers_text(workers: dict, local: bool) -> str:
    """`2 workers (1,200 done, 16 in flight, 8 re-sent)`, or that there is none to run frames."""
    connected = workers.get("connected", 0)
    if not connected and not local:
        return "no worker connected: waiting for one"
    per = workers.get("per_worker", {}).values()
    done = sum(w.get("frames", 0) for w in per)
    inflight = sum(w.get("inflight", 0) for w in per)
    return (
        f"{connected} worker(s) ({done} done, {inflight} in flight, "
        f"{workers.get('resent', 0)} re-sent)"
    )


def result_line(record: dict) -> str:
    """One line per result for a terminal: stream, frame, time, best class and score."""
    best = record["topk"][0]
    pts = "     -" if record.get("pts") is None else f"{record['pts']:6.2f}"
    return (
        f"{record['stream_id']} frame {record['frame_index']:5d} t={pts}s  "
        f"{best['label']} ({best['class_id']}) {best['score']:.3f}"
    )


def print_summary(summary: RunSummary, pipeline: Pipeline, out: TextIO) -> None:
    """Per-source frames, skipped and failures; one line for each problem."""
    requests = summary.stages.get("infer", {}).get("requests")
    on = f"{requests} infer requests on " if requests else "on "
    print(
        f"{PROG}: {summary.results} result(s) from {len(summary.sources)} source(s) in "
        f"{summary.seconds:.1f} s ({summary.fps:.1f} FPS), {on}{pipeline.config.device}",
        file=out,
    )
    workers = summary.stages.get("infer", {}).get("workers")
    if workers is not None:
        print(
            f"  workers: {workers.get('joined', 0)} joined, {workers.get('lost', 0)} lost,"
            f" {workers.get('resent', 0)} frame(s) re-sent, {workers.get('late', 0)} late"
            f" result(s) dropped, {workers.get('refused', 0)} refused (model),"
            f" {workers.get('unauthorized', 0)} refused (key)",
            file=out,
        )
    width = max(len(s.stream_id) for s in summary.sources)
    for s in summary.sources:
        state = "FAILED" if s.error else "stopped" if s.stopped else "ok"
        live = f"  {s.dropped:6d} dropped  {s.reconnects:3d} reconnects" if s.live else ""
        print(
            f"  {s.stream_id:<{width}}  {s.published:6d} results  {s.decoded:6d} decoded  "
            f"{s.skipped:4d} skipped{live}  {state}",
            file=out,
        )
    for s in summary.sources:
        if s.error:
            print(f"{PROG}: error: source {s.stream_id}: {s.error}", file=out)
        elif s.live and s.published == 0 and s.last_error:
            print(
                f"{PROG}: warning: source {s.stream_id}: no frames; last problem: {s.last_error}",
                file=out,
            )
        elif s.skipped:
            print(
                f"{PROG}: warning: source {s.stream_id}: {s.skipped} frame(s) skipped "
                f"(corrupt data), {s.published} classified",
                file=out,
            )
    if summary.rejected:
        print(f"{PROG}: warning: {summary.rejected} malformed message(s) rejected", file=out)
    pub_dropped = int(summary.stages.get("publish", {}).get("pub_dropped", 0))
    if pub_dropped:
        print(
            f"{PROG}: warning: {pub_dropped} message(s) not delivered to a subscriber too slow "
            f"for the PUB socket's high-water mark",
            file=out,
        )
    publish = summary.stages.get("publish", {})
    if pipeline.config.mqtt:
        target = parse_mqtt_url(pipeline.config.mqtt).masked
        dropped = int(publish.get("mqtt_dropped", 0))
        print(
            f"{PROG}: mqtt {target}: {int(publish.get('mqtt_published', 0))} message(s) sent, "
            f"{dropped} result(s) dropped (mqtt_dropped)",
            file=out,
        )
        if dropped:
            print(
                f"{PROG}: warning: {dropped} result(s) not sent to the MQTT broker "
                "(not connected, or too slow)",
                file=out,
            )
    if summary.interrupted and not summary.failure:
        print(f"{PROG}: interrupted: stopped reading, published everything in flight", file=out)

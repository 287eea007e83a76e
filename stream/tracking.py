"""What the supervisor knows about its stages and streams, and what follows from it.

`RunTracker` (the base of `Supervisor`) reads the stages' reports off the control link
(READY/STATS/ERROR/EOS_SEEN) and, for the Python iterator, the sink link (result records, status
events, each stream's end), and decides two things from them: which stage may leave, and which
file a capture pool worker reads next. It sends nothing itself: it returns the commands, and the
supervisor sends them.

End of stream, and how a stage leaves: every stage passes each stream's end of stream on and
reports EOS_SEEN for every one it receives. A stage whose streams have all ended sends its final
STATS and then waits; the supervisor `release`s it once the next stage downstream has reported
EOS_SEEN for every stream the stage sent (a capture: the streams it read; preprocess and infer:
all of them; publish: at once, or once the sink delivered every stream's end here). Since a
stream's messages travel in order over one link, its end of stream arriving downstream means
everything before it arrived too; so no stage exits while something it sent is still in a
socket buffer, whatever the transport does with a closing socket.

Sources: a live source has a capture process of its own. Files are read by a pool of at most
`jobs` capture workers, each asking for the next file (`next` on the command link) when it has
finished one; with no more files than `jobs`, each file has its own worker named after it. After
a stop, the files not yet started are handed out to be ended unread.
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import zmq

from stream.stages.base import Stage
from stream.wire import messages
from stream.wire.transport import receive

log = logging.getLogger(__name__)

STATUS_PREFIX = messages.STATUS_TOPIC_PREFIX.encode()
SKIP_BATCH = 500
"""After a stop, unread files are ended this many per assignment."""
CAPTURE_STAGES = ("capture[",)


@dataclass
class StageState:
    """What the supervisor knows about one stage process."""

    stage: Stage
    process: Any = None
    ready: bool = False
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    complete: bool = False
    released: bool = False
    exited_at: float | None = None
    judged: bool = False
    streams: set[str] = field(default_factory=set)
    """Streams this stage sends downstream (a capture: those it was given)."""
    eos_seen: set[str] = field(default_factory=set)
    """Streams whose end of stream reached this stage."""

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def is_capture(self) -> bool:
        return self.name.startswith(CAPTURE_STAGES)


class RunTracker:
    """The state of every stage and stream of a run, from the stages' reports."""

    def __init__(
        self,
        stages: list[Stage],
        collect: bool,
        streams: list[str] | None,
        files: list[dict[str, Any]] | None,
        downstream: dict[str, str] | None,
    ) -> None:
        self.states = {s.name: StageState(s) for s in stages}
        self.collect = collect
        self.streams = set(streams or [])
        """Every stream of the run."""
        self.files: collections.deque[dict[str, Any]] = collections.deque(files or [])
        """Files (`SourceSpec` fields) that pool workers have not taken yet."""
        self.downstream = downstream or {}
        """Stage name -> the stage that receives what it sends (captures -> preprocess...)."""
        self.source_errors: dict[str, str] = {}
        self.stream_reports: dict[str, dict[str, Any]] = {}
        """Per stream, once its end of stream reached publish: the capture's end-of-stream
        counters (decoded, skipped, error...) and `published`."""
        self.capture_ends: dict[str, dict[str, Any]] = {}
        """Per stream a pool worker has finished, its capture counters (sent with the worker's
        next request): what the stream's counters are until publish reports its end."""
        self.ended: list[tuple[str, dict[str, Any]]] = []
        """Streams whose end arrived on the sink after their last result (collect=True only),
        not yet taken by the caller."""
        self.sink_ended: set[str] = set()
        self.status_events: list[dict[str, Any]] = []
        """Status events of the sources that reached the sink (collect=True only), in order."""
        self.rejected_control = 0
        self._waiting_workers: collections.deque[str] = collections.deque()
        for state in self.states.values():
            source = getattr(state.stage, "config", None)
            spec = getattr(source, "source", None)
            if state.is_capture and spec is not None:
                state.streams.add(spec.stream_id)

    def _reject(self, what: str) -> None:
        self.rejected_control += 1
        log.warning("supervisor: rejected %s", what)

    # -- reports ----------------------------------------------------------------------------------

    def _drain_control(self, control: zmq.Socket) -> None:
        while True:
            parts = receive(control, 0)
            if parts is None:
                return
            try:
                msg = messages.decode(parts)
            except messages.MessageError as exc:
                self._reject(f"a malformed control message: {exc}")
                continue
            state = self.states.get(str(msg.meta.get("stage")))
            if state is None:
                self._reject(f"a control message from unknown stage {msg.meta.get('stage')!r}")
                continue
            if msg.kind == messages.READY:
                state.ready = True
            elif msg.kind == messages.STATS:
                state.stats = dict(msg.meta.get("stats") or {})
                if msg.meta.get("final"):
                    state.final = True
                    state.complete = bool(msg.meta.get("complete"))
            elif msg.kind == messages.EOS_SEEN:
                state.eos_seen.add(msg.stream)
                if state.name == "publish":
                    eos = msg.meta.get("eos")
                    report = dict(eos) if isinstance(eos, dict) else {}
                    report["published"] = int(msg.meta.get("published") or 0)
                    report["latency"] = msg.meta.get("latency")
                    self.capture_ends.pop(msg.stream, None)
                    self.stream_reports[msg.stream] = report
            elif msg.kind == messages.ERROR:
                text = str(msg.meta.get("message"))
                if msg.meta.get("source_error"):
                    self.source_errors[msg.stream] = text
                    log.info("source %s failed: %s", msg.stream, text)
                else:
                    state.error = text
            else:
                self._reject(f"an unexpected {msg.kind} message on the control link")

    def _drain_sink(self, sink: zmq.Socket, results: list[dict[str, Any]]) -> None:
        while True:
            parts = receive(sink, 0)
            if parts is None:
                return
            if len(parts) == 3 and bytes(parts[1].buffer) == messages.SINK_END:
                try:
                    report = json.loads(bytes(parts[2].buffer))
                    stream = str(report["stream_id"])
                except (ValueError, KeyError, TypeError):
                    self._reject("a malformed end of stream on the sink link")
                    continue
                self.sink_ended.add(stream)
                self.ended.append((stream, report))
            elif len(parts) == 2 and bytes(parts[0].buffer).startswith(STATUS_PREFIX):
                try:
                    self.status_events.append(json.loads(bytes(parts[1].buffer)))
                except ValueError:
                    self._reject("a malformed status event on the sink link")
            elif len(parts) == 2:
                try:
                    record = json.loads(bytes(parts[1].buffer))
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    results.append(record)
                else:
                    self._reject("a result on the sink link that is no JSON object")
            else:
                self._reject("a malformed result on the sink link")

    def stats(self, name: str) -> dict[str, Any]:
        state = self.states.get(name)
        return dict(state.stats) if state else {}

    def capture_states(self) -> list[StageState]:
        return [s for s in self.states.values() if s.is_capture]

    # -- capture pool -----------------------------------------------------------------------------

    def _worker_waiting(self, name: str, ended: Any) -> None:
        """Pool worker `name` asked for its next file, with the counters of the one it `ended`."""
        if isinstance(ended, dict) and isinstance(ended.get("stream"), str):
            self.capture_ends[ended["stream"]] = ended
        self._waiting_workers.append(name)

    def _assignments(self, stopping: bool) -> list[tuple[str, dict[str, Any]]]:
        """(worker, `assign` arguments): each waiting pool worker's next file (after a stop:
        files to end unread)."""
        out = []
        while self._waiting_workers:
            name = self._waiting_workers.popleft()
            state = self.states[name]
            if stopping and self.files:
                count = min(SKIP_BATCH, len(self.files))
                skip = [self.files.popleft()["stream_id"] for _ in range(count)]
                state.streams.update(skip)
                out.append((name, {"source": None, "skip": skip}))
            elif self.files and not stopping:
                source = self.files.popleft()
                state.streams.add(source["stream_id"])
                out.append((name, {"source": source, "skip": []}))
            else:
                out.append((name, {"source": None, "skip": []}))
        return out

    # -- release ----------------------------------------------------------------------------------

    def _releases(self) -> list[str]:
        """Every stage, now marked released, whose streams have all ended and been confirmed
        downstream."""
        out = []
        for state in self.states.values():
            if state.released or not state.final or state.process is None:
                continue
            if state.complete and not self._confirmed(state):
                continue
            state.released = True
            out.append(state.name)
        return out

    def _confirmed(self, state: StageState) -> bool:
        """Has everything `state` sent arrived where it goes?"""
        if state.name == "publish":
            return not self.collect or self.sink_ended >= self.streams
        receiver = self.states.get(self.downstream.get(state.name, ""))
        if receiver is None:
            return True
        streams = state.streams if state.is_capture else self.streams
        return receiver.eos_seen >= streams

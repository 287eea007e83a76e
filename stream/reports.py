"""What a run reports: per source (`SourceReport`) and as a whole (`RunSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream.sources.spec import SourceSpec


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

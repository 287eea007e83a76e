"""A source: a stream id, where to read it, and its own settings; parsed from NAME=SOURCE."""

from __future__ import annotations

from dataclasses import dataclass

from stream.errors import UserError
from stream.sources.live_options import LiveOptions, default_stream_id, is_live_url
from stream.wire import messages

RESERVED_PREFIX = messages.STATUS_TOPIC_PREFIX.rstrip("/")


@dataclass(frozen=True)
class SourceSpec:
    """One input: a stream id, where to read it from, and per-source settings."""

    stream_id: str
    """Id of the stream: the PUB topic and `stream_id` of its results."""
    url: str
    """A file path, a stream URL (rtsp://, http(s)://, udp://, rtmp://...) or /dev/videoN."""
    live: bool | None = None
    """Read as a live source (reconnect, drop to keep up); None = decide from the URL."""
    fps: float | None = None
    """Frames per second to classify for this source; None = the pipeline's setting."""
    options: LiveOptions | None = None
    """Transport, timeouts and backoff of a live source; None = the pipeline's defaults."""

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """`NAME=SOURCE` or just `SOURCE` (the id is then the file stem or the URL's last
        path segment)."""
        name, sep, rest = text.partition("=")
        if sep and name and "/" not in name and ":" not in name and rest:
            return cls(name, rest)
        return cls(default_stream_id(text.split("?", 1)[0].rstrip("/")), text)

    @property
    def is_live(self) -> bool:
        return is_live_url(self.url) if self.live is None else self.live

    @property
    def masked_url(self) -> str:
        """The URL with its password replaced by ***, for anything shown or logged."""
        return messages.mask_credentials(self.url)


def parse_sources(texts: list[str | SourceSpec]) -> list[SourceSpec]:
    """Sources with unique stream ids; duplicates are a UserError naming the fix."""
    if not texts:
        raise UserError("no sources given")
    specs = [t if isinstance(t, SourceSpec) else SourceSpec.parse(t) for t in texts]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.stream_id.startswith(RESERVED_PREFIX):
            raise UserError(
                f"stream id {spec.stream_id!r} starts with {RESERVED_PREFIX!r}, which is reserved "
                f"for status events; name the source with NAME=SOURCE"
            )
        if spec.stream_id in seen:
            raise UserError(
                f"two sources would have the stream id {spec.stream_id!r} "
                f"({seen[spec.stream_id]}, {spec.masked_url}); name them with NAME=SOURCE"
            )
        seen[spec.stream_id] = spec.masked_url
    return specs

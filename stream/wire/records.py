"""The public records: what leaves the pipeline for other programs.

A result is `[stream_id, result JSON]` on the PUB socket and one JSON object per line in the JSON
Lines file, described by `stream/schemas/result.schema.json`; a source's status event goes out
under `_status/<stream_id>`, described by `stream/schemas/status.schema.json`. Sources are
masked (`mask_credentials`) before anything leaves. The format between stages is
stream/wire/messages.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

RESULT_VERSION = 1
"""Version of the public result record (`v` in result.schema.json)."""
SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "result.schema.json"
STATUS_VERSION = 1
"""Version of the public status event (`v` in status.schema.json)."""
STATUS_SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "status.schema.json"
STATUS_TOPIC_PREFIX = "_status/"
"""Status events go out on the PUB socket under `_status/<stream_id>`; results under the id."""
STATUS_EVENTS = (
    "connecting",
    "connected",
    "disconnected",
    "reconnect_scheduled",
    "end_of_stream",
    "error",
    "waiting_for_workers",
    "workers_available",
)


def mask_credentials(source: str) -> str:
    """`rtsp://user:secret@cam/x` -> `rtsp://user:***@cam/x`; paths pass through unchanged."""
    try:
        parts = urlsplit(source)
    except ValueError:
        return source
    if not parts.scheme or "@" not in parts.netloc:
        return source
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    return urlunsplit(parts._replace(netloc=masked))


def result_record(
    stream: str,
    source: str,
    meta: dict[str, Any],
    topk: list[dict[str, Any]],
    model: str,
    precision: str,
    publish_ts: float,
) -> dict[str, Any]:
    """The public result of one frame, as described by result.schema.json.

    `meta`: frame_index, pts and capture_ts; `source` is masked here."""
    return record_fields(
        stream,
        mask_credentials(source),
        int(meta["frame_index"]),
        None if meta["pts"] is None else float(meta["pts"]),
        float(meta["capture_ts"]),
        topk,
        model,
        precision,
        publish_ts,
    )


def record_fields(
    stream: str,
    masked_source: str,
    frame_index: int,
    pts: float | None,
    capture_ts: float,
    topk: list[dict[str, Any]],
    model: str,
    precision: str,
    publish_ts: float,
) -> dict[str, Any]:
    """`result_record` for a source already masked (publish masks each source once)."""
    return {
        "v": RESULT_VERSION,
        "stream_id": stream,
        "source": masked_source,
        "frame_index": frame_index,
        "pts": None if pts is None else round(pts, 6),
        "capture_ts": round(capture_ts, 6),
        "publish_ts": round(publish_ts, 6),
        "latency_ms": round((publish_ts - capture_ts) * 1000.0, 3),
        "model": model,
        "precision": precision,
        "topk": topk,
    }


def status_topic(stream: str) -> str:
    """The PUB topic of a stream's status events."""
    return STATUS_TOPIC_PREFIX + stream


def status_record(stream: str, source: str, event: str, ts: float, **fields: Any) -> dict[str, Any]:
    """The public status event of a source, as described by status.schema.json.

    `fields`: frames, sent, dropped (always), and attempt, reason, delay_s, elapsed_ms,
    stopped where the event has them; None values are left out.
    """
    if event not in STATUS_EVENTS:
        raise ValueError(f"unknown status event {event!r}")
    record: dict[str, Any] = {
        "v": STATUS_VERSION,
        "stream_id": stream,
        "source": mask_credentials(source),
        "event": event,
        "ts": round(ts, 6),
    }
    record.update({k: v for k, v in fields.items() if v is not None})
    return record


def load_status_schema() -> dict[str, Any]:
    """The published JSON Schema of a status event."""
    return json.loads(STATUS_SCHEMA_PATH.read_text())


def dump_result(record: dict[str, Any]) -> bytes:
    """One result as compact UTF-8 JSON (the PUB payload and the JSON Lines line)."""
    return orjson.dumps(record)


def load_schema() -> dict[str, Any]:
    """The published JSON Schema of a result record."""
    return json.loads(SCHEMA_PATH.read_text())

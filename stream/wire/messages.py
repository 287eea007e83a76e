"""The wire format between stages: multipart `[topic, header JSON, payload...]`.

Every message between pipeline processes goes through `encode` and `decode`. The header is a JSON
object with the wire version `v`, the message `kind`, the stream id, a per-stream sequence number,
timestamps and, for each payload part, its dtype and shape. Payloads are raw array buffers, sent
without copies and received as zero-copy numpy views. Nothing that comes off a socket is
unpickled; a message that does not match this format raises `MessageError`, which receivers count
and log, and never lets it crash a stage.

Results leave the pipeline in a different, public form: `[stream_id, result JSON]` on the PUB
socket, one JSON object per line in the JSON Lines file, both described by
`stream/schemas/result.schema.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

WIRE_VERSION = 1
"""Version of the internal header format; receivers reject any other."""
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
)

# Data kinds flow downstream between stages; control kinds go from a stage to the supervisor.
FRAME = "frame"  # a BGR frame (meta["prepared"]: the model input already), capture -> preprocess
TENSOR = "tensor"  # the model input, preprocess -> infer
LOGITS = "logits"  # raw model output, infer -> publish
EOS = "eos"  # end of one stream; `count` = number of frames sent in it
RESULT = "result"  # a finished result record, publish -> an in-process consumer (Python API)
READY = "ready"  # a stage opened its resources
STATS = "stats"  # a stage's counters (periodic, and final when it exits)
ERROR = "error"  # a fatal problem in a stage, or a failed source (with `stream`)
STATUS = "status"  # a source status event (meta["status"]: the public record), capture -> publish
EOS_SEEN = "eos_seen"  # a stage received a stream's end of stream (meta: that EOS's), -> supervisor
COMMAND = "command"  # supervisor <-> stage on the command link (meta["command"]: one of COMMANDS)
KINDS = (FRAME, TENSOR, LOGITS, EOS, RESULT, READY, STATS, ERROR, STATUS, EOS_SEEN, COMMAND)
DATA_KINDS = (FRAME, TENSOR, LOGITS)

SINK_END = b"end"
"""On the sink link (publish -> the Python API), `[b"", SINK_END, report JSON]` follows the last
result of a stream; results are `[stream_id, JSON]` and status events `[_status/id, JSON]`."""

# Commands on the command link. Stage -> supervisor: `hello` (its route), `next` (a capture
# worker wants its next source). Supervisor -> stage: `stop` (captures: stop reading, end your
# streams), `release` (everything you sent has been confirmed downstream: you may exit), `abort`
# (leave now), `assign` (meta["source"]: a file to read, or none left; meta["skip"]: stream ids
# to end at once, unread, after a stop).
COMMANDS = ("hello", "next", "stop", "release", "abort", "assign")

DTYPES = ("uint8", "float32", "float16", "int32", "int64")
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMS = 8


class MessageError(ValueError):
    """A message that does not follow the wire format."""


@dataclass
class Message:
    """One decoded message: the header fields plus numpy views of the payload parts."""

    kind: str
    """One of KINDS."""
    stream: str
    """Stream id (for control messages: the sending stage's name)."""
    seq: int = 0
    """Per-stream sequence number of data messages: 0, 1, 2... in capture order."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The other header fields: frame_index, pts, capture_ts, counters..."""
    arrays: list[np.ndarray] = field(default_factory=list)
    """Payload parts, as read-only numpy views of the received buffers."""


def encode(
    kind: str,
    stream: str,
    seq: int = 0,
    meta: dict[str, Any] | None = None,
    arrays: tuple[np.ndarray, ...] | list[np.ndarray] = (),
) -> list[Any]:
    """The multipart frames of one message; arrays go out as buffers (send with copy=False)."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    header: dict[str, Any] = {"v": WIRE_VERSION, "kind": kind, "stream": stream, "seq": int(seq)}
    if meta:
        header.update(meta)
    parts: list[Any] = []
    specs = []
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in DTYPES:
            raise ValueError(f"dtype {arr.dtype} cannot go on the wire; allowed: {DTYPES}")
        specs.append({"dtype": arr.dtype.name, "shape": list(arr.shape)})
        parts.append(memoryview(arr).cast("B"))
    header["arrays"] = specs
    return [stream.encode(), json.dumps(header, separators=(",", ":")).encode(), *parts]


def _buffer(part: Any) -> memoryview:
    """The bytes of a received part (zmq.Frame with copy=False, or bytes)."""
    buf = getattr(part, "buffer", part)
    return memoryview(buf)


def _require(header: dict[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    if key not in header:
        raise MessageError(f"header has no {key!r}")
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise MessageError(f"header field {key!r} has the wrong type ({type(value).__name__})")
    return value


def decode(parts: list[Any]) -> Message:
    """Check and decode multipart frames; raises MessageError on anything malformed."""
    if len(parts) < 2:
        raise MessageError(f"expected [topic, header, payload...], got {len(parts)} part(s)")
    topic = bytes(_buffer(parts[0]))
    raw = _buffer(parts[1])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise MessageError(f"header too large ({raw.nbytes} bytes)")
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MessageError("header is not a JSON object")
    version = header.get("v")
    if version != WIRE_VERSION:
        raise MessageError(f"wire version {version!r}, expected {WIRE_VERSION}")
    kind = _require(header, "kind", str)
    if kind not in KINDS:
        raise MessageError(f"unknown kind {kind!r}")
    stream = _require(header, "stream", str)
    if topic != stream.encode():
        raise MessageError(f"topic {topic!r} does not match stream {stream!r}")
    seq = _require(header, "seq", int)
    if seq < 0:
        raise MessageError(f"negative sequence number {seq}")
    specs = _require(header, "arrays", list)
    if len(specs) != len(parts) - 2:
        raise MessageError(f"header announces {len(specs)} payload(s), got {len(parts) - 2}")
    arrays = []
    for spec, part in zip(specs, parts[2:], strict=True):
        arrays.append(_array(spec, _buffer(part)))
    if "capture_ts" in header and not _is_number(header["capture_ts"]):
        raise MessageError("header field 'capture_ts' is not a finite number")
    if "pts" in header and header["pts"] is not None and not _is_number(header["pts"]):
        raise MessageError("header field 'pts' is neither a finite number nor null")
    meta = {k: v for k, v in header.items() if k not in ("v", "kind", "stream", "seq", "arrays")}
    if kind in DATA_KINDS:
        for key in ("frame_index", "pts", "capture_ts"):
            if key not in meta:
                raise MessageError(f"{kind} message has no {key!r}")
        if len(arrays) != 1:
            raise MessageError(f"{kind} message must carry exactly one array, got {len(arrays)}")
    if kind == EOS:
        _require(header, "count", int)
    return Message(kind=kind, stream=stream, seq=seq, meta=meta, arrays=arrays)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _array(spec: Any, buf: memoryview) -> np.ndarray:
    if not isinstance(spec, dict):
        raise MessageError("array spec is not an object")
    dtype, shape = spec.get("dtype"), spec.get("shape")
    if dtype not in DTYPES:
        raise MessageError(f"dtype {dtype!r} not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise MessageError(f"bad shape {shape!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if buf.nbytes != expected:
        raise MessageError(f"payload has {buf.nbytes} bytes, {dtype}{shape} needs {expected}")
    return np.frombuffer(buf.cast("B"), dtype=dtype).reshape(shape)


# ---------------------------------------------------------------------------- results (public)


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
    """The public result of one frame, as described by result.schema.json."""
    capture_ts = float(meta["capture_ts"])
    return {
        "v": RESULT_VERSION,
        "stream_id": stream,
        "source": mask_credentials(source),
        "frame_index": int(meta["frame_index"]),
        "pts": None if meta["pts"] is None else round(float(meta["pts"]), 6),
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
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def load_schema() -> dict[str, Any]:
    """The published JSON Schema of a result record."""
    return json.loads(SCHEMA_PATH.read_text())

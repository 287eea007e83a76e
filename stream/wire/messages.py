"""The wire format between stages: multipart `[topic, header JSON, payload...]`.

Every message between pipeline processes goes through `encode`/`encode_batch` and `decode`. The
header is a JSON object with the wire version `v`, the message `kind`, the stream id, a
per-stream sequence number and, for each payload part, its dtype and shape. Payloads are raw
array buffers, sent without copies and received as zero-copy numpy views. Nothing that comes off a
socket is unpickled; a message that does not match this format raises `MessageError`, which
receivers count and log, and never lets it crash a stage.

Data messages (FRAME, TENSOR, LOGITS) are batches (wire version 2): one message carries N >= 1
frames, of any streams, as three payload parts, so a stage hands on whatever is waiting as one
message and infer runs it as one request, and nothing per frame is JSON:

    [b"", header, index, times, data]
    header  {"v": 2, "kind": ..., "stream": "", "seq": 0, "streams": [stream ids], "arrays": [...]}
    index   int64   [N, 3]  stream number (into "streams"), per-stream sequence, source frame index
    times   float64 [N, 2]  pts in seconds (NaN: none), capture time (Unix seconds)
    data    [N, ...]        the frames or the logits (f32 [N, classes])

Frames are the model's input in the run's frame format (`stream.geometry.Geometry.frame_shape`):
u8 [N, H*3/2, W, 1] for i420 (one I420 plane: Y, then U, then V), u8 [N, H, W, 3] for bgr.
Frames in shared memory (stream/wire/shm.py; capture -> preprocess -> infer): the header has
`"shared": {"pools": [pool names], "shape": [one frame's shape]}` and `data` is int64 [N, 2],
each frame's pool number (into "pools") and slot; the frames themselves stay in the capture's
pool.

Control messages (EOS, READY, STATS, ERROR, STATUS, EOS_SEEN, COMMAND) carry one stream's (or one
stage's) fields in the header: `[stream id, header, payload...]`. A stream's end of stream follows
its last frame on the same link, so its arrival means all of the stream arrived. Version 1 (one
frame per data message, its fields in the header) is gone; a version-1 message is rejected.

Results leave the pipeline in a different, public form (stream/wire/records.py):
`[stream_id, result JSON]` on the PUB socket, one JSON object per line in the JSON Lines file,
both described by `stream/schemas/result.schema.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream.wire.batch import Batch, Shared
from stream.wire.records import (  # noqa: F401  the public records, importable from here too
    RESULT_VERSION,
    SCHEMA_PATH,
    STATUS_EVENTS,
    STATUS_SCHEMA_PATH,
    STATUS_TOPIC_PREFIX,
    STATUS_VERSION,
    dump_result,
    load_schema,
    load_status_schema,
    mask_credentials,
    record_fields,
    result_record,
    status_record,
    status_topic,
)

WIRE_VERSION = 2
"""Version of the internal header format; receivers reject any other."""
# Data kinds flow downstream between stages; control kinds go from a stage to the supervisor.
FRAME = "frame"  # BGR frames (meta["prepared"]: the model input already), capture -> preprocess
TENSOR = "tensor"  # model inputs, preprocess -> infer
LOGITS = "logits"  # raw model outputs, infer -> publish
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
# to end at once, unread, after a stop), `stopping` (to infer: the run is being stopped; what
# cannot be run any more, with no worker left and no local inference, may be given up).
# Infer -> preprocess on the demand link: `credit` (meta["frames"]: how many more it can take).
COMMANDS = ("hello", "next", "stop", "release", "abort", "assign", "stopping", "credit")

DTYPES = ("uint8", "float32", "float16", "int32", "int64", "float64")
_DTYPE_NAMES = {np.dtype(name): name for name in DTYPES}  # dtype.name costs microseconds
_DTYPES = {name: np.dtype(name) for name in DTYPES}
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMS = 8
HEADER_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
"""What a header may hold beyond JSON's types: counters keyed by numbers, numpy scalars."""
MAX_BATCH_STREAMS = 4096
"""Most distinct streams one data message may name."""
SMALL_BATCH = 32
"""Batches up to this many frames are checked in plain Python, larger ones with numpy."""


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
    """The header's sequence field (an end of stream: its count; data messages: 0, their
    frames' sequence numbers are in `batch`)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The other header fields: count, counters, commands..."""
    arrays: list[np.ndarray] = field(default_factory=list)
    """Payload parts, as read-only numpy views of the received buffers."""
    batch: Batch | None = None
    """The frames of a data message (FRAME, TENSOR, LOGITS); None for control messages."""


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
        name = _DTYPE_NAMES.get(arr.dtype)
        if name is None:
            raise ValueError(f"dtype {arr.dtype} cannot go on the wire; allowed: {DTYPES}")
        specs.append({"dtype": name, "shape": list(arr.shape)})
        parts.append(memoryview(arr).cast("B"))
    header["arrays"] = specs
    return [stream.encode(), orjson.dumps(header, option=HEADER_OPTIONS), *parts]


def encode_credit(frames: int) -> list[Any]:
    """Infer -> preprocess on the demand link: it can take `frames` more frames."""
    return encode(COMMAND, "infer", 0, {"command": "credit", "frames": frames})


def encode_batch(kind: str, batch: Batch, meta: dict[str, Any] | None = None) -> list[Any]:
    """The multipart frames of one data message (send with copy=False)."""
    if kind not in DATA_KINDS:
        raise ValueError(f"{kind!r} is not a data kind")
    if not len(batch):
        raise ValueError("a data message carries at least one frame")
    header = {**(meta or {}), "streams": batch.streams}
    if batch.shared is not None:
        header["shared"] = {"pools": batch.shared.pools, "shape": list(batch.shared.shape)}
    return encode(kind, "", 0, header, [batch.index, batch.times, batch.data])


def _buffer(part: Any) -> memoryview:
    """The bytes of a received part (zmq.Frame with copy=False, or bytes)."""
    buf = getattr(part, "buffer", part)
    return memoryview(buf)


def _require(header: dict[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    value = header.get(key, _MISSING)
    if type(value) is types:  # the usual case, and never a bool for int
        return value
    if value is _MISSING:
        raise MessageError(f"header has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, types):
        raise MessageError(f"header field {key!r} has the wrong type ({type(value).__name__})")
    return value


_MISSING = object()


def decode(parts: list[Any]) -> Message:
    """Check and decode multipart frames; raises MessageError on anything malformed."""
    if len(parts) < 2:
        raise MessageError(f"expected [topic, header, payload...], got {len(parts)} part(s)")
    raw = _buffer(parts[1])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise MessageError(f"header too large ({raw.nbytes} bytes)")
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if type(header) is not dict:
        raise MessageError("header is not a JSON object")
    version = header.pop("v", None)
    if version != WIRE_VERSION:
        raise MessageError(f"wire version {version!r}, expected {WIRE_VERSION}")
    kind = _require(header, "kind", str)
    if kind not in KINDS:
        raise MessageError(f"unknown kind {kind!r}")
    stream = _require(header, "stream", str)
    topic = bytes(_buffer(parts[0]))
    if topic != stream.encode():
        raise MessageError(f"topic {topic!r} does not match stream {stream!r}")
    seq = _require(header, "seq", int)
    if seq < 0:
        raise MessageError(f"negative sequence number {seq}")
    specs = _require(header, "arrays", list)
    if len(specs) != len(parts) - 2:
        raise MessageError(f"header announces {len(specs)} payload(s), got {len(parts) - 2}")
    arrays = [_array(spec, _buffer(part)) for spec, part in zip(specs, parts[2:], strict=True)]
    del header["kind"], header["stream"], header["seq"], header["arrays"]
    meta = header  # what is left: the other fields
    batch = _batch(kind, meta, arrays) if kind in DATA_KINDS else None
    if kind == EOS:
        _require(meta, "count", int)
    return Message(kind=kind, stream=stream, seq=seq, meta=meta, arrays=arrays, batch=batch)


def _batch(kind: str, meta: dict[str, Any], arrays: list[np.ndarray]) -> Batch:
    """Check the parts of a data message and make its Batch."""
    streams = meta.pop("streams", None)
    if not _distinct_names(streams):
        raise MessageError(f"{kind} message: 'streams' must be a list of distinct stream ids")
    if len(arrays) != 3:
        raise MessageError(f"{kind} message must carry index, times and data, got {len(arrays)}")
    index, times, data = arrays
    n = index.shape[0] if index.ndim == 2 else -1
    if index.dtype != np.int64 or index.shape != (n, 3) or n < 1:
        raise MessageError(f"{kind} message: index must be int64 [N>=1, 3], got {index.shape}")
    if times.dtype != np.float64 or times.shape != (n, 2):
        raise MessageError(f"{kind} message: times must be float64 [{n}, 2], got {times.shape}")
    if data.ndim < 1 or data.shape[0] != n:
        raise MessageError(f"{kind} message: data must hold {n} frames, got {data.shape}")
    shared = _shared(kind, meta.pop("shared", None), data)
    if n <= SMALL_BATCH:  # plain Python: a numpy reduction of a tiny array costs more
        numbers = [row[0] for row in index.tolist() if min(row) >= 0]
        lowest, highest = (0, max(numbers)) if len(numbers) == n else (-1, 0)
        distinct = len(set(numbers))
        stamps = times.tolist()
        bad_capture = not all(math.isfinite(c) for _, c in stamps)
        bad_pts = any(math.isinf(p) for p, _ in stamps)
    else:
        lowest, highest = int(index.min()), int(index[:, 0].max())
        distinct = len(np.unique(index[:, 0]))
        bad_capture = not np.isfinite(times[:, 1]).all()
        bad_pts = bool(np.isinf(times[:, 0]).any())
    if lowest < 0:
        raise MessageError(f"{kind} message: a negative stream number, sequence or frame index")
    if highest >= len(streams):
        raise MessageError(f"{kind} message: a stream number outside 0..{len(streams) - 1}")
    if distinct != len(streams):
        raise MessageError(f"{kind} message names a stream that has no frame in it")
    if bad_capture:
        raise MessageError(f"{kind} message: a capture time that is not a finite number")
    if bad_pts:
        raise MessageError(f"{kind} message: an infinite pts")
    return Batch(streams, index, times, data, shared)


def is_count(value: Any, least: int = 1) -> bool:
    """An int (not a bool) of at least `least`: a count in a command's fields."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _distinct_names(value: Any) -> bool:
    """A list of 1 to MAX_BATCH_STREAMS distinct strings (stream ids, pool names)."""
    return (
        isinstance(value, list)
        and 0 < len(value) <= MAX_BATCH_STREAMS
        and all(isinstance(v, str) for v in value)
        and len(set(value)) == len(value)
    )


def _shared(kind: str, spec: Any, refs: np.ndarray) -> Shared | None:
    """Check where a data message says its frames are in shared memory (None: in the message)."""
    if spec is None:
        return None
    if kind == LOGITS or not isinstance(spec, dict):
        raise MessageError(f"{kind} message: bad 'shared' field")
    pools, shape = spec.get("pools"), spec.get("shape")
    if not _distinct_names(pools):
        raise MessageError(f"{kind} message: 'shared' must name distinct pools")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise MessageError(f"{kind} message: bad shared frame shape {shape!r}")
    if refs.dtype != np.int64 or refs.shape != (refs.shape[0], 2):
        raise MessageError(f"{kind} message: shared frames need int64 [N, 2] slots")
    if refs.size and (refs.min() < 0 or refs[:, 0].max() >= len(pools)):
        raise MessageError(f"{kind} message: a pool number or slot out of range")
    return Shared(pools, tuple(shape))


_SPECS: dict[tuple[Any, ...], tuple[np.dtype, tuple[int, ...], int]] = {}
"""Array specs already checked: `_spec_key` -> (dtype, shape, bytes). A stage sees a handful
(one per batch size), so checking each once saves most of a decode's time; bounded by
MAX_SPECS, so a peer sending ever new shapes cannot grow it."""
MAX_SPECS = 1024


def _array(spec: Any, buf: memoryview) -> np.ndarray:
    """The payload part `buf` as an array of `spec` ({"dtype", "shape"}), without a copy."""
    try:
        known = _SPECS.get(_spec_key(spec["dtype"], spec["shape"]))
    except (TypeError, KeyError):  # not an object, a shape that is not a list of numbers...
        known = None
    if known is None:
        known = _check_spec(spec)
    dtype, shape, expected = known
    if buf.nbytes != expected:
        raise MessageError(
            f"payload has {buf.nbytes} bytes, {spec['dtype']}{list(shape)} needs {expected}"
        )
    return np.ndarray(shape, dtype, buf)


def _spec_key(name: Any, shape: Any) -> tuple[Any, ...]:
    """The table's key of a spec: its dims' types too, as 1.0 and True equal and hash as 1."""
    return (name, tuple(shape), tuple(map(type, shape)))


def _check_spec(spec: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """Check an array spec not seen before; remember it."""
    if not isinstance(spec, dict):
        raise MessageError("array spec is not an object")
    name, shape = spec.get("dtype"), spec.get("shape")
    dtype = _DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise MessageError(f"dtype {name!r} not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise MessageError(f"bad shape {shape!r}")
    known = (dtype, tuple(shape), math.prod(shape) * dtype.itemsize)
    if len(_SPECS) >= MAX_SPECS:
        _SPECS.clear()
    _SPECS[_spec_key(name, shape)] = known
    return known

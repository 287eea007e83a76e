"""Print the results a running pipeline publishes, one JSON object per line.

    ovstream subscribe tcp://127.0.0.1:5556 --topic cam1 | jq .topk[0].label
    ovstream subscribe --status-only          # connecting, connected, disconnected... events

Status events (stream/schemas/status.schema.json) are published under `_status/<stream id>`;
`--status` prints them among the results, `--status-only` prints nothing else.

`--until-eos` exits 0 when the run is over: the publisher went away after every stream seen had
its `end_of_stream` event (exit 1 if it went away before). Counting a stream's results against
the event's `sent` is not enough: a stream whose first message has not arrived yet (its capture
still starting) would be missed.
Each line is flushed as it is written, so a pipe (`| jq --unbuffered ...`) loses nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import zmq

from stream.errors import UserError
from stream.stages.publish import DEFAULT_PUBLISH
from stream.wire.records import STATUS_TOPIC_PREFIX
from stream.wire.transport import check_endpoint

log = logging.getLogger(__name__)

PROG = "ovstream"
EVENTS = ("results", "status", "all")


class SubscribeTimeout(Exception):
    """No result arrived within the timeout."""


class PublisherGone(Exception):
    """`until_eos`: the publisher closed before every stream it published had ended."""


def subscribe(
    endpoint: str = DEFAULT_PUBLISH,
    topic: str | None = None,
    timeout_s: float | None = None,
    raw: bool = False,
    events: str = "results",
    until_eos: bool = False,
    keys: str | None = None,
) -> Iterator[Any]:
    """Yield result records (dicts, or the JSON bytes with `raw`) from a pipeline's PUB socket.

    `topic` keeps one stream id (exactly, not as a prefix). `events`: `results` (default),
    `status` (status events only) or `all` (both, as they arrive). `timeout_s` raises
    SubscribeTimeout when that long passes without a message; None waits for ever. Malformed
    messages are skipped with a warning. `until_eos`: return once every stream seen has ended
    (see `EndTracker`); status events are then received (not yielded unless `events` asks).
    `keys`: a folder with the head's `server.key` and a client's `.key_secret` (`ovstream keys`),
    for a run with `--secure-publish`.
    """
    check_endpoint(endpoint)
    if events not in EVENTS:
        raise UserError(f"events must be one of {EVENTS}, got {events!r}")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys:
        from stream.remote.security import curve_client, load_client_keys

        curve_client(sock, load_client_keys(keys))
    sock.setsockopt(zmq.RCVHWM, 100000)
    status_prefix = STATUS_TOPIC_PREFIX.encode()
    if events in ("results", "all"):
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode() if topic else b"")
    if events == "status" or (events == "all" and topic) or (until_eos and events == "results"):
        sock.setsockopt(zmq.SUBSCRIBE, status_prefix + (topic.encode() if topic else b""))
    # The publisher going away (the run is over) is seen on a monitor socket.
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED) if until_eos else None
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        ctx.term()
        raise UserError(f"cannot connect to {endpoint}: {exc.strerror}") from None
    ends = EndTracker()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    if monitor is not None:
        poller.register(monitor, zmq.POLLIN)
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:  # with until_eos: ends once the publisher is gone and all it sent is read
            wait_ms = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(poller.poll(min(wait_ms, 200)))
            if monitor is not None and monitor in ready:
                monitor.recv_multipart()
                ends.publisher_gone = True
                continue  # what it sent before it went is already queued on `sock`
            if sock not in ready:
                if ends.publisher_gone:  # everything it sent has been read
                    if ends.done:
                        return
                    raise PublisherGone("the publisher went away before every stream ended")
                if deadline is not None and time.monotonic() >= deadline:
                    raise SubscribeTimeout(f"no result within {timeout_s:g} s")
                continue
            parts = sock.recv_multipart()
            if len(parts) != 2:
                log.warning("skipped a message with %d parts (expected 2)", len(parts))
                continue
            is_status = parts[0].startswith(status_prefix)
            wanted = not (is_status and events == "results" or not is_status and events == "status")
            if not wanted and not until_eos:
                continue
            stream_id = parts[0][len(status_prefix) :] if is_status else parts[0]
            if topic is not None and stream_id != topic.encode():
                continue  # ZeroMQ filters by prefix; keep the exact stream id only
            try:
                record = json.loads(parts[1])
            except ValueError:
                log.warning("skipped a message that is not JSON")
                continue
            if not isinstance(record, dict) or record.get("stream_id") != stream_id.decode(
                "utf-8", "replace"
            ):
                log.warning("skipped a message that is not a result record or status event")
                continue
            if deadline is not None:
                deadline = time.monotonic() + timeout_s  # type: ignore[operator]
            ends.saw(record, is_status)
            if wanted:
                yield parts[1] if raw else record
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close()
        ctx.term()


class EndTracker:
    """Which streams a subscriber has seen, and whether all of them have ended.

    Done once the publisher went away (the run is over; what it sent before has been read) and
    every stream seen had its `end_of_stream` status event. Results are not counted against the
    event's `sent`: the event can arrive before the stream's last results, which take the longer
    path through the stages, and a stream not seen yet would be missed.
    """

    def __init__(self) -> None:
        self.results: dict[str, int] = {}
        self.expected: dict[str, int | None] = {}
        self.publisher_gone = False

    def saw(self, record: dict[str, Any], is_status: bool) -> None:
        stream = str(record.get("stream_id"))
        self.results.setdefault(stream, 0)
        if not is_status:
            self.results[stream] += 1
        elif record.get("event") == "end_of_stream":
            sent = record.get("sent")
            self.expected[stream] = sent if isinstance(sent, int) else None

    @property
    def done(self) -> bool:
        seen = set(self.results)
        return self.publisher_gone and bool(seen) and seen <= set(self.expected)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "endpoint",
        nargs="?",
        default=DEFAULT_PUBLISH,
        help=f"the pipeline's PUB endpoint (default {DEFAULT_PUBLISH})",
    )
    parser.add_argument("--topic", metavar="STREAM_ID", help="only this stream's results")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--status",
        dest="events",
        action="store_const",
        const="all",
        default="results",
        help="also print the sources' status events",
    )
    kind.add_argument(
        "--status-only",
        dest="events",
        action="store_const",
        const="status",
        help="print only status events (connecting, disconnected, ...)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up after S seconds without a result (exit 1)",
    )
    parser.add_argument(
        "--keys",
        metavar="DIR",
        help="CURVE keys (the head's server.key and a client .key_secret) for a run with "
        "--secure-publish",
    )
    parser.add_argument(
        "--until-eos",
        action="store_true",
        help="exit 0 once every stream seen has ended (all its results received)",
    )


def run(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise UserError(f"--count must be at least 1, got {args.count}")
    got = 0
    out = sys.stdout.buffer
    try:
        for data in subscribe(
            args.endpoint,
            args.topic,
            args.timeout,
            raw=True,
            events=args.events,
            until_eos=args.until_eos,
            keys=args.keys,
        ):
            out.write(data + b"\n")
            out.flush()
            got += 1
            if args.count is not None and got >= args.count:
                break
    except (SubscribeTimeout, PublisherGone) as exc:
        wanted = f" (got {got} of {args.count})" if args.count else f" (got {got})"
        print(f"{PROG}: error: {exc}{wanted}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 0
    return 0

"""A DEALER client for the CURVE tests, run as its own process (inside a network namespace).

    python -m tests.remote.peer --connect tcp://HOST:PORT [--keys DIR] [--attempts N]

Each attempt opens a fresh socket (CURVE client with the keys in DIR, plaintext without), sends
`ping N` and prints one JSON line: the handshake event the socket's monitor saw
(`HANDSHAKE_SUCCEEDED`, `HANDSHAKE_FAILED_AUTH`, `HANDSHAKE_FAILED_PROTOCOL`, or null when none
came within the timeout) and the reply, if one came.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from stream.remote.security import curve_client, load_client_keys

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def attempt(ctx: zmq.Context, endpoint: str, keys, index: int, timeout_s: float) -> dict:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        curve_client(sock, keys)
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    sock.connect(endpoint)
    sock.send(f"ping {index}".encode())
    deadline = time.monotonic() + timeout_s
    event = reply = None
    poller = zmq.Poller()
    poller.register(monitor, zmq.POLLIN)
    poller.register(sock, zmq.POLLIN)
    while time.monotonic() < deadline and reply is None:
        if event is not None and event != "HANDSHAKE_SUCCEEDED":
            break  # refused: no reply will come
        ready = dict(poller.poll(100))
        if monitor in ready:
            event = zmq.Event(recv_monitor_message(monitor)["event"]).name
        if sock in ready:
            reply = sock.recv().decode()
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)
    return {"attempt": index, "handshake": event, "reply": reply}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--keys")
    parser.add_argument("--name")
    parser.add_argument("--attempts", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    keys = load_client_keys(args.keys, args.name) if args.keys else None
    ctx = zmq.Context()
    try:
        for index in range(args.attempts):
            result = attempt(ctx, args.connect, keys, index, args.timeout)
            print(json.dumps(result), flush=True)
    finally:
        ctx.destroy(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The supervisor's end of the command link: a ROUTER that reaches each stage by its name.

Every stage connects a DEALER named after itself and says `hello`; only then does the ROUTER know
a route to it. So commands to a stage (assign, release, stop, stopping, abort) wait in an outbox
until its route is known, and until the stage can take them (a full queue); a command to a stage
that has left is dropped. What the commands mean is the supervisor's business, not this link's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import zmq

from stream.wire import messages
from stream.wire.transport import TransportConfig, open_socket


class CommandLink:
    """Receives the stages' commands (hello, next) and delivers the supervisor's to them."""

    def __init__(self, ctx: zmq.Context, endpoint: str, transport: TransportConfig) -> None:
        self.socket = open_socket(ctx, zmq.ROUTER, endpoint, True, transport, linger_ms=0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.routes: set[str] = set()
        """Stages known to have connected (they said hello or asked for work)."""
        self._outbox: list[tuple[str, dict[str, Any]]] = []

    def receive(self, reject: Callable[[str], None]) -> Iterator[tuple[str, messages.Message]]:
        """(stage name, message) of every well-formed command waiting; `reject(what)` for the
        rest."""
        while True:
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                reject(f"a command of {len(frames)} part(s)")
                continue
            name = frames[0].decode(errors="replace")
            try:
                msg = messages.decode(frames)
            except messages.MessageError as exc:
                reject(f"a malformed command from {name!r}: {exc}")
                continue
            yield name, msg

    def queue(self, name: str, command: str, **meta: Any) -> None:
        """Queue a command for a stage; `deliver` sends it once the stage has said hello."""
        self._outbox.append((name, {"command": command, **meta}))

    def deliver(self, gone: Callable[[str], bool]) -> None:
        """Send every queued command that can go now; drop those to stages that are `gone`."""
        kept = []
        for name, meta in self._outbox:
            if gone(name):
                continue  # nothing to tell it any more
            if name not in self.routes:
                kept.append((name, meta))
                continue
            header = messages.encode(messages.COMMAND, name, 0, meta)[1]
            try:
                self.socket.send_multipart([name.encode(), header], flags=zmq.NOBLOCK)
            except zmq.ZMQError:  # not connected (yet, or any more) or its queue is full
                kept.append((name, meta))
        self._outbox = kept

    def close(self) -> None:
        self.socket.close(linger=0)

"""Results and status events to an MQTT broker, from the publish stage (paho-mqtt).

Topics under the URL's prefix: `PREFIX/<stream_id>/result` (the result JSON, as on the PUB
socket), `PREFIX/<stream_id>/status` (status events) and `PREFIX/availability` (`online`, retained;
`offline` on a clean end, and as the broker-side last will otherwise).

paho's own thread does the network I/O and reconnects with backoff; `publish()` never blocks the
pipeline. A message is counted as dropped, never queued without bound, when there is no
connection, when `MAX_PENDING` messages are already waiting to be written (QoS 0) or
acknowledged (QoS 1), or when a connection drops with QoS 0 messages still unwritten. QoS 1
messages that were accepted are re-sent after a reconnect. (QoS 0 gives no acknowledgement: what
was written to a broker that then died is lost unseen.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from stream.errors import UserError
from stream.wire.records import mask_credentials

log = logging.getLogger(__name__)

DEFAULT_PORT = 1883
DEFAULT_PREFIX = "ovstream"
MAX_PENDING = 1000
"""Messages accepted but not yet written (QoS 0) or acknowledged (QoS 1); beyond: dropped."""
CONNECT_WAIT_S = 5.0
"""At start, how long to wait for the broker before going on (and reconnecting meanwhile)."""
FLUSH_WAIT_S = 5.0
"""At the end, how long to wait for pending messages to go out."""
BACKOFF_S = (0.5, 10.0)
"""paho's reconnect delay: from 0.5 s, doubling, up to 10 s."""
AUTH_FAILURES = {"Bad user name or password", "Not authorized"}


@dataclass(frozen=True)
class MqttTarget:
    """Where to publish, parsed from `mqtt://[user:pass@]HOST[:PORT]/PREFIX`."""

    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = None

    @property
    def masked(self) -> str:
        user = ""
        if self.username is not None:
            user = f"{self.username}:***@" if self.password is not None else f"{self.username}@"
        return f"mqtt://{user}{self.host}:{self.port}/{self.prefix}"

    def topic(self, stream_id: str, kind: str) -> str:
        return f"{self.prefix}/{topic_segment(stream_id)}/{kind}"

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"


def topic_segment(stream_id: str) -> str:
    """A stream id as one topic level: MQTT's wildcards and separator become `_`."""
    return stream_id.replace("/", "_").replace("+", "_").replace("#", "_")


def parse_mqtt_url(url: str) -> MqttTarget:
    """`mqtt://[user:pass@]HOST[:PORT][/PREFIX]` (default port 1883, prefix `ovstream`)."""
    masked = mask_credentials(url)
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UserError(f"not an MQTT URL: {masked!r} (bad port)") from None
    if parts.scheme != "mqtt" or not parts.hostname:
        raise UserError(f"expected mqtt://[user:pass@]HOST[:PORT]/PREFIX, got {masked!r}")
    prefix = parts.path.strip("/") or DEFAULT_PREFIX
    if any(c in prefix for c in "+#"):
        raise UserError(f"MQTT topic prefix {prefix!r} must not contain + or #")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttTarget(parts.hostname, port, prefix, user, password)


class MqttPublisher:
    """One connection to the broker for the publish stage; counters in `stats()`."""

    def __init__(self, target: MqttTarget, qos: int = 0, max_pending: int = MAX_PENDING):
        if qos not in (0, 1):
            raise UserError(f"MQTT QoS must be 0 or 1, got {qos}")
        self.target = target
        self.qos = qos
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._early: set[int] = set()  # acknowledged before `_send` recorded them
        self._closing = False
        self._connected = threading.Event()
        self._refused: str | None = None
        self.published = 0
        self.dropped = 0
        self.status_dropped = 0
        self.connects = 0
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ovstream-{os.getpid()}")
        if target.username is not None:
            client.username_pw_set(target.username, target.password)
        client.will_set(target.availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(*BACKOFF_S)
        client.max_queued_messages_set(max_pending)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, wait_s: float = CONNECT_WAIT_S) -> None:
        """Connect in paho's thread; wait up to `wait_s` for the broker. A refused login is a
        user error; an unreachable broker a warning (it keeps trying)."""
        try:
            self._client.connect_async(self.target.host, self.target.port, keepalive=15)
        except (OSError, ValueError) as exc:
            raise UserError(f"MQTT broker {self.target.masked}: {exc}") from None
        self._client.loop_start()
        deadline = time.monotonic() + wait_s
        while not self._connected.wait(0.05):
            if self._refused is not None:
                self.close(wait_s=0)
                raise UserError(f"MQTT broker {self.target.masked} refused us: {self._refused}")
            if time.monotonic() > deadline:
                log.warning(
                    "MQTT broker %s not reachable after %.0f s; results are dropped (counted) "
                    "until it is",
                    self.target.masked,
                    wait_s,
                )
                return

    def flush(self, wait_s: float = FLUSH_WAIT_S) -> None:
        """Wait (bounded) for pending messages to go out while connected; what is still pending
        then is counted as dropped."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self._connected.is_set():
            with self._lock:
                if not self._pending:
                    return
            time.sleep(0.01)
        with self._lock:
            self.dropped += len(self._pending)
            self._pending.clear()

    def close(self, wait_s: float = 1.0) -> None:
        """Say `offline` (retained), disconnect cleanly, stop paho's thread."""
        self._closing = True
        if self._connected.is_set():
            info = self._client.publish(self.target.availability, "offline", qos=1, retain=True)
            deadline = time.monotonic() + wait_s
            while not info.is_published() and time.monotonic() < deadline:
                time.sleep(0.01)
        self._client.disconnect()
        self._client.loop_stop()

    # -- publishing -----------------------------------------------------------------------------

    def publish_result(self, stream_id: str, data: bytes) -> bool:
        """Publish one result; False (and counted) if it was dropped."""
        if self._send(self.target.topic(stream_id, "result"), data):
            return True
        with self._lock:
            self.dropped += 1
        return False

    def publish_status(self, stream_id: str, data: bytes) -> bool:
        if self._send(self.target.topic(stream_id, "status"), data):
            return True
        with self._lock:
            self.status_dropped += 1
        return False

    def _send(self, topic: str, data: bytes) -> bool:
        # Only this (the stage's) thread publishes, so the bound holds without the lock, which
        # must not be held across paho's publish: paho calls on_publish holding its own lock.
        if not self._connected.is_set() or len(self._pending) >= self.max_pending:
            return False
        info = self._client.publish(topic, data, qos=self.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        with self._lock:
            if info.mid in self._early:  # already written (QoS 0) or acknowledged (QoS 1)
                self._early.discard(info.mid)
            else:
                self._pending.add(info.mid)
            self.published += 1
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "mqtt_published": self.published,
                "mqtt_dropped": self.dropped,
                "mqtt_status_dropped": self.status_dropped,
                "mqtt_pending": len(self._pending),
                "mqtt_connected": self._connected.is_set(),
                "mqtt_connects": self.connects,
            }

    # -- paho's thread --------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            text = str(reason)
            if text in AUTH_FAILURES and not self.connects:
                self._refused = text
            log.warning("MQTT broker %s refused the connection: %s", self.target.masked, text)
            return
        self.connects += 1
        client.publish(self.target.availability, "online", qos=1, retain=True)
        if self.connects > 1:
            log.warning("MQTT broker %s: connected again", self.target.masked)
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if self.qos == 0:  # paho discards QoS 0 packets not yet written
            with self._lock:
                self.dropped += len(self._pending)
                self._pending.clear()
        if was and not self._closing:
            log.warning(
                "MQTT broker %s: disconnected (%s); reconnecting", self.target.masked, reason
            )

    def _on_publish(self, _c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
            elif len(self._early) < self.max_pending:  # (availability messages end up here)
                self._early.add(mid)

"""`/metrics` (Prometheus text format) and `/healthz` of a running pipeline, from the main process.

`MetricsServer` serves the families of a collector (stream/ops/metrics_collectors.py: the
pipeline's, or a worker's) and a health check. It is a daemon thread of the main process; it only
reads the supervisor's state (whole-dict copies, which the GIL makes atomic), never changes it.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from stream.errors import UserError
from stream.ops.metrics_collectors import ExtraMetrics, PipelineCollector, alive
from stream.ops.metrics_collectors import WorkerCollector as WorkerCollector  # re-exported
from stream.stage_processes import stop_signals_blocked

if TYPE_CHECKING:
    from stream.pipeline import Pipeline

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (loopback) -> (host, port); port 0 = any free port."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or LOOPBACK
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise UserError(f"metrics address must be HOST:PORT, :PORT or PORT, got {text!r}")
    return host, number


def health(pipeline: Pipeline) -> tuple[bool, dict[str, Any]]:
    """(healthy, JSON body): healthy while every stage is alive (or left at the end) and no
    source has failed for good."""
    sup = pipeline.supervisor
    if sup is None:
        return True, {"status": "ok", "starting": True}
    if sup.failure:
        return False, {"status": "failing", "reason": sup.failure}
    for name, state in sup.states.items():
        if state.process is not None and not alive(state.process) and not state.released:
            return False, {"status": "failing", "reason": f"stage {name} is not running"}
    for sid, error in dict(sup.source_errors).items():
        return False, {"status": "failing", "reason": f"source {sid} failed: {error}"}
    return True, {"status": "ok"}


class MetricsServer:
    """`/metrics` and `/healthz` on HOST:PORT, served by a daemon thread until `close()`."""

    def __init__(
        self,
        pipeline: Pipeline | None,
        address: str,
        extra: ExtraMetrics | None = None,
        collector: Collector | None = None,
        healthz: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
    ):
        """For a pipeline, or (`collector`, `healthz`) for another process: a worker."""
        host, port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        assert pipeline is not None or (collector is not None and healthz is not None)
        self.registry.register(collector or PipelineCollector(pipeline, extra))
        registry = self.registry
        check_health = healthz or (lambda: health(pipeline))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, body = check_health()
                    self._answer(200 if ok else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._answer(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _answer(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("metrics: " + format, *args)

        server_class = ThreadingHTTPServer
        if ":" in host:  # an IPv6 address

            class server_class(ThreadingHTTPServer):  # type: ignore[no-redef]  # noqa: N801
                address_family = socket.AF_INET6

        try:
            self._server = server_class((host, port), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"metrics address {host}:{port} is in use") from None
            raise UserError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.name = "ovstream-metrics"
        with stop_signals_blocked():  # Ctrl-C is the main thread's (see stage_processes.py)
            self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

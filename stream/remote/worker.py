"""Run inference for a pipeline on another machine.

    ovstream worker --connect tcp://HEAD:PORT --model DIR [--keys DIR] [--device CPU]
                    [--requests N] [--threads N] [--name NAME] [--timeout S] [--once]

The head (`ovstream run ... --workers tcp://ADDR:PORT`) binds the endpoint; a worker connects, says
hello with its model's identity (name, precision, sha256 of model.xml and model.bin), and once
the head welcomes it compiles the model (THROUGHPUT hint, for requests of up to 4 frames and of
one, as the head does: stream/inference.py) and announces how many batches it runs at once. From
then on it receives batches of up to the head's --max-batch, one per free place, and sends each
one's outputs back. It outlives the head's runs: when the
head goes away (or forgets it) it says hello again until a head answers. A head that runs
another model refuses it, and the worker exits with one line (exit 2). Ctrl-C or SIGTERM: it
finishes what it holds, says goodbye and exits 0.

The protocol is described in stream/remote/dispatch.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import zmq

from stream.errors import UserError
from stream.geometry import FRAME_FORMATS
from stream.inference import InferenceError, LocalRequests
from stream.model import load_info
from stream.remote.dispatch import DEFAULT_WORKER_TIMEOUT_S, HEARTBEAT_S
from stream.run import add_requests_argument
from stream.stages.preprocess import MAX_BATCH_LIMIT
from stream.wire import messages
from stream.wire.transport import NOBLOCK, readable, recv_parts, send_parts

log = logging.getLogger(__name__)

HELLO_EVERY_S = 1.0
"""While no head has welcomed it, a worker says hello this often."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect", required=True, metavar="tcp://HEAD:PORT", help="the head's --workers endpoint"
    )
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="DIR",
        help="the same model folder as the head's (made by model-prep)",
    )
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    add_requests_argument(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads OpenVINO uses (INFERENCE_NUM_THREADS; default: the device's choice)",
    )
    parser.add_argument(
        "--keys",
        metavar="DIR",
        help="folder with the head's server.key and this worker's .key_secret (ovstream keys)",
    )
    parser.add_argument(
        "--name", default=None, help="name in the head's logs (default: host name and pid)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WORKER_TIMEOUT_S,
        metavar="S",
        help=f"a head silent this long is taken as gone (default {DEFAULT_WORKER_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus) and /healthz here (PORT alone: loopback)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="exit 0 when the head's run ends instead of waiting for the next one",
    )


class Worker:
    """One worker process: a DEALER to the head and its infer requests (`LocalRequests`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from stream.remote.identity import model_identity

        self.args = args
        self.info = load_info(args.model)
        self.identity = model_identity(self.info)
        self.name = args.name or f"{socket.gethostname()}:{os.getpid()}"
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        """CURVE handshake events (with --keys): a refused key is said once, not waited on."""
        self.key_refused = False
        self.local: LocalRequests | None = None
        self.compiled_batch = 0
        self.frame_format = "bgr"
        """The frames the head sends (its welcome says; `stream.geometry.FRAME_FORMATS`)."""
        self.welcomed = False
        self.working = False
        """It has had frames from the head's run (logged once a run)."""
        self.stopping = False
        self.frames = 0
        self.last_heard = self.last_sent = time.monotonic()

    def connect(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # nothing queued for a head not there yet
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        if self.args.keys:
            from stream.remote.security import curve_client, load_client_keys

            curve_client(sock, load_client_keys(self.args.keys))
            self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        try:
            sock.connect(self.args.connect)
        except zmq.ZMQError as exc:
            raise UserError(f"cannot connect to {self.args.connect}: {exc.strerror}") from None
        self.sock = sock

    def send(self, command: str, **meta: Any) -> None:
        parts = messages.encode(messages.COMMAND, self.name, 0, {"command": command, **meta})
        self._put(parts)

    def _put(self, parts: list[Any], copy: bool = True) -> bool:
        """Send without blocking. With no link to the head (none yet, or its handshake refused
        this worker's key) the DEALER has nowhere to queue and the message is dropped: hellos and
        heartbeats come again, and the head runs a batch whose outputs never came elsewhere."""
        assert self.sock is not None
        self.last_sent = time.monotonic()
        try:
            send_parts(self.sock, parts, NOBLOCK, copy=copy)
        except zmq.Again:
            log.debug("worker: no link to the head: a message dropped")
            return False
        return True

    def hello(self) -> None:
        formats = list(FRAME_FORMATS)  # what it can take: the head refuses it for any other
        self.send("hello", identity=self.identity, name=self.name, frame_formats=formats)

    def compile(self, max_batch: int, frame_format: str = "bgr") -> None:
        """Compile for the head's batch size and frame format (again only if the batch grew or
        the format changed) and announce the credit."""
        stale = max_batch > self.compiled_batch or frame_format != self.frame_format
        if self.local is None or stale:
            if self.local is not None:
                self.local.close()
            config = {"INFERENCE_NUM_THREADS": self.args.threads} if self.args.threads else {}
            self.local = LocalRequests.compile(
                self.info,
                self.args.device,
                "throughput",
                config,
                max_batch,
                frame_format,
                self.args.requests,
            )
            nreq = self.local.requests
            self.compiled_batch = max_batch
            self.frame_format = frame_format
            log.info("worker: %s %s, %d requests", self.info.name, self.info.precision, nreq)
        self.send("credit", requests=self.local.requests)

    def serve(self) -> int:
        """Until stopped (or, with --once, until the head's run ends)."""
        self.connect()
        self.hello()
        poller = zmq.Poller()
        assert self.sock is not None
        poller.register(self.sock, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        registered_fd = None
        while True:
            if self.local is not None and registered_fd != self.local.fd:
                if registered_fd is not None:
                    poller.unregister(registered_fd)
                poller.register(self.local.fd, zmq.POLLIN)
                registered_fd = self.local.fd
            events = dict(poller.poll(200))
            if not events and self.local is not None and self.local.inflight:
                self.local.check()  # a failed request wakes nobody
            if self.stopping and (self.local is None or self.local.inflight == 0):
                if self.welcomed:
                    self.send("bye")
                return 0
            if registered_fd is not None and registered_fd in events:
                for chunk, out, chunk_id in self.local.finished():
                    self._answer(chunk, out, chunk_id)
            if self.monitor is not None and self.monitor in events:
                self._handshake_event()
            if self.sock in events:
                code = self._handle_incoming()
                if code is not None:
                    return code
            now = time.monotonic()
            if self.welcomed and now - self.last_heard > self.args.timeout:
                log.warning("worker: the head at %s is silent; waiting for it", self.args.connect)
                self.welcomed = False
                if self.args.once:
                    return 0
            if not self.welcomed and not self.stopping and now - self.last_sent >= HELLO_EVERY_S:
                self.hello()
            elif self.welcomed and now - self.last_sent >= HEARTBEAT_S:
                self.send("heartbeat")

    def _answer(self, chunk: messages.Batch, out: Any, chunk_id: int) -> None:
        assert self.sock is not None
        parts = messages.encode_batch(messages.LOGITS, chunk.with_data(out), {"chunk": chunk_id})
        if self._put(parts, copy=False):
            self.frames += len(chunk)

    def _handshake_event(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        assert self.monitor is not None
        event = recv_monitor_message(self.monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and not self.key_refused:
            # Not fatal: the head reads authorized/ again, so the key may be let in later.
            self.key_refused = True
            log.warning(
                "worker: the head at %s refused this worker's key (its public key is not in the "
                "head's authorized/ folder); trying again",
                self.args.connect,
            )

    def _handle_incoming(self) -> int | None:
        assert self.sock is not None
        while readable(self.sock):  # a whole message waits: the receive cannot come up empty
            frames = recv_parts(self.sock, NOBLOCK)
            self.last_heard = time.monotonic()
            try:
                msg = messages.decode(frames)
            except messages.MessageError as exc:
                log.warning("worker: rejected a malformed message from the head: %s", exc)
                continue
            if msg.kind == messages.TENSOR and self.welcomed and self.local is not None:
                assert msg.batch is not None
                problem = self.info.geometry.input_problem(
                    msg.batch.data, batched=True, fmt=self.frame_format
                )
                chunk_id = msg.meta.get("chunk")
                if problem or not isinstance(chunk_id, int) or len(msg.batch) > self.compiled_batch:
                    log.warning("worker: rejected a batch: %s", problem or "bad chunk")
                    continue
                if not self.working:
                    log.info("worker: running the head's frames")
                    self.working = True
                self.local.start(msg.batch, chunk_id)
                continue
            what = msg.meta.get("command") if msg.kind == messages.COMMAND else None
            if what == "welcome":
                max_batch = msg.meta.get("max_batch")
                frame_format = msg.meta.get("frame_format", "bgr")  # a head before i420: bgr
                if not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH_LIMIT:
                    log.warning("worker: bad welcome from the head: max_batch %r", max_batch)
                    continue
                if frame_format not in FRAME_FORMATS:
                    log.warning("worker: bad welcome from the head: frame format %r", frame_format)
                    continue
                if not self.welcomed:
                    log.info("worker: connected to %s", self.args.connect)
                self.welcomed = True
                self.compile(max_batch, frame_format)
            elif what == "refuse":
                raise UserError(f"the head refused this worker: {msg.meta.get('reason')}")
            elif what == "reset" and msg.meta.get("ended"):
                if self.welcomed:
                    log.info("worker: the head's run ended; waiting for the next")
                self.welcomed = self.working = False
                if self.args.once:
                    self.stopping = True
                    return 0
            elif what == "reset":  # the head does not know this connection (a new one): hello
                if self.welcomed:
                    log.info("worker: the head does not know this connection; saying hello again")
                self.welcomed = False
                self.last_sent = 0.0
            elif what != "heartbeat":
                log.warning("worker: unexpected %s message from the head", msg.kind)
        return None


def run(args: argparse.Namespace) -> int:
    for option in ("requests", "threads"):
        value = getattr(args, option)
        if value < 0:
            raise UserError(f"--{option} must be 0 (automatic) or more, got {value}")
    worker = Worker(args)

    def stop(*_: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server = None
    if args.metrics:
        from stream.ops.metrics import MetricsServer, WorkerCollector

        def healthz() -> tuple[bool, dict[str, Any]]:
            return True, {"status": "ok", "connected": worker.welcomed}

        server = MetricsServer(
            None, args.metrics, collector=WorkerCollector(worker), healthz=healthz
        )
    try:
        return worker.serve()
    except InferenceError as exc:  # the head runs this worker's chunks elsewhere
        print(f"ovstream: error: worker: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if server is not None:
            server.close()
        if worker.local is not None:
            worker.local.close()
        if worker.monitor is not None and worker.sock is not None:
            worker.sock.disable_monitor()
        worker.ctx.destroy(linger=2000)
        print(f"ovstream worker: {worker.frames} frame(s) classified", flush=True)

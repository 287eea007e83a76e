#!/usr/bin/env python3
"""Stage capacity: how many frames per second one process of each stage passes on one core.

    .venv/bin/python benchmarks/stage_capacity.py --frames 10000

Each stage runs alone, as the supervisor runs it (`stream.stages.base.stage_main` in a spawned
process, the stage classes of `stream/` unchanged), pinned to one core, on real ZeroMQ ipc sockets.
This driver, pinned to the other cores, plays the rest of the pipeline: it binds the control link
(PULL) and the command link (ROUTER, to `release` the stage at the end), feeds pre-encoded
synthetic messages as fast as the stage takes them and counts what comes out.

- preprocess: FRAME messages as capture sends them (the model input in the run's frame format,
  `--frame-format`: i420 by default, as a run of a 224x224 model, or bgr; `prepared`) -> TENSORs;
- infer: TENSORs -> LOGITS through a trivial IR built here (u8 [?,224,224,3] -> [?,1000] f32 from
  one pixel; for i420 frames OpenVINO's colour conversion in front, as in a run), so the figure
  is the stage's own cost, not a network's; OpenVINO's CPU for that IR alone (pure inference,
  benchmark_app's way) is measured too and shown subtracted;
- publish: LOGITS ([1000] f32) -> result records on its PUB socket (no subscriber) and the sink;
- dispatch: infer with `--no-local-infer` handing TENSORs to one remote worker (a real
  `ovstream worker` on the trivial IR, on the driver's cores, over loopback tcp) and passing its
  LOGITS on: the head's dispatch cost per frame (issue #14), an alternative to the infer row and
  not part of the sum;
- capture (send path): what capture does per frame after decoding and the one resize to the
  model input: `CaptureStage._send_frame` (a slot, stamp, encode, send) and its per-frame
  bookkeeping, on one 224x224 frame, in a pinned process; decoding and the resize are left out
  (they are measured by pipeline_bench, and are not the stage's overhead), but the copy of the
  resized frame into its shared-memory slot is counted.

Frames travel two ways (`--via`): `shm`, the default, where capture's frames stay in its pool in
shared memory and only their slot numbers go through preprocess to infer (stream/wire/shm.py; the
driver plays the capture, or frees the slots in infer's place), and `msg`, inside the messages.
Both are measured in the same run, and the sum is given for each.

Per stage: frames/s measured in the steady state (from 10 % of the frames to the last) and CPU ms
per frame of the stage's process over the same window; capacity = 1000 / CPU ms is what one core
fully busy with the stage would pass. The issue's target: every stage >= 10,000 frames/s on one
core, and the per-frame CPU of all stages together (beyond decoding, the resize and OpenVINO)
<= 0.3 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_prep.ceiling import pure_throughput  # noqa: E402
from stream.geometry import FRAME_FORMATS, Geometry  # noqa: E402
from stream.model import ModelInfo, compile_model, load_info, request_batch  # noqa: E402
from stream.sources.spec import SourceSpec  # noqa: E402
from stream.stages.base import Stage, stage_main  # noqa: E402
from stream.stages.capture import CaptureConfig, CaptureStage  # noqa: E402
from stream.stages.infer import InferConfig, InferStage  # noqa: E402
from stream.stages.preprocess import (  # noqa: E402
    DEFAULT_MAX_BATCH,
    PreprocessConfig,
    PreprocessStage,
)
from stream.stages.publish import PublishConfig, PublishStage  # noqa: E402
from stream.wire import messages  # noqa: E402
from stream.wire.shm import FramePool, PoolSet, make_run_dir  # noqa: E402
from stream.wire.transport import LINKS, TransportConfig, free_tcp_port  # noqa: E402

STAGES = ("capture", "preprocess", "infer", "publish", "dispatch")
VIAS = ("shm", "msg")
"""How frames travel from capture to infer: in shared memory, or inside the messages."""
TARGET_FPS = 10_000
TARGET_OVERHEAD_MS = 0.3
STREAM = "s"
CLASSES = 1000
TIMEOUT_S = 120.0


def write_trivial_model(folder: Path, geometry: Geometry | None = None) -> Path:
    """A model folder whose IR costs next to nothing: u8 [?,H,W,3] -> [?,1000] f32 computed from
    the first pixel, with a model.json that `stream.model.load_info` accepts."""
    import openvino as ov
    import openvino.opset13 as ops

    geometry = geometry or Geometry()
    folder.mkdir(parents=True, exist_ok=True)
    frame = ops.parameter([-1, geometry.height, geometry.width, 3], ov.Type.u8, name="input")
    start, stop, step = np.array([0, 0, 0]), np.array([1, 1, 3]), np.array([1, 1, 1])
    pixel = ops.slice(frame, start, stop, step, np.array([1, 2, 3]))
    flat = ops.reshape(ops.convert(pixel, ov.Type.f32), np.array([-1, 3]), special_zero=False)
    weights = np.random.default_rng(0).standard_normal((3, CLASSES)).astype(np.float32)
    logits = ops.matmul(flat, weights, False, False)
    ov.save_model(ov.Model([logits], [frame], "trivial"), folder / "model.xml")
    ModelInfo(
        name="trivial",
        arch="trivial",
        precision="FP32",
        geometry=geometry,
        labels=[f"class {i}" for i in range(CLASSES)],
        source={"kind": "built in benchmarks/stage_capacity.py"},
    ).save(folder)
    return folder


def cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main_thread_seconds(pid: int) -> float:
    """CPU seconds of process `pid`'s main thread alone (the rest: ZeroMQ's I/O thread,
    OpenVINO's and pyzmq's helper threads)."""
    for thread in psutil.Process(pid).threads():
        if thread.id == pid:
            return thread.user_time + thread.system_time
    return 0.0


@dataclass
class Capacity:
    """What one stage passed on one core."""

    stage: str
    via: str
    """shm, msg (how frames travel) or - (publish: logits only)."""
    frames: int
    """Frames that came out."""
    fps: float
    """Frames per second, steady state (from 10 % of the frames to the last)."""
    cpu_ms: float
    """CPU ms per frame of the stage's process in the same window."""
    openvino_ms: float = 0.0
    """Of cpu_ms, what OpenVINO itself spends on the trivial IR (infer only; measured alone)."""
    batch: float = 0.0
    """Frames per message that came out (infer, dispatch: per request or chunk)."""
    main_ms: float = 0.0
    """Of cpu_ms, the stage's main thread (the rest: ZeroMQ's I/O thread and helpers)."""

    @property
    def own_ms(self) -> float:
        """The stage's own CPU per frame: cpu_ms less OpenVINO's."""
        return self.cpu_ms - self.openvino_ms

    @property
    def capacity(self) -> float:
        """Frames per second one core fully busy with the stage would pass."""
        return 1e3 / self.cpu_ms if self.cpu_ms > 0 else float("inf")


# -- the processes ----------------------------------------------------------------------------


def pinned_stage_main(stage: Stage, cpu: int) -> None:
    """Process target: pin to one core before anything (OpenVINO's threads) starts, then run the
    stage exactly as the supervisor does."""
    os.sched_setaffinity(0, {cpu})
    stage_main(stage, None, logging.WARNING)


def capture_send_loop(
    endpoints: dict[str, str], frames: int, cpu: int, results: Any, geometry: Geometry, fmt: str
) -> None:
    """Process target: capture's per-frame work after decoding and resizing, on one core."""
    os.sched_setaffinity(0, {cpu})
    source = SourceSpec(STREAM, "synthetic.mp4", live=False)
    stage = CaptureStage(
        CaptureConfig(source, geometry, frame_format=fmt), TransportConfig(), endpoints
    )
    try:
        stage._spec = stage.config.source
        stage._out = stage.socket(zmq.PUSH, "frames", bind=False)
        image = np.zeros(geometry.frame_shape(fmt), np.uint8)

        def resized(frame: Any, out: np.ndarray | None = None) -> np.ndarray:
            # WindowScaler without decoding and resizing; its final copy (into the slot) stays
            return image if out is None else np.copyto(out, image) or out

        stage._frames.scale = resized  # type: ignore[assignment]
        marks: list[tuple[int, float, float, float]] = []
        first = frames // 10
        for seq in range(frames):
            if seq == first:
                marks.append((seq, time.perf_counter(), cpu_seconds(), time.thread_time()))
            # _run_file's loop body, less decoding and the resize:
            stage.stats["decoded"] = seq + 1
            stage._send_frame(seq, seq / 25.0, None)
            stage.stats["frames"] = stage._sent
            stage.tick()
        stage._flush()
        marks.append((frames, time.perf_counter(), cpu_seconds(), time.thread_time()))
        stage._send_eos(frames, {"count": frames})
        results.put(marks)
    finally:
        stage.shutdown()


# -- the driver -------------------------------------------------------------------------------


class Driver:
    """The rest of the pipeline around one stage: control and command links, feed and sink."""

    def __init__(self, endpoints: dict[str, str]) -> None:
        self.endpoints = endpoints
        self.pools = PoolSet(endpoints.get("shm"))
        """Frees the slots of what comes out, where capture or preprocess is measured alone."""
        self.ctx = zmq.Context()
        self.messages = 0
        """Data messages the sink received."""
        self.control = self._socket(zmq.PULL, "control", bind=True)
        self.commands = self._socket(zmq.ROUTER, "command", bind=True)

    def _socket(self, kind: int, link: str, bind: bool, hwm: int = 0) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if hwm:
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        (sock.bind if bind else sock.connect)(self.endpoints[link])
        return sock

    def control_message(self, timeout_s: float = TIMEOUT_S) -> messages.Message:
        if not self.control.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise RuntimeError(f"no report from the stage within {timeout_s:.0f} s")
        return messages.decode(self.control.recv_multipart(copy=False))

    def wait_ready(self) -> None:
        msg = self.control_message()
        if msg.kind != messages.READY:
            raise RuntimeError(f"stage did not start: {msg.kind} {msg.meta}")

    def finish(self, name: str, proc: Any) -> None:
        """Wait for the stage's final stats, release it and wait for it to exit 0."""
        while True:
            msg = self.control_message()
            if msg.kind == messages.ERROR:
                raise RuntimeError(f"{name}: {msg.meta.get('message')}")
            if msg.kind == messages.STATS and msg.meta.get("final"):
                break
        rejected = msg.meta["stats"].get("rejected", 0)
        if rejected:
            raise RuntimeError(f"{name} rejected {rejected} synthetic message(s)")
        release = messages.encode(messages.COMMAND, name, 0, {"command": "release"})[1]
        self.commands.send_multipart([name.encode(), release])
        proc.join(30)
        if proc.exitcode != 0:
            raise RuntimeError(f"{name} exited with {proc.exitcode}")

    def sink(
        self, link: str, frames: int, records: bool, pid: int | None, credit: int = 0
    ) -> tuple[int, list[tuple[int, float, float, float]]]:
        """Count the frames coming out on `link` until the end marker; (frames, marks of
        (count, time, the stage's CPU s, its main thread's) at 10 % of the frames and at the
        last). `records`: the link carries result records (publish's sink), else data messages
        (batches). `credit`: play infer for preprocess, giving it this much credit and then each
        frame's back."""
        sock = self._socket(zmq.PULL, link, bind=True, hwm=1000)
        demand = self._socket(zmq.PUSH, "demand", bind=False) if credit else None
        if demand is not None:
            demand.send_multipart(messages.encode_credit(credit))
        first = max(1, frames // 10)
        marks: list[tuple[int, float, float, float]] = []
        count = 0
        try:
            while True:
                if not sock.poll(int(TIMEOUT_S * 1000), zmq.POLLIN):
                    raise RuntimeError(f"nothing on {link} for {TIMEOUT_S:.0f} s ({count} frames)")
                parts = sock.recv_multipart(copy=False)
                if records:
                    if len(parts) != 2:
                        break  # publish's end report on the sink
                    count += 1
                else:
                    msg = messages.decode(parts)
                    if msg.kind == messages.STATUS:
                        continue  # infer with only workers: "workers_available"
                    if msg.batch is None:
                        break  # the end of stream
                    self.pools.release(msg.batch)  # infer's part
                    count += len(msg.batch)
                    self.messages += 1
                    if demand is not None:
                        demand.send_multipart(messages.encode_credit(len(msg.batch)))
                for mark in (first, frames):
                    if count >= mark and len(marks) < (1 if mark == first else 2):
                        main = main_thread_seconds(pid) if pid else 0.0  # first: <= total
                        total = cpu_seconds(pid) if pid else 0.0
                        marks.append((count, time.perf_counter(), total, main))
        finally:
            sock.close()
            if demand is not None:
                demand.close()
        return count, marks

    def drain_demand(self) -> threading.Thread:
        """Read what infer says it can take (the driver feeds it as fast as it reads anyway)."""
        sock = self._socket(zmq.PULL, "demand", bind=True)

        def run() -> None:
            with contextlib.suppress(zmq.ZMQError):  # closed with the context at the end
                while True:
                    if sock.poll(100):
                        sock.recv_multipart()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def feed(
        self,
        link: str,
        kind: str,
        payload: np.ndarray,
        frames: int,
        batch: int,
        pool: FramePool | None = None,
    ) -> threading.Thread:
        """Push `frames` frames in messages of `batch` frames and an end of stream, in a thread
        (as fast as the stage takes them: the stage's HWM is the backpressure). With `pool`, the
        frames are in its slots (a slot is taken for each, waiting until the stage frees one)."""
        now = time.time()
        encoded = []
        for start in range(0, frames, batch):
            seqs = range(start, min(frames, start + batch))
            one = [messages.Batch.single(STREAM, s, s, s / 25.0, now, payload) for s in seqs]
            encoded.append(messages.Batch.join(one))
        sock = self._socket(zmq.PUSH, link, bind=False, hwm=4)

        def shared(b: messages.Batch) -> messages.Batch:
            assert pool is not None
            slots = [pool.wait(lambda: False, TIMEOUT_S) for _ in range(len(b))]
            if None in slots:
                raise RuntimeError(f"no slot freed in {TIMEOUT_S:.0f} s")
            refs = np.array([[0, s] for s in slots], np.int64)
            return messages.Batch(
                b.streams, b.index, b.times, refs, messages.Shared([pool.name], pool.shape)
            )

        def run() -> None:
            for b in encoded:
                b = shared(b) if pool is not None else b
                sock.send_multipart(messages.encode_batch(kind, b, {"prepared": True}), copy=False)
            sock.send_multipart(messages.encode(messages.EOS, STREAM, frames, {"count": frames}))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._feed_socket = sock
        return thread

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def start_worker(endpoint: str, model: Path, cores: set[int]) -> subprocess.Popen:
    """A real `ovstream worker` for the dispatch row, on `cores` (the driver's)."""
    argv = [sys.executable, "-m", "stream.cli", "worker", "--connect", endpoint]
    argv += ["--model", str(model), "--threads", "1", "--requests", "2", "--once"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )


def stop_worker(worker: subprocess.Popen) -> bool:
    """Wait for the worker to leave by itself, as it does once the head's run is over (`--once`);
    kill it otherwise (a run that failed). False if it had to be killed."""
    try:
        worker.wait(30)
        return True
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
        return False


def rate(
    stage: str, via: str, count: int, marks: list[tuple[int, float, float, float]]
) -> Capacity:
    (n0, t0, c0, m0), (n1, t1, c1, m1) = marks[0], marks[-1]
    if n1 <= n0:
        raise RuntimeError(f"{stage}: too few frames to measure; raise --frames")
    per_frame = 1e3 / (n1 - n0)
    fps = (n1 - n0) / (t1 - t0)
    return Capacity(stage, via, count, fps, (c1 - c0) * per_frame, main_ms=(m1 - m0) * per_frame)


def measure_stage(
    name: str,
    via: str,
    model: Path,
    frames: int,
    cpu: int,
    workdir: Path,
    geometry: Geometry,
    batch: int,
    fmt: str,
) -> Capacity:
    """Run one stage alone on core `cpu` and measure it, its frames (of `fmt`) travelling
    `via`."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    endpoints = {link: f"ipc://{run_dir}/{link}.sock" for link in (*LINKS, "status", "pub")}
    shape = geometry.frame_shape(fmt)
    shm_dir = make_run_dir(2, shape) if via == "shm" else None
    if via == "shm":
        if shm_dir is None:
            raise RuntimeError("no room in /dev/shm for the frames: measure with --via msg")
        endpoints["shm"] = shm_dir
    driver = Driver(endpoints)
    pool = (
        FramePool.create(shm_dir, shape)
        if shm_dir and name in ("preprocess", "infer", "dispatch")
        else None
    )
    spawn = mp.get_context("spawn")
    image = np.zeros(shape, np.uint8)
    try:
        if name == "capture":
            results = spawn.Queue()
            proc = spawn.Process(
                target=capture_send_loop, args=(endpoints, frames, cpu, results, geometry, fmt)
            )
            proc.start()
            count, _ = driver.sink("frames", frames, False, None)
            marks = results.get(timeout=TIMEOUT_S)
            proc.join(30)
            if proc.exitcode != 0:
                raise RuntimeError(f"capture send loop exited with {proc.exitcode}")
            return rate(name, via, count, marks)
        transport = TransportConfig()
        stage: Stage
        worker = None
        # What each stage receives in a loaded pipeline: preprocess, one frame a message (a live
        # capture's; a file's sends up to max_batch); infer and publish, batches of max_batch.
        if name == "preprocess":
            stage = PreprocessStage(
                PreprocessConfig([STREAM], geometry, batch, fmt), transport, endpoints
            )
            links, kind, payload, fed = ("frames", "tensors"), messages.FRAME, image, 1
        elif name == "infer":
            stage = InferStage(
                InferConfig(str(model), [STREAM], max_batch=batch, frame_format=fmt),
                transport,
                endpoints,
            )
            links, kind, payload, fed = ("tensors", "logits"), messages.TENSOR, image, batch
        elif name == "dispatch":
            endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
            config = InferConfig(
                str(model),
                [STREAM],
                max_batch=batch,
                workers=endpoint,
                local=False,
                frame_format=fmt,
            )
            stage = InferStage(config, transport, endpoints)
            links, kind, payload, fed = ("tensors", "logits"), messages.TENSOR, image, batch
        elif name == "publish":
            config = PublishConfig(
                str(model), {STREAM: "synthetic.mp4"}, publish=endpoints["pub"], sink=True
            )
            stage = PublishStage(config, transport, endpoints)
            logits = np.random.default_rng(0).standard_normal(CLASSES).astype(np.float32)
            links, kind, payload, fed = ("logits", "sink"), messages.LOGITS, logits, batch
        else:
            raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")
        proc = spawn.Process(target=pinned_stage_main, args=(stage, cpu))
        proc.start()
        left = True
        try:
            if name == "dispatch":
                worker = start_worker(endpoint, model, os.sched_getaffinity(0))
            driver.wait_ready()
            if name in ("infer", "dispatch"):
                driver.drain_demand()
            feeder = driver.feed(links[0], kind, payload, frames, fed, pool)
            credit = 2 * batch if name == "preprocess" else 0
            count, marks = driver.sink(links[1], frames, name == "publish", proc.pid, credit)
            feeder.join(TIMEOUT_S)
            driver.finish(stage.name, proc)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
            if worker is not None:
                left = stop_worker(worker)
        if not left:
            raise RuntimeError("the worker did not leave after the run")
        result = rate(name, via if name != "publish" else "-", count, marks)
        result.batch = count / driver.messages if driver.messages else 0.0
        return result
    finally:
        driver.close()
        if shm_dir:
            shutil.rmtree(shm_dir, ignore_errors=True)


def per_call_us(step: Any, seconds: float = 0.3) -> float:
    """Microseconds per call of `step`, timed in a loop on this process's core."""
    for _ in range(100):
        step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            step()
        n += 100
    return elapsed * 1e6 / n


def pieces(model: Path, cpu: int, workdir: Path, batch: int, fmt: str) -> dict[str, float]:
    """Where a stage's per-frame CPU goes: the pieces it runs for every frame, timed alone in
    this process pinned to the stages' core (µs per call; wall time, so only indicative)."""
    from stream.stages.base import StreamTracker
    from stream.stages.publish import make_records

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        info = load_info(model)
        image = np.zeros(info.geometry.frame_shape(fmt), np.uint8)
        logits = np.random.default_rng(0).standard_normal((batch, CLASSES)).astype(np.float32)
        now = time.time()

        def one(seq: int, data: np.ndarray) -> messages.Batch:
            return messages.Batch.single(STREAM, seq, seq, seq / 25.0, now, data)

        frame_parts = messages.encode_batch(messages.FRAME, one(1, image), {"prepared": True})
        frame_bytes = [bytes(p) for p in frame_parts]
        frames = messages.Batch.join([one(s, image) for s in range(batch)])
        logits_batch = frames.with_data(logits)
        logits_msg = messages.decode(messages.encode_batch(messages.LOGITS, logits_batch))
        sources = {STREAM: "synthetic.mp4"}
        labels = info.labels
        tracker = StreamTracker([STREAM], ordered=False)
        ctx = zmq.Context()
        try:
            pull = ctx.socket(zmq.PULL)
            pull.bind(f"ipc://{workdir}/pieces.sock")
            push = ctx.socket(zmq.PUSH)
            push.connect(f"ipc://{workdir}/pieces.sock")
            batch_parts = messages.encode_batch(messages.TENSOR, frames)

            def hop(parts: list[Any]) -> Any:
                def step() -> None:
                    push.send_multipart(parts, copy=False)
                    pull.recv_multipart(copy=False)

                return step

            [(_, _, record)] = make_records(
                logits_msg.batch.take(0, 1), sources, labels, 5, "t", "FP32"
            )
            per_frame = 1.0 / batch
            return {
                "capture: encode_batch (one frame)": per_call_us(
                    lambda: messages.encode_batch(messages.FRAME, one(1, image), {"prepared": True})
                ),
                "preprocess: decode (one frame)": per_call_us(lambda: messages.decode(frame_bytes)),
                f"preprocess: Batch.join of {batch} frames, per frame": per_frame
                * per_call_us(lambda: messages.Batch.join([one(s, image) for s in range(batch)])),
                "StreamTracker.check, per frame": per_frame
                * per_call_us(lambda: tracker.check(logits_msg)),
                f"ZeroMQ ipc hop of one frame (send + receive, {image.nbytes // 1000} KB,"
                " zero-copy)": per_call_us(hop(frame_parts)),
                f"ZeroMQ ipc hop of a batch of {batch}, per frame": per_frame
                * per_call_us(hop(batch_parts)),
                f"publish: make_records (top-5 of 1000) in a batch of {batch}, per frame": per_frame
                * per_call_us(
                    lambda: make_records(logits_msg.batch, sources, labels, 5, "t", "FP32")
                ),
                "publish: messages.dump_result (orjson)": per_call_us(
                    lambda: messages.dump_result(record)
                ),
            }
        finally:
            ctx.destroy(linger=0)
    finally:
        os.sched_setaffinity(0, before)


def openvino_ms(model: Path, seconds: float, batch: int, fmt: str) -> float:
    """CPU ms per frame OpenVINO itself spends on the trivial IR (taking frames of `fmt`) in
    requests of `batch` frames (pure, this core)."""
    info = load_info(model)
    compiled = compile_model(info, "CPU", "throughput", batch=batch, frame_format=fmt)
    frames = np.zeros((batch, *info.geometry.frame_shape(fmt)), np.uint8)
    return pure_throughput(compiled, frames, seconds, warmup_s=0.2).cpu_ms_per_frame


def table(results: list[Capacity], header: str, parts: dict[str, float] | None = None) -> str:
    lines = [
        header,
        "",
        f"{'stage':<12} {'via':<4} {'frames':>7} {'frames/s':>9} {'CPU ms/frame':>13}"
        f" {'of it OV':>9} {'own ms':>7} {'capacity/core':>14} {'target':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for r in results:
        ok = "ok" if r.capacity >= TARGET_FPS else "short"
        lines.append(
            f"{r.stage:<12} {r.via:<4} {r.frames:>7} {r.fps:>9.0f} {r.cpu_ms:>13.3f}"
            f" {r.openvino_ms:>9.3f} {r.own_ms:>7.3f} {r.capacity:>14.0f} {ok:>7}"
        )
    lines.append("")
    for r in results:
        if r.stage == "dispatch":
            lines.append(
                f"dispatch: {r.batch:.1f} frames a chunk to the worker on average; of its"
                f" {r.cpu_ms:.3f} ms a frame, the main thread {r.main_ms:.3f}, ZeroMQ's I/O"
                f" thread and pyzmq's helper {r.cpu_ms - r.main_ms:.3f}"
            )
    for via in VIAS:
        rows = [r for r in results if r.via in (via, "-") and r.stage != "dispatch"]
        if any(r.via == via for r in rows):
            total = sum(r.own_ms for r in rows)
            lines.append(
                f"sum of the stages' own CPU per frame, frames via {via}: {total:.3f} ms"
                f" (target <= {TARGET_OVERHEAD_MS} ms; the supervisor's share is not included)"
            )
    lines += [
        "via: shm = frames in shared memory, slot numbers in the messages; msg = frames inside"
        " the messages; - = not frames (logits)",
        f"frames/s = measured, steady state; capacity/core = 1000 / CPU ms per frame; target ="
        f" capacity >= {TARGET_FPS:,} frames/s on one core; 'of it OV' = OpenVINO's own CPU for"
        " the trivial IR, measured alone; own ms = CPU ms/frame less that",
    ]
    if parts:
        lines += ["", "per-frame pieces, each timed alone on the same core (µs per call):"]
        lines += [f"  {us:8.1f}  {what}" for what, us in parts.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10000, help="frames per stage")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}"
    )
    parser.add_argument(
        "--cpu", type=int, default=None, help="core to pin each stage to (default: the last one)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"max_batch of the stages, and the frames per message fed to infer and publish"
        f" (default {DEFAULT_MAX_BATCH}, what a loaded pipeline sends them)",
    )
    parser.add_argument(
        "--via",
        default=",".join(VIAS),
        help="how frames travel, comma-separated: shm (shared memory, the default of a run),"
        " msg (inside the messages); default both",
    )
    parser.add_argument(
        "--frame-format",
        choices=FRAME_FORMATS,
        default="i420",
        help="frames between the stages (default i420, what a run of a 224x224 model uses)",
    )
    parser.add_argument("--workdir", default=None, help="folder for sockets and the trivial IR")
    parser.add_argument("--output", help="also write the table here (e.g. benchmarks/results/...)")
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    vias = [v.strip() for v in args.via.split(",") if v.strip()]
    unknown = set(stages) - set(STAGES) | set(vias) - set(VIAS)
    if unknown or args.frames < 20:
        parser.error(f"unknown stage(s) {sorted(unknown)}" if unknown else "--frames >= 20")

    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if args.cpu is None else args.cpu
    others = set(allowed) - {cpu} or {cpu}
    os.sched_setaffinity(0, others)  # the driver stays off the stage's core (if there is another)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ovstream-capacity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    geometry = Geometry()
    model = write_trivial_model(workdir / "trivial", geometry)

    import openvino as ov

    name = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    header = (
        f"stage capacity: one process per stage pinned to core {cpu} of {len(allowed)}"
        f" ({name}), driver on {sorted(others)}; {args.frames} frames per stage, batches of"
        f" {args.batch}, {args.frame_format} frames; OpenVINO"
        f" {ov.__version__}; {platform.platform()}; load average {os.getloadavg()[0]:.2f}"
    )
    print(header, flush=True)
    results = []
    fmt = args.frame_format
    pure_ms = openvino_ms(model, 2.0, request_batch(args.batch), fmt) if "infer" in stages else 0.0
    for stage in stages:
        for via in vias if stage not in ("publish", "dispatch") else vias[:1]:
            result = measure_stage(
                stage, via, model, args.frames, cpu, workdir, geometry, args.batch, fmt
            )
            if stage == "infer":
                result.openvino_ms = pure_ms
            results.append(result)
            print(json.dumps({**asdict(result), "capacity": result.capacity}), flush=True)
    parts = pieces(model, cpu, workdir, args.batch, fmt)
    text = table(results, header, parts)
    print("\n" + text, end="")
    if args.output:
        Path(args.output).write_text(text)
    if args.json:
        rows = [{**asdict(r), "own_ms": r.own_ms, "capacity": r.capacity} for r in results]
        data = {"header": header, "rows": rows, "pieces_us": parts}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

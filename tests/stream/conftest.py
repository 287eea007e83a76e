"""Fixtures of the stream tests: ZeroMQ helpers that never hang, and bad input files."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import zmq


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context whose sockets are closed with linger=0 at the end of the test."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@contextlib.contextmanager
def stage_process(stage) -> Iterator[mp.Process]:
    """`stage` running as the supervisor runs it (`stage_main` in a spawned process); killed on
    the way out if it is still running."""
    from stream.stages.base import stage_main

    proc = mp.get_context("spawn").Process(target=stage_main, args=(stage, None, logging.ERROR))
    proc.start()
    try:
        yield proc
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def recv_within(sock: zmq.Socket, timeout_s: float = 10.0) -> list[zmq.Frame]:
    """One multipart message, or fail the test after `timeout_s` instead of hanging."""
    if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
        pytest.fail(f"no message within {timeout_s} s")
    return sock.recv_multipart(copy=False)


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def count_frames(path: Path, fps: float | None = None) -> list[tuple[int, float]]:
    """(frame_index, pts) of the frames PyAV decodes, counted independently of stream."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue
            for frame in decoded:
                frames.append((len(frames), float(frame.time)))
    if fps is None:
        return frames
    kept, slots = [], set()
    t0 = frames[0][1]
    for index, pts in frames:
        slot = int(np.floor((pts - t0) * fps + 1e-6))
        if slot not in slots:
            slots.add(slot)
            kept.append((index, pts))
    return kept


def corrupt_copy(src: Path, dst: Path, at: float = 0.5, nbytes: int = 4000, seed: int = 0) -> Path:
    """A copy of `src` with `nbytes` random bytes written over the middle of the file."""
    data = bytearray(src.read_bytes())
    start = int(len(data) * at)
    data[start : start + nbytes] = (
        np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    )
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, clip_factory) -> dict[str, Path]:
    """Files that are not usable videos: missing, text, zero-frame, corrupt in the middle."""
    folder = tmp_path_factory.mktemp("bad")
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n" * 200)
    zero = folder / "empty.mp4"
    out = av.open(str(zero), "w")
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 160, 90, "yuv420p"
    out.start_encoding()
    out.close()
    clip = clip_factory(320, 180, 25, 40, name="tocorrupt", gop=10)
    return {
        "missing": folder / "missing.mp4",
        "not_video": text,
        "zero_frames": zero,
        "corrupt": corrupt_copy(clip, folder / "corrupt.mp4"),
    }


@pytest.fixture(scope="session")
def model(lite0_model) -> Path:
    """The model the stream tests run: the pretrained EfficientNet-Lite0, FP32."""
    return lite0_model / "fp32"


# The real Mosquitto broker (test_mqtt.py) and RTSP server (test_live.py).
from tests.mqtt.fixtures import mosquitto  # noqa: E402, F401
from tests.rtsp.fixtures import rtsp_server  # noqa: E402, F401

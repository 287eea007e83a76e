"""Running batches on OpenVINO from a ZeroMQ event loop: shared by the infer stage and by
remote workers (`ovstream worker`).

`LocalRequests` wraps an AsyncInferQueue: OpenVINO's callback threads copy each request's outputs
(the request is reused right after) onto a deque and wake the owner through a pipe, which its
ZeroMQ poller watches next to its sockets. `FrameQueue` holds frames waiting for a request.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from stream.wire import messages
from stream.wire.shm import PoolSet, frame_shape

log = logging.getLogger(__name__)


@contextlib.contextmanager
def captured_stderr() -> Iterator[None]:
    """Keep native libraries' noise on fd 2 (frontend probing of a broken file) off the terminal;
    what they printed goes to the debug log."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            noise = sink.read().decode(errors="replace").strip()
            if noise:
                log.debug("OpenVINO said on stderr:\n%s", noise)


class LocalRequests:
    """`requests` OpenVINO infer requests, each running one batch at a time."""

    def __init__(self, compiled: Any, requests: int) -> None:
        import openvino as ov

        self.requests = requests
        self.inflight = 0
        """Requests running now."""
        self.frames_inflight = 0
        """Frames in those requests."""
        self._done: collections.deque = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        self._queue: Any = ov.AsyncInferQueue(compiled, requests)
        done, wfd = self._done, self._wfd

        def on_done(request: Any, userdata: tuple[messages.Batch, Any]) -> None:
            # Runs on an OpenVINO thread: copy now, the request is reused for the next frames.
            try:
                out: Any = request.get_output_tensor(0).data.copy()
            except Exception as exc:  # raised by finished(), on the owner's thread
                out = exc
            done.append((*userdata, out))
            os.write(wfd, b"\0")

        self._queue.set_callback(on_done)

    @property
    def fd(self) -> int:
        """Readable when a request finished (for a zmq.Poller)."""
        return self._rfd

    @property
    def free(self) -> int:
        return self.requests - self.inflight

    def start(self, chunk: messages.Batch, tag: Any = None) -> None:
        """Run `chunk` (its data: the model inputs, N frames) on a free request; `tag` comes
        back with its outputs."""
        self._queue.start_async({0: chunk.data}, (chunk, tag), share_inputs=True)
        self.inflight += 1
        self.frames_inflight += len(chunk)

    def finished(self) -> list[tuple[messages.Batch, Any, Any]]:
        """(batch, outputs [N, classes], tag) of every request finished since the last call;
        RuntimeError if an inference failed."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._rfd, 4096)
        out = []
        while self._done:
            chunk, tag, result = self._done.popleft()
            self.inflight -= 1
            self.frames_inflight -= len(chunk)
            if isinstance(result, Exception):
                raise RuntimeError(f"inference failed: {result}")
            out.append((chunk, result.reshape(len(chunk), -1), tag))
        return out

    def close(self) -> None:
        if self._queue is not None:
            self._queue.wait_all()
            self._queue = None
            os.close(self._rfd)
            os.close(self._wfd)


class FrameQueue:
    """Frames waiting for a request, in arrival order, as the batches they came in (their frames
    in the message, or in shared memory: `pools` copies those out when they are taken).

    A chunk made of several pieces, or of frames in shared memory, is copied into an array of
    `ChunkBuffers`, which `done` takes back once the chunk's results are out."""

    def __init__(self, pools: PoolSet | None = None, max_batch: int = 8) -> None:
        self._batches: collections.deque[messages.Batch] = collections.deque()
        self._count = 0
        self._pools = pools if pools is not None else PoolSet(None)
        self._buffers = ChunkBuffers(max_batch)
        self._again = 0
        """Frames at the front that were taken before and handed back (by a dead worker)."""
        self._fresh = 0
        """Frames taken for the first time since `pop_fresh` (infer's credit)."""

    def __len__(self) -> int:
        return self._count

    def put(self, batch: messages.Batch, front: bool = False) -> None:
        """Queue `batch` (`front`: before the others, e.g. a batch handed back by a worker)."""
        if front:
            self._batches.appendleft(batch)
            self._again += len(batch)
        else:
            self._batches.append(batch)
        self._count += len(batch)

    def take(self, size: int) -> messages.Batch:
        """The next `size` frames (fewer if fewer wait): views of one batch, or a copy joining
        the pieces of several (or of frames in shared memory, whose slots are then freed)."""
        pieces = []
        want = size
        while want and self._batches:
            head = self._batches[0]
            if len(head) <= want:
                pieces.append(self._batches.popleft())
                want -= len(head)
            else:
                pieces.append(head.take(0, want))
                self._batches[0] = head.take(want, len(head))
                want = 0
        out = None
        if len(pieces) > 1 or pieces[0].shared is not None:
            out = self._buffers.get(size - want, frame_shape(pieces[0]))
        chunk = self._pools.gather(pieces, out)  # each piece names only its own streams
        self._count -= len(chunk)
        again = min(self._again, len(chunk))  # handed-back frames are at the front
        self._again -= again
        self._fresh += len(chunk) - again
        return chunk

    def pop_fresh(self) -> int:
        """Frames taken for the first time since the last call (a dead worker's frames handed
        back and taken again are not counted twice)."""
        fresh, self._fresh = self._fresh, 0
        return fresh

    def done(self, chunk: messages.Batch) -> None:
        """`chunk`'s results are out: its frames' array may be reused."""
        self._buffers.put(chunk.data)


class ChunkBuffers:
    """Arrays that chunks are gathered into, reused: a fresh array for a chunk of 8 frames
    (1.2 MB) costs about 300 page faults, more CPU than copying the frames into it.

    A buffer is in use from `get` until its chunk's results are out (`put`): OpenVINO reads it
    in place (`share_inputs`), ZeroMQ sends it to a worker without a copy, and a chunk handed back
    by a dead worker is run again from it."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        """Frames a buffer holds (the most a chunk has: max_batch)."""
        self._all: list[np.ndarray] = []
        self._free: list[np.ndarray] = []

    def get(self, frames: int, shape: tuple[int, ...]) -> np.ndarray:
        """An array of `frames` frames of `shape` (uint8), a view of a buffer of this pool."""
        for i, buf in enumerate(self._free):
            if buf.shape[1:] == shape and buf.shape[0] >= frames:
                return self._free.pop(i)[:frames]
        buf = np.empty((max(frames, self.frames), *shape), np.uint8)
        self._all.append(buf)
        return buf[:frames]

    def put(self, data: np.ndarray) -> None:
        """Take back the buffer under `data` (anything else is left alone)."""
        base = data.base if data.base is not None else data
        if any(base is buf for buf in self._all) and not any(base is b for b in self._free):
            self._free.append(base)

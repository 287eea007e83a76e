"""Running batches on OpenVINO from a ZeroMQ event loop: shared by the infer stage and by
remote workers (`ovstream worker`).

`LocalRequests` runs batches on two AsyncInferQueues, one of requests of 4 frames and one of
single frames: OpenVINO's callback threads copy each request's outputs into its batch's results
(the request is reused right after) and wake the owner through a pipe, which its ZeroMQ poller
watches next to its sockets. `FrameQueue` holds frames waiting for a request.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from stream.model import ModelInfo, compile_batches, request_batch
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
    """Batches run on OpenVINO, `requests` at a time. A batch runs as requests of `batch` frames
    (`stream.model.REQUEST_BATCH`) on a model compiled for exactly that many, and the frames left
    over one a request on a model compiled for one; its results come back together once all its
    requests are done."""

    def __init__(self, compiled: list[Any], requests: int, max_batch: int) -> None:
        """`compiled`: the model for requests of several frames and the one for a single frame
        (`stream.model.compile_batches`), or one model for a single frame; `max_batch`: the
        most frames a batch has (it sizes the request pools so that `start` never waits).

        Once this is made, its requests should hold the only references to the compiled models
        (`compile` sees to it), so that `close` destroys them inside AsyncInferQueue's
        destructor, which releases the GIL. A compiled model whose last reference goes in Python
        code, GIL held, waits for its threads, and one of them may be waiting for the GIL to drop
        the callback: a test that kept its list of models hung in 2 of 12 runs (OpenVINO
        2026.4.1)."""
        import openvino as ov

        self.requests = requests
        self.inflight = 0
        """Batches running now."""
        self.frames_inflight = 0
        """Frames in those batches."""
        by_size = {int(c.input(0).get_partial_shape()[0].get_length()): c for c in compiled}
        self.batch = max(by_size)
        """Frames in one request of a batch (1: a request per frame)."""
        out = compiled[0].output(0)
        self._classes = int(np.prod([d.get_length() for d in list(out.get_partial_shape())[1:]]))
        self._dtype = out.get_element_type().to_dtype()
        self._done: collections.deque = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        done, wfd, lock = self._done, self._wfd, threading.Lock()

        def on_done(request: Any, userdata: tuple[_Running, int]) -> None:
            # Runs on an OpenVINO thread: copy now, the request is reused for the next frames.
            # The owner is woken once a batch, by its last request.
            running, at = userdata
            try:
                data = request.get_output_tensor(0).data
                running.out[at : at + len(data)] = data.reshape(len(data), -1)
            except Exception as exc:  # raised by finished(), on the owner's thread
                running.error = exc
            with lock:
                running.left -= 1
                if running.left:
                    return
            done.append(running)
            os.write(wfd, b"\0")

        # Room for `requests` batches of max_batch frames at once, so start_async never blocks.
        pools = {self.batch: requests * max(1, max_batch // self.batch)}
        if self.batch > 1 and 1 in by_size:
            pools[1] = requests * min(self.batch - 1, max_batch)
        self._queues: dict[int, Any] = {}
        for size, count in pools.items():
            queue = ov.AsyncInferQueue(by_size[size], count)
            queue.set_callback(on_done)
            self._queues[size] = queue

    @classmethod
    def compile(
        cls,
        info: ModelInfo,
        device: str,
        mode: str,
        config: dict[str, Any] | None,
        max_batch: int,
        frame_format: str,
        requests: int = 0,
    ) -> LocalRequests:
        """The model compiled for requests of `request_batch(max_batch)` frames and of one
        (`stream.model.compile_batches`), `requests` batches at once (0: the device's
        OPTIMAL_NUMBER_OF_INFER_REQUESTS); the compiled models live only in the requests."""
        batches = (request_batch(max_batch), 1)
        with captured_stderr():  # a broken IR makes the frontends print; compile_batches says
            compiled = compile_batches(info, device, mode, config, None, batches, frame_format)
        optimal = compiled[0].get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        return cls(compiled, requests or int(optimal), max_batch)

    @property
    def fd(self) -> int:
        """Readable when a batch's request finished (for a zmq.Poller)."""
        return self._rfd

    @property
    def free(self) -> int:
        return self.requests - self.inflight

    def start(self, chunk: messages.Batch, tag: Any = None) -> None:
        """Run `chunk` (its data: the model inputs, N frames); `tag` comes back with its
        outputs."""
        data, n, size = chunk.data, len(chunk), self.batch
        full = n - n % size if 1 in self._queues else n
        running = _Running(chunk, tag, np.empty((n, self._classes), self._dtype))
        running.left = full // size + (n - full)
        for at in range(0, full, size):
            self._queues[size].start_async(
                {0: data[at : at + size]}, (running, at), share_inputs=True
            )
        for at in range(full, n):
            self._queues[1].start_async({0: data[at : at + 1]}, (running, at), share_inputs=True)
        self.inflight += 1
        self.frames_inflight += n

    def finished(self) -> list[tuple[messages.Batch, Any, Any]]:
        """(batch, outputs [N, classes], tag) of every batch finished since the last call;
        RuntimeError if an inference failed."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._rfd, 4096)
        out = []
        while self._done:
            running = self._done.popleft()
            self.inflight -= 1
            self.frames_inflight -= len(running.chunk)
            if running.error is not None:
                raise RuntimeError(f"inference failed: {running.error}")
            out.append((running.chunk, running.out, running.tag))
        return out

    def close(self) -> None:
        for queue in self._queues.values():
            queue.wait_all()
        if self._queues:
            self._queues = {}
            os.close(self._rfd)
            os.close(self._wfd)


class _Running:
    """A batch in flight: its results gather in `out` as its requests finish."""

    __slots__ = ("chunk", "error", "left", "out", "tag")

    def __init__(self, chunk: messages.Batch, tag: Any, out: np.ndarray) -> None:
        self.chunk = chunk
        self.tag = tag
        self.out = out
        self.left = 0
        """Its requests not yet finished (counted down on OpenVINO's threads, under a lock)."""
        self.error: Exception | None = None


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

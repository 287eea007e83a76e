"""Running batches on OpenVINO from a ZeroMQ event loop: shared by the infer stage and by
remote workers (`ovstream worker`).

`LocalRequests` runs a batch as requests of 4 frames and of single frames; the last request of
each batch writes its number to a pipe when it is done, which the owner's ZeroMQ poller watches
next to its sockets, and the owner then collects the batch's outputs. `FrameQueue` holds frames
waiting for a request.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import struct
import tempfile
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
    requests are done.

    Only a batch's last request wakes the owner: its callback is `os.write` of the request's
    number to a pipe (a builtin: no Python frame on OpenVINO's thread, the GIL held for one
    system call), and the batch's other requests have no Python callback at all. The owner,
    woken by the pipe, waits on the batch's requests (started before the last one, they are done
    or nearly) and copies their outputs. Before, every request's Python callback copied its
    outputs on OpenVINO's callback thread: the GIL passed between that thread and the owner at
    each of them."""

    def __init__(self, compiled: list[Any], requests: int, max_batch: int) -> None:
        """`compiled`: the model for requests of several frames and the one for a single frame
        (`stream.model.compile_batches`), or one model for a single frame; `max_batch`: the
        most frames a batch has (it sizes the request pools so that one is always free for
        `start`).

        Once this is made, its requests should hold the only references to the compiled models
        (`compile` sees to it): a request's C++ side is deleted with the GIL released, and the
        last of them takes its compiled model along. A compiled model whose last reference goes
        in Python code, GIL held, waits for its threads, and one of them may be waiting for the
        GIL to drop a callback: a test that kept its list of models hung in 2 of 12 runs
        (OpenVINO 2026.4.1)."""
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
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        self._singles = 1 in by_size and self.batch > 1
        # A batch of max_batch frames has up to max_batch // batch requests of `batch` frames
        # and batch - 1 of one; each size has a waking pool (one request a batch) and a silent
        # one (the rest), `requests` batches' worth, so that `start` never finds a pool empty.
        per_batch = {self.batch: max(1, max_batch // self.batch)}
        if self._singles:
            per_batch[1] = min(self.batch - 1, max_batch)
        total = requests * sum(count + 1 for count in per_batch.values())
        if total > 1 << 16:
            raise ValueError(f"{total} infer requests: at most 65536")
        wake = functools.partial(os.write, self._wfd)
        self._all: list[Any] = []
        """Every request, by number."""
        self._silent: dict[int, list[int]] = {}
        self._waking: dict[int, list[int]] = {}
        self._running: list[_Running | None] = []
        """The batch each request is running for."""
        self._size: list[int] = []
        for size, count in per_batch.items():
            for pool, n, waking in ((self._silent, count, False), (self._waking, 1, True)):
                pool[size] = []
                for _ in range(requests * n):
                    number = len(self._all)
                    request = by_size[size].create_infer_request()
                    if waking:
                        request.set_callback(wake, _NUMBER.pack(number))
                    self._all.append(request)
                    self._running.append(None)
                    self._size.append(size)
                    pool[size].append(number)
        # The pybind calls themselves: the Python wrapper's input dispatch costs 8 us a
        # request, a Tensor on the frames' memory 1.6 us.
        self._start_async = ov._pyopenvino.InferRequest.start_async
        self._tensor = ov.Tensor

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
        """Readable when a batch's last request finished (for a zmq.Poller)."""
        return self._rfd

    @property
    def free(self) -> int:
        return self.requests - self.inflight

    def start(self, chunk: messages.Batch, tag: Any = None) -> None:
        """Run `chunk` (its data: the model inputs, N frames); `tag` comes back with its
        outputs."""
        data, n, size = chunk.data, len(chunk), self.batch
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        full = n - n % size if self._singles else n
        running = _Running(chunk, tag, np.empty((n, self._classes), self._dtype))
        parts = [(at, size) for at in range(0, full, size)]
        parts += [(at, 1) for at in range(full, n)]
        start, tensor, requests = self._start_async, self._tensor, self._all
        last = len(parts) - 1
        for i, (at, k) in enumerate(parts):
            number = (self._waking if i == last else self._silent)[k].pop()
            self._running[number] = running
            running.numbers.append((number, at))
            start(requests[number], tensor(data[at : at + k], shared_memory=True), None)
        self.inflight += 1
        self.frames_inflight += n

    def finished(self) -> list[tuple[messages.Batch, Any, Any]]:
        """(batch, outputs [N, classes], tag) of every batch finished since the last call;
        InferenceError if one of their requests failed."""
        try:
            woken = os.read(self._rfd, 1 << 16)
        except BlockingIOError:
            return []
        out = []
        for (last,) in _NUMBER.iter_unpack(woken):
            running = self._running[last]
            assert running is not None
            for number, at in running.numbers:
                request = self._all[number]
                try:
                    # Done, or nearly: started before the last one. Also waits out the last
                    # one's callback, which must return before the request runs again.
                    request.wait()
                    data = request.get_output_tensor(0).data
                except Exception as exc:
                    raise InferenceError(exc) from None
                running.out[at : at + len(data)] = data.reshape(len(data), -1)
                self._running[number] = None
                pool = self._waking if number == last else self._silent
                pool[self._size[number]].append(number)
            self.inflight -= 1
            self.frames_inflight -= len(running.chunk)
            out.append((running.chunk, running.out, running.tag))
        return out

    def check(self) -> None:
        """InferenceError if the last request of a batch in flight failed. OpenVINO calls no
        callback for a failed request, so such a batch would never wake its owner: an owner
        with batches in flight and nothing else to do calls this (one `wait_for(0)` a batch)."""
        for number, running in enumerate(self._running):
            if running is None or running.numbers[-1][0] != number:
                continue
            try:
                self._all[number].wait_for(0)
            except Exception as exc:
                raise InferenceError(exc) from None

    def close(self) -> None:
        if self._all:
            for request in self._all:
                with contextlib.suppress(Exception):  # a failed one: the run ends anyway
                    request.wait()
            self._running = []
            self._all = []  # each request is deleted with the GIL released
            os.close(self._rfd)
            os.close(self._wfd)


class InferenceError(RuntimeError):
    """An inference request failed inside OpenVINO; the message is OpenVINO's own reason."""

    def __init__(self, exc: BaseException) -> None:
        # OpenVINO's text is a stack of "Exception from src/...:N:" lines and its reason last.
        lines = [line.strip() for line in str(exc).splitlines()]
        reasons = [line for line in lines if line and not line.startswith("Exception from ")]
        super().__init__(f"inference failed: {reasons[-1] if reasons else str(exc).strip()}")


_NUMBER = struct.Struct("=H")
"""A request's number, as its callback writes it to the wake-up pipe (a write of 2 bytes is
atomic, so the pipe always holds whole numbers)."""


class _Running:
    """A batch in flight: its results gather in `out` once its requests are done."""

    __slots__ = ("chunk", "numbers", "out", "tag")

    def __init__(self, chunk: messages.Batch, tag: Any, out: np.ndarray) -> None:
        self.chunk = chunk
        self.tag = tag
        self.out = out
        self.numbers: list[tuple[int, int]] = []
        """(request number, first frame) of each of its requests, the waking one last."""


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

"""Frames in shared memory: a capture writes each model input once into a slot of its pool, and
only the slot's number travels through preprocess to infer, which copies the frame into the
inference request and frees the slot.

Without it a 150 KB frame (224x224x3) is copied by the kernel at each of three process hops and
once more into preprocess's batch; with it the frame is written once by capture and read once by
infer, and preprocess moves a few bytes per frame.

A pool is one file in the run's folder under /dev/shm (tmpfs): a header, one flag byte per slot
(0 free, 1 holding a frame) and the slots. The capture owns the pool and sets a flag before it
sends the slot's number; infer (or preprocess, for a frame it rejects) clears it once the frame is
copied out (the frame reaches infer after its flag is set through a socket, a system call on
each side; the flag is cleared only after the copy, which x86-64's memory order keeps in that
order for the capture to see; a weakly ordered CPU such as ARM would want a fence between the
copy and the clear, which Python does not offer: not tried there). The space is reserved when
the pool is made (`posix_fallocate`), so a full tmpfs (Docker's 64 MB /dev/shm) shows when a pool
is made, and that capture then sends its frames inside the messages as before, with one
warning; nothing else changes.

A capture that finds every slot in flight waits on its pool's wake-up pipe (a FIFO next to the
pool, `<pid>.wake`): it raises the pool's waiting byte, and whoever frees slots next (infer, or
preprocess for a rejected frame) lowers it and writes one byte to the pipe. So a waiting capture
wakes when slots come free, not on a timer; a wake-up lost to the two sides' stores crossing (x86
may order a store after a later load) costs one `WAKE_TIMEOUT_S`, not a hang.

The run's folder (`ovstream-<pid>-XXXX`, made by the pipeline and removed when it closes) holds
every pool of the run; a folder left by a run whose process was killed is removed by the next.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import select
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from stream.wire.messages import Batch

log = logging.getLogger(__name__)

SHM_ROOT = Path("/dev/shm")
DIR_PREFIX = "ovstream-"
MAGIC = b"OVSHM002"
_HEADER = struct.Struct("<8sqqqq")  # magic, slots, height, width, channels
WAITING_AT = 48
"""The waiting byte: 1 while the capture waits for free slots on its wake-up pipe."""
FLAGS_AT = 64
DEFAULT_SLOTS = 48
"""Frames one capture may have between itself and infer. A loaded pipeline holds about 40 of a
single source's frames in its queues (two links of 4 messages, infer's queue, preprocess's
batch); with fewer the capture waits for a slot, which is backpressure like a full queue."""
POOL_NAME = re.compile(r"[0-9]{1,10}\.pool")
"""What a message may name: `<pid of the capture>.pool` in the run's folder, nothing else."""
WAKE_TIMEOUT_S = 0.05
"""The longest a waiting capture sleeps without a wake-up (a lost one; a stop)."""
WAIT_STEP_S = 0.0005
WAIT_STEP_MAX_S = 0.005
"""Without a wake-up pipe (none could be made) the capture looks again after these sleeps."""
RESUME_FREE = DEFAULT_SLOTS // 4
"""A capture that found every slot in flight goes on once this many are free again (`wait`), and
then decodes that many frames in one go: one wake-up a burst, not one a frame, with the decoder's
state still in cache. With 8 files of 640x360 on 2 cores, waking for each freed slot cost each
capture 1.07-1.12 s of CPU for 800 frames, bursts 0.83-0.86 s. Waking by the pipe instead of
looking every 0.5-5 ms (about 175 times a second each) gave 8 such files 351.9-353.7 FPS against
342.9-345.7, and 0.12 ms less CPU a frame."""


def make_run_dir(pools: int, shape: tuple[int, int, int], root: Path = SHM_ROOT) -> str | None:
    """A fresh folder for this run's pools, or None (with one warning) where there is no tmpfs
    with room for `pools` pools of frames of `shape`; folders left by runs whose process is gone
    are removed first."""
    if not root.is_dir() or not os.access(root, os.W_OK):
        log.warning("no %s: frames go inside the messages between stages", root)
        return None
    for old in root.glob(f"{DIR_PREFIX}*"):
        pid = old.name[len(DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    need = pools * pool_bytes(shape)
    stat = os.statvfs(root)
    room = stat.f_bavail * stat.f_frsize
    if room < need:
        log.warning(
            "%s has %d MiB free, %d MiB wanted for %d frame pool(s): frames go inside the "
            "messages between stages",
            root,
            room >> 20,
            -(-need >> 20),
            pools,
        )
        return None
    try:
        return tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=root)
    except OSError as exc:
        log.warning("cannot use %s (%s): frames go inside the messages", root, exc.strerror)
        return None


def pool_bytes(shape: tuple[int, int, int], slots: int = DEFAULT_SLOTS) -> int:
    """The size of a pool's file."""
    return _data_offset(slots) + slots * int(np.prod(shape))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FramePool:
    """`slots` frames of one shape (H x W x C uint8) in a shared file."""

    def __init__(self, path: Path, mm: mmap.mmap, slots: int, shape: tuple[int, int, int]) -> None:
        self.path = path
        self.name = path.name
        self.slots = slots
        self.shape = shape
        self._mm = mm
        self._flags = memoryview(mm)[FLAGS_AT : FLAGS_AT + slots]
        start = _data_offset(slots)
        self.frames = np.frombuffer(mm, np.uint8, slots * int(np.prod(shape)), start).reshape(
            slots, *shape
        )
        self._cursor = 0
        self._wake_path = path.with_suffix(".wake")
        self._wake_r: int | None = None
        """The capture's end of the wake-up pipe (None: it has none, it polls)."""
        self._wake_w: int | None = None
        """The end that `release` writes to (the capture keeps one open too, so that the pipe
        never reads as closed)."""

    @classmethod
    def create(
        cls, folder: str | Path, shape: tuple[int, int, int], slots: int = DEFAULT_SLOTS
    ) -> FramePool:
        """A new pool of this process (`<pid>.pool` in `folder`); OSError if there is no room."""
        path = Path(folder) / f"{os.getpid()}.pool"
        size = pool_bytes(shape, slots)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # ENOSPC now, not SIGBUS on a later write
            mm = mmap.mmap(fd, size)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        finally:
            os.close(fd)
        mm[: _HEADER.size] = _HEADER.pack(MAGIC, slots, *shape)
        pool = cls(path, mm, slots, shape)
        try:
            os.mkfifo(pool._wake_path, 0o600)
            pool._wake_r = os.open(pool._wake_path, os.O_RDONLY | os.O_NONBLOCK)
            pool._wake_w = os.open(pool._wake_path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            log.debug("frame pool %s: no wake-up pipe (%s): the capture polls", path, exc)
        return pool

    @classmethod
    def attach(cls, folder: str | Path, name: str) -> FramePool:
        """Open the pool `name` of `folder`; ValueError if it is not one."""
        if not POOL_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a frame pool name")
        path = Path(folder) / name
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ValueError(f"frame pool {name}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < FLAGS_AT:
                raise ValueError(f"frame pool {name}: {size} bytes is no pool")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        magic, slots, *shape = _HEADER.unpack(mm[: _HEADER.size])
        shape = tuple(shape)
        if magic != MAGIC or slots < 1 or min(shape) < 1:
            raise ValueError(f"frame pool {name}: not a pool of this version")
        if size < pool_bytes(shape, slots):
            raise ValueError(f"frame pool {name}: shorter than its header says")
        return cls(path, mm, slots, shape)  # type: ignore[arg-type]

    # -- the capture's side -----------------------------------------------------------------------

    def acquire(self) -> int | None:
        """A free slot, now marked as holding a frame; None if every slot holds one."""
        flags, n = self._flags, self.slots
        start = self._cursor
        for k in range(n):
            i = (start + k) % n
            if not flags[i]:
                flags[i] = 1
                self._cursor = (i + 1) % n
                return i
        return None

    def wait(
        self, stop: Callable[[], bool], timeout_s: float | None = None, resume: int = RESUME_FREE
    ) -> int | None:
        """`acquire`; when every slot holds a frame, wait until `resume` slots (at most all) are
        free again. None if `stop()` or the timeout came first."""
        slot = self.acquire()
        if slot is not None:
            return slot
        want = max(1, min(resume, self.slots))
        step = WAIT_STEP_S
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.slots - self.in_use() < want:
            if stop() or (deadline is not None and time.monotonic() >= deadline):
                return None
            if self._wake_r is None:
                time.sleep(step)
                step = min(step * 2, WAIT_STEP_MAX_S)
                continue
            self._mm[WAITING_AT] = 1
            if self.slots - self.in_use() >= want:  # freed before the byte was seen
                break
            wait = WAKE_TIMEOUT_S
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            select.select([self._wake_r], [], [], wait)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        self._mm[WAITING_AT] = 0
        return self.acquire()

    def has_free(self) -> bool:
        return 0 in self._flags.tobytes()

    # -- infer's side -----------------------------------------------------------------------------

    def release(self, slots: Iterable[int]) -> None:
        """The frames of these slots were copied out: the capture may reuse them."""
        flags = self._flags
        for i in slots:
            flags[i] = 0
        if self._mm[WAITING_AT]:
            self._mm[WAITING_AT] = 0
            self._wake()

    def _wake(self) -> None:
        """One byte down the wake-up pipe (nothing if it is gone or already full)."""
        # No pipe, or no reader (the capture has gone), or full: it wakes anyway.
        with contextlib.suppress(OSError):
            if self._wake_w is None:
                self._wake_w = os.open(self._wake_path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        """Close the wake-up pipe's ends held here (the pool's memory goes with the object)."""
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = None

    def in_use(self) -> int:
        return self.slots - self._flags.tobytes().count(0)


def _data_offset(slots: int) -> int:
    return -(-(FLAGS_AT + slots) // 4096) * 4096  # page-aligned frames


class PoolSet:
    """The pools of a run a stage has opened (infer, preprocess), by name."""

    def __init__(self, folder: str | None) -> None:
        self.folder = folder
        self._pools: dict[str, FramePool] = {}

    def get(self, name: str) -> FramePool:
        """The pool `name`; ValueError if it cannot be opened."""
        pool = self._pools.get(name)
        if pool is None:
            if not self.folder:
                raise ValueError("frames in shared memory, but this run has no shared folder")
            pool = self._pools[name] = FramePool.attach(self.folder, name)
        return pool

    def problem(self, batch: Batch) -> str | None:
        """None if every frame `batch` names is in a pool of this run, of its shape; else why
        not (the batch is then rejected and its slots left alone)."""
        shared = batch.shared
        assert shared is not None
        try:
            opened = [self.get(name) for name in shared.pools]
        except ValueError as exc:
            return str(exc)
        for pool in opened:
            if pool.shape != shared.shape:
                return f"frame pool {pool.name} holds {list(pool.shape)}, not {list(shared.shape)}"
        for number, slot in batch.data.tolist():
            if slot >= opened[number].slots:
                return f"slot {slot} of frame pool {opened[number].name} does not exist"
        return None

    def release(self, batch: Batch) -> None:
        """Free the slots of a shared batch that will not be read (a rejected frame)."""
        shared = batch.shared
        if shared is None:
            return
        for number, slot in batch.data.tolist():
            with contextlib.suppress(ValueError, IndexError):
                self.get(shared.pools[number]).release((slot,))

    def gather(self, pieces: list[Batch], out: np.ndarray | None = None) -> Batch:
        """One batch of the pieces' frames, copied into `out` (or a new array) from their
        messages or out of their slots, which are then freed; a single piece whose frames are in
        its message comes back as it is."""
        if len(pieces) == 1 and pieces[0].shared is None:
            return pieces[0]
        total = sum(len(p) for p in pieces)
        if out is None:
            out = np.empty((total, *frame_shape(pieces[0])), np.uint8)
        at = 0
        for piece in pieces:
            n = len(piece)
            if piece.shared is None:
                out[at : at + n] = piece.data
            else:
                pools = [self.get(name) for name in piece.shared.pools]
                refs = piece.data.tolist()
                for i, (number, slot) in enumerate(refs):
                    out[at + i] = pools[number].frames[slot]
                for number, pool in enumerate(pools):
                    pool.release([slot for n, slot in refs if n == number])
            at += n
        return Batch.join(pieces, out)


def frame_shape(batch: Batch) -> tuple[int, ...]:
    """The shape of one of the batch's frames, wherever they are."""
    return batch.shared.shape if batch.shared is not None else batch.data.shape[1:]

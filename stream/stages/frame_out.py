"""How a capture's frames leave it: cut to the model input (`WindowScaler`) straight into a slot
of the process's frame pool in shared memory (stream/wire/shm.py), so only the slot's number
travels (`message` for one frame, `slots_message` for several already in their slots), or,
where the run has no shared folder or it has no room, inside the message."""

from __future__ import annotations

import logging
import math

import av
import numpy as np

from stream.geometry import Geometry
from stream.sources.decode import WindowScaler
from stream.wire import messages
from stream.wire.shm import FramePool

log = logging.getLogger(__name__)


class FrameOut:
    """The FRAME messages of one capture process."""

    def __init__(
        self, geometry: Geometry, endpoints: dict[str, str], owner: str, fmt: str = "bgr"
    ) -> None:
        """`endpoints`: the stage's; its `shm` (the run's shared folder) is read at the first
        frame, since the pipeline adds it after making the stages. `fmt`: the run's frame
        format (`stream.geometry.FRAME_FORMATS`)."""
        self.geometry = geometry
        self.scale = WindowScaler(geometry, fmt)
        """Decoded frame -> model input (`scale(frame, out=slot)` writes it into a slot)."""
        self.shape = self.scale.shape
        """One frame's shape, as it leaves (kept: a benchmark replaces `scale`)."""
        self._endpoints = endpoints
        self._owner = owner
        self._pool: FramePool | None = None
        self._tried = False

    def pool(self) -> FramePool | None:
        """The process's frame pool, made at its first frame; None where the run has no shared
        folder or there is no room (the frames then go inside the messages)."""
        if self._pool is None and not self._tried:
            self._tried = True
            folder = self._endpoints.get("shm")
            if folder:
                try:
                    self._pool = FramePool.create(folder, self.shape)
                except OSError as exc:
                    log.warning(
                        "%s: no room in shared memory for its frames (%s): they go inside the "
                        "messages",
                        self._owner,
                        exc.strerror,
                    )
        return self._pool

    def message(
        self,
        stream_id: str,
        seq: int,
        index: int,
        pts: float | None,
        capture_ts: float,
        frame: av.VideoFrame,
        slot: int | None,
    ) -> list:
        """A FRAME message of one frame, cut to the model input (so `prepared`) in the run's frame
        format: into `slot` of the pool, or without one inside the message."""
        if slot is not None:
            self.into_slot(frame, slot)
            row = (seq, index, math.nan if pts is None else pts, capture_ts, slot)
            return self.slots_message(stream_id, [row])
        image = self.scale(frame)
        batch = messages.Batch.single(stream_id, seq, index, pts, capture_ts, image)
        return messages.encode_batch(messages.FRAME, batch, {"prepared": True})

    def into_slot(self, frame: av.VideoFrame, slot: int) -> None:
        """Cut `frame` to the model input straight into `slot` of the pool."""
        assert self._pool is not None
        self.scale(frame, out=self._pool.frames[slot])

    def slots_message(self, stream_id: str, rows: list[tuple[int, int, float, float, int]]) -> list:
        """A FRAME message of frames already in the pool (`into_slot`): one row each of
        (seq, frame index, pts, capture time, slot)."""
        pool = self._pool
        assert pool is not None and rows
        batch = messages.Batch(
            [stream_id],
            np.array([(0, seq, index) for seq, index, _, _, _ in rows], dtype=np.int64),
            np.array([(pts, captured) for _, _, pts, captured, _ in rows], dtype=np.float64),
            np.array([(0, slot) for *_, slot in rows], dtype=np.int64),
            messages.Shared([pool.name], pool.shape),
        )
        return messages.encode_batch(messages.FRAME, batch, {"prepared": True})

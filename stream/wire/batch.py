"""The frames of a data message (wire version 2, stream/wire/messages.py): `Batch`, with
`Shared` where the frames stay in shared memory (stream/wire/shm.py).

A batch is a few small arrays (which stream, which frame, when) next to the frames or their
model outputs, so a stage handles a batch's bookkeeping with a few numpy operations and the
frames themselves are never touched but by the one who needs them. `messages.encode_batch` and
`messages.decode` carry it over a socket.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shared:
    """Where a batch's frames are when they stay in shared memory: `Batch.data` is then int64
    [N, 2], the pool number (into `pools`) and slot of each frame."""

    pools: list[str]
    """Pool names (stream/wire/shm.py), files in the run's shared folder."""
    shape: tuple[int, ...]
    """The shape of one frame (`Geometry.frame_shape`: (H*3/2, W, 1) or (H, W, 3)), uint8."""


@dataclass
class Batch:
    """The frames of one data message, of any streams, in the order they were taken.

    `index` and `times` are small arrays, so a stage handles a batch's bookkeeping with a few
    numpy operations and the frames themselves are never touched but by the one who needs them.
    """

    streams: list[str]
    """Stream ids that `index[:, 0]` refers to: each of them has frames in the batch (a stage
    that sees a stream's end rejects any later batch naming it)."""
    index: np.ndarray
    """int64 [N, 3]: stream number, per-stream sequence number, source frame index."""
    times: np.ndarray
    """float64 [N, 2]: pts in seconds (NaN: unknown), capture time (Unix seconds)."""
    data: np.ndarray
    """[N, ...]: the frames or their model outputs (with `shared`: where the frames are)."""
    shared: Shared | None = None
    """Set when the frames are in shared memory rather than in `data`."""

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @classmethod
    def single(
        cls,
        stream: str,
        seq: int,
        frame_index: int,
        pts: float | None,
        capture_ts: float,
        frame: np.ndarray,
    ) -> Batch:
        """A batch of one frame (what a capture sends)."""
        return cls(
            [stream],
            np.array([[0, seq, frame_index]], dtype=np.int64),
            np.array([[math.nan if pts is None else pts, capture_ts]], dtype=np.float64),
            frame[None],
        )

    def stream_ids(self) -> list[str]:
        """The stream id of each frame."""
        streams = self.streams
        return [streams[i] for i in self.index[:, 0].tolist()]

    def rows(self) -> Iterator[tuple[str, int, int, float | None, float]]:
        """(stream, seq, frame_index, pts or None, capture_ts) of each frame."""
        streams = self.streams
        for (n, seq, frame_index), (pts, capture_ts) in zip(
            self.index.tolist(), self.times.tolist(), strict=True
        ):
            yield streams[n], seq, frame_index, None if math.isnan(pts) else pts, capture_ts

    def take(self, start: int, stop: int) -> Batch:
        """Frames `start:stop`: views of the frames (no copy), naming only their own streams."""
        index = self.index[start:stop]
        streams = self.streams
        if len(streams) > 1:
            present = np.unique(index[:, 0])
            if len(present) < len(streams):  # renumber: a batch names only streams it holds
                renumber = np.zeros(len(streams), dtype=np.int64)
                renumber[present] = np.arange(len(present))
                index = index.copy()
                index[:, 0] = renumber[index[:, 0]]
                streams = [streams[i] for i in present.tolist()]
        return Batch(streams, index, self.times[start:stop], self.data[start:stop], self.shared)

    def with_data(self, data: np.ndarray) -> Batch:
        """The same frames with another payload (their model outputs)."""
        if data.shape[0] != len(self):
            raise ValueError(f"{data.shape[0]} outputs for {len(self)} frames")
        return Batch(self.streams, self.index, self.times, data)

    @staticmethod
    def join(batches: Sequence[Batch], data: np.ndarray | None = None) -> Batch:
        """One batch of all their frames, in order; a single batch is returned as it is.

        Either all or none of them are `shared`; `data`: the frames, gathered by the caller
        (then the result is not shared)."""
        if len(batches) == 1 and data is None:
            return batches[0]
        index, streams = _joined_numbers([b.streams for b in batches], [b.index for b in batches])
        times = np.concatenate([b.times for b in batches])
        shared = batches[0].shared
        if data is not None:
            return Batch(streams, index, times, data)
        if shared is None:
            if any(b.shared for b in batches):
                raise ValueError("cannot join frames in shared memory with frames in messages")
            return Batch(streams, index, times, np.concatenate([b.data for b in batches]))
        if not all(b.shared and b.shared.shape == shared.shape for b in batches):
            raise ValueError("cannot join frames in messages with frames in shared memory")
        refs, pools = _joined_numbers(
            [b.shared.pools for b in batches],  # type: ignore[union-attr]
            [b.data for b in batches],
        )
        return Batch(streams, index, times, refs, Shared(pools, shared.shape))


def _joined_numbers(
    names: Sequence[list[str]], tables: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[str]]:
    """Tables whose column 0 numbers into their own list of names, renumbered into one list of
    the names in order of first appearance, and concatenated: (table, names)."""
    numbers: dict[str, int] = {}
    out = []
    for own, table in zip(names, tables, strict=True):
        remap = np.array([numbers.setdefault(n, len(numbers)) for n in own], np.int64)
        table = table.copy()
        table[:, 0] = remap[table[:, 0]]
        out.append(table)
    return np.concatenate(out), list(numbers)

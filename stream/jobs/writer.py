"""Per-video JSON Lines outputs of a batch job, each whole or absent under its final name.

Results of a stream go to a hidden `.NAME.jsonl.part` beside its final `OUT/<stream id>.jsonl`,
one line per record in frame order. At the stream's end the part is flushed, fsynced and renamed
over the final name, and only then is the file marked done: a job killed between the two marks
nothing, so the file is still `running` on the next start and is redone (its output overwritten
by an identical whole file). Parts left by a killed job are deleted on start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stream import messages
from stream.errors import UserError
from stream.jobs.state import JobState

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
PART_SUFFIX = ".jsonl.part"


def output_path(out_dir: Path, stream_id: str) -> Path:
    """`OUT/<stream id>.jsonl` (the stream id is a relative path)."""
    return out_dir / (stream_id + SUFFIX)


def part_path(out_dir: Path, stream_id: str) -> Path:
    """The hidden temporary name the output is written under: `.NAME.jsonl.part`."""
    final = output_path(out_dir, stream_id)
    return final.with_name("." + final.name[: -len(SUFFIX)] + PART_SUFFIX)


def find_parts(out_dir: Path) -> Iterator[Path]:
    """Partial outputs under `out_dir` (left by a job that was killed)."""
    stack = [out_dir]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX):
                yield Path(entry.path)


def discard_parts(out_dir: Path) -> int:
    """Delete every partial output; returns how many there were."""
    n = 0
    for part in find_parts(out_dir):
        part.unlink(missing_ok=True)
        n += 1
    return n


@dataclass
class _Open:
    path: str
    file: IO[bytes]
    lines: int = 0


@dataclass(frozen=True)
class Outcome:
    """How one stream ended: `done`, `failed` (with `error`) or `pending` (stopped early)."""

    status: str
    frames: int
    error: str | None = None


class OutputWriter:
    """Writes each stream's records to its part file and finishes it into the job state."""

    def __init__(self, out_dir: Path, state: JobState, paths: dict[str, str]) -> None:
        self.out_dir = out_dir
        self.state = state
        self.paths = paths
        """Input path of each stream id of this run."""
        self.open: dict[str, _Open] = {}

    def write(self, record: dict[str, Any]) -> None:
        """Append one result to its stream's part file (opened, and the file marked running,
        on its first result)."""
        sid = record["stream_id"]
        current = self.open.get(sid)
        if current is None:
            current = self._start(sid)
        current.file.write(messages.dump_result(record) + b"\n")
        current.lines += 1

    def _start(self, sid: str) -> _Open:
        path = self.paths[sid]
        self.state.mark_running(path)
        part = part_path(self.out_dir, sid)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            f = open(part, "wb")  # noqa: SIM115 (closed in finish/close)
        except OSError as exc:
            raise UserError(f"cannot write {part}: {exc.strerror}") from None
        current = self.open[sid] = _Open(path, f)
        return current

    def finish(
        self, sid: str, published: int, error: str | None = None, stopped: bool = False
    ) -> Outcome:
        """The stream ended: rename its complete output and mark it done, or mark it failed
        (`error`) or pending again (`stopped` before its end), discarding the part."""
        current = self.open.pop(sid, None)
        path = self.paths[sid]
        lines = current.lines if current else 0
        if error is None and not stopped and lines != published:
            error = f"{published} result(s) published but {lines} received"
        if error is not None or stopped:
            if current is not None:
                current.file.close()
                part_path(self.out_dir, sid).unlink(missing_ok=True)
            if stopped and error is None:
                self.state.mark_pending(path)
                return Outcome("pending", lines)
            assert error is not None
            self.state.mark_failed(path, error, lines or None)
            return Outcome("failed", lines, error)
        if current is None:  # a stream that yielded no result and no error: an empty output
            current = self._start(sid)
        part = part_path(self.out_dir, sid)
        try:
            current.file.flush()
            os.fsync(current.file.fileno())
            current.file.close()
            os.replace(part, output_path(self.out_dir, sid))
        except OSError as exc:
            raise UserError(f"cannot write {output_path(self.out_dir, sid)}: {exc}") from None
        self.state.mark_done(path, lines)
        return Outcome("done", lines)

    def close(self) -> None:
        """Discard the outputs of streams that did not end (the pipeline stopped or died): their
        files go back to pending, to be redone from their first frame by the next run."""
        for sid, current in self.open.items():
            current.file.close()
            part_path(self.out_dir, sid).unlink(missing_ok=True)
            self.state.mark_pending(current.path)
        self.open.clear()

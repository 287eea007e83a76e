"""A batch job's state in SQLite (`OUT/job.sqlite`, WAL): one row per input file.

A file is `pending`, `running` (results are being written), `done` (its JSONL is complete under
its final name) or `failed` (with a one-line reason). Every change is its own transaction, so a
job killed at any moment leaves a consistent state: on the next start `running` files go back to
`pending` and are redone from their first frame, `done` files whose input changed (size,
modification time, stream id) or whose output is gone go back to `pending` too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.errors import UserError
from stream.jobs.inputs import InputFile

DB_NAME = "job.sqlite"
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    frames INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    ended_at REAL,
    size INTEGER,
    mtime_ns INTEGER,
    listed INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS files_status ON files (status);
"""


@dataclass
class FileRow:
    """One file's row."""

    path: str
    stream_id: str
    status: str
    frames: int | None
    error: str | None
    attempts: int
    started_at: float | None
    ended_at: float | None
    size: int | None
    mtime_ns: int | None


@dataclass
class SyncResult:
    """What syncing the inputs with the job's state found."""

    todo: list[FileRow]
    """Files to run now (pending), in stream id order."""
    skipped_done: int = 0
    """Done before and unchanged."""
    kept_failed: int = 0
    """Failed before and kept failed (no --retry-failed)."""
    failed_now: list[FileRow] = field(default_factory=list)
    """Files found unreadable at start-up (missing, not a file): failed without running."""
    interrupted: int = 0
    """Files that were running when the last run died: redone."""
    changed: int = 0
    """Done or failed files whose input changed since: redone."""
    stale_outputs: list[str] = field(default_factory=list)
    """Stream ids whose earlier output no longer matches its input (to delete)."""


@dataclass
class StatusSummary:
    """Counts of a job, for `--status` and the end-of-run summary."""

    counts: dict[str, int]
    frames: int
    failed: list[tuple[str, str]]
    """(stream id, reason) of each failed file."""
    running: list[str]
    not_listed: int
    """Rows of files the last run did not list (left as they were)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class JobState:
    """The job database of one output folder."""

    def __init__(self, out_dir: str | os.PathLike[str], create: bool = True) -> None:
        self.path = Path(out_dir) / DB_NAME
        if not create and not self.path.is_file():
            raise UserError(f"no batch job in {out_dir} (no {DB_NAME})")
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open job state {self.path}: {exc}") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise UserError(f"{self.path} is not a job database: {exc}") from None

    def _check_schema(self) -> None:
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else None
            if version != SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} has job state version {version}, this ovstream reads "
                    f"{SCHEMA_VERSION}; use another --out or --restart"
                )
            return
        if tables:
            raise UserError(f"{self.path} is not an ovstream job database")
        self.db.executescript(
            "BEGIN;"
            + SCHEMA
            + f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');"
            + f"INSERT INTO meta VALUES ('created_at', '{time.time()}');"
            + "COMMIT;"
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> JobState:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- start-up -------------------------------------------------------------------------------

    def reset(self) -> list[str]:
        """Forget every file (--restart); returns the stream ids whose output was done."""
        done = [r[0] for r in self.db.execute("SELECT stream_id FROM files WHERE status='done'")]
        self.db.execute("DELETE FROM files")
        return done

    def sync(
        self,
        inputs: Iterable[InputFile],
        retry_failed: bool = False,
        output_exists: Callable[[str], bool] = lambda _sid: True,
    ) -> SyncResult:
        """Bring the rows in line with this run's inputs (one transaction) and say what to run.

        Unchanged done files are skipped (their output must still exist), failed ones kept
        failed unless `retry_failed`; running ones were interrupted and go back to pending;
        new and changed files are pending. Files that cannot even be `stat`ed fail here.
        """
        rows = {r.path: r for r in self.rows()}
        now = time.time()
        result = SyncResult(todo=[])
        upserts: list[tuple[Any, ...]] = []
        for f in inputs:
            row = rows.pop(f.path, None)
            changed = row is not None and (
                (row.size, row.mtime_ns, row.stream_id) != (f.size, f.mtime_ns, f.stream_id)
            )
            if row is not None and row.status == "done" and not changed:
                if output_exists(row.stream_id):
                    result.skipped_done += 1
                    upserts.append(_values(row, listed=1))
                    continue
                changed = True
            if row is not None and row.status == "failed" and not changed and not retry_failed:
                result.kept_failed += 1
                upserts.append(_values(row, listed=1))
                continue
            if row is not None and row.status == "running":
                result.interrupted += 1
            elif changed:
                result.changed += 1
                if row is not None and row.status == "done":
                    result.stale_outputs.append(row.stream_id)
            attempts = row.attempts if row is not None else 0
            new = FileRow(f.path, f.stream_id, "pending", None, None, attempts, None, None,
                          f.size, f.mtime_ns)  # fmt: skip
            if f.error is not None:
                new.status, new.error, new.attempts = "failed", f.error, attempts + 1
                new.started_at = new.ended_at = now
                result.failed_now.append(new)
            else:
                result.todo.append(new)
            upserts.append(_values(new, listed=1))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("UPDATE files SET listed=0")
            self.db.executemany(
                "INSERT OR REPLACE INTO files (path, stream_id, status, frames, error, attempts,"
                " started_at, ended_at, size, mtime_ns, listed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                upserts,
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        result.todo.sort(key=lambda r: r.stream_id)
        return result

    # -- while running --------------------------------------------------------------------------

    def mark_running(self, path: str) -> None:
        """The file's first result arrived: it is being written (one more attempt)."""
        self.db.execute(
            "UPDATE files SET status='running', attempts=attempts+1, started_at=?, ended_at=NULL,"
            " error=NULL, frames=NULL WHERE path=?",
            (time.time(), path),
        )

    def mark_done(self, path: str, frames: int) -> None:
        """The file's output is complete under its final name."""
        self.db.execute(
            "UPDATE files SET status='done', frames=?, error=NULL, ended_at=? WHERE path=?",
            (frames, time.time(), path),
        )

    def mark_failed(self, path: str, error: str, frames: int | None = None) -> None:
        """The file cannot be read; a file that failed before its first result counts one
        attempt too."""
        now = time.time()
        self.db.execute(
            "UPDATE files SET attempts=attempts + (status != 'running'),"
            " started_at=CASE WHEN status='running' THEN started_at ELSE ? END,"
            " status='failed', error=?, frames=?, ended_at=? WHERE path=?",
            (now, error, frames, now, path),
        )

    def mark_pending(self, path: str) -> None:
        """Stopped before its end (a requested stop): to be run again from its first frame."""
        self.db.execute(
            "UPDATE files SET status='pending', ended_at=NULL, frames=NULL WHERE path=?", (path,)
        )

    # -- reading --------------------------------------------------------------------------------

    def rows(self, where: str = "", params: tuple[Any, ...] = ()) -> list[FileRow]:
        sql = (
            "SELECT path, stream_id, status, frames, error, attempts, started_at, ended_at,"
            " size, mtime_ns FROM files " + where
        )
        return [FileRow(*r) for r in self.db.execute(sql, params)]

    def row(self, path: str) -> FileRow | None:
        rows = self.rows("WHERE path=?", (path,))
        return rows[0] if rows else None

    def summary(self) -> StatusSummary:
        """Counts by status, frames done, failures and running files of the listed files."""
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.db.execute(
            "SELECT status, COUNT(*) FROM files WHERE listed=1 GROUP BY status"
        ):
            counts[status] = n
        frames = self.db.execute(
            "SELECT COALESCE(SUM(frames), 0) FROM files WHERE listed=1 AND status='done'"
        ).fetchone()[0]
        failed = [
            (r.stream_id, r.error or "")
            for r in self.rows("WHERE listed=1 AND status='failed' ORDER BY stream_id")
        ]
        running = [r.stream_id for r in self.rows("WHERE status='running' ORDER BY stream_id")]
        not_listed = self.db.execute("SELECT COUNT(*) FROM files WHERE listed=0").fetchone()[0]
        return StatusSummary(counts, int(frames), failed, running, int(not_listed))


def _values(row: FileRow, listed: int) -> tuple[Any, ...]:
    return (
        row.path,
        row.stream_id,
        row.status,
        row.frames,
        row.error,
        row.attempts,
        row.started_at,
        row.ended_at,
        row.size,
        row.mtime_ns,
        listed,
    )

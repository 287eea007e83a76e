"""Batch job parts without a pipeline: input expansion, the SQLite job state, the JSONL writer."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from stream.errors import UserError
from stream.jobs.inputs import expand_inputs
from stream.jobs.state import JobState
from stream.jobs.writer import OutputWriter, discard_parts, find_parts, output_path, part_path


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- inputs ---------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    for name in ("a.mp4", "b.MKV", "notes.txt", "sub/c.mov", "sub/deep/d.webm", ".hidden/e.mp4"):
        touch(root / name)
    touch(root / "sub" / ".f.mp4")
    return root


def test_a_folder_is_searched_recursively_for_videos_by_extension(tree: Path) -> None:
    inputs = expand_inputs([str(tree)])
    assert inputs.root == str(tree)
    assert [f.stream_id for f in inputs.files] == [
        "a.mp4",
        "b.MKV",
        "sub/c.mov",
        "sub/deep/d.webm",
    ]
    assert all(f.error is None and f.size == 1 for f in inputs.files)


def test_stream_ids_are_relative_to_the_common_folder_of_files_and_folders(tree: Path) -> None:
    inputs = expand_inputs([str(tree / "sub" / "c.mov"), str(tree / "sub" / "deep")])
    assert inputs.root == str(tree / "sub")
    assert [f.stream_id for f in inputs.files] == ["c.mov", "deep/d.webm"]
    # a single file: relative to its own folder
    assert [f.stream_id for f in expand_inputs([str(tree / "a.mp4")]).files] == ["a.mp4"]


def test_globs_lists_and_duplicates(tree: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# clips\n\nmedia/a.mp4\n{tree / 'sub'}\n  media/notes.txt  \n")
    inputs = expand_inputs([str(tree / "**" / "*.mp4"), f"@{listing}", str(tree / "a.mp4")])
    # notes.txt named in the list is taken whatever its extension; a.mp4 once
    assert [f.stream_id for f in inputs.files] == [
        "a.mp4",
        "notes.txt",
        "sub/c.mov",
        "sub/deep/d.webm",
    ]


def test_a_missing_file_is_kept_with_its_reason(tree: Path) -> None:
    inputs = expand_inputs([str(tree / "a.mp4"), str(tree / "gone.mp4")])
    gone = inputs.files[1]
    assert gone.stream_id == "gone.mp4" and gone.size is None
    assert gone.error == f"no such file: {tree / 'gone.mp4'}"


def test_a_path_in_the_status_topic_namespace_fails_alone(tmp_path: Path) -> None:
    touch(tmp_path / "m" / "_status" / "x.mp4")
    touch(tmp_path / "m" / "ok.mp4")
    files = expand_inputs([str(tmp_path / "m")]).files
    assert [(f.stream_id, f.error) for f in files] == [
        (
            "_status/x.mp4",
            "its path _status/x.mp4 starts with '_status', reserved for status events",
        ),
        ("ok.mp4", None),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nothing/*.mp4"], "no input files: no files match {tmp}/nothing/*.mp4"),
        (["{tmp}/empty"], "no input files: no video files in folder {tmp}/empty"),
        (["@{tmp}/absent.txt"], "cannot read list @{tmp}/absent.txt: No such file or directory"),
        (["@{tmp}/blank.txt"], "no input files"),
    ],
)
def test_bad_inputs(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    with pytest.raises(UserError) as err:
        expand_inputs([a.format(tmp=tmp_path) for a in args])
    assert str(err.value) == message.format(tmp=tmp_path)


def test_ten_thousand_listed_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    names = [f"clip{i:05d}.mp4" for i in range(10_000)]
    for name in names[:100]:
        touch(folder / name)
    listing = tmp_path / "many.txt"
    listing.write_text("\n".join(f"many/{n}" for n in reversed(names)))
    inputs = expand_inputs([f"@{listing}"])
    assert [f.stream_id for f in inputs.files] == names
    assert sum(f.error is None for f in inputs.files) == 100


# -- job state ------------------------------------------------------------------------------------


def job_files(root: Path, *names: str):
    for name in names:
        touch(root / name, name.encode())
    return expand_inputs([str(root)]).files


def test_state_is_wal_and_versioned(tmp_path: Path) -> None:
    with JobState(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / "job.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(UserError, match="has job state version 99, this ovstream reads 1"):
        JobState(tmp_path)


def test_state_refuses_a_file_that_is_not_a_job_database(tmp_path: Path) -> None:
    (tmp_path / "job.sqlite").write_text("hello " * 100)
    with pytest.raises(UserError, match="is not a job database"):
        JobState(tmp_path)
    with pytest.raises(UserError, match="no batch job in"):
        JobState(tmp_path / "nothing", create=False)


def test_sync_resume_skip_retry_and_change(tmp_path: Path) -> None:
    media = tmp_path / "media"
    files = job_files(media, "a.mp4", "b.mp4", "c.mp4", "d.mp4")
    paths = {f.stream_id: f.path for f in files}
    with JobState(tmp_path) as state:
        first = state.sync(files)
        assert [r.stream_id for r in first.todo] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
        state.mark_running(paths["a.mp4"])
        state.mark_done(paths["a.mp4"], 10)
        state.mark_running(paths["b.mp4"])  # b: running when the job "dies"
        state.mark_failed(paths["c.mp4"], "cannot read c.mp4 as video")
        assert state.summary().counts == {"pending": 1, "running": 1, "done": 1, "failed": 1}

        again = state.sync(files)
        assert [r.stream_id for r in again.todo] == ["b.mp4", "d.mp4"]
        assert (again.skipped_done, again.kept_failed, again.interrupted) == (1, 1, 1)
        b = state.row(paths["b.mp4"])
        assert b is not None and b.status == "pending" and b.attempts == 1
        c = state.row(paths["c.mp4"])
        assert c is not None and c.status == "failed" and c.attempts == 1

        retry = state.sync(files, retry_failed=True)
        assert [r.stream_id for r in retry.todo] == ["b.mp4", "c.mp4", "d.mp4"]

        touch(media / "a.mp4", b"changed, longer")
        changed = state.sync(expand_inputs([str(media)]).files)
        assert [r.stream_id for r in changed.todo] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
        assert changed.changed == 1 and changed.stale_outputs == ["a.mp4"]


def test_a_done_file_whose_output_is_gone_is_redone(tmp_path: Path) -> None:
    files = job_files(tmp_path / "media", "a.mp4")
    with JobState(tmp_path) as state:
        state.sync(files)
        state.mark_done(files[0].path, 3)
        assert state.sync(files, output_exists=lambda sid: True).todo == []
        assert [r.stream_id for r in state.sync(files, output_exists=lambda sid: False).todo] == [
            "a.mp4"
        ]


def test_missing_files_fail_at_sync_and_come_back_when_they_appear(tmp_path: Path) -> None:
    media = tmp_path / "media"
    job_files(media, "a.mp4")
    args = [str(media / "a.mp4"), str(media / "late.mp4")]
    with JobState(tmp_path) as state:
        sync = state.sync(expand_inputs(args).files)
        assert [r.stream_id for r in sync.todo] == ["a.mp4"]
        assert [(r.stream_id, r.status) for r in sync.failed_now] == [("late.mp4", "failed")]
        assert state.summary().failed == [("late.mp4", f"no such file: {media / 'late.mp4'}")]
        touch(media / "late.mp4")
        sync = state.sync(expand_inputs(args).files)
        assert [r.stream_id for r in sync.todo] == ["a.mp4", "late.mp4"]


def test_files_not_listed_again_are_kept_aside(tmp_path: Path) -> None:
    media = tmp_path / "media"
    job_files(media, "a.mp4", "b.mp4")
    with JobState(tmp_path) as state:
        state.sync(expand_inputs([str(media)]).files)
        state.sync(expand_inputs([str(media / "a.mp4")]).files)
        summary = state.summary()
        assert summary.total == 1 and summary.not_listed == 1


def test_reset_forgets_everything(tmp_path: Path) -> None:
    files = job_files(tmp_path / "media", "a.mp4", "b.mp4")
    with JobState(tmp_path) as state:
        state.sync(files)
        state.mark_done(files[0].path, 3)
        assert state.reset() == ["a.mp4"]
        assert state.rows() == []


# -- writer ---------------------------------------------------------------------------------------


def record(sid: str, i: int) -> dict:
    return {"v": 1, "stream_id": sid, "frame_index": i, "label": "ü"}


def test_writer_renames_complete_outputs_and_marks_them_done(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    files = job_files(tmp_path / "media", "x/a.mp4", "b.mp4")
    with JobState(out) as state:
        state.sync(files)
        writer = OutputWriter(out, state, {f.stream_id: f.path for f in files})
        for i in range(3):
            writer.write(record("x/a.mp4", i))
            writer.write(record("b.mp4", i))
        part = part_path(out, "x/a.mp4")
        assert part == out / "x" / ".a.mp4.jsonl.part" and part.exists()
        assert not output_path(out, "x/a.mp4").exists()
        assert state.row(files[1].path).status == "running"  # type: ignore[union-attr]

        assert writer.finish("x/a.mp4", published=3).status == "done"
        lines = output_path(out, "x/a.mp4").read_text(encoding="utf-8").splitlines()
        assert lines[0] == '{"v":1,"stream_id":"x/a.mp4","frame_index":0,"label":"ü"}'
        assert len(lines) == 3 and not part.exists()
        row = state.row(files[1].path)
        assert row is not None and (row.status, row.frames, row.attempts) == ("done", 3, 1)

        outcome = writer.finish("b.mp4", published=4)  # one result lost on the way
        assert (outcome.status, outcome.error) == ("failed", "4 result(s) published but 3 received")
        assert not output_path(out, "b.mp4").exists() and not part_path(out, "b.mp4").exists()


def test_writer_failed_stopped_and_unfinished_streams(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    files = job_files(tmp_path / "media", "a.mp4", "b.mp4", "c.mp4")
    paths = {f.stream_id: f.path for f in files}
    with JobState(out) as state:
        state.sync(files)
        writer = OutputWriter(out, state, paths)
        assert writer.finish("a.mp4", 0, error="no such file: a.mp4").status == "failed"
        row = state.row(paths["a.mp4"])
        assert row is not None and (row.status, row.attempts, row.error) == (
            "failed",
            1,
            "no such file: a.mp4",
        )
        writer.write(record("b.mp4", 0))
        assert writer.finish("b.mp4", 1, stopped=True).status == "pending"
        writer.write(record("c.mp4", 0))
        writer.close()  # the pipeline died with c unfinished
        assert {r.stream_id: r.status for r in state.rows()} == {
            "a.mp4": "failed",
            "b.mp4": "pending",
            "c.mp4": "pending",
        }
        assert list(find_parts(out)) == []


def test_parts_left_by_a_killed_job_are_discarded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    touch(out / "x" / ".a.mp4.jsonl.part")
    touch(out / ".b.mp4.jsonl.part")
    touch(out / "c.mp4.jsonl")
    assert discard_parts(out) == 2
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["c.mp4.jsonl"]


def test_a_kill_between_rename_and_mark_redoes_the_file(tmp_path: Path) -> None:
    """The output was renamed into place but the job died before marking it done: the next
    start finds it running, redoes it and overwrites the (whole) output with the same lines."""
    out = tmp_path / "out"
    out.mkdir()
    files = job_files(tmp_path / "media", "a.mp4")
    with JobState(out) as state:
        state.sync(files)
        writer = OutputWriter(out, state, {"a.mp4": files[0].path})
        writer.write(record("a.mp4", 0))
        os.replace(part_path(out, "a.mp4"), output_path(out, "a.mp4"))  # renamed, not marked
    with JobState(out) as state:
        sync = state.sync(files)
        assert [r.stream_id for r in sync.todo] == ["a.mp4"] and sync.interrupted == 1

"""`ovstream batch` end to end: real pipeline, real files, real `kill -9` of the whole job."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import psutil
import pytest
import zmq

from stream.batch import BatchConfig, job_status, run_batch
from stream.errors import UserError
from tests.conftest import ROOT, cli_command, make_sample, run_cli, start_cli
from tests.stream.conftest import count_frames, recv_within, wait_for

pytestmark = pytest.mark.slow


def batch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_cli(
        "ovstream", "batch", *args, "--publish", "none", "--no-progress", timeout=timeout
    )


def rows(out: Path) -> dict[str, tuple]:
    """stream id -> (status, frames, attempts, error) from the job database."""
    db = sqlite3.connect(out / "job.sqlite")
    try:
        return {
            r[0]: r[1:]
            for r in db.execute("SELECT stream_id, status, frames, attempts, error FROM files")
        }
    finally:
        db.close()


def check_output(out: Path, sid: str, video: Path) -> None:
    """The video's JSONL has exactly one record per decoded frame, in order, no duplicates."""
    lines = (out / f"{sid}.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    expected = count_frames(video)
    assert [r["frame_index"] for r in records] == [i for i, _ in expected], sid
    assert {r["stream_id"] for r in records} == {sid}


def no_parts(out: Path) -> bool:
    return not [p for p in out.rglob("*.part")]


@pytest.fixture
def media(tmp_path: Path, bad_inputs: dict[str, Path]) -> Path:
    """media/a.mp4, media/sub/b.mp4, media/sub/deep/c.mkv (good), a not-a-video, a zero-frame
    and a corrupt-in-the-middle file, and notes.txt (not a video by extension)."""
    root = tmp_path / "media"
    make_sample.write_clip(root / "a.mp4", 160, 90, 25, 12)
    make_sample.write_clip(root / "sub" / "b.mp4", 160, 90, 25, 17)
    make_sample.write_clip(root / "sub" / "deep" / "c.mkv", 160, 90, 25, 9)
    shutil.copy(bad_inputs["not_video"], root / "sub" / "notvideo.mp4")
    shutil.copy(bad_inputs["zero_frames"], root / "zero.mp4")
    shutil.copy(bad_inputs["corrupt"], root / "corrupt.mp4")
    (root / "notes.txt").write_text("not picked up by the folder search")
    return root


def test_batch_runs_resumes_retries_restarts(media: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = tmp_path / "extra"
    make_sample.write_clip(extra / "d.mp4", 160, 90, 25, 7)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{extra / 'd.mp4'}\n{media / 'gone.mp4'}\n")
    args = [str(media), f"@{listing}", "--model", str(model), "--out", str(out), "--jobs", "2"]

    proc = batch(*args)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    good = {
        "media/a.mp4": media / "a.mp4",
        "media/sub/b.mp4": media / "sub" / "b.mp4",
        "media/sub/deep/c.mkv": media / "sub" / "deep" / "c.mkv",
        "media/corrupt.mp4": media / "corrupt.mp4",  # frames lost to corrupt data are skipped
        "extra/d.mp4": extra / "d.mp4",
    }
    for sid, video in good.items():
        check_output(out, sid, video)
    state = rows(out)
    assert {sid for sid, r in state.items() if r[0] == "done"} == set(good)
    failed = {sid: r[3] for sid, r in state.items() if r[0] == "failed"}
    assert set(failed) == {"media/sub/notvideo.mp4", "media/zero.mp4", "media/gone.mp4"}
    assert failed["media/gone.mp4"] == f"no such file: {media / 'gone.mp4'}"
    for sid, reason in failed.items():
        assert f"ovstream: error: {sid}: {reason}\n" in proc.stderr
        assert "\n" not in reason
    assert not (out / "media" / "sub" / "notvideo.mp4.jsonl").exists()
    assert no_parts(out)
    assert "8 file(s): 5 done (5 now, 0 skipped as already done), 3 failed" in proc.stderr

    status = run_cli("ovstream", "batch", "--status", str(out), timeout=60)
    assert status.returncode == 0, status.stderr
    assert "not running" in status.stdout
    assert "8 file(s): 5 done, 3 failed, 0 running, 0 pending" in status.stdout
    assert f"failed: media/gone.mp4: no such file: {media / 'gone.mp4'}" in status.stdout

    # again: nothing to do, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    proc = batch(*args)
    assert proc.returncode == 1, proc.stderr
    assert "5 done (0 now, 5 skipped as already done), 3 failed" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")} == mtimes

    # an input changed between runs is redone, the others are not
    make_sample.write_clip(media / "a.mp4", 160, 90, 25, 20)
    proc = batch(*args)
    assert "5 done (1 now, 4 skipped as already done)" in proc.stderr, proc.stderr
    check_output(out, "media/a.mp4", media / "a.mp4")
    assert rows(out)["media/a.mp4"][:3] == ("done", 20, 2)

    # --retry-failed runs the failed ones again (they fail again: attempt 2)
    proc = batch(*args, "--retry-failed")
    assert proc.returncode == 1
    assert "5 skipped as already done), 3 failed" in proc.stderr
    assert {sid: r[2] for sid, r in rows(out).items() if r[0] == "failed"} == dict.fromkeys(
        failed, 2
    )

    # the missing file appears: a changed input, so it is run without --retry-failed
    make_sample.write_clip(media / "gone.mp4", 160, 90, 25, 5)
    proc = batch(*args)
    check_output(out, "media/gone.mp4", media / "gone.mp4")

    # --restart starts over: every file run once more, attempts from 1
    proc = batch(*args, "--restart")
    assert proc.returncode == 1
    assert "6 done (6 now, 0 skipped as already done), 2 failed" in proc.stderr
    assert {r[2] for r in rows(out).values()} == {1}
    for sid, video in {**good, "media/gone.mp4": media / "gone.mp4"}.items():
        check_output(out, sid, video)


def _size(path: Path) -> int:
    """The size of a file that may be renamed away meanwhile (0 if it was)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_kill_9_of_the_whole_job_then_resume_is_exact(model: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    clips = {f"c{i}.mp4": make_sample.write_clip(media / f"c{i}.mp4", 160, 90, 25, 300) for i in
             range(6)}  # fmt: skip
    out = tmp_path / "out"
    args = [str(media), "--model", str(model), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(
        cli_command("ovstream", "batch", *args, "--publish", "none", "--no-progress"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pgid = proc.pid
    seen = []

    def mid_job() -> bool:
        """A file done, another half written, and `--status` (read while the job runs) says a
        file is running: all three at once, not only in passing between two files."""
        if not (list(out.glob("*.jsonl")) and any(map(_size, out.glob("*.part")))):
            return False
        status, pid = job_status(out)
        seen[:] = [status, pid]
        return status.counts["running"] >= 1

    try:
        wait_for(mid_job, 120, "a finished output, a partial one and a running file")
        status, pid = seen
        assert pid == proc.pid and status.total == 6
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not _group_alive(pgid), 30, "every process of the job to be gone")
    finally:
        if proc.poll() is None or _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # Done is what the job state says: a kill between an output's rename and its row's commit
    # leaves a whole output under its final name and the file running, redone by the next run.
    before = rows(out)
    done_before = {sid for sid, r in before.items() if r[0] == "done"}
    interrupted = {sid for sid, r in before.items() if r[0] == "running"}
    assert interrupted
    assert {p.name[: -len(".jsonl")] for p in out.glob("*.jsonl")} >= done_before

    second = batch(*args)
    assert second.returncode == 0, second.stderr
    assert f"{len(done_before)} skipped as already done" in second.stderr
    assert f"{len(interrupted)} file(s) redone" in second.stderr
    for sid, video in clips.items():
        check_output(out, sid, video)
    state = rows(out)
    assert all(r[0] == "done" for r in state.values())
    assert all(state[sid][2] == 2 for sid in interrupted)
    assert all(state[sid][2] == 1 for sid in done_before)
    assert no_parts(out)


def test_ctrl_c_stops_cleanly_and_the_next_run_finishes(model: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    clips = {f"c{i}.mp4": make_sample.write_clip(media / f"c{i}.mp4", 160, 90, 25, 120) for i in
             range(4)}  # fmt: skip
    out = tmp_path / "out"
    args = [str(media), "--model", str(model), "--out", str(out), "--jobs", "1"]
    proc = subprocess.Popen(
        cli_command("ovstream", "batch", *args, "--publish", "none", "--no-progress"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(p.stat().st_size for p in out.glob("*.part")), 120, "a partial output")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C goes to the whole group
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, stderr
    assert "interrupted:" in stderr and "run the same command to go on" in stderr
    assert "Traceback" not in stderr
    state = rows(out)
    assert "running" not in {r[0] for r in state.values()} and no_parts(out)
    assert {r[0] for r in state.values()} <= {"done", "pending"}
    second = batch(*args)
    assert second.returncode == 0, second.stderr
    for sid, video in clips.items():
        check_output(out, sid, video)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_no_more_capture_processes_than_jobs(model: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    for i in range(7):
        make_sample.write_clip(media / f"c{i}.mp4", 160, 90, 25, 40)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        cli_command(
            "ovstream",
            "batch",
            str(media),
            "--model",
            str(model),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--publish",
            "none",
            "--no-progress",
        ),  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    most = 0
    try:
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            captures = 0
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    captures += child.name().startswith("ovs-cap")
            most = max(most, captures)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.02)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 0, stderr
    assert 1 <= most <= 2
    assert len(list(out.glob("*.jsonl"))) == 7


def test_results_are_published_with_the_relative_path_as_topic(
    model: Path, tmp_path: Path, zctx
) -> None:
    media = tmp_path / "media"
    make_sample.write_clip(media / "a.mp4", 160, 90, 25, 5)
    make_sample.write_clip(media / "sub" / "b.mp4", 160, 90, 25, 7)
    endpoint = f"ipc://{tmp_path}/pub.sock"
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    proc = start_cli(
        "ovstream", "batch", str(media), "--model", str(model), "--out", str(tmp_path / "out"),
        "--publish", endpoint, "--wait-subscribers", "1", "--no-progress",
    )  # fmt: skip
    try:
        topics: dict[str, list[int]] = {}
        while sum(map(len, topics.values())) < 12:
            topic, payload = recv_within(sub, 120)
            if topic.bytes.startswith(b"_status/"):  # status events of the files
                continue
            record = json.loads(payload.bytes)
            assert record["stream_id"] == topic.bytes.decode()
            topics.setdefault(record["stream_id"], []).append(record["frame_index"])
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 0, stderr
    assert topics == {"a.mp4": list(range(5)), "sub/b.mp4": list(range(7))}


def test_python_api_returns_the_summary(model: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    make_sample.write_clip(media / "a.mp4", 160, 90, 25, 6)
    (media / "bad.mp4").write_text("no video here")
    config = BatchConfig(inputs=[str(media)], model=str(model), out=str(tmp_path / "o"),
                         publish=None, jobs=1)  # fmt: skip
    summary = run_batch(config)
    assert (summary.total, summary.done, summary.frames, summary.exit_code) == (2, 1, 6, 1)
    assert [sid for sid, _ in summary.failed] == ["bad.mp4"]
    again = run_batch(config)
    assert (again.done, again.skipped_done, again.frames) == (0, 1, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{model}", "--out", "{tmp}/o"], "no inputs"),
        (["{tmp}/nothing/*.mp4", "--model", "{model}", "--out", "{tmp}/o"], "no input files"),
        (["{tmp}", "--out", "{tmp}/o"], "--model DIR is required"),
        (["{tmp}", "--model", "{tmp}", "--out", "{tmp}/o"], "model"),
        (["--status", "{tmp}/nojob"], "no batch job in {tmp}/nojob"),
        (
            ["{tmp}", "--model", "{model}", "--out", "{tmp}/o", "--restart", "--retry-failed"],
            "--restart already runs every file",
        ),  # fmt: skip
    ],
)
def test_user_errors_are_one_line(args, message, model, tmp_path) -> None:
    make_sample.write_clip(tmp_path / "x.mp4", 160, 90, 25, 3)
    fmt = {"model": model, "tmp": tmp_path}
    proc = batch(*[a.format(**fmt) for a in args], timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ovstream: error: "), proc.stderr
    assert message.format(**fmt) in lines[0]


def test_a_second_job_on_the_same_output_is_refused(tmp_path: Path, model: Path) -> None:
    from stream.batch import JobLock

    lock = JobLock(tmp_path)
    lock.acquire()
    try:
        with pytest.raises(UserError, match=f"another batch job \\(pid {os.getpid()}\\)"):
            JobLock(tmp_path).acquire()
        status = run_cli("ovstream", "batch", "--status", str(tmp_path), timeout=60)
        assert status.returncode == 2  # no job.sqlite yet
    finally:
        lock.release()


def test_metrics_of_a_batch_job_count_its_files(model: Path, tmp_path: Path) -> None:
    """`--metrics`: the pipeline's metrics plus the job's files by status, scraped while it runs
    and parsed with the official parser; done + failed + pending is always the job's size."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from stream.wire.transport import free_tcp_port

    media = tmp_path / "media"
    for i in range(4):
        make_sample.write_clip(media / f"m{i}.mp4", 160, 90, 25, 60)
    (media / "bad.mp4").write_text("no video here")
    port = free_tcp_port()
    out = tmp_path / "o"
    proc = start_cli(
        "ovstream", "batch", str(media), "--model", str(model), "--out", str(out),
        "--jobs", "1", "--publish", "none", "--no-progress", "--metrics", f":{port}",
    )  # fmt: skip
    seen: list[dict[str, float]] = []

    def scrape() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return proc.poll() is not None  # not up yet, or the job is over
        for family in text_string_to_metric_families(text):
            if family.name == "ovstream_batch_files":
                seen.append({s.labels["status"]: s.value for s in family.samples})
        return bool(seen) and seen[-1]["done"] >= 1

    try:
        wait_for(scrape, 120, "a scrape with a finished file")
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr  # bad.mp4 failed
    assert seen, "never scraped the job's gauges"
    assert all(sum(s.values()) == 5 for s in seen)
    assert seen[-1]["done"] >= 1
    assert len(rows(out)) == 5

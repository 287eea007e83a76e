"""End of stream under stress: many file sources ending at once, with and without live ones.

Before ends of stream were confirmed downstream, a run over several short files could hang after
its last result: a stage exited while its last messages (the ends of stream) still sat in an ipc
socket buffer in front of a busy receiver, and ZeroMQ dropped them with the socket. These runs
start many sources that end at almost the same moment, repeatedly, and require every one to end
by itself with exactly one ordered result per decoded frame (counted independently with PyAV).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import cli_command
from tests.stream.conftest import count_frames, wait_for

pytestmark = pytest.mark.slow

SIZES = ((160, 90), (320, 180), (640, 360))
RATES = (10, 25, 30, 60)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def short_clip(clip_factory) -> Path:
    """The reported case: 90 frames, 640x360, 30 fps."""
    return clip_factory(640, 360, 30, 90, name="short90")


@pytest.fixture(scope="module")
def mixed_clips(clip_factory) -> list[Path]:
    """Clips of 1 to 300 frames at mixed sizes and rates (seeded), most of them short."""
    rng = random.Random(10)
    lengths = [1, 2, 3, 300, 150] + [rng.randint(1, 40) for _ in range(11)]
    return [
        clip_factory(*rng.choice(SIZES), rng.choice(RATES), n, name=f"mixed{i:02d}_{n}f")
        for i, n in enumerate(lengths)
    ]


def copies(clip: Path, folder: Path, n: int) -> list[Path]:
    """`n` identical files (hard links would share an inode; real copies are what users have)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = clip.read_bytes()
    paths = []
    for i in range(n):
        path = folder / f"{clip.stem}_{i:02d}.mp4"
        path.write_bytes(data)
        paths.append(path)
    return paths


def run_args(sources: list, model: Path, out: Path, *extra: str) -> list[str]:
    """`ovstream run` on `sources`, results to `out` only."""
    return [
        "run",
        *map(str, sources),
        "--model",
        str(model),
        "--publish",
        "none",
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


def run_to_the_end(files: list[Path], model: Path, out: Path, *extra: str, timeout: float = 240):
    """Run `ovstream run` on `files`; it must end by itself within `timeout` (else: the hang)."""
    proc = subprocess.run(
        cli_command("ovstream", *run_args(files, model, out, *extra)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def start_in_session(*args: str) -> subprocess.Popen:
    """`ovstream ARGS...` in a process group of its own, to signal the whole group like a
    terminal or a service manager does; the caller waits with a timeout and kills the group in
    a `finally` (`end_session`)."""
    return subprocess.Popen(
        cli_command("ovstream", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def end_session(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def summary_line(stderr: str, stream: str) -> str:
    return next(line for line in stderr.splitlines() if line.split()[:1] == [stream])


def check_exactly_once(files: list[Path], out: Path, frames: dict[Path, int]) -> None:
    """One result per decoded frame of every file, in frame order, none twice."""
    got: dict[str, list[int]] = {}
    for record in read_jsonl(out):
        got.setdefault(record["stream_id"], []).append(record["frame_index"])
    assert sorted(got) == sorted(f.stem for f in files if frames[f] > 0)
    for f in files:
        assert got.get(f.stem, []) == list(range(frames[f])), f.stem


@pytest.mark.parametrize("repeat", range(3))
def test_twelve_identical_short_files_at_once_end_by_themselves(
    short_clip, model, tmp_path, repeat
):
    """The reported case, with a capture process per file so that all twelve end together."""
    files = copies(short_clip, tmp_path / "in", 12)
    out = tmp_path / "results.jsonl"
    proc = run_to_the_end(files, model, out, "--jobs", "12")
    assert proc.returncode == 0, proc.stderr
    check_exactly_once(files, out, {f: 90 for f in files})
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "copies_of_short,jobs,transport",
    [
        (1, "1", "ipc"),  # one source, one frame
        (24, "40", "ipc"),  # 40 capture processes ending within moments
        (48, "0", "ipc"),  # 64 sources through the default pool (one worker per core)
        (48, "8", "tcp"),
    ],
    ids=["1-source", "40-at-once", "64-pooled", "64-pooled-tcp"],
)
def test_many_mixed_sources_each_end_with_every_frame(
    mixed_clips, clip_factory, model, tmp_path, copies_of_short, jobs, transport
):
    tiny = clip_factory(320, 180, 25, 3, name="tiny3")
    if copies_of_short == 1:
        files = copies(clip_factory(160, 90, 25, 1, name="one"), tmp_path / "in", 1)
    else:
        files = [*mixed_clips, *copies(tiny, tmp_path / "in", copies_of_short)]
    frames = {f: len(count_frames(f)) for f in files}
    out = tmp_path / "results.jsonl"
    proc = run_to_the_end(files, model, out, "--jobs", jobs, "--transport", transport)
    assert proc.returncode == 0, proc.stderr
    check_exactly_once(files, out, frames)
    assert "Traceback" not in proc.stderr


def test_live_sources_mixed_with_files_and_sigint_to_the_group(
    rtsp_server, clip_factory, model, tmp_path
):
    """Files ending must not disturb live sources; Ctrl-C (SIGINT to the whole process group,
    as a terminal sends it) with many sources in flight drains and exits 0."""
    loop = clip_factory(320, 180, 25, 100, name="live_loop", gop=25)
    servers = [rtsp_server(file=loop, path=f"/cam{i}") for i in range(2)]
    short = copies(clip_factory(320, 180, 25, 20, name="short20"), tmp_path / "in", 6)
    long = clip_factory(320, 180, 25, 3000, name="long3000")
    out = tmp_path / "results.jsonl"
    args = [f"cam{i}={s.url}" for i, s in enumerate(servers)] + [str(f) for f in short]
    proc = start_in_session(*run_args([*args, long], model, out, "--jobs", "4"))
    try:

        def progress() -> dict[str, list[int]]:
            got: dict[str, list[int]] = {}
            if out.exists():
                for line in out.read_text().splitlines():
                    if line.endswith("}"):
                        record = json.loads(line)
                        got.setdefault(record["stream_id"], []).append(record["frame_index"])
            return got

        # every short file done while both cameras keep delivering, then some more live results
        def shorts_done_and_live_going() -> bool:
            got = progress()
            return all(len(got.get(f.stem, [])) == 20 for f in short) and all(
                len(got.get(f"cam{i}", [])) >= 50 for i in range(2)
            )

        wait_for(shorts_done_and_live_going, 120, "the short files and 50 results per camera")
        before = {f"cam{i}": len(progress()[f"cam{i}"]) for i in range(2)}
        wait_for(
            lambda: all(len(progress()[c]) >= n + 25 for c, n in before.items()),
            60,
            "live results after the files ended",
        )
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        end_session(proc)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    got = progress()
    for f in short:
        assert got[f.stem] == list(range(20))
    for i in range(2):
        indices = got[f"cam{i}"]
        assert indices == sorted(set(indices))  # increasing, none twice
    # the long file was stopped part-way: what was read came out, in order, nothing skipped
    assert got["long3000"] == list(range(len(got["long3000"])))
    assert 0 < len(got["long3000"]) < 3000
    assert " 0 skipped" in summary_line(stderr, "long3000")  # a stop is not corrupt data
    assert "stopped" in summary_line(stderr, "long3000")


@pytest.mark.parametrize("repeat", range(2))
def test_sigterm_to_the_process_group_drains_and_exits_0(clip_factory, model, tmp_path, repeat):
    """What systemd, `timeout` and `kill -- -PGID` do: SIGTERM to every process of the group.
    The stages leave stopping to the supervisor, which drains."""
    files = copies(clip_factory(320, 180, 25, 400, name="mid400"), tmp_path / "in", 3)
    out = tmp_path / "results.jsonl"
    proc = start_in_session(*run_args(files, model, out))
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 2000, 120, "results")
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        end_session(proc)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "died" not in stderr
    got: dict[str, list[int]] = {}
    for record in read_jsonl(out):
        got.setdefault(record["stream_id"], []).append(record["frame_index"])
    for indices in got.values():
        assert indices == list(range(len(indices)))
    assert "skipped (corrupt data)" not in stderr
    assert "interrupted" in stderr


@pytest.mark.parametrize("moment", [0.0, 0.3, 0.8, 1.5])
def test_sigint_to_the_group_while_starting(clip_factory, model, tmp_path, moment):
    """Ctrl-C in the first seconds (stage processes starting, models compiling, sources
    opening): no traceback and no dead stage, the source reported stopped, exit 0."""
    clip = clip_factory(320, 180, 25, 100, name="start100")
    proc = start_in_session(*run_args([clip], model, tmp_path / "r.jsonl"))
    try:
        wait_for(lambda: psutil.Process(proc.pid).children(), 60, "the first stage process")
        time.sleep(moment)  # when the signal comes is what this test varies
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        end_session(proc)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert proc.returncode == 0, stderr
    assert "died" not in stderr
    assert summary_line(stderr, "start100").split()[-1] in ("stopped", "ok"), stderr


@pytest.mark.slow
def test_a_run_ends_promptly_after_its_last_result(model):
    """Infer's last credit to preprocess, sent after preprocess had left, used to hold infer's
    exit for the sockets' whole linger (5 s) in most runs of the README's command on the bundled
    sample. Each of three runs now ends well within it once its last result is out (normally
    about 0.1 s)."""
    from stream import Pipeline, PipelineConfig

    sample = Path(__file__).resolve().parents[2] / "samples" / "sample.mp4"
    frames = len(count_frames(sample))
    for _ in range(3):
        config = PipelineConfig(sources=[str(sample)], model=str(model), publish=None)
        count, last = 0, 0.0
        for _record in Pipeline(config):
            count += 1
            last = time.monotonic()
        ended = time.monotonic() - last
        assert count == frames
        assert ended < 3.0, f"the run ended {ended:.1f} s after its last result"

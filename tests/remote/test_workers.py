"""Remote infer workers end to end: the head is `ovstream run` (a subprocess), each worker an
`ovstream worker` process inside its own network namespace ("another machine",
tests/remote/netns.py) that connects to the head over its veth link. Every result file is checked
against PyAV's own frame count: one result per frame, in order, none lost, none twice."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from stream.wire.transport import free_tcp_port
from tests.conftest import ROOT, cli_command, run_cli, start_cli
from tests.remote.conftest import make_keys, worker_folder
from tests.stream.conftest import count_frames, wait_for

RUN_S = 300
"""A whole run (head or worker) at most."""
CLASSIFIED = re.compile(r"^ovstream worker: (\d+) frame\(s\) classified$", re.M)
WORKERS_LINE = re.compile(
    r"workers: (?P<joined>\d+) joined, (?P<lost>\d+) lost, (?P<resent>\d+) frame\(s\) re-sent, "
    r"(?P<late>\d+) late result\(s\) dropped, (?P<refused>\d+) refused \(model\), "
    r"(?P<unauthorized>\d+) refused \(key\)"
)


# -- helpers ------------------------------------------------------------------------------------


def clips(clip_factory, count: int, frames: int, prefix: str) -> list[Path]:
    """`count` small H.264 files of `frames` frames each, with distinct stream ids."""
    return [clip_factory(160, 96, 25, frames, name=f"{prefix}{i}") for i in range(count)]


def bind_any() -> tuple[str, int]:
    """The head's worker endpoint on every address (each namespace reaches its own veth peer)."""
    port = free_tcp_port("0.0.0.0")
    return f"tcp://0.0.0.0:{port}", port


def start_head(videos: list[Path], model: Path, output: Path, *args: str) -> subprocess.Popen:
    return start_cli(
        "ovstream",
        "run",
        *map(str, videos),
        "--model",
        str(model),
        "--publish",
        "none",
        "--no-progress",
        "--output",
        str(output),
        *args,
    )


def start_worker(host, port: int, model: Path, name: str, *args: str) -> subprocess.Popen:
    """`ovstream worker --once` on `host`, connecting to the head through its veth link."""
    argv = cli_command(
        "ovstream",
        "worker",
        "--connect",
        f"tcp://{host.peer_address}:{port}",
        "--model",
        str(model),
        "--name",
        name,
        "--once",
        *args,
    )
    return host.popen(argv, cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = RUN_S) -> tuple[int, str, str]:
    """Wait for `proc` to end (it is killed and the test fails after `timeout`)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{proc.args[:6]} still running after {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def classified(stdout: str) -> int:
    """A worker's final count of frames it ran."""
    found = CLASSIFIED.findall(stdout)
    assert len(found) == 1, stdout
    return int(found[0])


def worker_counters(stderr: str) -> dict[str, int]:
    """The head summary's `workers:` line as numbers."""
    found = WORKERS_LINE.search(stderr)
    assert found is not None, stderr
    return {k: int(v) for k, v in found.groupdict().items()}


def results(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.read_text().splitlines()]


def assert_each_frame_once(output: Path, videos: list[Path]) -> int:
    """Every frame PyAV decodes has exactly one result, in frame order; returns how many."""
    frames: dict[str, list[int]] = defaultdict(list)
    for record in results(output):
        frames[record["stream_id"]].append(record["frame_index"])
    expected = {v.stem: [i for i, _ in count_frames(v)] for v in videos}
    assert dict(frames) == expected
    return sum(len(f) for f in expected.values())


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def one_error_line(stderr: str) -> str:
    """stderr holds one line, `ovstream: error: ...`; returns it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ovstream: error: "), stderr
    return lines[0]


# -- sharing the work ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_and_the_local_stage_share_a_batch_of_files(
    other_hosts, clip_factory, model, tmp_path
):
    """Two workers on other machines and the head's own infer requests all run frames of six
    files; each frame has exactly one result, in order."""
    videos = clips(clip_factory, 6, 60, "share")
    endpoint, port = bind_any()
    a, b = other_hosts.add(), other_hosts.add()
    # Workers outlive heads: they are up first and wait for the run (saying hello every second).
    workers = [start_worker(h, port, model, n, "--threads", "1") for h, n in ((a, "a"), (b, "b"))]
    out = tmp_path / "results.jsonl"
    head = start_head(
        videos, model, out, "--workers", endpoint, "--insecure", "--requests", "1",
        "--max-batch", "2",
    )  # fmt: skip
    code, _, err = finish(head)
    assert code == 0, err
    total = assert_each_frame_once(out, videos)
    done = []
    for worker in workers:
        wcode, wout, werr = finish(worker)
        assert wcode == 0, werr
        done.append(classified(wout))
    assert all(n > 0 for n in done), done  # both workers ran frames...
    assert sum(done) < total, (done, total)  # ...and so did the head's own requests
    counters = worker_counters(err)
    assert counters["joined"] == 2 and counters["lost"] == 0 and counters["resent"] == 0, err
    assert counters["late"] == 0 and counters["refused"] == 0, err

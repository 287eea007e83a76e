"""`--output`: never truncates an input or any other video (one error line, exit 2, the file
untouched); an existing results file is replaced."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from stream.results_file import looks_like_video, output_problem
from tests.conftest import run_cli


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_to(source: Path, output: Path, model: Path):
    return run_cli(
        "ovstream",
        "run",
        str(source),
        "--model",
        str(model),
        "--publish",
        "none",
        "--output",
        str(output),
        "--no-progress",
        timeout=180,
    )


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "another video"])
def test_output_that_would_destroy_a_video_is_refused(how, clip_factory, model, tmp_path):
    clip = tmp_path / "in.mp4"
    clip.write_bytes(clip_factory(160, 90, 25, 10, name="precious").read_bytes())
    if how == "same path":
        output = clip
    elif how == "symlink":
        output = tmp_path / "results.jsonl"
        output.symlink_to(clip)
    elif how == "hard link":
        output = tmp_path / "results.jsonl"
        os.link(clip, output)
    else:
        output = tmp_path / "other.mkv"
        output.write_bytes(clip_factory(160, 90, 25, 5, name="other").read_bytes())
    before = {p: digest(p) for p in (clip, output)}
    proc = run_to(clip, output, model)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ovstream: error: --output {output} is "), lines
    assert ("is the input" if how != "another video" else "is a video") in lines[0]
    assert {p: digest(p) for p in (clip, output)} == before


def test_an_existing_results_file_is_replaced(clip_factory, model, tmp_path):
    clip = clip_factory(160, 90, 25, 6, name="again")
    output = tmp_path / "results.jsonl"
    output.write_text('{"old": true}\n' * 50)
    proc = run_to(clip, output, model)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["frame_index"] for r in records] == list(range(6))


def test_output_problem_table(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"stream_id": "a"}\n')
    notes = tmp_path / "notes.txt"
    notes.write_text("ftyp? no: plain text\n")
    empty_mp4 = tmp_path / "new.mp4"
    empty_mp4.write_bytes(b"")
    assert output_problem(tmp_path / "missing.jsonl", [str(jsonl)]) is None
    assert output_problem(jsonl, ["rtsp://c/x", str(notes)]) is None
    assert output_problem(notes, []) is None
    assert output_problem(empty_mp4, []) is None  # nothing to destroy
    assert "is the input" in output_problem(jsonl, [str(jsonl)])
    assert looks_like_video(b"\x00\x00\x00\x20ftypisom")
    assert looks_like_video(b"\x1a\x45\xdf\xa3\x01")
    assert not looks_like_video(b'{"v": 1, "stream_id": "cam"}')

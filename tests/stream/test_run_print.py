"""`ovstream run --print`: one line per frame on stdout, in frame order, matching the JSONL."""

from __future__ import annotations

import json
import re

from tests.conftest import run_cli

LINE = re.compile(r"^(\S+) frame +(\d+) t= *([\d.]+)s  (.+) \((\d+)\) (0\.\d{3}|1\.000)$")


def test_print_gives_one_line_per_frame_matching_the_records(lite0_model, clip_factory, tmp_path):
    clip = clip_factory(160, 90, 25, 12, name="printed")
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        "ovstream",
        "run",
        str(clip),
        "--model",
        str(lite0_model),
        "--publish",
        "none",
        "--output",
        str(out),
        "--print",
        "--no-progress",
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(records) == 12
    for line, record in zip(lines, records, strict=True):
        m = LINE.match(line)
        assert m, line
        assert m.group(1) == "printed" and int(m.group(2)) == record["frame_index"]
        assert int(m.group(5)) == record["topk"][0]["class_id"]
    assert [int(LINE.match(x).group(2)) for x in lines] == list(range(12))

"""benchmarks/stage_capacity.py on a tiny frame count: every stage runs alone on real sockets,
passes every frame, is released and exits 0, and the table's arithmetic holds (speed is printed,
never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.model import load_info

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_stage_capacity_measures_every_stage(tmp_path):
    out, table = tmp_path / "capacity.json", tmp_path / "capacity.txt"
    cmd = [
        sys.executable, str(ROOT / "benchmarks/stage_capacity.py"), "--frames", "200",
        "--workdir", str(tmp_path), "--json", str(out), "--output", str(table),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = {r["stage"]: r for r in result["rows"]}  # the last of each stage
    assert list(rows) == ["capture", "preprocess", "infer", "publish", "dispatch"]
    vias = [(r["stage"], r["via"]) for r in result["rows"]]
    assert vias == [(s, v) for s in ("capture", "preprocess", "infer") for v in ("shm", "msg")] + [
        ("publish", "-"),
        ("dispatch", "shm"),  # through a real `ovstream worker`
    ]
    assert 1 <= rows["dispatch"]["batch"] <= 8 and rows["dispatch"]["openvino_ms"] == 0
    # The two are read one after the other, each in clock ticks and each adjusted by the kernel
    # on its own (a process's time is not its threads' summed): a tick either way at each end.
    tick_ms = 1e3 / os.sysconf("SC_CLK_TCK")
    for row in result["rows"]:  # the main thread's share of the stage's CPU
        assert 0 <= row["main_ms"] <= row["cpu_ms"] + 2 * tick_ms / (row["frames"] * 0.9), row
    for row in result["rows"]:
        assert row["frames"] == 200, row
        assert row["fps"] > 0 and row["cpu_ms"] >= 0
        assert row["own_ms"] == pytest.approx(row["cpu_ms"] - row["openvino_ms"])
        if row["cpu_ms"] > 0:
            assert row["capacity"] == pytest.approx(1e3 / row["cpu_ms"])
    assert rows["infer"]["openvino_ms"] > 0
    text = table.read_text()
    for via in ("shm", "msg"):
        rows_of = [r for r in result["rows"] if r["via"] in (via, "-") and r["stage"] != "dispatch"]
        total = sum(r["own_ms"] for r in rows_of)  # dispatch is the alternative to infer
        assert f"sum of the stages' own CPU per frame, frames via {via}: {total:.3f} ms" in text
    assert text in proc.stdout
    assert all(us > 0 for us in result["pieces_us"].values())
    assert "preprocess: decode (one frame)" in result["pieces_us"]
    assert "batches of 8" in result["header"]
    info = load_info(tmp_path / "trivial")  # the trivial IR's folder is a valid model folder
    assert info.name == "trivial" and len(info.labels) == 1000

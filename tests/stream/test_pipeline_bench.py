"""benchmarks/pipeline_bench.py end to end on a small clip: every figure is there and the limit
and ratio are computed as the issue defines them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_bench_reports_every_figure(model, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/pipeline_bench.py"),
        "--model",
        str(model),
        "--sizes",
        "320x180",
        "--frames",
        "40",
        "--pure-seconds",
        "1",
        "--workdir",
        str(tmp_path),
        "--streams",
        "1,2",
        "--rounds",
        "2",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    one, two = json.loads(out.read_text())
    assert (one["clip"], one["streams"], one["frames"]) == ("320x180*1", 1, 40)
    assert (two["clip"], two["streams"], two["frames"]) == ("320x180*2", 2, 80)
    assert set(two["stage_cpu_s"]) == {
        "capture[bench_320x180_25fps_40f_0]",
        "capture[bench_320x180_25fps_40f_1]",
        "preprocess",
        "infer",
        "publish",
    }
    row = one
    for key in ("pure_fps", "pipeline_fps", "naive_fps", "decode_ms", "peak_rss_mb_sampled"):
        assert row[key] > 0, key
    cores = os.cpu_count() or 1
    assert row["limit_fps"] == pytest.approx(
        1 / (1 / row["pure_fps"] + row["decode_ms"] / 1e3 / cores)
    )
    assert row["ratio"] == pytest.approx(row["pipeline_fps"] / row["limit_fps"])
    # Two rounds, alternated: the row is the round of the median (here the lower) ratio.
    for each in (one, two):
        ratios = sorted(x["ratio"] for x in each["rounds"])
        assert len(ratios) == 2 and each["ratio"] == pytest.approx(ratios[0])
        for x in each["rounds"]:
            assert x["ratio"] == pytest.approx(x["pipeline_fps"] / x["limit_fps"])
    assert "Rounds (ceiling and pipeline measured 2 times a row" in proc.stdout
    # The honest ceiling: ours twice (before and after benchmark_app), benchmark_app parsed.
    assert len(row["pure_runs_fps"]) == 2
    assert row["pure_fps"] == pytest.approx(sum(row["pure_runs_fps"]) / 2)
    assert row["benchmark_app_fps"] > 0, row["benchmark_app_problem"]
    assert row["pure_vs_benchmark_app"] == pytest.approx(row["pure_fps"] / row["benchmark_app_fps"])
    for each in (one, two):  # the warning is printed for any round whose ceilings disagree
        off = abs(each["pure_vs_benchmark_app"] - 1) > 0.05
        assert (each["ceiling_warning"] is not None) == off
        for x in each["rounds"]:
            app = x["benchmark_app_fps"]
            off = app is not None and abs(x["pure_fps"] / app - 1) > 0.05
            assert (x["ceiling_warning"] is not None) == off
    warned = any(x["ceiling_warning"] for each in (one, two) for x in each["rounds"])
    assert warned == ("WARNING: pure inference" in proc.stdout)
    # Decoding by threads: the limit takes the cheaper, the overhead what capture uses (frame
    # threads for fewer streams than cores, one thread from as many streams as cores).
    for each in (one, two):
        assert each["decode_ms"] == pytest.approx(min(each["decode_threads_ms"].values()))
        by_threads = each["decode_scale_threads_ms"]
        assert each["decode_scale_ms"] == pytest.approx(min(by_threads.values()))
        used = "1" if each["streams"] >= cores else "0"
        assert each["decode_scale_capture_ms"] == pytest.approx(by_threads[used])
    # Overhead: the processes' CPU per frame less decoding+resize and OpenVINO's own (a run too
    # short for two CPU samples in its steady state has none).
    assert row["pure_cpu_ms"] > 0
    assert "Overhead: CPU ms per frame" in proc.stdout
    if row["stage_ms"]:
        assert row["cpu_ms_total"] == pytest.approx(sum(row["stage_ms"].values()))
        assert row["overhead_ms"] == pytest.approx(
            row["cpu_ms_total"] - row["decode_scale_capture_ms"] - row["pure_cpu_ms"]
        )
        assert row["overhead_cheapest_ms"] == pytest.approx(
            row["cpu_ms_total"] - row["decode_scale_ms"] - row["pure_cpu_ms"]
        )
    else:
        assert row["cpu_ms_total"] is None and row["overhead_ms"] is None
    assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
    # Sharing the cores: decoding (paced at the limit) and pure inference measured together;
    # the shared limit and the split of the overhead follow from them.
    shared = row["shared"]
    assert shared["pure_fps"] > 0 and shared["pure_cpu_ms"] > 0 and shared["decode_scale_ms"] > 0
    assert 0 < shared["decoded_fps"] <= row["limit_fps"] * 1.1  # paced, not flat out
    assert row["sharing_ms"] == pytest.approx(  # like for like: one decoder thread both times
        shared["decode_scale_ms"]
        - row["decode_scale_threads_ms"]["1"]
        + shared["pure_cpu_ms"]
        - row["pure_cpu_ms"]
    )
    assert row["limit_shared_fps"] == pytest.approx(
        cores * 1e3 / (shared["decode_scale_ms"] + shared["pure_cpu_ms"])
    )
    assert row["ratio_shared"] == pytest.approx(row["pipeline_fps"] / row["limit_shared_fps"])
    assert "Sharing the cores" in proc.stdout
    # OpenVINO as the pipeline runs it (requests of 4 on the model compiled for 4, i420 frames):
    # a second limit and overhead against it.
    own = row["own"]
    assert own["batch"] == 4 and own["pure_fps"] > 0 and own["pure_cpu_ms"] > 0
    assert row["ratio_own"] == pytest.approx(row["pipeline_fps"] / row["limit_own_fps"])
    if row["stage_ms"]:
        assert row["overhead_own_ms"] == pytest.approx(
            row["cpu_ms_total"] - row["decode_scale_capture_ms"] - own["pure_cpu_ms"]
        )
    assert "OpenVINO as the pipeline runs it" in proc.stdout
    assert set(row["stage_cpu_s"]) == {
        "capture[bench_320x180_25fps_40f_0]",
        "preprocess",
        "infer",
        "publish",
    }
    table = proc.stdout.splitlines()
    assert any(line.split()[:1] == ["320x180*2"] for line in table)

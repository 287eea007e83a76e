"""model-prep bench: every row measured in one run (speed is printed, never asserted)."""

from __future__ import annotations

import pytest

from model_prep.bench import BenchOptions
from stream.errors import UserError
from tests.conftest import run_cli
from tests.model_prep.conftest import read_json


@pytest.mark.slow
def test_bench_reports_every_row(lite0_int8, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "model-prep", "bench", str(lite0_int8[0]), "--duration", "0.5", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    result = read_json(out)
    rows = {r["variant"]: r for r in result["rows"]}
    expected = ["PyTorch eager FP32", "OpenVINO FP32", "OpenVINO FP16", "OpenVINO INT8"]
    if rows["OpenVINO FP32"]["runs_as"] != "f32":  # e.g. bf16 on AMX CPUs: true f32 shown too
        expected.insert(2, "OpenVINO FP32, f32 forced")
        assert rows["OpenVINO FP32, f32 forced"]["runs_as"] == "f32"
    assert list(rows) == expected
    for row in rows.values():
        assert row["latency_median_ms"] > 0 and row["latency_p90_ms"] >= row["latency_median_ms"]
        assert row["throughput_fps"] > 0 and row["requests"] >= 1 and row["size_mb"] > 0
        assert row["speedup_vs_pytorch"] > 0
        assert f"| {row['variant']} |" in proc.stdout
    for name, row in rows.items():  # benchmark_app ran on every OpenVINO row's IR
        if name.startswith("OpenVINO"):
            assert row["benchmark_app_fps"] > 0, row["benchmark_app_problem"]
            assert row["vs_benchmark_app"] == pytest.approx(
                row["throughput_fps"] / row["benchmark_app_fps"]
            )
            assert row["throughput_fps"] == pytest.approx(sum(row["throughput_runs_fps"]) / 2)
            off = abs(row["vs_benchmark_app"] - 1) > 0.05
            assert (row["benchmark_app_warning"] is not None) == off
            assert off == (f"WARNING: {name} " in proc.stdout)
    assert rows["PyTorch eager FP32"]["benchmark_app_fps"] is None
    assert rows["PyTorch eager FP32"]["speedup_vs_pytorch"] == 1.0
    assert rows["OpenVINO FP32"]["speedup_vs_fp32"] == 1.0
    assert rows["OpenVINO INT8"]["size_mb"] <= 0.3 * rows["OpenVINO FP32"]["size_mb"]
    assert result["duration_s"] == 0.5 and result["cores"] >= 1


def test_duration_must_be_positive():
    with pytest.raises(UserError, match="--duration must be positive"):
        BenchOptions(duration=0)


@pytest.mark.slow
def test_inference_precision_applies_to_every_openvino_row(lite0_int8, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "model-prep", "bench", str(lite0_int8[0]), "--duration", "0.2",
        "--inference-precision", "f32", "--no-benchmark-app", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["variant"]: r for r in read_json(out)["rows"]}
    assert "OpenVINO FP32, f32 forced" not in rows  # FP32 already runs as f32
    assert {r["runs_as"] for r in rows.values()} == {"f32"}
    assert all(r["benchmark_app_fps"] is None for r in rows.values())  # --no-benchmark-app
    assert all(len(r["throughput_runs_fps"] or [1]) == 1 for r in rows.values())


def test_unknown_inference_precision_is_rejected():
    with pytest.raises(UserError, match="--inference-precision must be f32, bf16 or f16"):
        BenchOptions(inference_precision="int4")

"""The honest ceiling: pure inference measured as benchmark_app measures it, benchmark_app's own
figure parsed from a real run on the same IR, and the 5 % agreement check (speed is printed,
never asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from model_prep import ceiling

BENCHMARK_APP_TAIL = """\
[ INFO ] Execution Devices: ['CPU']
[ INFO ] Count:            566 iterations
[ INFO ] Duration:         5012.34 ms
[ INFO ] Latency:
[ INFO ]    Median:        17.49 ms
[ INFO ] Throughput:   112.92 FPS
"""


def tiny_ir(folder):
    """A cheap classifier IR: u8 [1,32,32,3] -> mean colour -> [1,10] f32."""
    import openvino as ov
    import openvino.opset13 as ops

    frame = ops.parameter([1, 32, 32, 3], ov.Type.u8, name="input")
    mean = ops.reduce_mean(ops.convert(frame, ov.Type.f32), np.array([1, 2]), keep_dims=False)
    logits = ops.matmul(mean, np.ones((3, 10), np.float32), False, False)
    xml = folder / "model.xml"
    ov.save_model(ov.Model([logits], [frame], "tiny"), xml)
    return xml


def test_parse_throughput_takes_the_fps_line():
    assert ceiling.parse_throughput(BENCHMARK_APP_TAIL) == 112.92
    assert ceiling.parse_throughput("[ ERROR ] cannot read model") is None


@pytest.mark.parametrize(
    ("ours", "app_fps", "spread", "expected"),
    [
        (100.0, 100.0, None, None),
        (104.9, 100.0, None, None),
        (95.1, 100.0, None, None),
        (94.0, 100.0, None, "ratio 0.940, outside ±5%; the ceiling is not trustworthy"),
        (106.0, 100.0, 0.2, "ratio 1.060, outside ±5%; our runs before and after it differed"),
        (100.0, None, None, "no benchmark_app figure to check pure inference against (absent)"),
    ],
)
def test_agreement_warning(ours, app_fps, spread, expected):
    app = ceiling.BenchmarkApp(app_fps, [], None if app_fps else "absent")
    warning = ceiling.agreement_warning(ours, app, spread=spread)
    if expected is None:
        assert warning is None
    else:
        assert warning.startswith("WARNING: ") and expected in warning


def test_honest_ceiling_runs_benchmark_app_on_the_same_ir(tmp_path):
    import openvino as ov

    xml = tiny_ir(tmp_path)
    compiled = ov.Core().compile_model(xml, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    frame = np.zeros((32, 32, 3), np.uint8)
    result = ceiling.honest_ceiling(compiled, frame, 1.0, xml)
    print(result)
    assert result.app is not None and result.app.problem is None, result.app
    assert result.app.fps > 0
    assert "-shape" in result.app.command and "[1,32,32,3]" in result.app.command
    assert len(result.runs_fps) == 2 and min(result.runs_fps) > 0
    assert result.fps == pytest.approx(sum(result.runs_fps) / 2)
    assert result.vs_app == pytest.approx(result.fps / result.app.fps)
    assert result.spread == pytest.approx(
        (max(result.runs_fps) - min(result.runs_fps)) / result.fps
    )
    assert result.requests == compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    assert result.cpu_ms_per_frame > 0


def test_pure_throughput_ends_on_a_whole_round_of_requests(tmp_path):
    import openvino as ov

    xml = tiny_ir(tmp_path)
    compiled = ov.Core().compile_model(xml, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    pure = ceiling.pure_throughput(compiled, np.zeros((32, 32, 3), np.uint8), 0.2, warmup_s=0.1)
    assert pure.frames % pure.requests == 0
    assert pure.fps == pytest.approx(pure.frames / pure.seconds)


def test_missing_ir_gives_a_reason_not_a_figure(tmp_path):
    app = ceiling.benchmark_app_throughput(tmp_path / "none.xml", 1, (1, 32, 32, 3))
    assert app.fps is None and app.problem

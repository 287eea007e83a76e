"""`ovstream run --annotate DIR`: one H.264 MP4 per video file, a frame per result, each the
source frame with the top-1 label, score and stream time drawn in a box, and nothing else
changed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from stream.errors import UserError
from stream.ops.annotate import Annotator, Mark, draw_box, parse_size, write_annotated
from stream.sources.spec import SourceSpec
from tests.conftest import run_cli
from tests.stream.conftest import count_frames


def decoded(path: Path, fmt: str = "yuv420p") -> list[np.ndarray]:
    """Every frame PyAV decodes from `path`, as arrays in `fmt`."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format=fmt) for f in container.decode(video=0)]


def box_of(mark: Mark, width: int, height: int) -> tuple[int, ...]:
    """The box `draw_box` draws for `mark` on a frame of this size."""
    luma = np.zeros((height, width), np.uint8)
    chroma = np.zeros((2, height // 2, width // 2), np.uint8)
    return draw_box(luma, chroma, mark.lines())


def test_drawing_changes_only_the_box_and_the_box_covers_whole_chroma_samples():
    rng = np.random.default_rng(0)
    luma = rng.integers(0, 256, (360, 640), dtype=np.uint8)
    chroma = rng.integers(0, 256, (2, 180, 320), dtype=np.uint8)
    before_luma, before_chroma = luma.copy(), chroma.copy()
    x, y, w, h = draw_box(luma, chroma, Mark("tabby, tabby cat", 0.87, 1.2, 30).lines())
    assert (x, y) == (0, 0) and w % 2 == 0 and h % 2 == 0 and 0 < w < 640 and 0 < h < 360
    outside = np.ones_like(luma, bool)
    outside[y : y + h, x : x + w] = False
    assert np.array_equal(luma[outside], before_luma[outside])
    assert not np.array_equal(luma[:h, :w], before_luma[:h, :w])
    assert np.array_equal(chroma[:, h // 2 :], before_chroma[:, h // 2 :])
    assert np.array_equal(chroma[:, :, w // 2 :], before_chroma[:, :, w // 2 :])
    assert (chroma[:, : h // 2, : w // 2] == 128).all()


def test_a_lossless_annotated_video_is_the_source_outside_the_box(clip_factory, tmp_path):
    """With crf 0 (lossless H.264) every pixel outside the box is the source's, exactly; only
    the frames that have a mark are written, in order."""
    clip = clip_factory(320, 180, 25, 30, name="annotate_src")
    marks = {i: Mark("tabby, tabby cat", 0.5 + i / 100, i / 25, i) for i in range(0, 30, 4)}
    out = tmp_path / "a.mp4"
    assert write_annotated(str(clip), marks, out, crf=0) == len(marks)
    assert not (tmp_path / "a.mp4.part").exists()
    annotated, source = decoded(out), decoded(clip)
    assert len(annotated) == len(marks)
    for frame, index in zip(annotated, sorted(marks), strict=True):
        _, _, w, h = box_of(marks[index], 320, 180)
        inside = np.zeros((180, 320), bool)
        inside[:h, :w] = True
        luma, src = frame[:180], source[index][:180]
        assert np.array_equal(luma[~inside], src[~inside]), f"frame {index}: luma outside the box"
        assert not np.array_equal(luma[inside], src[inside])
        chroma, src_chroma = (f[180:].reshape(2, 90, 160) for f in (frame, source[index]))
        inside = inside[::2, ::2]
        assert np.array_equal(chroma[:, ~inside], src_chroma[:, ~inside]), f"frame {index}"
    with av.open(str(out)) as container:
        times = [round(f.time, 3) for f in container.decode(video=0)]
    assert times == [round(marks[i].pts, 3) for i in sorted(marks)]


def test_a_size_rescales_and_a_cancelled_video_leaves_no_file(clip_factory, tmp_path):
    clip = clip_factory(320, 180, 25, 30, name="annotate_src")
    marks = {i: Mark("espresso", 0.9, i / 25, i) for i in range(30)}
    out = tmp_path / "small.mp4"
    assert write_annotated(str(clip), marks, out, size=(160, 90)) == 30
    assert decoded(out)[0].shape == (135, 160)  # yuv420p: 90 rows of luma, 45 of chroma
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InterruptedError):
        write_annotated(str(clip), marks, tmp_path / "gone.mp4", cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.mp4"]


@pytest.mark.parametrize(
    "text, error",
    [
        ("640", "--annotate-size: expected WxH such as 640x360, got '640'"),
        ("axb", "--annotate-size: expected WxH such as 640x360, got 'axb'"),
        ("641x360", "--annotate-size: expected even W and H of at least 16, got '641x360'"),
        ("8x8", "--annotate-size: expected even W and H of at least 16, got '8x8'"),
    ],
)
def test_bad_sizes(text, error):
    with pytest.raises(UserError) as info:
        parse_size(text)
    assert str(info.value) == error


def test_live_sources_and_a_folder_that_holds_the_input_are_refused(clip_factory, tmp_path):
    # (live sources go to annotate_live.LiveAnnotator; Annotator decodes files again)
    with pytest.raises(UserError, match=r"door \(rtsp://u:\*\*\*@10.0.0.5/s\) is a live source"):
        Annotator(tmp_path, [SourceSpec.parse("door=rtsp://u:p@10.0.0.5/s")])
    clip = clip_factory(320, 180, 25, 30, name="annotate_src")
    with pytest.raises(UserError, match="would replace the input"):
        Annotator(clip.parent, [SourceSpec.parse(str(clip))])


CLI_ERRORS = [
    (
        ["door=rtsp://user:secret@10.0.0.5/s", "--annotate", "{tmp}", "--annotate-segment", "-1"],
        "ovstream: error: --annotate-segment: expected seconds > 0, got -1",
    ),
    (
        ["a.mp4", "--annotate-size", "320x180"],
        "ovstream: error: --annotate-size needs --annotate DIR",
    ),
    (
        ["a.mp4", "--annotate", "{tmp}", "--annotate-size", "big"],
        "ovstream: error: --annotate-size: expected WxH such as 640x360, got 'big'",
    ),
]


@pytest.mark.parametrize("args, line", CLI_ERRORS, ids=[" ".join(a) for a, _ in CLI_ERRORS])
def test_cli_errors_are_one_line(args, line, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path / "ann")) for a in args]
    proc = run_cli("ovstream", "run", *args, "--model", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]


def check_annotated(video: Path, source: Path, results: list[dict], size=None) -> None:
    """One decodable frame per result; a frame differs from its source frame only inside the
    box (default crf: small differences from H.264 outside it, large ones inside)."""
    frames = decoded(video, "bgr24")
    assert len(frames) == len(results)
    k = len(results) // 2
    record = results[k]
    src = decoded(source, "bgr24")[record["frame_index"]]
    frame = frames[k]
    if size is not None:
        assert frame.shape[:2] == (size[1], size[0])
        return
    height, width = src.shape[:2]
    best = record["topk"][0]
    mark = Mark(best["label"], best["score"], record["pts"], record["frame_index"])
    _, _, w, h = box_of(mark, width, height)
    diff = np.abs(frame.astype(np.int16) - src.astype(np.int16))
    outside = np.ones((height, width), bool)
    outside[: h + 2, : w + 2] = False  # (chroma upsampling blurs the edge by a pixel)
    assert diff[outside].mean() < 3, diff[outside].mean()
    assert diff[:h, :w].mean() > 20, diff[:h, :w].mean()


@pytest.mark.slow
@pytest.mark.parametrize("fps", [None, 5.0], ids=["every-frame", "fps5"])
def test_run_annotates_every_file_with_a_frame_per_result(clip_factory, model, tmp_path, fps):
    clips = {
        "cat": clip_factory(320, 180, 25, 40, name="annotate_cat"),
        "wide": clip_factory(640, 360, 30, 33, name="annotate_wide"),
    }
    out, folder = tmp_path / "results.jsonl", tmp_path / "ann"
    args = [f"{sid}={path}" for sid, path in clips.items()]
    args += ["--model", str(model), "--publish", "none", "--output", str(out)]
    args += ["--annotate", str(folder), "--no-progress"]
    if fps:
        args += ["--fps", str(fps)]
    proc = run_cli("ovstream", "run", *args, timeout=240)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(p.name for p in folder.iterdir()) == ["cat.mp4", "wide.mp4"]
    for sid, clip in clips.items():
        results = [r for r in records if r["stream_id"] == sid]
        assert len(results) == len(count_frames(clip, fps)) > 0
        check_annotated(folder / f"{sid}.mp4", clip, results)
    total = sum(len(count_frames(c, fps)) for c in clips.values())
    assert f"ovstream: annotated 2 video(s), {total} frame(s) in " in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_run_annotates_at_a_given_size(clip_factory, model, tmp_path):
    clip = clip_factory(320, 180, 25, 40, name="annotate_cat")
    out, folder = tmp_path / "results.jsonl", tmp_path / "ann"
    proc = run_cli(
        "ovstream",
        "run",
        str(clip),
        "--model",
        str(model),
        "--publish",
        "none",
        "--output",
        str(out),
        "--annotate",
        str(folder),
        "--annotate-size",
        "160x90",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    check_annotated(folder / "annotate_cat.mp4", clip, results, size=(160, 90))

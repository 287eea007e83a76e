"""LocalRequests: a batch runs on OpenVINO as requests of 4 frames on a model compiled for 4 and
the rest one frame a request on one compiled for 1; each frame gets its own result, in order."""

from __future__ import annotations

import select
import time

import cv2
import numpy as np
import pytest

from stream.geometry import Geometry, prepare
from stream.inference import InferenceError, LocalRequests
from stream.model import compile_batches, compile_model, load_info, request_batch, softmax
from stream.wire import messages
from tests.conftest import failing_ir


def frames(photos: dict[str, np.ndarray], n: int) -> np.ndarray:
    """`n` different model inputs made from the two photos (flipped, darkened, cropped)."""
    out = []
    for k in range(n):
        image = photos["chelsea" if k % 2 else "coffee"]
        if k % 4 >= 2:
            image = cv2.flip(image, 1)
        image = (image * (1.0 - 0.1 * (k // 4))).astype(np.uint8)
        out.append(prepare(image[k * 7 :, k * 5 :], Geometry()))
    return np.stack(out)


def run_all(requests: LocalRequests, batches: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Start every batch (tags 0, 1, ...), as many at once as there are requests, and wait for
    their outputs (at most 60 s)."""
    results: dict[int, np.ndarray] = {}
    waiting = list(enumerate(batches))
    deadline = time.monotonic() + 60
    while len(results) < len(batches):
        while waiting and requests.free:
            tag, data = waiting.pop(0)
            n = len(data)
            index = np.array([(0, k, k) for k in range(n)], np.int64)
            requests.start(messages.Batch(["s"], index, np.zeros((n, 2)), data), tag)
        assert time.monotonic() < deadline, f"{len(results)} of {len(batches)} batches came back"
        select.select([requests.fd], [], [], 1.0)
        for chunk, out, tag in requests.finished():
            assert len(out) == len(chunk)
            results[tag] = out
    return results


def test_a_batch_runs_in_requests_of_four_and_of_one_and_each_frame_gets_its_result(model, photos):
    info = load_info(model)
    assert request_batch(8) == 4 and request_batch(3) == 3 and request_batch(1) == 1
    compiled = compile_batches(info, "CPU", "throughput", None, None, (4, 1))
    assert [str(c.input(0).get_partial_shape()) for c in compiled] == [
        "[4,224,224,3]",
        "[1,224,224,3]",
    ]
    single = compile_model(info)  # each frame alone: the reference
    images = frames(photos, 8)
    alone = np.concatenate([single(images[k : k + 1])[0] for k in range(8)])

    del compiled  # no requests on these: they may go here
    requests = LocalRequests.compile(info, "CPU", "throughput", None, 8, "bgr", requests=2)
    assert requests.batch == 4 and requests.requests == 2
    sizes = [8, 7, 5, 4, 3, 1, 8, 8]  # two requests of 4; 4 and 3 of one; ...; two full at once
    starts = np.cumsum([0, *sizes])
    batches = [np.roll(images, -int(s), axis=0)[:n] for s, n in zip(starts, sizes, strict=False)]
    results = run_all(requests, batches)
    assert requests.inflight == 0 and requests.frames_inflight == 0 and requests.free == 2
    for tag, n in enumerate(sizes):
        want = np.roll(alone, -int(starts[tag]), axis=0)[:n]
        got = results[tag]
        assert got.shape == (n, 1000) and got.dtype == np.float32
        assert (got.argmax(1) == want.argmax(1)).all(), tag
        assert np.abs(softmax(got) - softmax(want)).max() < 1e-3, tag
    requests.close()


def test_max_batch_one_runs_a_request_per_frame(model, photos):
    info = load_info(model)
    compiled = compile_batches(info, "CPU", "latency", None, None, (request_batch(1), 1))
    assert len(compiled) == 1  # one model, for one frame
    del compiled
    requests = LocalRequests.compile(info, "CPU", "latency", None, 1, "bgr", requests=1)
    assert requests.batch == 1
    images = frames(photos, 3)
    results = run_all(requests, [images[k : k + 1] for k in range(3)])
    single = compile_model(info, mode="latency")
    for k in range(3):
        assert results[k].argmax() == single(images[k : k + 1])[0].argmax()
    requests.close()


def failing_requests() -> LocalRequests:
    """Requests of 4 and of 1 on an IR that fails inside OpenVINO when the first pixel of a
    request's first frame is not 1 (`failing_ir`); the compiled models live only in the
    requests, as `LocalRequests.compile` leaves them."""
    import openvino as ov

    def model(n: int) -> ov.CompiledModel:
        ir = failing_ir(offset=0)
        ir.reshape(ov.PartialShape([n, 224, 224, 3]))
        return ov.Core().compile_model(ir)

    return LocalRequests([model(4), model(1)], requests=1, max_batch=8)


def start_eight(requests: LocalRequests, bad_frame: int) -> None:
    data = np.ones((8, 224, 224, 3), np.uint8)
    data[bad_frame, 0, 0, 0] = 3
    index = np.array([(0, k, k) for k in range(8)], np.int64)
    requests.start(messages.Batch(["s"], index, np.zeros((8, 2)), data))


def test_a_failed_request_is_an_error_not_a_batch_that_never_comes_back():
    requests = failing_requests()
    start_eight(requests, bad_frame=0)  # the batch's first request fails, its last wakes
    assert select.select([requests.fd], [], [], 30)[0]
    with pytest.raises(InferenceError, match="inference failed: .*reshape"):
        requests.finished()
    requests.close()

    requests = failing_requests()
    start_eight(requests, bad_frame=4)  # its last request fails: nothing wakes the owner
    assert not select.select([requests.fd], [], [], 1.0)[0]
    assert requests.inflight == 1
    with pytest.raises(InferenceError) as failed:
        requests.check()
    assert str(failed.value).startswith("inference failed: [cpu]reshape: the shape of input")
    assert "\n" not in str(failed.value)
    requests.close()

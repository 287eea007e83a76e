"""Frames in shared memory (stream/wire/shm.py): pools, slots, the wire form of shared batches,
and whole runs that use them: the same results as frames inside the messages, the run's folder
gone afterwards, and shared frames that name nothing real rejected like any malformed message."""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from stream import Pipeline, PipelineConfig
from stream.geometry import Geometry
from stream.wire import messages, shm
from stream.wire.transport import TransportConfig

from .conftest import recv_within, stage_process

SHAPE = (8, 6, 3)


def shared_batch(pool: shm.FramePool, slots: list[int], stream: str = "s") -> messages.Batch:
    n = len(slots)
    return messages.Batch(
        [stream],
        np.array([[0, k, k] for k in range(n)], np.int64),
        np.array([[k / 25.0, 1.0] for k in range(n)], np.float64),
        np.array([[0, s] for s in slots], np.int64),
        messages.Shared([pool.name], pool.shape),
    )


def test_a_pool_hands_out_each_slot_once_until_it_is_freed(tmp_path):
    pool = shm.FramePool.create(tmp_path, SHAPE, slots=3)
    assert pool.name == f"{os.getpid()}.pool"
    taken = [pool.acquire() for _ in range(3)]
    assert sorted(taken) == [0, 1, 2]
    assert pool.acquire() is None and not pool.has_free() and pool.in_use() == 3
    assert pool.wait(lambda: True) is None  # stopped: gives up at once
    assert pool.wait(lambda: False, timeout_s=0.05) is None
    other = shm.FramePool.attach(tmp_path, pool.name)  # infer's view of the same file
    assert other.shape == SHAPE and other.slots == 3
    pool.frames[1] = 7
    assert (other.frames[1] == 7).all()  # one memory, no copy
    other.release([1])
    assert pool.acquire() == 1 and pool.in_use() == 3


@pytest.mark.parametrize(
    "name, content, error",
    [
        ("../etc.pool", None, "not a frame pool name"),
        ("123.pool", None, "No such file"),
        ("124.pool", b"x" * 100, "not a pool of this version"),
        ("125.pool", b"x" * 10, "is no pool"),
    ],
)
def test_attach_refuses_what_is_not_a_pool(tmp_path, name, content, error):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=error):
        shm.FramePool.attach(tmp_path, name)


def test_run_folders_of_dead_runs_are_removed_and_room_is_checked(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    stale = tmp_path / f"ovstream-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "1.pool").write_bytes(b"x")
    live = tmp_path / f"ovstream-{os.getpid()}-def"
    live.mkdir()
    folder = shm.make_run_dir(2, SHAPE, root=tmp_path)
    assert folder is not None and os.path.isdir(folder)
    assert not stale.exists() and live.exists()  # a running process's folder stays
    with caplog.at_level(logging.WARNING):
        assert shm.make_run_dir(10**12, (224, 224, 3), root=tmp_path) is None
    assert "frames go inside the messages" in caplog.text
    assert shm.make_run_dir(1, SHAPE, root=tmp_path / "missing") is None


def test_shared_batches_round_trip_join_and_are_checked(tmp_path):
    a = shm.FramePool.create(tmp_path, SHAPE, slots=4)
    b = shm.FramePool.attach(tmp_path, a.name)
    b.name = "999.pool"  # a second pool name, as a second capture would have
    one = shared_batch(a, [0, 1])
    two = messages.Batch(["t"], one.index[:1].copy(), one.times[:1], np.array([[0, 3]]),
                         messages.Shared(["999.pool"], SHAPE))  # fmt: skip
    joined = messages.Batch.join([one, two])
    assert joined.shared == messages.Shared([a.name, "999.pool"], SHAPE)
    assert joined.data.tolist() == [[0, 0], [0, 1], [1, 3]]
    back = messages.decode(messages.encode_batch(messages.TENSOR, joined)).batch
    assert back.shared == joined.shared and back.data.tolist() == joined.data.tolist()
    assert back.take(2, 3).shared == joined.shared
    with pytest.raises(ValueError, match="cannot join"):
        messages.Batch.join([one, one.with_data(np.zeros((2, *SHAPE), np.uint8))])
    parts = messages.encode_batch(messages.TENSOR, one)
    header = messages.orjson.loads(bytes(parts[1]))
    for shared, error in [
        ({"pools": [], "shape": [8, 6, 3]}, "distinct pools"),
        ({"pools": ["x"], "shape": [8, 6]}, "shape"),
        ({"pools": ["x"], "shape": [8, 6, 3], "extra": 1}, None),
    ]:
        header["shared"] = shared
        bad = [parts[0], messages.orjson.dumps(header), *parts[2:]]
        if error is None:
            messages.decode(bad)
        else:
            with pytest.raises(messages.MessageError, match=error):
                messages.decode(bad)
    header["shared"] = {"pools": [a.name], "shape": list(SHAPE)}
    out_of_range = [parts[0], messages.orjson.dumps(header), parts[2], parts[3],
                    np.array([[1, 0], [0, 1]], np.int64)]  # fmt: skip
    with pytest.raises(messages.MessageError, match="out of range"):
        messages.decode(out_of_range)


def test_gather_copies_frames_out_and_frees_their_slots(tmp_path):
    pool = shm.FramePool.create(tmp_path, SHAPE, slots=4)
    for slot in range(3):
        assert pool.acquire() == slot
        pool.frames[slot] = slot + 1
    pools = shm.PoolSet(str(tmp_path))
    inline = messages.Batch.single("u", 0, 0, None, 1.0, np.full(SHAPE, 9, np.uint8))
    pieces = [shared_batch(pool, [0, 1]), inline, shared_batch(pool, [2], "v")]
    assert pools.problem(pieces[0]) is None
    gathered = pools.gather(pieces)
    assert gathered.shared is None and gathered.data.shape == (4, *SHAPE)
    assert [int(f[0, 0, 0]) for f in gathered.data] == [1, 2, 9, 3]
    assert gathered.stream_ids() == ["s", "s", "u", "v"]
    assert pool.in_use() == 0
    assert "does not exist" in pools.problem(shared_batch(pool, [7]))
    wrong = shared_batch(pool, [0])
    wrong = messages.Batch(wrong.streams, wrong.index, wrong.times, wrong.data,
                           messages.Shared([pool.name], (4, 4, 3)))  # fmt: skip
    assert "holds [8, 6, 3]" in pools.problem(wrong)
    assert "shared folder" in shm.PoolSet(None).problem(wrong)


def labels(config: PipelineConfig) -> tuple[list[tuple], list[str], set[int]]:
    """Sorted (stream, frame, label, score) of a run, and the pools seen while it ran."""
    seen: set[str] = set()
    out = []
    with Pipeline(config) as pipeline:
        for r in pipeline:
            out.append((r["stream_id"], r["frame_index"], r["topk"][0]["label"],
                        round(r["topk"][0]["score"], 4)))  # fmt: skip
            seen.update(glob.glob(f"/dev/shm/ovstream-{os.getpid()}-*/*.pool"))
        assert pipeline.summary is not None and pipeline.summary.exit_code == 0
        pids = {pid for name, pid in pipeline.pids.items() if name.startswith("capture")}
    return sorted(out), sorted(seen), pids


@pytest.mark.slow
def test_a_run_through_shared_memory_gives_the_results_of_one_without(clip_factory, model):
    a = clip_factory(160, 90, 25, 40, name="shm_a")
    b = clip_factory(96, 128, 25, 30, name="shm_b")
    sources = [f"a={a}", f"b={b}"]

    def config(shared: bool) -> PipelineConfig:
        transport = TransportConfig(shared_memory=shared)
        return PipelineConfig(sources=sources, model=str(model), publish=None,
                              transport=transport)  # fmt: skip

    shared, pools, captures = labels(config(True))
    inline, none, _ = labels(config(False))
    assert len(shared) == 70 and shared == inline
    assert {os.path.basename(p) for p in pools} == {f"{pid}.pool" for pid in captures}
    assert none == []
    assert glob.glob(f"/dev/shm/ovstream-{os.getpid()}-*") == []  # removed when it closed


@pytest.mark.slow
def test_shared_frames_that_name_nothing_real_are_rejected(clip_factory, model, caplog):
    clip = clip_factory(160, 90, 25, 60, name="shm_bad")
    config = PipelineConfig(sources=[f"g={clip}"], model=str(model), publish=None, jobs=1)
    ctx = zmq.Context()
    index, times = np.array([[0, 0, 0]], np.int64), np.array([[0.0, time.time()]])
    nowhere = messages.Shared(["1.pool"], Geometry().frame_shape("i420"))  # the run's (auto)
    fake = messages.Batch(["g"], index, times, np.array([[0, 0]], np.int64), nowhere)
    results = []
    try:
        with caplog.at_level(logging.WARNING), Pipeline(config) as pipeline:
            for record in pipeline:
                results.append(record)
                if len(results) == 1:
                    sock = ctx.socket(zmq.PUSH)
                    sock.setsockopt(zmq.LINGER, 5000)
                    sock.connect(pipeline.supervisor.endpoints["tensors"])
                    sock.send_multipart(messages.encode_batch(messages.TENSOR, fake), copy=False)
                    sock.close()
    finally:
        ctx.term()
    assert [r["frame_index"] for r in results] == list(range(60))
    logged = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(logged) == 1 and "frame pool 1.pool" in logged[0], logged
    assert pipeline.summary.rejected == 1


def test_a_full_pool_waits_for_a_burst_of_free_slots(tmp_path):
    """A capture that found every slot in flight goes on only once `resume` are free again, so
    it decodes a burst of frames per wake-up instead of one."""
    pool = shm.FramePool.create(tmp_path, SHAPE, slots=4)
    for _ in range(4):
        pool.acquire()
    other = shm.FramePool.attach(tmp_path, pool.name)  # infer frees slots while it waits
    looks = []

    def stop():
        looks.append(pool.in_use())
        if len(looks) == 1:
            other.release([0])
        elif len(looks) == 3:
            other.release([2])
        return False

    assert pool.wait(stop, timeout_s=10, resume=2) in (0, 2)
    assert looks == [4, 3, 3]  # one slot free was not enough: it waited for the second
    assert pool.in_use() == 3
    assert pool.acquire() in (0, 2)  # the other freed one, without waiting


def test_a_waiting_capture_is_woken_by_the_process_that_frees_slots(tmp_path, monkeypatch):
    """A capture with every slot in flight sleeps on its pool's wake-up pipe until another
    process frees slots: it is woken by that process, not by looking again on a timer."""
    monkeypatch.setattr(shm, "WAKE_TIMEOUT_S", 60.0)  # a timer would not wake it in this test
    pool = shm.FramePool.create(tmp_path, SHAPE, slots=4)
    for _ in range(4):
        pool.acquire()
    freer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from stream.wire import shm; "
            f"pool = shm.FramePool.attach({str(tmp_path)!r}, {pool.name!r}); "
            "deadline = time.monotonic() + 20\n"
            "while not pool._mm[shm.WAITING_AT] and time.monotonic() < deadline: time.sleep(0.01)\n"
            "pool.release([1, 3])",
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    looks = []
    try:
        slot = pool.wait(lambda: looks.append(1) or False, timeout_s=30, resume=2)
    finally:
        assert freer.wait(timeout=30) == 0
    assert slot in (1, 3)
    assert len(looks) <= 2, len(looks)  # woken once (twice if the release came first)
    assert pool._mm[shm.WAITING_AT] == 0
    assert (tmp_path / f"{os.getpid()}.wake").exists()
    pool.close()


def test_a_file_capture_sends_frames_in_batches_and_never_holds_any_while_it_waits(
    clip_factory, tmp_path, zctx
):
    """A file's capture sends its frames in messages of up to `max_batch` (slot numbers only),
    numbered without gaps, the end of stream counting them all. With every slot in flight, the
    frames it holds go before it waits: here the reader frees nothing until it has every slot's
    frame (48, not a multiple of 5), so a capture that kept frames back would wait for slots that
    never come free."""
    from stream.sources.spec import SourceSpec
    from stream.stages.capture import CaptureConfig, CaptureStage

    frames = shm.DEFAULT_SLOTS + 20
    clip = clip_factory(320, 180, 25, frames)
    geometry = Geometry()
    folder = shm.make_run_dir(1, geometry.frame_shape("i420"), root=tmp_path)
    assert folder is not None
    endpoints = {link: f"ipc://{tmp_path}/{link}.sock" for link in ("frames", "control")}
    endpoints["shm"] = folder
    spec = SourceSpec("s", str(clip), False)
    config = CaptureConfig(spec, geometry, frame_format="i420", max_batch=5)
    stage = CaptureStage(config, TransportConfig(), endpoints)
    control, inbox = zctx.socket(zmq.PULL), zctx.socket(zmq.PULL)
    control.bind(endpoints["control"])
    inbox.bind(endpoints["frames"])
    with stage_process(stage) as proc:
        pools = shm.PoolSet(folder)
        held: list[messages.Batch] = []
        seqs, sizes = [], []
        while True:
            msg = messages.decode(recv_within(inbox, 30))
            if msg.kind == messages.EOS:
                break
            assert msg.kind == messages.FRAME and msg.batch.shared is not None
            sizes.append(len(msg.batch))
            seqs += [row[1] for row in msg.batch.rows()]
            held.append(msg.batch)
            if len(seqs) >= shm.DEFAULT_SLOTS:  # every slot has come: free them, as infer does
                for batch in held:
                    pools.gather([batch], np.empty((len(batch), *batch.shared.shape), np.uint8))
                held = []
        assert msg.meta["count"] == frames and not msg.meta["stopped"]
        assert seqs == list(range(frames))
        assert max(sizes) == 5 and len(sizes) < frames / 2, sizes
        proc.join(30)
        assert proc.exitcode == 0

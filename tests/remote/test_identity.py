"""Model identity: what a head and a worker compare before any tensor is sent."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from stream.model import load_info
from stream.remote.identity import file_sha256, identity_mismatch, model_identity


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strip_files(folder) -> None:
    """Make `folder` look like a model exported before model.json recorded file digests."""
    meta = folder / "model.json"
    data = json.loads(meta.read_text())
    data.pop("files")
    meta.write_text(json.dumps(data))


def test_export_records_the_ir_files_sha256(lite0_model):
    for precision in ("fp32", "fp16"):
        folder = lite0_model / precision
        files = json.loads((folder / "model.json").read_text())["files"]
        assert files == {
            "model.xml": sha256(folder / "model.xml"),
            "model.bin": sha256(folder / "model.bin"),
        }


def test_same_model_same_identity(lite0_model, tmp_path):
    fp32 = model_identity(lite0_model / "fp32")
    assert fp32["name"] == "efficientnet-lite0" and fp32["precision"] == "FP32"
    assert fp32["files"]["model.bin"] == sha256(lite0_model / "fp32" / "model.bin")
    assert model_identity(load_info(lite0_model / "fp32")) == fp32
    assert model_identity(lite0_model) == fp32  # the parent resolves to fp32/ like --model
    copy = shutil.copytree(lite0_model / "fp32", tmp_path / "elsewhere")
    assert model_identity(copy) == fp32
    assert identity_mismatch(model_identity(copy), fp32) is None


def test_other_precision_differs_with_a_clear_reason(lite0_model):
    fp32 = model_identity(lite0_model / "fp32")
    fp16 = model_identity(lite0_model / "fp16")
    reason = identity_mismatch(fp16, fp32)
    assert reason == (
        f"worker model efficientnet-lite0 FP16 (sha256 {fp16['files']['model.bin'][:12]}..) "
        f"differs from the head's efficientnet-lite0 FP32 "
        f"(sha256 {fp32['files']['model.bin'][:12]}..)"
    )
    assert "\n" not in reason


def test_older_model_without_recorded_digests(lite0_model, tmp_path):
    recorded = model_identity(lite0_model / "fp32")
    old = shutil.copytree(lite0_model / "fp32", tmp_path / "old")
    strip_files(old)
    assert model_identity(old) == recorded


def test_digest_cached_per_path_and_mtime(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    stat = path.stat()
    path.write_bytes(b"b" * 1000)  # same size; put the old mtime back: the cached digest stays
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) == first
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(path) == sha256(path) != first


def test_changed_weights_or_graph_are_named(lite0_model, tmp_path):
    head = model_identity(lite0_model / "fp32")
    weights = shutil.copytree(lite0_model / "fp32", tmp_path / "weights")
    strip_files(weights)
    data = bytearray((weights / "model.bin").read_bytes())
    data[100] ^= 0xFF
    (weights / "model.bin").write_bytes(bytes(data))
    reason = identity_mismatch(model_identity(weights), head)
    assert reason is not None and f"sha256 {sha256(weights / 'model.bin')[:12]}.." in reason
    graph = shutil.copytree(lite0_model / "fp32", tmp_path / "graph")
    strip_files(graph)
    (graph / "model.xml").write_text((graph / "model.xml").read_text() + "\n")
    reason = identity_mismatch(model_identity(graph), head)
    assert reason is not None
    assert f"(model.xml sha256 {sha256(graph / 'model.xml')[:12]}..)" in reason

"""Which model a process runs, so a head and a remote worker can check they run the same one.

The identity is the model's name, its precision and the sha256 of `model.xml` and `model.bin`.
`model-prep export` and `quantize` record the digests in model.json (`files`); for folders made
before that they are computed here once per file version (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from stream.errors import UserError
from stream.model import METADATA_FILE, ModelInfo, load_info

log = logging.getLogger(__name__)

IR_FILES = ("model.xml", "model.bin")
SHORT = 12  # hex digits of a digest shown in messages

_cache: dict[tuple[str, int, int], str] = {}
_cache_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, computed once per (path, size, mtime)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with _cache_lock:
        _cache[key] = digest.hexdigest()
    return _cache[key]


def ir_digests(folder: Path) -> dict[str, str]:
    """{"model.xml": sha256, "model.bin": sha256} of a model folder, computed from the files."""
    return {name: file_sha256(Path(folder) / name) for name in IR_FILES}


def record_digests(folder: Path) -> dict[str, str]:
    """Add the IR files' sha256 to the folder's model.json as `files` (model-prep calls this
    after writing the IR and model.json)."""
    meta = Path(folder) / METADATA_FILE
    data = json.loads(meta.read_text())
    data["files"] = ir_digests(folder)
    meta.write_text(json.dumps(data, indent=2) + "\n")
    return data["files"]


def _recorded(folder: Path) -> dict[str, str] | None:
    try:
        files = json.loads((folder / METADATA_FILE).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(files, dict) and all(isinstance(files.get(n), str) for n in IR_FILES):
        return {n: files[n] for n in IR_FILES}
    return None


def model_identity(model: str | Path | ModelInfo) -> dict[str, Any]:
    """{"name", "precision", "files": {"model.xml": sha256, "model.bin": sha256}} of a model
    folder (or a precision's parent folder, resolved like --model) or a loaded ModelInfo."""
    info = model if isinstance(model, ModelInfo) else load_info(model)
    if info.path is None:
        raise ValueError("model_identity needs a ModelInfo loaded from a folder")
    files = _recorded(info.path)
    if files is None:
        log.info("%s records no file digests (an older export): computing them", info.path)
        files = ir_digests(info.path)
    return {"name": info.name, "precision": info.precision, "files": files}


def _describe(identity: dict[str, Any], file: str) -> str:
    digest = str(identity.get("files", {}).get(file, "?"))
    where = "" if file == "model.bin" else f"{file} "
    return f"{identity.get('name')} {identity.get('precision')} ({where}sha256 {digest[:SHORT]}..)"


def _key(identity: dict[str, Any]) -> tuple:
    files = identity.get("files", {})
    return (identity.get("name"), identity.get("precision"), *(files.get(n) for n in IR_FILES))


def identity_mismatch(worker: dict[str, Any], head: dict[str, Any]) -> str | None:
    """None when both run the same model; otherwise one line saying how the worker's differs."""
    if _key(worker) == _key(head):
        return None
    # Show the digest that differs: model.bin (the weights) unless only model.xml does.
    same_bin = worker.get("files", {}).get("model.bin") == head.get("files", {}).get("model.bin")
    xml_differs = _key(worker)[2] != _key(head)[2]
    file = "model.xml" if same_bin and xml_differs else "model.bin"
    return f"worker model {_describe(worker, file)} differs from the head's {_describe(head, file)}"

"""The variants of one prepared model that validation and the benchmark compare side by side."""

from __future__ import annotations

import logging
from pathlib import Path

from model_prep.sources import Source
from stream.errors import UserError
from stream.model import METADATA_FILE, ModelInfo, load_info

log = logging.getLogger(__name__)

ORDER = ("fp32", "fp16", "int8")


def present(folder: Path, command: str) -> dict[str, ModelInfo]:
    """{"fp32": info, ...} for every precision sub-folder with an IR, in ORDER; error if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    found = {p: load_info(folder / p) for p in ORDER if (folder / p / METADATA_FILE).is_file()}
    if not found:
        raise UserError(
            f"{command}: no IR in {folder} (expected {'/, '.join(ORDER)}/ with model.xml; "
            "make one with 'model-prep export')"
        )
    return found


def reference(found: dict[str, ModelInfo]) -> ModelInfo:
    """The precision others are compared with: FP32 if present, else the first found."""
    return found.get("fp32") or next(iter(found.values()))


def torch_source(info: ModelInfo) -> tuple[Source | None, str]:
    """Rebuild the PyTorch model the IR came from, or (None, why not) when it is unavailable.

    Packaged and random weights rebuild offline (random is seeded, so it is the same network);
    a checkpoint must still exist with the recorded sha256; torchvision weights only if cached.
    """
    from model_prep import sources

    src = info.source
    kind = src.get("kind")
    try:
        if kind == "packaged":
            built = sources.build(info.arch, sources.PRETRAINED)
        elif kind == sources.RANDOM:
            built = sources.build(info.arch, sources.RANDOM)
        elif kind == "checkpoint":
            path = Path(src.get("path", ""))
            if not path.is_file():
                return None, f"checkpoint {path} not found"
            if src.get("sha256") and sources.sha256(path) != src["sha256"]:
                return None, f"checkpoint {path} changed since export (sha256 differs)"
            built = sources.build(info.arch, str(path))
        elif kind == "torchvision":
            built = sources.build(info.arch, str(src.get("name", "")).split(".")[-1])
        else:
            return None, f"unknown source kind {kind!r} in model.json"
    except UserError as exc:
        return None, str(exc)
    if built.info.get("sha256") and src.get("sha256") and built.info["sha256"] != src["sha256"]:
        return None, "packaged weights differ from those exported (sha256)"
    return built, ""

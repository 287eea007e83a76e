"""Which pip extra brings each third-party module, so that a missing one is named in one line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PROJECT = "ovstream"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# Import name -> distribution where the two differ by more than case and -/_
# (efficientnet_lite_pytorch is efficientnet-lite-pytorch); tests/test_dependencies.py checks
# the code's imports against it.
DISTRIBUTIONS = {
    "cv2": "opencv-python-headless",
    "zmq": "pyzmq",
    "skimage": "scikit-image",
    "prometheus_client": "prometheus-client",
    "paho": "paho-mqtt",
}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """`torch==2.14.1; extra == "prep"` -> `torch`."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1)


def distribution(module: str) -> str:
    """The (normalised) distribution that provides top-level import name `module`."""
    return normalize(DISTRIBUTIONS.get(module, module))


def declared() -> dict[str, set[str]]:
    """Extra ('' for the base dependencies) -> the distributions it declares.

    From the source tree's pyproject.toml when running from a checkout (an editable install whose
    metadata may be older than the code), else from the installed package's metadata.
    """
    groups: dict[str, list[str]] = {}
    try:
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        if project.get("name") == PROJECT:
            groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    if not groups:
        import importlib.metadata

        try:
            requires = importlib.metadata.requires(PROJECT) or []
        except importlib.metadata.PackageNotFoundError:
            requires = []
        for req in requires:
            extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
            groups.setdefault(extra.group(1) if extra else "", []).append(req)
    return {e: {normalize(requirement_name(r)) for r in reqs} for e, reqs in groups.items()}


def extra_for(module: str) -> str | None:
    """The extra that declares `module`'s distribution ('' for the base), None if none does."""
    dist = distribution(module)
    groups = declared()
    for extra in sorted(groups, key=lambda e: (e != "", e != "prep", e)):
        if dist in groups[extra]:
            return extra
    return None


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """A one-line message for a declared dependency that is not installed; None otherwise.

    A missing module that no extra declares is a bug, not the user's to fix: None, and the caller
    lets the exception through.
    """
    if not exc.name:
        return None
    module = exc.name.split(".")[0]
    extra = extra_for(module)
    if extra is None:
        return None
    what = f"no module named {module!r}, from {distribution(module)}"
    if extra == "":
        return f"a dependency of {PROJECT} is not installed ({what}): pip install -e ."
    return f"the {extra!r} extra is needed ({what}): pip install -e '.[{extra}]'"

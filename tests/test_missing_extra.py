"""A missing dependency gives one line naming the extra to install, exit 2, no traceback.

The CLIs run as real subprocesses; a `sys.meta_path` finder makes one module absent (as in a
venv without that extra), everything else is the real thing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream.deps import missing_dependency
from tests.conftest import ROOT

# Runs a CLI module as `python -m` would, with `module` (and its submodules) not importable.
WITHOUT = """
import runpy, sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
sys.argv[0] = {cli!r}
runpy.run_module({cli!r}, run_name="__main__", alter_sys=True)
"""

PREP = "the 'prep' extra is needed (no module named {m!r}, from {d}): pip install -e '.[prep]'"
BASE = (
    "a dependency of ovstream is not installed (no module named {m!r}, from {d}): pip install -e ."
)

# (tool, absent module, its distribution, args ({tmp} = tmp_path), expected message template)
CASES = {
    "export without torch": ("model-prep", "torch", "torch", ["export", "-o", "{tmp}/m"], PREP),
    "help without torch": ("model-prep", "torch", "torch", ["--help"], PREP),
    "export without scikit-image": pytest.param(
        "model-prep",
        "skimage",
        "scikit-image",
        ["export", "--output", "{tmp}/m"],
        PREP,
        marks=pytest.mark.slow,  # gets as far as the parity check: a whole export first
    ),
    "run without pyzmq": (
        "ovstream",
        "zmq",
        "pyzmq",
        ["run", "samples/sample.mp4", "--model", "{tmp}/m", "--publish", "none", "--print"],
        BASE,
    ),
    "classify without opencv": (
        "ovstream",
        "cv2",
        "opencv-python-headless",
        ["classify", "{tmp}/m", "x.jpg"],
        BASE,
    ),
}


def run_without(module: str, tool: str, *args: str) -> subprocess.CompletedProcess:
    cli = {"ovstream": "stream.cli", "model-prep": "model_prep.cli"}[tool]
    code = WITHOUT.format(module=module, cli=cli)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("tool", "module", "dist", "args", "message"),
    list(CASES.values()),
    ids=list(CASES),
)
def test_missing_extra_gives_one_line(tool, module, dist, args, message, tmp_path):
    proc = run_without(module, tool, *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{tool}: error: {message.format(m=module, d=dist)}"]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("skimage.data", PREP.format(m="skimage", d="scikit-image")),
        (
            "efficientnet_lite_pytorch",
            PREP.format(m="efficientnet_lite_pytorch", d="efficientnet-lite-pytorch"),
        ),
        ("zmq.backend", BASE.format(m="zmq", d="pyzmq")),
        ("stream.nowhere", None),  # our own module: a bug, the traceback stays
        ("not_a_dependency", None),
        (None, None),
    ],
)
def test_missing_dependency_message(name, expected):
    assert missing_dependency(ModuleNotFoundError("No module named ...", name=name)) == expected

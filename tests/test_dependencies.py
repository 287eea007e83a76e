"""Every third-party module the code imports is declared in the extra its command installs.

Installs nothing: reads pyproject.toml and the imports (module- and function-level, via `ast`) of
each package, and maps import names to distributions with `packages_distributions()` (what is
installed here) or `stream.deps.DISTRIBUTIONS` (for the few whose names differ).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest

from stream.deps import DISTRIBUTIONS, normalize, requirement_name

ROOT = Path(__file__).resolve().parents[1]
OWN = {"stream", "model_prep", "samples", "tests", "benchmarks"}

# Folder (or file) -> the extras a user has installed when its code runs ("" = base dependencies).
# samples/make_sample.py is a development tool: the test suite uses it, the README's commands not.
# The benchmarks run in the venv of the README's test command.
SCOPES = {
    "stream": ("",),
    "model_prep": ("", "prep"),
    "samples": ("", "test"),
    "benchmarks": ("", "prep", "test"),
}


def declared(extras: tuple[str, ...]) -> set[str]:
    """Normalised distribution names that installing ovstream with `extras` brings in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    return {normalize(requirement_name(r)) for e in extras for r in groups[e]}


def _catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(t, ast.Name) and t.id in names for t in types):
            return True
    return False


def third_party_imports(path: Path) -> dict[str, int]:
    """Top-level third-party module -> first line importing it; imports under
    `try: ... except ImportError` are optional and left out."""
    tree = ast.parse(path.read_text(), str(path))
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                optional.update(id(n) for n in ast.walk(child))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in OWN and top != "__future__":
                found.setdefault(top, node.lineno)
    return found


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module: str) -> list[str]:
    """The distributions that provide an import name: installed ones first, else the table."""
    installed = installed_distributions().get(module)
    if installed:
        return [normalize(d) for d in installed]
    if module in DISTRIBUTIONS:
        return [normalize(DISTRIBUTIONS[module])]
    return []


def imports_in(scope: str) -> list[tuple[str, str]]:
    files = sorted((ROOT / scope).rglob("*.py"))
    assert files, f"no Python files under {scope}/"
    return [
        (module, f"{f.relative_to(ROOT)}:{line}")
        for f in files
        for module, line in third_party_imports(f).items()
    ]


@pytest.mark.parametrize("scope", list(SCOPES))
def test_every_import_is_declared_in_its_extra(scope):
    extras = SCOPES[scope]
    allowed = declared(extras)
    problems = []
    for module, where in imports_in(scope):
        dists = distributions(module)
        if not dists:
            problems.append(
                f"{where}: import {module}: unknown distribution (add to DISTRIBUTIONS)"
            )
        elif not set(dists) & allowed:
            wanted = " or ".join(dists)
            problems.append(f"{where}: import {module}: {wanted} is not in {extras_text(extras)}")
    assert not problems, "\n".join(problems)


def extras_text(extras: tuple[str, ...]) -> str:
    return " + ".join("dependencies" if e == "" else f"extra '{e}'" for e in extras)


def test_the_scan_sees_function_level_and_skips_optional_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nimport numpy as np\nfrom zmq import Context\n"
        "def f():\n    from skimage import data\n    import torch.nn\n"
        "try:\n    import setproctitle\nexcept ImportError:\n    pass\n"
        "from . import sibling\nfrom stream.errors import UserError\n"
    )
    assert set(third_party_imports(source)) == {"numpy", "zmq", "skimage", "torch"}


def test_every_distribution_in_the_table_is_declared_somewhere():
    everything = declared(("", "prep", "test"))
    assert {normalize(d) for d in DISTRIBUTIONS.values()} <= everything


@pytest.mark.parametrize("module", sorted(DISTRIBUTIONS))
def test_the_table_agrees_with_what_is_installed(module):
    installed = installed_distributions().get(module)
    if not installed:
        pytest.skip(f"{module} is not installed here")
    assert normalize(DISTRIBUTIONS[module]) in {normalize(d) for d in installed}

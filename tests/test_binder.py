"""Binder configuration: every package that curvlab/, notebooks/ and apps/ import is declared."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"

#: import name -> distribution name, for imports whose distribution is not installed here
KNOWN = {"sklearn": "scikit-learn", "IPython": "ipython", "yaml": "pyyaml", "PIL": "pillow"}


def _imports(source: str, where: str) -> set[str]:
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError as err:
        raise AssertionError(f"{where}: cannot parse: {err}") from err
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def imported_top_level_names() -> dict[str, set[str]]:
    """Top-level third-party import names -> files importing them (code cells of .ipynb included)."""
    found: dict[str, set[str]] = {}

    def add(src, where):
        for name in _imports(src, where):
            if name in sys.stdlib_module_names or name in ("curvlab", "__future__"):
                continue
            found.setdefault(name, set()).add(where)

    for path in sorted((REPO / "curvlab").rglob("*.py")):
        add(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    for folder in ("notebooks", "apps"):
        for path in sorted((REPO / folder).glob("*.ipynb")):
            nb = json.loads(path.read_text(encoding="utf-8"))
            for i, cell in enumerate(nb.get("cells", [])):
                if cell.get("cell_type") == "code":
                    src = cell["source"]
                    add("".join(src) if isinstance(src, list) else src, f"{path.relative_to(REPO)}[{i}]")
    return found


def distribution_of(import_name: str) -> str:
    dists = md.packages_distributions().get(import_name)
    if dists:
        return dists[0]
    if import_name in KNOWN:
        return KNOWN[import_name]
    raise AssertionError(f"cannot map import {import_name!r} to a distribution (add it to KNOWN)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def binder_requirements() -> dict[str, str]:
    reqs = {}
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-e"), "Binder cannot install '-e .' from requirements.txt; use postBuild"
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$", line)
        assert m, f"unparsable requirement {line!r}"
        reqs[normalize(m.group(1))] = m.group(2)
    return reqs


def test_every_imported_package_is_in_binder_requirements():
    reqs = binder_requirements()
    missing = {}
    for name, files in imported_top_level_names().items():
        dist = normalize(distribution_of(name))
        if dist not in reqs:
            missing[dist] = sorted(files)[:3]
    assert not missing, f"imported but not in binder/requirements.txt: {missing}"


def test_import_scan_sees_the_known_imports():
    names = imported_top_level_names()
    for expected in ("jax", "numpy", "ipywidgets", "plotly"):
        assert expected in names


def test_binder_pins_match_constraints():
    constraints = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            k, v = line.split("==", 1)
            constraints[normalize(k.strip())] = v.strip()
    for dist, spec in binder_requirements().items():
        if spec.startswith("=="):
            assert constraints.get(dist) == spec[2:], f"{dist}{spec} differs from constraints.txt"


def test_binder_installs_curvlab_and_python_version():
    post = (BINDER / "postBuild").read_text()
    assert re.search(r"pip install .*-e \.", post), "postBuild must install the repository (pip install -e .)"
    assert (BINDER / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.(1[1-9])", runtime), runtime


@pytest.mark.parametrize("urlpath", ["lab/tree/notebooks", "voila/render/apps/dashboard.ipynb"])
def test_binder_targets_exist(urlpath):
    rel = urlpath.split("/", 2)[2]
    assert (REPO / rel).exists(), f"Binder link target {rel} is missing"

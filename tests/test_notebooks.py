"""The teaching notebooks: committed clean, and every one executes top to bottom without an error.

Run just these with ``pytest -m notebooks tests/test_notebooks.py`` (one kernel per notebook; works
under ``pytest-xdist``, e.g. ``-n 2 --dist loadfile``). The kernel is the ``python3`` kernelspec of
the environment running pytest and gets ``JAX_PLATFORMS=cpu``.
"""

from __future__ import annotations

import pathlib

import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: one teaching notebook per topic: 01..09, 10 (sharpness during training), 11 (structural damping)
EXPECTED_PREFIXES = [f"{i:02d}-" for i in range(1, 12)]
#: notebooks that must carry "check yourself" cells (all of them)
CHECKED_PREFIXES = list(EXPECTED_PREFIXES)
CELL_TIMEOUT_S = 180

pytestmark = pytest.mark.notebooks


def _ids(path: pathlib.Path) -> str:
    return path.stem


def test_all_notebooks_present():
    prefixes = sorted(p.name[:3] for p in NOTEBOOKS)
    assert prefixes == EXPECTED_PREFIXES, [p.name for p in NOTEBOOKS]
    index = (NOTEBOOK_DIR / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if p.name not in index]
    assert not missing, f"notebooks/README.md does not link {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code cells"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"code cells {dirty} have outputs or execution counts: clear them before committing"
    # explanations: a markdown cell opens the notebook, and prose accompanies the code throughout
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# ")
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    words = sum(len(s.split()) for s in markdown)
    assert len(markdown) >= 3 and words >= 150, f"{len(markdown)} markdown cells, {words} words"


def check_cells(nb) -> list:
    """The "check yourself" exercises: code cells tagged ``check`` (cell metadata ``tags``)."""
    return [c for c in nb.cells if c.cell_type == "code" and "check" in c.metadata.get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_check_yourself_cells_verify_the_answer(path):
    """Convention: a check cell holds the student's ``answer`` (marked ✏️, committed correct), asserts it
    against a value the notebook computed live, and prints "✓ right" when it passes; the execution test
    below then runs every check with the committed answer."""
    nb = nbformat.read(path, as_version=4)
    checks = check_cells(nb)
    if path.name[:3] in CHECKED_PREFIXES:
        assert checks, "no 'check yourself' cell: add a code cell tagged 'check'"
    for c in checks:
        src = c.source
        missing = [k for k in ("answer", "✏️", "assert ", "✓ right") if k not in src]
        assert not missing, f"check cell without {missing}:\n{src}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_executes(path, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{path.name} raised in a cell:\n{err}", pytrace=False)
    errors = [
        f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors, errors
    executed = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in executed), "some code cells did not run"

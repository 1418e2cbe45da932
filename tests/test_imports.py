"""Layout: the core imports only JAX and NumPy; public names are explicit re-exports."""

import ast
import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import curvlab

HEAVY = ("ipywidgets", "plotly", "IPython", "voila", "anywidget", "sklearn", "scipy")
UI_PACKAGES = ("curvlab.viz", "curvlab.widgets", "curvlab.app")
CORE = sorted(
    m.name for m in pkgutil.walk_packages(curvlab.__path__, "curvlab.") if not m.name.startswith(UI_PACKAGES)
)


def test_core_modules_leave_ui_out():
    assert "curvlab._lanczos" in CORE and "curvlab.problems" in CORE
    code = (
        "import sys, importlib\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imported optional packages: {out.stdout.strip()}"


def test_all_is_a_literal_list_of_explicit_reexports():
    source = Path(curvlab.__file__).read_text()
    tree = ast.parse(source)
    (assign,) = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__all__"]
    listed = ast.literal_eval(assign.value)
    imported = {a.asname for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert set(listed) == imported, set(listed) ^ imported
    assert len(listed) == len(set(listed))
    assert "__getattr__" not in source  # eager: no lazy import trick


def test_public_names_resolve_and_functions_stay_functions():
    for name in curvlab.__all__:
        assert getattr(curvlab, name) is not None
    # implementation modules are private, so names like ``curvlab.cg`` are never shadowed
    for name in ("hvp", "lanczos", "cg", "eigsh", "trace", "diagonal"):
        importlib.import_module(f"curvlab._{name}" if name in ("hvp", "lanczos", "cg") else "curvlab")
        assert callable(getattr(curvlab, name)) and not isinstance(getattr(curvlab, name), types.ModuleType)
    for namespace in ("problems", "preconditioners", "sharding", "formula"):
        assert isinstance(getattr(curvlab, namespace), types.ModuleType)

"""The core must not import the optional widget stack."""

import subprocess
import sys

HEAVY = ("ipywidgets", "plotly", "IPython", "voila", "anywidget", "sklearn", "scipy")


def test_import_curvlab_leaves_ui_out():
    code = (
        "import sys, curvlab\n"
        "import curvlab.hvp, curvlab.operators, curvlab.problems\n"
        "for name in ['lanczos', 'spectral', 'cg', 'preconditioners', 'optim', 'diagnostics', 'formula']:\n"
        "    try:\n"
        "        __import__('curvlab.' + name)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != 'curvlab.' + name: raise\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imported optional packages: {out.stdout.strip()}"


def test_public_names_resolve():
    import curvlab

    missing = []
    for name in curvlab.__all__:
        try:
            getattr(curvlab, name)
        except (AttributeError, ModuleNotFoundError) as err:
            missing.append(f"{name}: {err}")
    assert not missing, missing

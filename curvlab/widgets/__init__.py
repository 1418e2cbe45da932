"""Interactive explorers: ipywidgets controls + a plotly ``FigureWidget``.

Each explorer is constructible with no arguments, exposes its controls as
attributes, ``.figure`` (a ``go.FigureWidget``), ``.readout``, ``.error`` and a
``compute(**controls)`` that is a plain function of the control values; see
:class:`curvlab.widgets._base.Explorer`.

Names are imported lazily, so importing one explorer does not import the
others. Needs the optional extra: ``pip install curvlab[viz]``.

Examples
--------
In a notebook cell::

    from curvlab.widgets import CurvatureExplorer
    CurvatureExplorer()
"""

from __future__ import annotations

import importlib

# public name -> defining module
_EXPORTS = {
    "Explorer": "curvlab.widgets._base",
    "SpectrumExplorer": "curvlab.widgets.spectrum",
    "CurvatureExplorer": "curvlab.widgets.curvature",
    "CGExplorer": "curvlab.widgets.cg_explorer",
    "FiniteDifferenceExplorer": "curvlab.widgets.finite_difference",
    "HessianFreeExplorer": "curvlab.widgets.hessian_free",
    "SharpnessExplorer": "curvlab.widgets.sharpness",
}

__all__ = sorted(_EXPORTS)


def _check_viz() -> None:
    missing = []
    for mod in ("ipywidgets", "plotly", "anywidget"):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(
            f"curvlab.widgets needs {', '.join(missing)}; install the viz extra: pip install curvlab[viz]"
        )


def __getattr__(name: str):
    if name in _EXPORTS:
        _check_viz()
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'curvlab.widgets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""curvlab: see and use the curvature of differentiable functions, with JAX.

The Hessian is always a linear operator ``v -> H v``; see :mod:`curvlab.hvp`,
:mod:`curvlab.operators`, the Krylov solvers (:mod:`curvlab.lanczos`,
:mod:`curvlab.spectral`, :mod:`curvlab.cg`) and the optimizers
(:mod:`curvlab.optim`). Public names are imported lazily, so ``import curvlab``
is cheap and never imports the optional widget stack.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> defining module (one concept per module)
_EXPORTS = {
    # hvp
    "hvp": "curvlab.hvp",
    "hvp_fn": "curvlab.hvp",
    "fd_hvp": "curvlab.hvp",
    "fd_default_eps": "curvlab.hvp",
    "directional_curvature": "curvlab.hvp",
    "gnvp": "curvlab.hvp",
    # operators
    "LinearOperator": "curvlab.operators",
    "DenseOperator": "curvlab.operators",
    "DiagonalOperator": "curvlab.operators",
    "IdentityOperator": "curvlab.operators",
    "LowRankOperator": "curvlab.operators",
    "BlockDiagonalOperator": "curvlab.operators",
    "KroneckerOperator": "curvlab.operators",
    "SumOperator": "curvlab.operators",
    "ScaledOperator": "curvlab.operators",
    "FunctionOperator": "curvlab.operators",
    "hessian_operator": "curvlab.operators",
    "ggn_operator": "curvlab.operators",
    "fisher_operator": "curvlab.operators",
    "as_operator": "curvlab.operators",
    # Krylov
    "lanczos": "curvlab.lanczos",
    "LanczosResult": "curvlab.lanczos",
    "eigsh": "curvlab.lanczos",
    "EigshResult": "curvlab.lanczos",
    "LanczosStatus": "curvlab.lanczos",
    "EigshStatus": "curvlab.lanczos",
    "ritz_pairs": "curvlab.lanczos",
    "spectral_density": "curvlab.spectral",
    "SpectralDensity": "curvlab.spectral",
    "trace": "curvlab.spectral",
    "diagonal": "curvlab.spectral",
    "Estimate": "curvlab.spectral",
    "moments": "curvlab.spectral",
    "cg": "curvlab.cg",
    "steihaug_cg": "curvlab.cg",
    "CGResult": "curvlab.cg",
    "CGStatus": "curvlab.cg",
    "condition_bound": "curvlab.cg",
    "condition_estimate": "curvlab.cg",
    "SteihaugResult": "curvlab.cg",
    # optimizers
    "newton_cg": "curvlab.optim",
    "trust_region_newton": "curvlab.optim",
    "hessian_free": "curvlab.optim",
    "OptimizeResult": "curvlab.optim",
    "OptimizeStatus": "curvlab.optim",
    "IterationInfo": "curvlab.optim",
    "update_damping": "curvlab.optim",
    # diagnostics
    "diagnose": "curvlab.diagnostics",
    "CurvatureReport": "curvlab.diagnostics",
    "sharpness_over_training": "curvlab.diagnostics",
    "dataset_operator": "curvlab.diagnostics",
    # formulas
    "parse_formula": "curvlab.formula",
    "FormulaError": "curvlab.formula",
}

# Functions named like their module (``curvlab.hvp``, ``curvlab.lanczos``, ``curvlab.cg``):
# import them eagerly. Python binds ``curvlab.<module>`` to the submodule the first time it is
# imported, which would otherwise shadow the function of the same name.
from curvlab.cg import cg as cg  # noqa: E402
from curvlab.hvp import hvp as hvp  # noqa: E402
from curvlab.lanczos import lanczos as lanczos  # noqa: E402

__all__ = sorted(_EXPORTS) + ["problems", "preconditioners"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in ("problems", "preconditioners", "plots", "widgets"):
        return importlib.import_module(f"curvlab.{name}")
    raise AttributeError(f"module 'curvlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``curvlab.cg`` and ``curvlab.lanczos`` the functions when their submodules load.

    Importing a submodule binds it on the package (``setattr(curvlab, "cg", <module>)``), which would
    shadow the function of the same name once any other import loaded the module first.
    """

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

"""curvlab: see and use the curvature of differentiable functions, with JAX.

The Hessian is always a linear operator ``v -> H v``. Everything public is
re-exported here (HVPs, operators, Krylov solvers, optimizers, diagnostics,
formulas); the public namespaces :mod:`curvlab.problems`,
:mod:`curvlab.preconditioners`, :mod:`curvlab.sharding` and :mod:`curvlab.formula`
are modules, and :mod:`curvlab.viz` / :mod:`curvlab.widgets` need the ``viz``
extra. ``import curvlab`` imports only JAX and NumPy.
"""

__version__ = "0.1.0"

from curvlab import formula as formula
from curvlab import preconditioners as preconditioners
from curvlab import problems as problems
from curvlab import sharding as sharding
from curvlab._cg import CGResult as CGResult
from curvlab._cg import SteihaugResult as SteihaugResult
from curvlab._cg import cg as cg
from curvlab._cg import condition_bound as condition_bound
from curvlab._cg import condition_estimate as condition_estimate
from curvlab._cg import steihaug_cg as steihaug_cg
from curvlab._curvature import dataset_operator as dataset_operator
from curvlab._curvature import fisher_operator as fisher_operator
from curvlab._curvature import ggn_operator as ggn_operator
from curvlab._curvature import hessian_operator as hessian_operator
from curvlab._diagnostics import CurvatureReport as CurvatureReport
from curvlab._diagnostics import diagnose as diagnose
from curvlab._eigsh import EigshResult as EigshResult
from curvlab._eigsh import eigsh as eigsh
from curvlab._fisher import mc_fisher_operator as mc_fisher_operator
from curvlab._hessian_free import HFConfig as HFConfig
from curvlab._hessian_free import hessian_free as hessian_free
from curvlab._hessian_free import update_damping as update_damping
from curvlab._hvp import directional_curvature as directional_curvature
from curvlab._hvp import fd_default_eps as fd_default_eps
from curvlab._hvp import fd_hvp as fd_hvp
from curvlab._hvp import gnvp as gnvp
from curvlab._hvp import hvp as hvp
from curvlab._hvp import hvp_fn as hvp_fn
from curvlab._inverse import inverse as inverse
from curvlab._jacobian import jacobian_operator as jacobian_operator
from curvlab._kfac import KFACOperator as KFACOperator
from curvlab._kfac import ekfac_operator as ekfac_operator
from curvlab._kfac import kfac_operator as kfac_operator
from curvlab._lanczos import LanczosResult as LanczosResult
from curvlab._lanczos import lanczos as lanczos
from curvlab._newton import newton_cg as newton_cg
from curvlab._newton import trust_region_newton as trust_region_newton
from curvlab._norms import SpectralNorm as SpectralNorm
from curvlab._norms import frobenius_norm as frobenius_norm
from curvlab._norms import spectral_norm as spectral_norm
from curvlab._norms import submatrix as submatrix
from curvlab._operators import BlockDiagonalOperator as BlockDiagonalOperator
from curvlab._operators import CongruenceOperator as CongruenceOperator
from curvlab._operators import DenseOperator as DenseOperator
from curvlab._operators import DiagonalOperator as DiagonalOperator
from curvlab._operators import FunctionOperator as FunctionOperator
from curvlab._operators import IdentityOperator as IdentityOperator
from curvlab._operators import KroneckerOperator as KroneckerOperator
from curvlab._operators import LinearOperator as LinearOperator
from curvlab._operators import LowRankOperator as LowRankOperator
from curvlab._operators import ScaledOperator as ScaledOperator
from curvlab._operators import SumOperator as SumOperator
from curvlab._operators import as_operator as as_operator
from curvlab._optim_loop import IterationInfo as IterationInfo
from curvlab._optim_loop import OptimizeResult as OptimizeResult
from curvlab._output_hessians import MeanSquaredError as MeanSquaredError
from curvlab._output_hessians import OutputLoss as OutputLoss
from curvlab._output_hessians import SoftmaxCrossEntropy as SoftmaxCrossEntropy
from curvlab._output_hessians import mean_squared_error as mean_squared_error
from curvlab._output_hessians import softmax_cross_entropy as softmax_cross_entropy
from curvlab._sparse_hessian import SparseHessianOperator as SparseHessianOperator
from curvlab._sparse_hessian import sparse_hessian_operator as sparse_hessian_operator
from curvlab._spectral import Estimate as Estimate
from curvlab._spectral import SpectralDensity as SpectralDensity
from curvlab._spectral import diagonal as diagonal
from curvlab._spectral import moments as moments
from curvlab._spectral import spectral_density as spectral_density
from curvlab._spectral import trace as trace
from curvlab._spectrum_cache import SpectrumCache as SpectrumCache
from curvlab._spectrum_cache import ghost_mask as ghost_mask
from curvlab._status import SolverError as SolverError
from curvlab._status import Status as Status
from curvlab.formula import FormulaError as FormulaError
from curvlab.formula import parse_formula as parse_formula

__all__ = [
    "Status",
    "SolverError",
    "hvp",
    "hvp_fn",
    "fd_hvp",
    "fd_default_eps",
    "directional_curvature",
    "gnvp",
    "LinearOperator",
    "CongruenceOperator",
    "DenseOperator",
    "DiagonalOperator",
    "IdentityOperator",
    "LowRankOperator",
    "BlockDiagonalOperator",
    "KroneckerOperator",
    "SumOperator",
    "ScaledOperator",
    "FunctionOperator",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
    "sparse_hessian_operator",
    "SparseHessianOperator",
    "kfac_operator",
    "ekfac_operator",
    "KFACOperator",
    "mc_fisher_operator",
    "jacobian_operator",
    "OutputLoss",
    "SoftmaxCrossEntropy",
    "MeanSquaredError",
    "softmax_cross_entropy",
    "mean_squared_error",
    "inverse",
    "submatrix",
    "frobenius_norm",
    "spectral_norm",
    "SpectralNorm",
    "as_operator",
    "lanczos",
    "LanczosResult",
    "eigsh",
    "EigshResult",
    "spectral_density",
    "SpectralDensity",
    "trace",
    "diagonal",
    "Estimate",
    "SpectrumCache",
    "ghost_mask",
    "moments",
    "cg",
    "steihaug_cg",
    "CGResult",
    "condition_bound",
    "condition_estimate",
    "SteihaugResult",
    "newton_cg",
    "trust_region_newton",
    "hessian_free",
    "HFConfig",
    "OptimizeResult",
    "IterationInfo",
    "update_damping",
    "diagnose",
    "CurvatureReport",
    "dataset_operator",
    "parse_formula",
    "FormulaError",
    "formula",
    "preconditioners",
    "problems",
    "sharding",
]

"""CGExplorer: how conditioning, damping and preconditioning set the speed of conjugate gradient.

Solves :math:`(A + \\lambda I) x = b` with :func:`curvlab._cg.cg` for a quadratic
whose spectrum is log-spaced on :math:`[1, \\kappa]` (``A = Q diag(λ) Qᵀ``), or for
its badly scaled version :math:`DAD` with :math:`D` spread over three decades,
where the Jacobi preconditioner removes :math:`D` entirely
(:math:`\\operatorname{diag}(DAD)^{-1/2} DAD \\operatorname{diag}(DAD)^{-1/2} =
\\operatorname{diag}(A)^{-1/2} A \\operatorname{diag}(A)^{-1/2}`).

The figure shows :math:`\\|r_k\\|/\\|b\\|`, the :math:`A`-norm error
:math:`\\|e_k\\|_A/\\|e_0\\|_A` and the classical bound
:math:`2\\left(\\frac{\\sqrt{\\kappa}-1}{\\sqrt{\\kappa}+1}\\right)^k` on the latter, with the
effective :math:`\\kappa` of the operator CG actually sees, :math:`P^{1/2}(A + \\lambda I)P^{1/2}`
(without a preconditioner
:math:`\\kappa_{\\text{eff}} = (\\lambda_{\\max}+\\lambda)/(\\lambda_{\\min}+\\lambda)`).
"Keep curve" freezes the current residual curve as a faded trace for comparison.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import ipywidgets as widgets
import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go

from curvlab import problems, viz
from curvlab._cg import cg, condition_bound
from curvlab._operators import DenseOperator
from curvlab.preconditioners import hutchinson_jacobi, jacobi
from curvlab.widgets._base import Explorer
from curvlab.widgets._worker import LRU

__all__ = ["CGExplorer", "CGExplorerResult", "PRECONDITIONERS", "PROBLEMS"]

PROBLEMS = {
    "well_scaled": "A = Q diag(λ) Qᵀ, λ log-spaced on [1, κ]",
    "badly_scaled": "badly scaled D A D (D over 3 decades)",
}
PRECONDITIONERS = {"none": "none", "jacobi": "Jacobi (exact diagonal)", "hutchinson": "Hutchinson diagonal"}


class CGExplorerResult(NamedTuple):
    """Everything the CG explorer draws.

    Attributes
    ----------
    problem, preconditioner : str
    kappa : float
        Condition number of the undamped, unpreconditioned matrix.
    damping, rtol : float
    eig_min, eig_max : float
        Extreme eigenvalues of the operator CG sees, :math:`P^{1/2}(A + \\lambda I)P^{1/2}` (dense ``eigh``).
    kappa_effective : float
        ``eig_max / eig_min``.
    iterations : ndarray (m + 1,)
        ``0 .. m`` with ``m`` the iterations taken.
    relative_residuals : ndarray (m + 1,)
        :math:`\\|r_k\\| / \\|b\\|`.
    anorm_errors : ndarray (m + 1,)
        :math:`\\|x_k - x_\\star\\|_A / \\|x_0 - x_\\star\\|_A`.
    bound : ndarray (m + 1,)
        ``condition_bound(kappa_effective, iterations)``.
    num_iterations : int
    converged : bool
    status, message : str
        :class:`curvlab._status.Status` name and readable message.
    label : str
        Short description used for kept curves.
    """

    problem: str
    preconditioner: str
    kappa: float
    damping: float
    rtol: float
    eig_min: float
    eig_max: float
    kappa_effective: float
    iterations: np.ndarray
    relative_residuals: np.ndarray
    anorm_errors: np.ndarray
    bound: np.ndarray
    num_iterations: int
    converged: bool
    status: str
    message: str
    label: str


class _Matrix(NamedTuple):
    A: np.ndarray  # float64 dense matrix
    b: np.ndarray
    eigenvalues: np.ndarray  # of A, ascending
    Vtb: np.ndarray  # V^T b with A = V diag(eigenvalues) V^T
    V: np.ndarray


class CGExplorer(Explorer):
    """CG residual decay against the condition-number bound, with damping and preconditioning.

    Parameters
    ----------
    n : int
        Size of the quadratic (dense, so keep it moderate).
    maxiter : int
        Iteration cap (and length of CG's history buffers).

    Controls (attributes)
    ---------------------
    problem, kappa, damping, preconditioner, num_probes, rtol (value controls);
    keep_button, clear_button (buttons).
    """

    def __init__(self, *, n: int = 200, maxiter: int = 2000):
        super().__init__()
        if int(n) < 2:
            raise ValueError(f"n must be >= 2, got {n}")
        if int(maxiter) < 1:
            raise ValueError(f"maxiter must be >= 1, got {maxiter}")
        self._n, self._maxiter = int(n), int(maxiter)
        self._all_iterations = np.arange(self._maxiter + 1)
        self._matrices: LRU[_Matrix] = LRU(8)
        rng = np.random.default_rng(0)
        self._scaling = 10.0 ** rng.permutation(np.linspace(-1.5, 1.5, self._n))
        self._key = jax.random.key(3)
        #: kept curves: (label, iterations, relative residuals)
        self.kept: list[tuple[str, np.ndarray, np.ndarray]] = []

        self.problem = widgets.Dropdown(
            options=[(v, k) for k, v in PROBLEMS.items()], value="well_scaled", description="problem"
        )
        self.kappa = widgets.FloatLogSlider(
            value=1e3, base=10, min=1, max=6, step=0.1, description="κ", readout_format=".3g"
        )
        self.damping = widgets.FloatSlider(
            value=0.0, min=0.0, max=100.0, step=0.1, description="damping λ", readout_format=".1f"
        )
        self.preconditioner = widgets.Dropdown(
            options=[(v, k) for k, v in PRECONDITIONERS.items()], value="none", description="preconditioner"
        )
        self.num_probes = widgets.IntSlider(value=20, min=1, max=100, step=1, description="probes (Hutch.)")
        self.rtol = widgets.FloatLogSlider(
            value=1e-8, base=10, min=-12, max=-2, step=1, description="tolerance", readout_format=".0e"
        )
        self.keep_button = widgets.Button(description="Keep curve", icon="thumb-tack")
        self.clear_button = widgets.Button(description="Clear kept", icon="trash")
        self.keep_button.on_click(lambda _: self.keep_curve())
        self.clear_button.on_click(lambda _: self.clear_kept())
        self._setup(
            {
                "problem": self.problem,
                "kappa": self.kappa,
                "damping": self.damping,
                "preconditioner": self.preconditioner,
                "num_probes": self.num_probes,
                "rtol": self.rtol,
                "keep_button": self.keep_button,
                "clear_button": self.clear_button,
            },
            go.FigureWidget(),
        )

    # -- problems ---------------------------------------------------------------
    def _matrix(self, problem: str, kappa: float) -> _Matrix:
        """The dense problem and its eigendecomposition (the last 8 are kept)."""
        return self._matrices.get((problem, kappa), lambda: self._new_matrix(problem, kappa))

    def _new_matrix(self, problem: str, kappa: float) -> _Matrix:
        p = problems.quadratic(condition_number=kappa, n=self._n, key=jax.random.key(0))
        A = np.asarray(p.matrix, dtype=np.float64)
        if problem == "badly_scaled":
            d = self._scaling
            A = d[:, None] * A * d[None, :]
        A = (A + A.T) / 2
        b = np.asarray(p.b, dtype=np.float64)
        w, V = np.linalg.eigh(A)
        return _Matrix(A, b, w, V.T @ b, V)

    # -- compute / render -----------------------------------------------------------
    def compute(
        self,
        *,
        problem: str,
        kappa: float,
        damping: float,
        preconditioner: str,
        num_probes: int,
        rtol: float,
    ) -> CGExplorerResult:
        """Run CG on :math:`(A + \\lambda I) x = b` and the dense reference for κ and the A-norm error."""
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {problem!r}")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {list(PRECONDITIONERS)}, got {preconditioner!r}")
        kappa, damping, rtol = float(kappa), float(damping), float(rtol)
        if not (math.isfinite(kappa) and kappa >= 1):
            raise ValueError(f"kappa must be a finite number >= 1, got {kappa}")
        if not (math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        if not (math.isfinite(rtol) and 0 < rtol < 1):
            raise ValueError(f"rtol must be in (0, 1), got {rtol}")
        num_probes = int(num_probes)
        if num_probes < 1:
            raise ValueError(f"num_probes must be >= 1, got {num_probes}")

        m = self._matrix(problem, kappa)
        n = self._n
        dtype = jnp.result_type(float)
        op = DenseOperator(jnp.asarray(m.A, dtype)).damped(damping)
        if preconditioner == "jacobi":
            P = jacobi(op)
        elif preconditioner == "hutchinson":
            P = hutchinson_jacobi(op, num_probes=num_probes, key=self._key)
        else:
            P = None
        Ad = m.A + damping * np.eye(n)
        x_true = m.V @ (m.Vtb / (m.eigenvalues + damping))  # (A + λI)^{-1} b from the cached eigh
        b = jnp.asarray(m.b, dtype)
        res = cg(op, b, preconditioner=P, rtol=rtol, maxiter=self._maxiter, x_true=jnp.asarray(x_true, dtype))

        # the spectrum CG sees: P^{1/2} (A + λI) P^{1/2}
        if P is None:
            eigs = m.eigenvalues + damping  # exact: damping shifts every eigenvalue
        else:
            s = np.sqrt(np.asarray(P.diag, dtype=np.float64))
            eigs = np.linalg.eigvalsh(s[:, None] * Ad * s[None, :])
        eig_min, eig_max = float(eigs[0]), float(eigs[-1])
        kappa_eff = eig_max / eig_min if eig_min > 0 else math.inf

        k = int(res.num_iterations)
        its = np.arange(k + 1)
        rel = np.asarray(res.residual_norms, dtype=np.float64)[: k + 1] / np.linalg.norm(m.b)
        aerr = np.asarray(res.anorm_errors, dtype=np.float64)[: k + 1]
        aerr = aerr / aerr[0] if aerr.size and aerr[0] > 0 else aerr
        if math.isfinite(kappa_eff):  # on a fixed-length grid (no recompilation), then cut
            bound = np.asarray(condition_bound(kappa_eff, self._all_iterations))[: k + 1]
        else:
            bound = np.full(k + 1, np.nan)
        matrix = "D A D" if problem == "badly_scaled" else "A"
        label = f"{matrix}, κ={kappa:.3g}, λ={damping:g}, P={preconditioner}"
        return CGExplorerResult(
            problem=problem,
            preconditioner=preconditioner,
            kappa=float(m.eigenvalues[-1] / m.eigenvalues[0]),
            damping=damping,
            rtol=rtol,
            eig_min=eig_min,
            eig_max=eig_max,
            kappa_effective=kappa_eff,
            iterations=its,
            relative_residuals=rel,
            anorm_errors=aerr,
            bound=bound,
            num_iterations=k,
            converged=bool(res.converged),
            status=res.status.name,
            message=res.message,
            label=label,
        )

    def _render(self, result: CGExplorerResult) -> None:
        fig = self.figure
        title = f"CG on {PROBLEMS[result.problem]}"
        data = viz.cg_data(
            result.iterations,
            result.relative_residuals,
            bound=result.bound,
            anorm_errors=result.anorm_errors,
            rtol=result.rtol,
        )
        names = list(data) + [f"kept: {label}" for label, _, _ in self.kept]
        if [t.name for t in fig.data] != names:
            new = viz.cg_figure(
                result.iterations,
                result.relative_residuals,
                bound=result.bound,
                anorm_errors=result.anorm_errors,
                rtol=result.rtol,
                kept=self.kept,
                title=title,
            )
            viz.update_figure(fig, new)
        else:
            for trace, props in zip(fig.data, data.values(), strict=False):
                trace.update(props)
            fig.layout.title.text = title
        self.readout.value = _readout(result)

    # -- kept curves ------------------------------------------------------------------
    def keep_curve(self) -> None:
        """Freeze the current residual curve as a faded trace (what the "Keep curve" button does)."""
        r = self.last_result
        if r is None:
            return
        label = r.label
        if any(k[0] == label for k in self.kept):
            label = f"{label} #{len(self.kept) + 1}"
        self.kept.append((label, r.iterations.copy(), r.relative_residuals.copy()))
        self._rerender()

    def clear_kept(self) -> None:
        """Remove every kept curve (the "Clear kept" button)."""
        self.kept.clear()
        self._rerender()

    def _rerender(self) -> None:
        if self.last_result is None:
            return
        try:
            self._render_batched(self.last_result)
        except Exception as err:  # noqa: BLE001 - shown to the user
            self.show_error(err)


def _fmt(x: float) -> str:
    return "∞" if x == math.inf else ("n/a" if not math.isfinite(x) else f"{x:.4g}")


def _readout(r: CGExplorerResult) -> str:
    if r.preconditioner == "none":
        eff = (
            f"(λ<sub>max</sub> + λ)/(λ<sub>min</sub> + λ) = ({_fmt(r.eig_max - r.damping)} + {r.damping:g})/"
            f"({_fmt(r.eig_min - r.damping)} + {r.damping:g}) = <b>{_fmt(r.kappa_effective)}</b>"
        )
    else:
        eff = f"κ(P<sup>1/2</sup>(A + λI)P<sup>1/2</sup>) = <b>{_fmt(r.kappa_effective)}</b>"
    it = (
        f"<b>{r.num_iterations}</b> iterations to ‖r‖/‖b‖ ≤ {r.rtol:.0e}"
        if r.converged
        else f"<b>not converged</b> after {r.num_iterations} iterations"
    )
    rows = [
        ("iterations", it),
        ("κ(A)", _fmt(r.kappa)),
        ("effective κ", eff),
        ("status", f"{r.status}: {r.message}"),
    ]
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='curvlab-readout'>{body}</table>"

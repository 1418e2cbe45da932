"""CGExplorer: how conditioning, clustering, damping and preconditioning set the speed of conjugate gradient.

Solves :math:`(A + \\lambda I) x = b` with :func:`curvlab._cg.cg` for a quadratic
whose spectrum is log-spaced on :math:`[1, \\kappa]` (``A = Q diag(λ) Qᵀ``), or made of
``clusters`` groups of equal eigenvalues at log-spaced centres on :math:`[1, \\kappa]`, or for
the badly scaled version :math:`DAD` of the log-spaced one, with :math:`D` spread over three
decades, where the Jacobi preconditioner removes :math:`D` entirely
(:math:`\\operatorname{diag}(DAD)^{-1/2} DAD \\operatorname{diag}(DAD)^{-1/2} =
\\operatorname{diag}(A)^{-1/2} A \\operatorname{diag}(A)^{-1/2}`).

The figure shows :math:`\\|r_k\\|/\\|b\\|`, the :math:`A`-norm error
:math:`\\|e_k\\|_A/\\|e_0\\|_A` and the classical bound
:math:`2\\left(\\frac{\\sqrt{\\kappa}-1}{\\sqrt{\\kappa}+1}\\right)^k` on the latter, with the
effective :math:`\\kappa` of the operator CG actually sees, :math:`P^{1/2}(A + \\lambda I)P^{1/2}`
(without a preconditioner
:math:`\\kappa_{\\text{eff}} = (\\lambda_{\\max}+\\lambda)/(\\lambda_{\\min}+\\lambda)`).
"Keep curve" freezes the current residual curve as a faded trace for comparison.

Precision: the teaching histories are computed in float64 (inside ``jax.enable_x64(True)``,
with explicitly float64 arrays, whatever the global x64 flag), because the bound is a theorem
of exact arithmetic: in float32 the :math:`A`-norm error stalls near
:math:`10^{-6}` and crosses the bound. The float64 rounding floor,
:data:`ROUNDING_FACTOR` :math:`\\cdot\\, u\\, \\kappa(A + \\lambda I)` with :math:`u = 2^{-52}`, is stated in
the readout; errors below it are rounding, not a broken theorem.

Clusters: with :math:`c` distinct eigenvalues the CG residual polynomial of degree :math:`c`
can vanish on all of them, so CG finishes in :math:`c` steps in exact arithmetic (in about
:math:`c` in float64), whatever :math:`\\kappa`.

Hutchinson diagonal: the estimate :math:`\\hat d_i = \\frac1m\\sum_j z_{ji}(Az_j)_i` has variance
:math:`\\frac1m\\sum_{l\\ne i}A_{il}^2`; when that is large against :math:`A_{ii}^2` (the small
diagonal entries of :math:`DAD`) an entry comes out negative or tiny, is floored, and its
:math:`1/\\hat d_i` inflates that coordinate: the preconditioned :math:`\\kappa` can be far worse
than none. The readout counts those entries and gives the fewest probes (of
:data:`PROBE_GRID`) at which the estimate beats no preconditioner and comes within 2x of
exact Jacobi.
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
from curvlab._spectral import diagonal as _diagonal
from curvlab.preconditioners import hutchinson_jacobi, jacobi
from curvlab.widgets._base import Explorer
from curvlab.widgets._worker import LRU

__all__ = [
    "CGExplorer",
    "CGExplorerResult",
    "PRECONDITIONERS",
    "PROBLEMS",
    "PROBE_GRID",
    "ROUNDING_FACTOR",
    "MAX_CLUSTERS",
]

PROBLEMS = {
    "well_scaled": "A = Q diag(λ) Qᵀ, λ log-spaced on [1, κ]",
    "badly_scaled": "badly scaled D A D (D over 3 decades)",
}
PRECONDITIONERS = {"none": "none", "jacobi": "Jacobi (exact diagonal)", "hutchinson": "Hutchinson diagonal"}
#: Probe counts tried for the Hutchinson readout ("probes it takes to help").
PROBE_GRID = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
#: Rounding margin of the bound check: errors below ``ROUNDING_FACTOR * u * κ(A + λI)`` (float64
#: ``u``) are at the rounding floor of the reference solution and of CG itself.
ROUNDING_FACTOR = 1e3
#: Largest number of eigenvalue clusters (0 = no clusters: log-spaced eigenvalues).
MAX_CLUSTERS = 20
_EPS64 = float(np.finfo(np.float64).eps)


class CGExplorerResult(NamedTuple):
    """Everything the CG explorer draws.

    Attributes
    ----------
    problem, preconditioner : str
    clusters : int
        Number of clusters of equal eigenvalues of :math:`A` (0: log-spaced eigenvalues).
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
    rounding_margin : float
        ``ROUNDING_FACTOR * u * κ(A + λI)`` (float64 ``u``): the rounding floor of the relative
        A-norm error (of the reference solution and of CG's iterates); the bound is checked as
        ``anorm_errors <= bound + rounding_margin``.
    bound_violations : int
        Iterations with ``anorm_errors > bound`` (all below ``rounding_margin`` when the
        arithmetic is sound; 0 in the default settings).
    hutchinson : dict or None
        For ``preconditioner="hutchinson"``: ``num_probes``, ``num_floored`` (estimated diagonal
        entries that came out negative or below the floor), ``median_rel_error`` of the estimate,
        ``kappa_by_probes`` (``{m: κ_eff}`` over :data:`PROBE_GRID`), ``kappa_none``,
        ``kappa_jacobi``, ``probes_to_help`` (fewest probes of the grid with κ_eff below
        ``kappa_none``) and ``probes_near_jacobi`` (within 2x of ``kappa_jacobi``), each
        ``None`` if no grid point qualifies.
    num_iterations : int
    converged : bool
    status, message : str
        :class:`curvlab._status.Status` name and readable message.
    label : str
        Short description used for kept curves.
    """

    problem: str
    preconditioner: str
    clusters: int
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
    rounding_margin: float
    bound_violations: int
    hutchinson: dict | None
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
    problem, kappa, clusters, damping, preconditioner, num_probes, rtol (value controls);
    keep_button, clear_button (buttons).
    """

    #: a vertical legend right of the plot (plotly widens the right margin to fit it): never over the title
    figure_layout = {
        "legend": dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top", yref="paper"),
    }

    def __init__(self, *, n: int = 200, maxiter: int = 2000):
        super().__init__()
        if int(n) < 2:
            raise ValueError(f"n must be >= 2, got {n}")
        if int(maxiter) < 1:
            raise ValueError(f"maxiter must be >= 1, got {maxiter}")
        self._n, self._maxiter = int(n), int(maxiter)
        self._all_iterations = np.arange(self._maxiter + 1)
        self._matrices: LRU[_Matrix] = LRU(8)
        self._sweeps: LRU[tuple] = LRU(8)  # Hutchinson κ_eff against probes, per problem
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
        self.clusters = widgets.IntSlider(
            value=0, min=0, max=MAX_CLUSTERS, step=1, description="clusters",
            tooltip="eigenvalue clusters (0: log-spaced eigenvalues)",
        )  # fmt: skip
        self.damping = widgets.FloatSlider(
            value=0.0, min=0.0, max=100.0, step=0.1, description="damping λ", readout_format=".1f"
        )
        self.preconditioner = widgets.Dropdown(
            options=[(v, k) for k, v in PRECONDITIONERS.items()], value="none", description="preconditioner"
        )
        self.num_probes = widgets.IntSlider(value=20, min=2, max=1000, step=1, description="probes (Hutch.)")
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
                "clusters": self.clusters,
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
    def _matrix(self, problem: str, kappa: float, clusters: int) -> _Matrix:
        """The dense problem and its eigendecomposition (the last 8 are kept)."""
        key = (problem, kappa, clusters)
        return self._matrices.get(key, lambda: self._new_matrix(problem, kappa, clusters))

    def _new_matrix(self, problem: str, kappa: float, clusters: int) -> _Matrix:
        if clusters:
            # `clusters` equal-eigenvalue groups at log-spaced centres on [1, κ], sizes as even as possible
            centres = np.geomspace(1.0, kappa, clusters)
            lam = np.sort(centres[np.arange(self._n) % clusters])
            p = problems.quadratic(lam, key=jax.random.key(0), dtype=jnp.float64)
        else:
            p = problems.quadratic(
                condition_number=kappa, n=self._n, key=jax.random.key(0), dtype=jnp.float64
            )
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
        clusters: int = 0,
    ) -> CGExplorerResult:
        """CG on :math:`(A + \\lambda I) x = b` in float64, with the dense reference (κ, A-norm error)."""
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
        num_probes, clusters = int(num_probes), int(clusters)
        if num_probes < 2:
            raise ValueError(f"num_probes must be >= 2, got {num_probes}")
        if not 0 <= clusters <= min(MAX_CLUSTERS, self._n):
            raise ValueError(f"clusters must be in [0, {min(MAX_CLUSTERS, self._n)}], got {clusters}")
        # float64 whatever the global flag: the bound is a theorem of exact arithmetic, and the
        # float32 A-norm error stalls near 1e-6, above it (jit caches are keyed on the x64 setting)
        with jax.enable_x64(True):
            return self._compute(problem, kappa, clusters, damping, preconditioner, num_probes, rtol)

    def _compute(self, problem, kappa, clusters, damping, preconditioner, num_probes, rtol):
        m = self._matrix(problem, kappa, clusters)
        n = self._n
        f64 = jnp.float64
        op = DenseOperator(jnp.asarray(m.A, f64)).damped(damping)
        if preconditioner == "jacobi":
            P = jacobi(op)
        elif preconditioner == "hutchinson":
            P = hutchinson_jacobi(op, num_probes=num_probes, key=self._key)
        else:
            P = None
        Ad = m.A + damping * np.eye(n)
        x_true = m.V @ (m.Vtb / (m.eigenvalues + damping))  # (A + λI)^{-1} b from the cached eigh
        b = jnp.asarray(m.b, f64)
        res = cg(op, b, preconditioner=P, rtol=rtol, maxiter=self._maxiter, x_true=jnp.asarray(x_true, f64))

        # the spectrum CG sees: P^{1/2} (A + λI) P^{1/2}
        if P is None:
            eig_min, eig_max = float(m.eigenvalues[0] + damping), float(m.eigenvalues[-1] + damping)
        else:
            eig_min, eig_max = _extreme_eigenvalues(Ad, np.asarray(P.diag, dtype=np.float64))
        kappa_eff = eig_max / eig_min if eig_min > 0 else math.inf

        k = int(res.num_iterations)
        its = np.arange(k + 1)
        rel = np.asarray(res.residual_norms, dtype=np.float64)[: k + 1] / np.linalg.norm(m.b)
        aerr = np.asarray(res.anorm_errors, dtype=np.float64)[: k + 1]
        aerr = aerr / aerr[0] if aerr.size and aerr[0] > 0 else aerr
        if math.isfinite(kappa_eff):  # on a fixed-length grid (no recompilation), then cut
            bound = np.asarray(condition_bound(kappa_eff, self._all_iterations), dtype=np.float64)[: k + 1]
        else:
            bound = np.full(k + 1, np.nan)
        # the reference x* = (A + λI)^{-1} b and CG's own iterates are accurate to about u κ(A + λI)
        kappa_damped = float((m.eigenvalues[-1] + damping) / (m.eigenvalues[0] + damping))
        margin = ROUNDING_FACTOR * _EPS64 * kappa_damped
        violations = int(np.sum(aerr > bound))
        hutch = None
        if preconditioner == "hutchinson":
            hutch = self._hutchinson_report(problem, kappa, clusters, damping, num_probes, op, Ad, P)
        matrix = "D A D" if problem == "badly_scaled" else "A"
        spread = f", {clusters} clusters" if clusters else ""
        label = f"{matrix}, κ={kappa:.3g}{spread}, λ={damping:g}, P={preconditioner}"
        return CGExplorerResult(
            problem=problem,
            preconditioner=preconditioner,
            clusters=clusters,
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
            rounding_margin=margin,
            bound_violations=violations,
            hutchinson=hutch,
            num_iterations=k,
            converged=bool(res.converged),
            status=res.status.name,
            message=res.message,
            label=label,
        )

    def _hutchinson_report(self, problem, kappa, clusters, damping, num_probes, op, Ad, P) -> dict:
        """Why the Hutchinson diagonal helps or hurts: floored entries, error, κ_eff against probes."""
        true_diag = np.diag(Ad)
        est = np.asarray(_diagonal(op, num_probes=num_probes, key=self._key).value, dtype=np.float64)
        num_floored = int(np.sum(est <= _hutchinson_floor(est)))
        median_rel = float(np.median(np.abs(est - true_diag) / np.abs(true_diag)))

        def sweep():
            # one sequence of Rademacher probes, prefix means (no compilation per probe count): the
            # same estimator and floor as hutchinson_jacobi
            rng = np.random.default_rng(1)
            Z = rng.choice(np.array([-1.0, 1.0]), size=(Ad.shape[0], PROBE_GRID[-1]))
            running = np.cumsum(Z * (Ad @ Z), axis=1)
            out = {}
            for probes in PROBE_GRID:
                d = running[:, probes - 1] / probes
                lo, hi = _extreme_eigenvalues(Ad, 1.0 / np.maximum(d, _hutchinson_floor(d)))
                out[probes] = hi / lo if lo > 0 else math.inf
            lo, hi = _extreme_eigenvalues(Ad, 1.0 / true_diag)
            return out, hi / lo

        by_probes, kappa_jacobi = self._sweeps.get((problem, kappa, clusters, damping), sweep)
        w = np.linalg.eigvalsh(Ad)
        kappa_none = float(w[-1] / w[0]) if w[0] > 0 else math.inf
        help_ = [m for m, kap in by_probes.items() if kap < kappa_none]
        near = [m for m, kap in by_probes.items() if kap <= 2 * kappa_jacobi]
        return dict(
            num_probes=num_probes,
            num_floored=num_floored,
            median_rel_error=median_rel,
            kappa_by_probes=by_probes,
            kappa_none=kappa_none,
            kappa_jacobi=float(kappa_jacobi),
            probes_to_help=min(help_) if help_ else None,
            probes_near_jacobi=min(near) if near else None,
        )

    def _render(self, result: CGExplorerResult) -> None:
        fig = self.figure
        title = f"CG on {PROBLEMS[result.problem]}"
        if result.clusters:
            spectrum = f"λ in {result.clusters} clusters of equal values, log-spaced on [1, κ]"
            title = title.replace("λ log-spaced on [1, κ]", spectrum)
            if result.problem == "badly_scaled":
                title += f", A with {spectrum}"
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


def _extreme_eigenvalues(Ad: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Smallest and largest eigenvalue of :math:`P^{1/2} A_d P^{1/2}` for the diagonal ``p`` of :math:`P`."""
    s = np.sqrt(p)
    w = np.linalg.eigvalsh(s[:, None] * Ad * s[None, :])
    return float(w[0]), float(w[-1])


def _hutchinson_floor(d: np.ndarray) -> float:
    """The floor :func:`curvlab.preconditioners.hutchinson_jacobi` applies: 1e-3 of the mean ``|d|``."""
    return 1e-3 * float(np.mean(np.abs(d)))


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
    ]
    if r.clusters:
        rows.append(
            ("clusters", f"{r.clusters} distinct eigenvalues of A: CG's residual polynomial of degree "
             f"{r.clusters} can vanish on all of them, so it finishes in about {r.clusters} steps "
             "(exactly, in exact arithmetic) whatever κ")
        )  # fmt: skip
    rows.append(("bound check", _bound_check(r)))
    if r.hutchinson is not None:
        rows.append(("Hutchinson diagonal", _hutchinson_text(r.hutchinson)))
    rows.append(("status", f"{r.status}: {r.message}"))
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='curvlab-readout'>{body}</table>"


def _bound_check(r: CGExplorerResult) -> str:
    """The A-norm error against the plotted bound, in float64 with its rounding floor."""
    if not np.all(np.isfinite(r.bound)):
        return "no bound (the operator CG sees is not positive definite)"
    if r.bound_violations == 0:
        return "float64: ‖e<sub>k</sub>‖<sub>A</sub> ≤ bound at every iteration"
    return (
        f"float64: above the bound at {r.bound_violations} iterations, all by less than the rounding "
        f"floor {ROUNDING_FACTOR:g}·u·κ = {r.rounding_margin:.1e}: the bound is a theorem of exact arithmetic"
        if np.all(r.anorm_errors <= r.bound + r.rounding_margin)
        else f"float64: above the bound at {r.bound_violations} iterations (beyond rounding)"
    )


def _hutchinson_text(h: dict) -> str:
    """Why the Hutchinson diagonal helps or hurts, and how many probes it takes to help."""

    def probes(m):
        return f"<b>{m}</b>" if m is not None else f"more than {PROBE_GRID[-1]}"

    kap = h["kappa_by_probes"]
    trail = ", ".join(f"{m}: {_fmt(kap[m])}" for m in PROBE_GRID)
    return (
        f"{h['num_probes']} probes: {h['num_floored']} estimated diagonal entries negative or tiny "
        f"(floored), median relative error {h['median_rel_error']:.2g}. The estimate's variance, "
        "(1/m) Σ<sub>l≠i</sub> A<sub>il</sub><sup>2</sup>, swamps the small diagonal entries, and "
        "1/d̂<sub>i</sub> "
        "of a floored entry inflates that coordinate. "
        f"Probes to beat no preconditioner (κ {_fmt(h['kappa_none'])}): {probes(h['probes_to_help'])}; "
        f"to come within 2x of exact Jacobi (κ {_fmt(h['kappa_jacobi'])}): "
        f"{probes(h['probes_near_jacobi'])}. "
        f"κ<sub>eff</sub> by probes: {trail}"
    )

"""SpectrumExplorer: the Hessian's eigenvalue spectrum, as Lanczos and SLQ see it.

For a chosen symmetric operator :math:`A` (a quadratic with a prescribed
spectrum, the Hessian of a small MLP on digits, or any operator you pass) the
explorer runs :func:`curvlab.lanczos.lanczos` on

.. math::

    B = P^{-1/2} (A + \\lambda I) P^{-1/2},
    \\qquad P = \\begin{cases} I & \\text{no preconditioner} \\\\
    \\operatorname{diag}(|A + \\lambda I|) & \\text{Jacobi} \\end{cases}

(:math:`B` is what CG sees when it solves the damped system with a Jacobi
preconditioner) and shows

* the Ritz values after every Lanczos step: the extreme ones converge first;
  without reorthogonalization, converged Ritz values are repeated ("ghosts")
  once the basis loses orthogonality;
* the stochastic Lanczos quadrature density of :func:`curvlab.spectral.spectral_density`
  with its standard-error band;
* the exact eigenvalues (dense ``eigh``) for ``n <= 500``.

Damping shifts every eigenvalue of :math:`A` by exactly :math:`\\lambda`, and so does
it shift the Lanczos runs: from the same start vector, Lanczos on :math:`A + \\lambda I`
builds the same basis with :math:`\\alpha_j + \\lambda` and the same :math:`\\beta_j`.
Without the preconditioner a damping move therefore reuses the (cached) runs on
:math:`A` and adds :math:`\\lambda` to the Ritz values, the SLQ nodes and grid and the
exact eigenvalues: no Krylov work, milliseconds per move. (Only runs with full
reorthogonalization are shifted: without it rounding errors grow once orthogonality is
lost, and a run on :math:`A + \\lambda I` shows its ghosts at other steps, so that Lanczos
run is redone.) With the preconditioner :math:`P` depends on :math:`\\lambda` and
everything is recomputed; the dense ``eigh`` then runs on a worker thread, alongside the
Krylov runs.

All numbers come from the curvlab core; :meth:`SpectrumExplorer.compute` is a
plain function of the control values (the caches only skip recomputing them).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
from typing import NamedTuple

import ipywidgets as widgets
import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go
from scipy.linalg import eigvalsh_tridiagonal

from curvlab import plots, problems
from curvlab.lanczos import LanczosStatus, _default_breakdown_tol, lanczos
from curvlab.operators import LinearOperator, _register, as_operator, hessian_operator
from curvlab.spectral import diagonal as estimate_diagonal
from curvlab.spectral import spectral_density
from curvlab.widgets._base import Explorer

__all__ = ["SpectrumExplorer", "SpectrumResult", "strakos_eigenvalues", "EXACT_MAX_N"]

#: Largest operator size for which the exact spectrum (dense ``eigh``) is overlaid.
EXACT_MAX_N = 500

QUADRATICS = ("strakos", "geometric")
PROBLEMS = {
    "strakos": "quadratic, outlying top eigenvalues (Strakoš)",
    "geometric": "quadratic, log-spaced eigenvalues",
    "mlp": "MLP Hessian on digits",
    "custom": "your operator",
}


def strakos_eigenvalues(n: int, kappa: float, rho: float = 0.9) -> np.ndarray:
    """Strakoš spectrum on :math:`[1, \\kappa]`.

    :math:`\\lambda_i = 1 + \\frac{i-1}{n-1}(\\kappa-1)\\rho^{n-i}`, :math:`i = 1, \\dots, n`.

    The top eigenvalues are well separated and the bottom ones cluster near 1:
    the classic test where Lanczos without reorthogonalization produces ghost
    copies of the converged top eigenvalues (Strakoš 1991).

    Examples
    --------
    >>> [round(float(v), 3) for v in strakos_eigenvalues(3, 10.0, 0.5)]
    [1.0, 3.25, 10.0]
    """
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if not (np.isfinite(kappa) and kappa >= 1):
        raise ValueError(f"kappa must be a finite number >= 1, got {kappa}")
    i = np.arange(1, n + 1)
    return 1.0 + (i - 1) / (n - 1) * (kappa - 1.0) * rho ** (n - i)


@_register
class _CongruenceOperator(LinearOperator):
    """:math:`S A S` with :math:`S = \\operatorname{diag}(s)`: a symmetric (Jacobi) scaling as a pytree.

    ``s`` is a leaf, so a new scaling (another damping) reuses the compiled Krylov loop.
    """

    _children = ("op", "scale")

    def __init__(self, op: LinearOperator, scale):
        self.op, self.scale = op, scale

    size = property(lambda self: self.op.size)
    dtype = property(lambda self: self.op.dtype)

    def matvec(self, v):
        return self.scale * self.op.matvec(self.scale * v)

    def prepare(self):
        mv, s = self.op.prepare(), self.scale
        return lambda v: s * mv(s * v)


@dataclasses.dataclass
class _ProblemState:
    """What one problem needs, computed once: the operator, its dense form and diagonal."""

    op: LinearOperator
    label: str
    dense: np.ndarray | None
    diag: np.ndarray | None
    eigenvalues: np.ndarray | None = None  # of ``dense``, computed on first use
    diag_estimates: dict = dataclasses.field(default_factory=dict)
    #: runs on the undamped operator (:class:`_LanczosRun`, :class:`_SLQRun`) keyed by their settings
    undamped: dict = dataclasses.field(default_factory=dict)


class _LanczosRun(NamedTuple):
    """Host copy of one Lanczos run on an operator :math:`B`.

    Shift invariance: Lanczos on :math:`A + \\lambda I` from the same start vector builds the
    same basis with :math:`\\alpha_j + \\lambda` and the same :math:`\\beta_j`, so its Ritz values
    are those of :math:`A` plus :math:`\\lambda`. In floating point this holds to rounding
    (``~1e-15`` relative) *with* full reorthogonalization; without it, rounding errors grow once
    orthogonality is lost and a fresh run on :math:`A + \\lambda I` shows its ghosts at other
    steps, so the explorer shifts only reorthogonalized runs.
    """

    ritz: np.ndarray  # (bucket, bucket) Ritz history, NaN-padded
    beta: np.ndarray  # (num_steps,) off-diagonals of the steps taken
    num_steps: int  # steps taken
    completed: bool  # all steps taken (no breakdown, nothing non-finite)
    anorm: float  # max_i ||B q_i||
    message: str  # status message


class _SLQRun(NamedTuple):
    """Host copy of one SLQ run (always fully reorthogonalized) on an operator :math:`B`.

    For :math:`B = A + \\lambda I` the nodes and the default grid move by :math:`\\lambda`; the
    weights, the default width (1% of the node spread) and the density values do not.
    """

    grid: np.ndarray
    per_probe: np.ndarray  # (probes, grid) per-probe densities
    completed: bool  # every probe took all its steps
    spread: bool  # the nodes are not all equal (else the default width depends on the shift)


#: one worker for the dense ``eigh`` that overlaps with the Krylov runs
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="curvlab-spectrum")


def _shiftable(run: _LanczosRun | _SLQRun, shift: float, dtype) -> bool:
    """Whether a run on :math:`A` gives the run on :math:`A + \\lambda I` by a shift.

    Fresh runs stop at a breakdown :math:`\\beta_j \\le \\text{tol}\\,\\max_i \\|(A + \\lambda I) q_i\\|`.
    A shifted Lanczos run takes all its steps too when the undamped one did and
    :math:`\\min_j \\beta_j > \\text{tol}\\,(\\max_i \\|A q_i\\| + |\\lambda|)`. For SLQ (whose
    :math:`\\beta_j` are not returned) every probe must have completed and the nodes must
    spread. Otherwise the explorer recomputes.
    """
    if isinstance(run, _SLQRun):
        return run.completed and run.spread
    if not (run.completed and math.isfinite(run.anorm)):
        return False
    tol = _default_breakdown_tol(dtype)
    return run.beta.size == 0 or float(np.min(run.beta)) > tol * (run.anorm + abs(shift))


class SpectrumResult(NamedTuple):
    """Everything :func:`curvlab.plots.spectrum_figure` draws.

    Attributes
    ----------
    problem, label : str
        Problem key and readable name.
    n : int
        Operator size.
    damping : float
        :math:`\\lambda`.
    preconditioned, reorthogonalize : bool
    num_steps : int
        Lanczos steps taken.
    ritz_history : ndarray, shape (num_steps, num_steps)
        Row ``j``: Ritz values after step ``j + 1``, ascending, NaN-padded.
    grid, density, density_stderr : ndarray
        SLQ density of the spectrum on ``grid`` and its standard error.
    slq_steps, num_probes : int
        Lanczos steps per probe and probes behind the density.
    exact_eigenvalues : ndarray or None
        Eigenvalues of the dense operator (``n <= 500``), ascending.
    lambda_min, lambda_max, kappa : float
        Estimates from the final Ritz values; ``kappa`` is NaN unless ``lambda_min > 0``.
    ghosts : ndarray of bool, shape like ``ritz_history``
        Ritz values that duplicate the next larger one to ``10 ε^{2/3}`` (relative) of the
        operator's dtype (:func:`curvlab.plots.ghost_mask`): ghost copies.
    num_copies_max : int
        Final Ritz values that coincide with the largest one (``> 1``: ghosts).
    message : str
        Status of the Lanczos run.
    """

    problem: str
    label: str
    n: int
    damping: float
    preconditioned: bool
    reorthogonalize: bool
    num_steps: int
    ritz_history: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    density_stderr: np.ndarray
    slq_steps: int
    num_probes: int
    exact_eigenvalues: np.ndarray | None
    lambda_min: float
    lambda_max: float
    kappa: float
    ghosts: np.ndarray
    num_copies_max: int
    message: str


#: Lanczos step counts actually run (the first ``num_steps`` are kept): one compilation per bucket.
STEP_BUCKETS = (30, 60, 100, 150, 200)
#: Lanczos steps per SLQ probe: the bucket of ``num_steps`` among these (SLQ's dense
#: ``eigh`` of every probe's ``T`` costs ``O(m^3)``, so the density stops refining at 50 steps).
SLQ_STEP_BUCKETS = (10, 25, 50)
#: Probe counts actually drawn for SLQ (the first ``num_probes`` are averaged).
PROBE_BUCKETS = (5, 10, 20, 50)


def _bucket(k: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket ``>= k`` (``k`` itself above the largest)."""
    return next((b for b in buckets if b >= k), k)


def _ritz_history(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Row ``j``: eigenvalues of the leading ``(j+1) x (j+1)`` block of ``T`` (ascending, NaN-padded).

    The same numbers as ``LanczosResult.ritz_history``, by LAPACK's tridiagonal
    solver on the host (milliseconds for ``k = 200``).
    """
    k = alpha.shape[0]
    R = np.full((k, k), np.nan)
    for j in range(k):
        if j == 0:
            R[0, 0] = alpha[0]
        else:
            R[j, : j + 1] = eigvalsh_tridiagonal(alpha[: j + 1], beta[:j])
    return R


def _ghost_rtol(dtype) -> float:
    """Relative gap below which two Ritz values count as copies: ``10 ε^{2/3}`` of the working dtype."""
    return 10 * float(jnp.finfo(dtype).eps) ** (2 / 3)


def _drop_true_multiplicity(
    ritz: np.ndarray, ghosts: np.ndarray, exact: np.ndarray, rtol: float
) -> np.ndarray:
    """Keep a ghost mark only where more Ritz values sit near it than exact eigenvalues do.

    The gap test of :func:`curvlab.plots.ghost_mask` cannot tell a ghost copy from distinct
    eigenvalues closer together than its tolerance (a dense cluster in float32); with the exact
    spectrum known, a Ritz value is a ghost only if its cluster holds more Ritz values than the
    spectrum holds eigenvalues within the same distance.
    """
    out = ghosts.copy()
    exact = np.sort(np.asarray(exact, dtype=float))
    for j, i in zip(*np.nonzero(ghosts)):
        row = ritz[j][np.isfinite(ritz[j])]
        tol = rtol * float(np.max(np.abs(row)))
        theta = ritz[j, i]
        near_ritz = int(np.sum(np.abs(row - theta) <= tol))
        near_exact = int(
            np.searchsorted(exact, theta + tol, "right") - np.searchsorted(exact, theta - tol, "left")
        )
        out[j, i] = near_ritz > near_exact
    return out


def _copies_of_max(ghosts_last_row: np.ndarray, num_finite: int) -> int:
    """1 + the number of Ritz values below the largest one that duplicate it (a chain of ghosts)."""
    copies = 1
    for i in range(num_finite - 2, -1, -1):
        if not ghosts_last_row[i]:
            break
        copies += 1
    return copies if num_finite else 0


class SpectrumExplorer(Explorer):
    """Lanczos Ritz values, the SLQ density and the exact spectrum of a curvature operator.

    Parameters
    ----------
    operator : LinearOperator or square array, optional
        Adds the problem ``"custom"`` (selected at start) showing this operator.
    mlp_hidden : tuple of int
        Hidden widths of the digits MLP (default ``(6,)``: 460 parameters, small
        enough for the exact spectrum).
    mlp_examples : int
        Training examples the MLP Hessian averages over.

    Controls (attributes)
    ---------------------
    problem, kappa, n, num_steps, num_probes, damping, preconditioned, reorthogonalize

    Examples
    --------
    In a notebook cell (tests/test_widget_spectrum.py runs the same steps)::

        ex = SpectrumExplorer()
        ex.damping.value = 1.0  # the figure updates at once: the spectrum shifts by 1
        ex
    """

    def __init__(
        self,
        operator: LinearOperator | None = None,
        *,
        mlp_hidden: tuple[int, ...] = (6,),
        mlp_examples: int = 256,
    ):
        super().__init__()
        self._custom = None if operator is None else as_operator(operator)
        self._mlp_hidden = tuple(int(h) for h in mlp_hidden)
        self._mlp_examples = int(mlp_examples)
        self._quadratics: collections.OrderedDict = collections.OrderedDict()
        self._fixed: dict[str, _ProblemState] = {}
        self._lanczos_key = jax.random.key(0)
        self._slq_key = jax.random.key(1)
        # the MLP operator is built on first selection (loading the digits costs seconds);
        # a user's operator right away. Dense references are built on first use.
        if self._custom is not None:
            self._fixed["custom"] = self._operator_state("custom")

        options = [(label, key) for key, label in PROBLEMS.items() if key != "custom" or operator is not None]
        self.problem = widgets.Dropdown(
            options=options, value="custom" if operator is not None else "strakos", description="problem"
        )
        self.kappa = widgets.FloatLogSlider(
            value=1e3, base=10, min=1, max=6, step=0.1, description="κ", readout_format=".3g"
        )
        self.n = widgets.IntSlider(value=100, min=50, max=EXACT_MAX_N, step=50, description="n")
        self.num_steps = widgets.IntSlider(value=60, min=2, max=200, step=1, description="Lanczos steps")
        self.num_probes = widgets.IntSlider(value=10, min=1, max=50, step=1, description="probes")
        self.damping = widgets.FloatSlider(
            value=0.0, min=0.0, max=10.0, step=0.01, description="damping λ", readout_format=".2f"
        )
        self.preconditioned = widgets.Checkbox(
            value=False, description="Jacobi preconditioner (what CG sees)"
        )
        self.reorthogonalize = widgets.Checkbox(value=True, description="reorthogonalize")
        self.problem.observe(self._sync_enabled, names="value")
        self._sync_enabled()
        self._setup(
            {
                "problem": self.problem,
                "kappa": self.kappa,
                "n": self.n,
                "num_steps": self.num_steps,
                "num_probes": self.num_probes,
                "damping": self.damping,
                "preconditioned": self.preconditioned,
                "reorthogonalize": self.reorthogonalize,
            },
            go.FigureWidget(),
        )

    # -- problems -----------------------------------------------------------
    def _sync_enabled(self, change=None):
        quad = self.problem.value in QUADRATICS
        self.kappa.disabled = not quad
        self.n.disabled = not quad

    def _state(self, problem: str, kappa, n) -> _ProblemState:
        """Build (once) and cache the operator, dense matrix and diagonal of a problem."""
        if problem in QUADRATICS:
            key = (problem, float(kappa), int(n))
            if key in self._quadratics:
                self._quadratics.move_to_end(key)
                return self._quadratics[key]
            lam = strakos_eigenvalues(n, kappa) if problem == "strakos" else np.geomspace(1.0, kappa, n)
            p = problems.quadratic(eigenvalues=lam, key=jax.random.PRNGKey(int(n)))
            dense = np.asarray(p.matrix, dtype=np.float64)
            state = _ProblemState(
                as_operator(p.matrix), f"{PROBLEMS[problem]}, κ = {kappa:.3g}, n = {n}", dense, np.diag(dense)
            )
            self._quadratics[key] = state
            while len(self._quadratics) > 8:
                self._quadratics.popitem(last=False)
            return state
        if problem not in ("mlp", "custom"):
            raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {problem!r}")
        if problem == "custom" and self._custom is None:
            raise ValueError("problem 'custom' needs SpectrumExplorer(operator=...)")
        if problem not in self._fixed:
            self._fixed[problem] = self._operator_state(problem)
        state = self._fixed[problem]
        if state.dense is None and state.op.size <= EXACT_MAX_N:
            # the dense reference (n matvecs) is built on first use, then kept
            state.dense = np.asarray(state.op.to_dense(), dtype=np.float64)
            state.diag = np.diag(state.dense)
        return state

    def _operator_state(self, problem: str) -> _ProblemState:
        """The MLP Hessian or the user's operator, without its dense form."""
        if problem == "mlp":
            p = problems.mlp(hidden=self._mlp_hidden, num_examples=self._mlp_examples)
            op = hessian_operator(p.loss, p.x0, p.batch)
            label = f"MLP {'-'.join(map(str, (64, *self._mlp_hidden, 10)))} Hessian at init (n = {op.size})"
        else:
            op = self._custom
            label = f"your operator (n = {op.size})"
        return _ProblemState(op, label, None, None)

    @staticmethod
    def _diagonal(state: _ProblemState, num_probes: int) -> np.ndarray:
        """Exact diagonal where available, else a Hutchinson estimate (cached per probe count)."""
        if state.diag is not None:
            return state.diag
        try:
            state.diag = np.asarray(state.op.diagonal(), dtype=np.float64)
            return state.diag
        except NotImplementedError:
            if num_probes not in state.diag_estimates:
                est = estimate_diagonal(state.op, num_probes=num_probes, key=jax.random.key(2))
                state.diag_estimates[num_probes] = np.asarray(est.value, dtype=np.float64)
            return state.diag_estimates[num_probes]

    # -- compute / render -----------------------------------------------------
    def compute(
        self,
        *,
        problem: str,
        kappa: float,
        n: int,
        num_steps: int,
        num_probes: int,
        damping: float,
        preconditioned: bool,
        reorthogonalize: bool,
    ) -> SpectrumResult:
        """Lanczos, SLQ and (small ``n``) the exact spectrum of :math:`P^{-1/2}(A + \\lambda I)P^{-1/2}`."""
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {problem!r}")
        damping = float(damping)
        if not math.isfinite(damping):
            raise ValueError(f"damping must be finite, got {damping}")
        if problem in QUADRATICS:
            kappa = float(kappa)
            if not (math.isfinite(kappa) and kappa >= 1):
                raise ValueError(f"kappa must be a finite number >= 1, got {kappa}")
            n = int(n)
            if n < 2:
                raise ValueError(f"n must be >= 2, got {n}")
        num_steps, num_probes = int(num_steps), int(num_probes)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if num_probes < 1:
            raise ValueError(f"num_probes must be >= 1, got {num_probes}")

        state = self._state(problem, kappa, n)
        size = state.op.size
        dtype = state.op.dtype
        k = num_steps
        bucket = _bucket(k, STEP_BUCKETS)
        probe_bucket = _bucket(num_probes, PROBE_BUCKETS)
        slq_steps = min(_bucket(k, SLQ_STEP_BUCKETS), SLQ_STEP_BUCKETS[-1], size)

        exact_future = None
        lanczos_settings = (bucket, bool(reorthogonalize))
        slq_settings = (probe_bucket, slq_steps)
        if preconditioned:
            d = np.abs(self._diagonal(state, num_probes) + damping)
            d = np.maximum(d, 1e-12 * max(float(np.max(d)), 1e-300))
            scale = 1.0 / np.sqrt(d)
            if state.dense is not None:
                # the dense eigh (LAPACK, GIL released) overlaps with the Krylov runs below
                B = scale[:, None] * state.dense * scale[None, :]
                B[np.diag_indices(size)] += damping * scale**2
                exact_future = _EXECUTOR.submit(np.linalg.eigvalsh, B)
            op = _CongruenceOperator(state.op.damped(damping), jnp.asarray(scale, dtype))
            lrun, srun = self._run(op, lanczos_settings, slq_settings)
            lshift = sshift = 0.0
        else:
            # Damping shifts the spectrum: reuse the runs on A and add λ (no Krylov work)
            cache = state.undamped
            lrun = cache.get(("lanczos", *lanczos_settings)) if reorthogonalize else None
            srun = cache.get(("slq", *slq_settings))
            if (reorthogonalize and lrun is None) or srun is None:
                undamped = _CongruenceOperator(state.op.damped(0.0), jnp.ones(size, dtype))
                new_l, new_s = self._run(
                    undamped,
                    lanczos_settings if reorthogonalize and lrun is None else None,
                    slq_settings if srun is None else None,
                )
                if new_l is not None:
                    lrun = cache[("lanczos", *lanczos_settings)] = new_l
                if new_s is not None:
                    srun = cache[("slq", *slq_settings)] = new_s
            lshift = sshift = damping
            fresh_l = lrun is None or (damping != 0.0 and not _shiftable(lrun, damping, dtype))
            fresh_s = damping != 0.0 and not _shiftable(srun, damping, dtype)
            if fresh_l or fresh_s:
                damped = _CongruenceOperator(state.op.damped(damping), jnp.ones(size, dtype))
                new_l, new_s = self._run(
                    damped, lanczos_settings if fresh_l else None, slq_settings if fresh_s else None
                )
                if fresh_l:
                    lrun, lshift = new_l, 0.0
                if fresh_s:
                    srun, sshift = new_s, 0.0

        # Static shapes: the jitted loops compile once per bucket, not per slider value.
        # Lanczos runs ``_bucket(k)`` steps and keeps the first k: T_k is the leading block
        # of T_B, so the Ritz history is exactly that of a k-step run.
        taken = min(k, lrun.num_steps)
        ritz = lrun.ritz[:taken, :taken] + lshift
        final = ritz[-1][np.isfinite(ritz[-1])]
        ghosts = plots.ghost_mask(ritz, rtol=_ghost_rtol(dtype))
        if lrun.num_steps < k:
            message = f"{taken} steps: {lrun.message}"
        else:
            message = f"{taken} steps: completed all requested Lanczos steps"

        # SLQ: probes are drawn in buckets and the first ``num_probes`` are averaged; a shift
        # moves the nodes and the default grid by λ and leaves the smoothed density unchanged
        per_probe = srun.per_probe[:num_probes]
        density = per_probe.mean(axis=0)
        if num_probes > 1:
            stderr = per_probe.std(axis=0, ddof=1) / math.sqrt(num_probes)
        else:
            stderr = np.full_like(density, np.nan)
        grid = srun.grid + sshift

        exact = None
        if exact_future is not None:
            exact = exact_future.result()
        elif state.dense is not None:
            # A + λI has exactly the eigenvalues λ_i(A) + λ
            exact = self._eigenvalues(state) + damping
        if exact is not None and ghosts.any():
            ghosts = _drop_true_multiplicity(ritz, ghosts, exact, _ghost_rtol(dtype))

        lmin, lmax = (float(final[0]), float(final[-1])) if final.size else (math.nan, math.nan)
        return SpectrumResult(
            problem=problem,
            label=state.label,
            n=size,
            damping=damping,
            preconditioned=bool(preconditioned),
            reorthogonalize=bool(reorthogonalize),
            num_steps=taken,
            ritz_history=ritz,
            grid=grid,
            density=density,
            density_stderr=stderr,
            slq_steps=slq_steps,
            num_probes=num_probes,
            exact_eigenvalues=exact,
            lambda_min=lmin,
            lambda_max=lmax,
            kappa=lmax / lmin if lmin > 0 else float("nan"),
            ghosts=ghosts,
            num_copies_max=_copies_of_max(ghosts[-1], final.size),
            message=message,
        )

    def _run(self, op, lanczos_settings, slq_settings) -> tuple[_LanczosRun | None, _SLQRun | None]:
        """Lanczos ``(steps, reorthogonalize)`` and SLQ ``(probes, steps)`` on ``op`` (``None``: skip)."""
        # both are dispatched before either is read, so that they overlap
        lres = sd = None
        if lanczos_settings is not None:
            steps, reorth = lanczos_settings
            lres = lanczos(op, steps, key=self._lanczos_key, reorthogonalize=reorth, history=False)
        if slq_settings is not None:
            probes, slq_steps = slq_settings
            sd = spectral_density(op, num_probes=probes, num_steps=slq_steps, key=self._slq_key)
        lrun = srun = None
        if lres is not None:
            taken = int(lres.num_steps)
            alpha = np.asarray(lres.alpha, dtype=np.float64)[:taken]
            beta = np.asarray(lres.beta, dtype=np.float64)[:taken]
            ritz = np.full((steps, steps), np.nan)
            ritz[:taken, :taken] = _ritz_history(alpha, beta[: max(taken - 1, 0)])
            lrun = _LanczosRun(
                ritz=ritz,
                beta=beta,
                num_steps=taken,
                completed=int(lres.status) == LanczosStatus.COMPLETED,
                anorm=float(lres.anorm),
                message=lres.message,
            )
        if sd is not None:
            nodes = np.asarray(sd.nodes, dtype=np.float64)
            finite = nodes[np.isfinite(nodes)]
            srun = _SLQRun(
                grid=np.asarray(sd.grid, dtype=np.float64),
                per_probe=np.asarray(sd.per_probe_density, dtype=np.float64),
                completed=bool(np.all(np.asarray(sd.status) == LanczosStatus.COMPLETED)),
                spread=finite.size > 0 and float(np.max(finite)) > float(np.min(finite)),
            )
        return lrun, srun

    @staticmethod
    def _eigenvalues(state: _ProblemState) -> np.ndarray:
        """Dense ``eigh`` of the undamped operator (computed once per problem)."""
        if state.eigenvalues is None:
            state.eigenvalues = np.linalg.eigvalsh((state.dense + state.dense.T) / 2)
        return state.eigenvalues

    def _render(self, result: SpectrumResult) -> None:
        density_title = f"SLQ density ({result.num_probes} probes × {result.slq_steps} steps)"
        title = result.label
        if result.preconditioned:
            title += ", Jacobi-preconditioned"
        if result.damping:
            title += f", damping λ = {result.damping:g}"
        fig = self.figure
        data = {
            **plots.ritz_data(
                result.ritz_history, exact_eigenvalues=result.exact_eigenvalues, ghosts=result.ghosts
            ),
            **plots.density_data(
                result.grid, result.density, result.density_stderr, exact_eigenvalues=result.exact_eigenvalues
            ),
        }
        if [t.name for t in fig.data] != list(data):
            # first render: build the figure once; later renders only replace data
            new = plots.spectrum_figure(
                result.ritz_history,
                result.grid,
                result.density,
                result.density_stderr,
                exact_eigenvalues=result.exact_eigenvalues,
                ghosts=result.ghosts,
                density_title=density_title,
                title=title,
            )
            plots.update_figure(fig, new)
        else:
            for trace, props in zip(fig.data, data.values(), strict=True):
                trace.update(props)
            fig.layout.xaxis.range = [0, result.num_steps + 2.5]
            fig.layout.annotations[1].text = density_title
            fig.layout.title.text = title
        self.readout.value = _readout(result)


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.6g}"


def _readout(r: SpectrumResult) -> str:
    rows = [
        ("λ<sub>min</sub> (Ritz)", _fmt(r.lambda_min)),
        ("λ<sub>max</sub> (Ritz)", _fmt(r.lambda_max)),
        ("κ estimate", _fmt(r.kappa) if r.lambda_min > 0 else "n/a (λ<sub>min</sub> ≤ 0: indefinite)"),
    ]
    if r.exact_eigenvalues is not None:
        e = r.exact_eigenvalues
        rows.append(("exact λ<sub>min</sub>, λ<sub>max</sub>", f"{_fmt(float(e[0]))}, {_fmt(float(e[-1]))}"))
        rows.append(("exact κ", _fmt(float(e[-1] / e[0])) if e[0] > 0 else "n/a (indefinite)"))
    if r.num_copies_max > 1:
        extra = r.num_copies_max - 1
        rows.append(("ghosts", f"{extra} extra cop{'y' if extra == 1 else 'ies'} of λ<sub>max</sub>"))
    rows.append(("Lanczos", r.message))
    body = "".join(f"<tr><td>{k}</td><td><b>{v}</b></td></tr>" for k, v in rows)
    return f"<table class='curvlab-readout'>{body}</table>"

"""SpectrumExplorer: the Hessian's eigenvalue spectrum, as Lanczos and SLQ see it.

For a chosen symmetric operator :math:`A` (a quadratic with a prescribed
spectrum, the Hessian of a small MLP on digits, or any operator you pass) the
explorer runs :func:`curvlab._lanczos.lanczos` on

.. math::

    B = P^{-1/2} (A + \\lambda I) P^{-1/2},
    \\qquad P = \\begin{cases} I & \\text{no preconditioner} \\\\
    \\operatorname{diag}(|A + \\lambda I|) & \\text{Jacobi} \\end{cases}

(:math:`B` is what CG sees when it solves the damped system with a Jacobi
preconditioner) and shows

* the Ritz values after every Lanczos step: the extreme ones converge first;
  without reorthogonalization, converged Ritz values are repeated ("ghosts")
  once the basis loses orthogonality;
* the stochastic Lanczos quadrature density of :func:`curvlab._spectral.spectral_density`
  with its standard-error band;
* the exact eigenvalues (dense ``eigh``) for ``n <= 500``.

What a slider move costs
------------------------
* **Lanczos steps**: the first ``k`` steps of a longer run from the same start vector are a
  ``k``-step run, so a cached run of at least ``k`` steps serves ``k`` (a new run takes
  :data:`LANCZOS_BUCKETS` steps: one compilation each), and a move only builds the Ritz values of
  the new leading blocks of :math:`T` (host LAPACK, cached).
* **probes**: probes are drawn in buckets (:data:`PROBE_BUCKETS`) and the first ``num_probes``
  averaged; one run per bucket (and per SLQ step count) is cached.
* **damping**: damping shifts every eigenvalue of :math:`A` by exactly :math:`\\lambda`, and so
  does it shift the Lanczos runs: from the same start vector, Lanczos on :math:`A + \\lambda I`
  builds the same basis with :math:`\\alpha_j + \\lambda` and the same :math:`\\beta_j`. Without
  the preconditioner a damping move therefore reuses the (cached) runs on :math:`A` and adds
  :math:`\\lambda` to the Ritz values, the SLQ nodes and grid and the exact eigenvalues: no
  Krylov work, milliseconds per move. (Only runs with full reorthogonalization are shifted:
  without it rounding errors grow once orthogonality is lost, and a run on :math:`A + \\lambda I`
  shows its ghosts at other steps, so that Lanczos run is redone.) With the preconditioner
  :math:`P` depends on :math:`\\lambda` and the runs and the dense ``eigh`` are redone; they are
  cached per damping value (the last :data:`DAMPED_CACHE_SIZE`), so moving back is free.
* **slow parts**: after a move in the browser, an SLQ run or a dense ``eigh`` that is slow
  (a large operator, a first run that compiles) is computed in the background: the figure
  first shows the new Ritz values with the pending traces dimmed and marked "computing…",
  then the complete figure (see :meth:`SpectrumExplorer.refresh`).

All numbers come from the curvlab core; :meth:`SpectrumExplorer.compute` is a
plain function of the control values (the caches only skip recomputing them).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import threading
import time
from typing import NamedTuple

import ipywidgets as widgets
import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go

from curvlab import problems, viz
from curvlab._lanczos import default_breakdown_tol, lanczos
from curvlab._operators import CongruenceOperator, LinearOperator, as_operator, hessian_operator
from curvlab._spectral import diagonal as estimate_diagonal
from curvlab._spectral import spectral_density
from curvlab._status import Status
from curvlab._tridiagonal import host_eigvals
from curvlab.widgets._base import Explorer

__all__ = ["SpectrumExplorer", "SpectrumResult", "EXACT_MAX_N"]

#: Largest operator size for which the exact spectrum (dense ``eigh``) is overlaid.
EXACT_MAX_N = 500

QUADRATICS = ("strakos", "geometric")
PROBLEMS = {
    "strakos": "quadratic, outlying top eigenvalues (Strakoš)",
    "geometric": "quadratic, log-spaced eigenvalues",
    "mlp": "MLP Hessian on digits",
    "custom": "your operator",
}


@dataclasses.dataclass
class _ProblemState:
    """What one problem needs, computed once: the operator, its dense form and diagonal, and the runs."""

    op: LinearOperator
    label: str
    dense: np.ndarray | None
    diag: np.ndarray | None
    eigenvalues: np.ndarray | None = None  # of ``dense``, computed on first use
    diag_estimates: dict = dataclasses.field(default_factory=dict)
    #: runs on the undamped operator (:class:`_LanczosRun`, :class:`_SLQRun`) keyed by their settings
    undamped: dict = dataclasses.field(default_factory=dict)
    #: runs that depend on the damping (preconditioned, or not a shift of an undamped run), LRU by
    #: ``(damping, preconditioned, diagonal key)`` -> :class:`_DampedRuns`
    damped: collections.OrderedDict = dataclasses.field(default_factory=collections.OrderedDict)


@dataclasses.dataclass
class _DampedRuns:
    """Runs on one :math:`B(\\lambda)` that no shift of the undamped runs gives (cached per damping)."""

    lanczos: dict = dataclasses.field(default_factory=dict)  # (steps, reorthogonalize) -> _LanczosRun
    slq: dict = dataclasses.field(default_factory=dict)  # (probes, steps) -> _SLQRun
    exact: np.ndarray | None = None  # eigenvalues of the dense B (n <= EXACT_MAX_N)


@dataclasses.dataclass
class _LanczosRun:
    """Host copy of one Lanczos run on an operator :math:`B`; its Ritz history is built row by row on demand.

    Prefixes: the first ``k`` steps of a longer run from the same start vector *are* a ``k``-step
    run (the loop does not look ahead), so a run of ``steps`` steps serves every ``k <= steps``.

    Shift invariance: Lanczos on :math:`A + \\lambda I` from the same start vector builds the
    same basis with :math:`\\alpha_j + \\lambda` and the same :math:`\\beta_j`, so its Ritz values
    are those of :math:`A` plus :math:`\\lambda`. In floating point this holds to rounding
    (``~1e-15`` relative) *with* full reorthogonalization; without it, rounding errors grow once
    orthogonality is lost and a fresh run on :math:`A + \\lambda I` shows its ghosts at other
    steps, so the explorer shifts only reorthogonalized runs.
    """

    steps: int  # steps requested
    alpha: np.ndarray  # (taken,) diagonal of T
    beta: np.ndarray  # (taken,) off-diagonals; beta[j] is computed at step j + 1
    taken: int  # steps taken
    completed: bool  # all steps taken (no breakdown, nothing non-finite)
    anorm: float  # max_i ||B q_i||
    message: str  # status message
    ritz_rows: np.ndarray | None = None  # (taken, taken) Ritz history, NaN-padded, rows < rows_done filled
    rows_done: int = 0

    def ritz(self, k: int) -> np.ndarray:
        """Ritz history of the first ``min(k, taken)`` steps (row ``j``: eigenvalues of ``T_{j+1}``)."""
        k = min(int(k), self.taken)
        if self.ritz_rows is None:
            self.ritz_rows = np.full((self.taken, self.taken), np.nan)
        for j in range(self.rows_done, k):
            if j == 0:
                self.ritz_rows[0, 0] = self.alpha[0]
            else:
                self.ritz_rows[j, : j + 1] = host_eigvals(self.alpha[: j + 1], self.beta[:j])
        self.rows_done = max(self.rows_done, k)
        return self.ritz_rows[:k, :k]

    def shiftable(self, shift: float, k: int, dtype) -> bool:
        """Whether the first ``k`` steps of a fresh run on :math:`B + \\lambda I` are these, shifted.

        A fresh run stops at a breakdown
        :math:`\\beta_j \\le \\text{tol}\\,\\max_i \\|(B + \\lambda I) q_i\\|`.
        It takes its first ``k`` steps like this one when this one took them and
        :math:`\\min_{j < k} \\beta_j > \\text{tol}\\,(\\max_i \\|B q_i\\| + |\\lambda|)`.
        """
        if shift == 0.0:
            return True
        if self.taken < k or not math.isfinite(self.anorm):
            return False
        tol = default_breakdown_tol(dtype)
        b = self.beta[: max(k - 1, 0)]
        return bool(np.all(np.isfinite(self.alpha[:k]))) and (
            b.size == 0 or float(np.min(b)) > tol * (self.anorm + abs(shift))
        )


class _SLQRun(NamedTuple):
    """Host copy of one SLQ run (always fully reorthogonalized) on an operator :math:`B`.

    For :math:`B = A + \\lambda I` the nodes and the default grid move by :math:`\\lambda`; the
    weights, the default width (1% of the node spread) and the density values do not.
    """

    grid: np.ndarray
    per_probe: np.ndarray  # (probes, grid) per-probe densities
    completed: bool  # every probe took all its steps
    spread: bool  # the nodes are not all equal (else the default width depends on the shift)

    def shiftable(self) -> bool:
        """Whether the run on :math:`A` gives the run on :math:`A + \\lambda I` by a shift.

        SLQ does not return its :math:`\\beta_j`, so every probe must have completed (no
        breakdown) and the nodes must spread; otherwise a damped run is computed.
        """
        return self.completed and self.spread


class _Job(NamedTuple):
    """The slow parts of one refresh, computed on a background thread (see :meth:`SpectrumExplorer.refresh`).

    ``slq``: ``(op, target dict, key, PRNG key)``, the run is stored as ``target[key]`` (the last two
    entries of ``key`` are the probe and step counts); ``exact``: ``(matrix builder, store)``; either
    may be ``None``. ``timing_key``: the keys under which the two runs are timed. The results are
    stored on the kernel's thread.
    """

    slq: tuple | None
    exact: tuple | None
    timing_key: tuple


#: one worker for the dense ``eigh`` that overlaps with the Krylov runs
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="curvlab-spectrum")
_BLAS_LOCK = threading.Lock()
_BLAS_CONTROLLER = None


def _eigvalsh(matrix: np.ndarray) -> np.ndarray:
    """``np.linalg.eigvalsh`` of the symmetric part, with the BLAS thread pool limited to one thread.

    On a small shared machine a multi-threaded OpenBLAS ``syevd`` of a 500 x 500 matrix
    takes 10 ms one time and 1-2.5 s the next (its threads spin waiting for cores that other
    processes hold); single-threaded it takes ~10 ms every time. The limit (process-wide
    while it lasts) is set only around this call.
    """
    global _BLAS_CONTROLLER
    sym = (matrix + matrix.T) / 2
    with _BLAS_LOCK:
        if _BLAS_CONTROLLER is None:
            try:
                from threadpoolctl import ThreadpoolController

                _BLAS_CONTROLLER = ThreadpoolController()
            except ImportError:  # pragma: no cover - threadpoolctl is in the viz extra
                _BLAS_CONTROLLER = False
        if _BLAS_CONTROLLER:
            with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
                return np.linalg.eigvalsh(sym)
    return np.linalg.eigvalsh(sym)


class _LatestOnly:
    """One background thread that runs the newest submitted job; older queued jobs are dropped."""

    def __init__(self):
        self._lock = threading.Lock()
        self._next = None
        self._busy = False
        self._thread_pool = None

    def submit(self, fn) -> None:
        with self._lock:
            self._next = fn
            if self._busy:
                return
            self._busy = True
            if self._thread_pool is None:
                self._thread_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="curvlab-spectrum-slow"
                )
        self._thread_pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                fn, self._next = self._next, None
                if fn is None:
                    self._busy = False
                    return
            with contextlib.suppress(Exception):  # a job reports its own errors; keep draining
                fn()


class SpectrumResult(NamedTuple):
    """Everything :func:`curvlab.viz.spectrum_figure` draws.

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
    grid, density, density_stderr : ndarray or None
        SLQ density of the spectrum on ``grid`` and its standard error (``None`` while pending).
    slq_steps, num_probes : int
        Lanczos steps per probe and probes behind the density.
    exact_eigenvalues : ndarray or None
        Eigenvalues of the dense operator (``n <= 500``), ascending (``None`` while pending).
    lambda_min, lambda_max, kappa : float
        Estimates from the final Ritz values; ``kappa`` is NaN unless ``lambda_min > 0``.
    ghosts : ndarray of bool, shape like ``ritz_history``
        Ritz values that duplicate the next larger one to ``10 ε^{2/3}`` (relative) of the
        operator's dtype (:func:`curvlab.viz.ghost_mask`): ghost copies.
    num_copies_max : int
        Final Ritz values that coincide with the largest one (``> 1``: ghosts).
    message : str
        Status of the Lanczos run.
    pending : tuple of str
        Parts still being computed in the background (``"density"``, ``"exact"``); their fields
        are ``None`` (see :meth:`SpectrumExplorer.refresh`). Always empty from a direct
        :meth:`~SpectrumExplorer.compute` call.
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
    pending: tuple[str, ...] = ()


#: Lanczos steps of a new run: the bucket of ``num_steps`` (``num_steps`` above the largest); the first
#: ``num_steps`` are shown, and a cached run of at least ``num_steps`` steps is used instead. Two
#: buckets: a run for the default 60 steps costs a third of one for 200 (n = 2000: ~20 ms), and each
#: bucket compiles once.
LANCZOS_BUCKETS = (60, 200)
LANCZOS_STEPS = LANCZOS_BUCKETS[-1]
#: Lanczos steps per SLQ probe: the bucket of ``num_steps`` among these (SLQ's dense
#: ``eigh`` of every probe's ``T`` costs ``O(m^3)``, so the density stops refining at 50 steps).
SLQ_STEP_BUCKETS = (10, 25, 50)
#: Probe counts actually drawn for SLQ (the first ``num_probes`` are averaged).
PROBE_BUCKETS = (5, 10, 20, 50)
#: Runs kept per problem for damping values that no shift of the undamped runs serves.
DAMPED_CACHE_SIZE = 32
#: A part (SLQ run, dense ``eigh``) whose last runs all took longer than this is computed in the
#: background after a slider move from the browser (see :meth:`SpectrumExplorer.refresh`).
DEFER_SECONDS = 0.03
#: Opacity factor of a trace whose numbers are being recomputed (shown until they arrive).
PENDING_OPACITY = 0.3

_DENSITY_TRACES = ("density + stderr", "density − stderr", "SLQ density")
_EXACT_TRACES = ("exact eigenvalues", "exact spectrum")


def _bucket(k: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket ``>= k`` (``k`` itself above the largest)."""
    return next((b for b in buckets if b >= k), k)


def _serving(cache: dict, k: int, reorthogonalize: bool, *prefix) -> _LanczosRun | None:
    """The longest cached Lanczos run (key ``(*prefix, steps, reorthogonalize)``) of at least ``k`` steps."""
    best = None
    for key, run in cache.items():
        if key[: len(prefix)] == prefix and key[-1] == reorthogonalize and len(key) == len(prefix) + 2:
            if run.steps >= k and (best is None or run.steps > best.steps):
                best = run
    return best


def _ghost_rtol(dtype) -> float:
    """Relative gap below which two Ritz values count as copies: ``10 ε^{2/3}`` of the working dtype."""
    return 10 * float(jnp.finfo(dtype).eps) ** (2 / 3)


def _drop_true_multiplicity(
    ritz: np.ndarray, ghosts: np.ndarray, exact: np.ndarray, rtol: float
) -> np.ndarray:
    """Keep a ghost mark only where more Ritz values sit near it than exact eigenvalues do.

    The gap test of :func:`curvlab.viz.ghost_mask` cannot tell a ghost copy from distinct
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

    Attributes
    ----------
    defer_slow_parts : bool
        Compute slow parts in the background after slider moves from the browser
        (default ``True``; see :meth:`refresh`).
    pending : tuple of str
        Parts of the figure still being computed (empty when it is complete).

    Examples
    --------
    In a notebook cell (tests/test_widget_spectrum.py runs the same steps)::

        ex = SpectrumExplorer()
        ex.damping.value = 1.0  # the figure updates at once: the spectrum shifts by 1
        ex
    """

    #: compute slow parts in the background after slider moves from the browser
    defer_slow_parts: bool = True

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
        # background computation of slow parts (see refresh)
        self._deferring = False  # set while a refresh scheduled by a browser change runs
        self._job: _Job | None = None  # slow parts the last compute left pending
        self._token = 0  # refresh counter: a background result is shown only if no refresh followed
        self._background = _LatestOnly()
        self._seconds: dict[tuple, float] = {}  # fastest run seen per kind of slow part
        self._shown_context = None  # (problem label, preconditioned) of the figure's traces
        self._opacity: dict[str, float] = {}  # trace name -> opacity when not pending
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
        self.num_steps = widgets.IntSlider(
            value=40, min=2, max=LANCZOS_STEPS, step=1, description="Lanczos steps"
        )
        self.num_probes = widgets.IntSlider(
            value=10, min=1, max=PROBE_BUCKETS[-1], step=1, description="probes"
        )
        self.damping = widgets.FloatSlider(
            value=0.0, min=0.0, max=10.0, step=0.01, description="damping λ", readout_format=".2f"
        )
        self.preconditioned = widgets.Checkbox(
            value=False, description="Jacobi preconditioner (what CG sees)"
        )
        self.reorthogonalize = widgets.Checkbox(value=True, description="reorthogonalize")
        self.problem.observe(self._sync_enabled, names="value")
        self._sync_enabled()
        # the figure fills the width of the page (plotly re-measures its container on relayout)
        figure = go.FigureWidget(layout=dict(autosize=True))
        figure.layout.width = None
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
            figure,
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
            lam = problems.strakos(n, kappa) if problem == "strakos" else np.geomspace(1.0, kappa, n)
            p = problems.quadratic(eigenvalues=lam, key=jax.random.key(int(n)))
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
    def _diagonal(state: _ProblemState, num_probes: int) -> tuple[np.ndarray, int | None]:
        """Exact diagonal where available, else a Hutchinson estimate (cached per probe count).

        Returns the diagonal and ``None`` (exact) or the probe count of the estimate.
        """
        if state.diag is not None:
            return state.diag, None
        try:
            state.diag = np.asarray(state.op.diagonal(), dtype=np.float64)
            return state.diag, None
        except NotImplementedError:
            if num_probes not in state.diag_estimates:
                est = estimate_diagonal(state.op, num_probes=num_probes, key=jax.random.key(2))
                state.diag_estimates[num_probes] = np.asarray(est.value, dtype=np.float64)
            return state.diag_estimates[num_probes], num_probes

    @staticmethod
    def _damped_runs(state: _ProblemState, key: tuple) -> _DampedRuns:
        """The cache entry of one :math:`B(\\lambda)` (least recently used entries are dropped)."""
        runs = state.damped.get(key)
        if runs is None:
            runs = state.damped[key] = _DampedRuns()
            while len(state.damped) > DAMPED_CACHE_SIZE:
                state.damped.popitem(last=False)
        else:
            state.damped.move_to_end(key)
        return runs

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
        """Lanczos, SLQ and (small ``n``) the exact spectrum of :math:`P^{-1/2}(A + \\lambda I)P^{-1/2}`.

        A plain function of the control values: called directly it computes every part
        (``result.pending == ()``); the caches only skip recomputing runs. Only a refresh
        scheduled by a browser change may leave slow parts pending (see :meth:`refresh`).
        """
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
        defer = self._deferring and self.defer_slow_parts
        self._job = None

        state = self._state(problem, kappa, n)
        size = state.op.size
        dtype = state.op.dtype
        k = num_steps
        reorth = bool(reorthogonalize)
        lanczos_key = (_bucket(k, LANCZOS_BUCKETS), reorth)  # of a new run
        slq_steps = min(_bucket(k, SLQ_STEP_BUCKETS), SLQ_STEP_BUCKETS[-1], size)
        slq_key = (_bucket(num_probes, PROBE_BUCKETS), slq_steps)
        slq_timing = ("slq", id(state), *slq_key)
        exact_timing = ("exact", id(state))

        # Each part comes from a cached run (on A, shifted by λ; or on B(λ)) or a new run.
        # lrun/srun: the runs used; *shift: what to add; *_new: (op, target dict, key) to compute.
        lrun = srun = exact = None
        lanczos_new = slq_new = exact_new = None
        lshift = sshift = 0.0

        def damped_runs():
            """Runs on A + λI without preconditioner (when no shift of a run on A serves λ)."""
            return self._damped_runs(state, (damping, False, None))

        def damped_op():
            return CongruenceOperator(state.op.damped(damping), jnp.ones(size, dtype))

        if preconditioned:
            diag, diag_key = self._diagonal(state, num_probes)
            d = np.abs(diag + damping)
            d = np.maximum(d, 1e-12 * max(float(np.max(d)), 1e-300))
            scale = 1.0 / np.sqrt(d)
            runs = self._damped_runs(state, (damping, True, diag_key))
            op = CongruenceOperator(state.op.damped(damping), jnp.asarray(scale, dtype))
            lrun, srun = _serving(runs.lanczos, k, reorth), runs.slq.get(slq_key)
            if lrun is None:
                lanczos_new = (op, runs.lanczos, lanczos_key)
            if srun is None:
                slq_new = (op, runs.slq, slq_key)
            if state.dense is not None:
                exact = runs.exact
                if exact is None:
                    dense = state.dense

                    def build_b(dense=dense, scale=scale, damping=damping):
                        B = scale[:, None] * dense * scale[None, :]
                        B[np.diag_indices(dense.shape[0])] += damping * scale**2
                        return B

                    exact_new = (build_b, lambda e, runs=runs: setattr(runs, "exact", e))
        else:
            # Damping shifts the spectrum: reuse the runs on A and add λ (no Krylov work)
            undamped = CongruenceOperator(state.op.damped(0.0), jnp.ones(size, dtype))
            runs = None
            cache = state.undamped
            base = _serving(cache, k, reorth, "lanczos")
            if base is None and (reorth or damping == 0.0):
                lanczos_new = (undamped, cache, ("lanczos", *lanczos_key))
            elif base is not None and (damping == 0.0 or (reorth and base.shiftable(damping, k, dtype))):
                lrun, lshift = base, damping
            else:
                runs = damped_runs()
                lrun = _serving(runs.lanczos, k, reorth)
                if lrun is None:
                    lanczos_new = (damped_op(), runs.lanczos, lanczos_key)
            base = cache.get(("slq", *slq_key))
            if base is None:
                slq_new = (undamped, cache, ("slq", *slq_key))
            elif damping == 0.0 or base.shiftable():
                srun, sshift = base, damping
            else:
                runs = runs or damped_runs()
                srun = runs.slq.get(slq_key)
                if srun is None:
                    slq_new = (damped_op(), runs.slq, slq_key)
            if state.dense is not None:
                if state.eigenvalues is None:
                    exact_new = (lambda dense=state.dense: dense, lambda e: setattr(state, "eigenvalues", e))
                else:
                    # A + λI has exactly the eigenvalues λ_i(A) + λ
                    exact = state.eigenvalues + damping

        # Slow parts (SLQ, dense eigh) are left to the background when deferring is allowed and
        # their fastest run so far took longer than DEFER_SECONDS (or none has run yet).
        pending = []
        if defer and slq_new is not None and self._seconds.get(slq_timing, math.inf) > DEFER_SECONDS:
            pending.append("density")
        if defer and exact_new is not None and self._seconds.get(exact_timing, math.inf) > DEFER_SECONDS:
            pending.append("exact")
        if pending:
            self._job = _Job(
                (*slq_new, self._slq_key) if "density" in pending else None,
                exact_new if "exact" in pending else None,
                (slq_timing, exact_timing),
            )
            if "density" in pending:
                slq_new = None
            if "exact" in pending:
                exact_new = None

        # Synchronous part: Lanczos (and the fast slow parts), the dense eigh overlapping on a worker.
        exact_future = None
        if exact_new is not None:
            exact_future = _EXECUTOR.submit(self._timed_eigvalsh, exact_new[0], exact_timing)
        lres = None
        if lanczos_new is not None:
            lres = lanczos(
                lanczos_new[0], lanczos_key[0], key=self._lanczos_key, reorthogonalize=reorth, history=False
            )
        if slq_new is not None:
            run = self._slq_run(slq_new[0], *slq_key, self._slq_key, slq_timing)
            slq_new[1][slq_new[2]] = srun = run
            sshift = damping if slq_new[2][0] == "slq" else 0.0  # a run on A (state.undamped)
        if lres is not None:
            lrun = lanczos_new[1][lanczos_new[2]] = _lanczos_run(lres, lanczos_key[0])
            lshift = damping if lanczos_new[2][0] == "lanczos" else 0.0
            if lshift and not (reorth and lrun.shiftable(damping, k, dtype)):
                # the new undamped run does not serve λ: a run on A + λI (cached per damping)
                lres = lanczos(
                    damped_op(), lanczos_key[0], key=self._lanczos_key, reorthogonalize=reorth, history=False
                )
                lrun = damped_runs().lanczos[lanczos_key] = _lanczos_run(lres, lanczos_key[0])
                lshift = 0.0
        if exact_future is not None:
            e = exact_future.result()
            exact_new[1](e)
            exact = e if preconditioned else e + damping
        if srun is not None and sshift and not srun.shiftable():
            # the new undamped SLQ run does not serve λ (all nodes equal or a probe broke down)
            srun = damped_runs().slq[slq_key] = self._slq_run(
                damped_op(), *slq_key, self._slq_key, slq_timing
            )
            sshift = 0.0

        # Lanczos ran at least k steps; the first k are exactly a k-step run.
        ritz = lrun.ritz(k) + lshift
        taken = ritz.shape[0]
        final = ritz[-1][np.isfinite(ritz[-1])]
        ghosts = viz.ghost_mask(ritz, rtol=_ghost_rtol(dtype))
        if lrun.taken < k:
            message = f"{taken} steps: {lrun.message}"
        else:
            message = f"{taken} steps: completed all requested Lanczos steps"

        # SLQ: probes are drawn in buckets and the first ``num_probes`` are averaged; a shift
        # moves the nodes and the default grid by λ and leaves the smoothed density unchanged
        grid = density = stderr = None
        if srun is not None:
            per_probe = srun.per_probe[:num_probes]
            density = per_probe.mean(axis=0)
            if num_probes > 1:
                stderr = per_probe.std(axis=0, ddof=1) / math.sqrt(num_probes)
            else:
                stderr = np.full_like(density, np.nan)
            grid = srun.grid + sshift

        if exact is not None and ghosts.any():
            ghosts = _drop_true_multiplicity(ritz, ghosts, exact, _ghost_rtol(dtype))

        lmin, lmax = (float(final[0]), float(final[-1])) if final.size else (math.nan, math.nan)
        return SpectrumResult(
            problem=problem,
            label=state.label,
            n=size,
            damping=damping,
            preconditioned=bool(preconditioned),
            reorthogonalize=reorth,
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
            pending=tuple(pending),
        )

    @property
    def pending(self) -> tuple[str, ...]:
        """Parts of the figure still being computed in the background (empty when complete)."""
        r = self.last_result
        return r.pending if r is not None and self.last_error is None else ()

    def _slq_run(self, op, probes: int, steps: int, key, timing_key) -> _SLQRun:
        """SLQ with ``probes`` probes of ``steps`` steps on ``op``, copied to the host (and timed)."""
        start = time.perf_counter()
        sd = spectral_density(op, num_probes=probes, num_steps=steps, key=key)
        nodes = np.asarray(sd.nodes, dtype=np.float64)
        finite = nodes[np.isfinite(nodes)]
        run = _SLQRun(
            grid=np.asarray(sd.grid, dtype=np.float64),
            per_probe=np.asarray(sd.per_probe_density, dtype=np.float64),
            completed=bool(np.all(np.asarray(sd.status) == Status.COMPLETED)),
            spread=finite.size > 0 and float(np.max(finite)) > float(np.min(finite)),
        )
        self._record(timing_key, time.perf_counter() - start)
        return run

    def _timed_eigvalsh(self, build, timing_key) -> np.ndarray:
        start = time.perf_counter()
        e = _eigvalsh(build())
        self._record(timing_key, time.perf_counter() - start)
        return e

    def _record(self, timing_key, seconds: float) -> None:
        # the fastest run: the first one of a shape also compiles
        self._seconds[timing_key] = min(self._seconds.get(timing_key, math.inf), seconds)

    # -- background computation of slow parts ----------------------------------
    def refresh(self):
        """``compute`` then ``_render`` (see :meth:`Explorer.refresh`); slow parts may follow later.

        After a slider move from the browser (a refresh scheduled on the kernel's event loop)
        the parts whose runs are slow -- an SLQ run or a dense ``eigh`` that took longer than
        :data:`DEFER_SECONDS` before, or has not run yet (it compiles) -- are left out of the
        first figure update: it shows the new Ritz values at once, with the pending traces
        dimmed and marked "computing…" (``result.pending`` names them). A background
        thread then computes them (only the newest request: older queued ones are dropped)
        and the kernel's event loop stores them in the caches and refreshes again, now from
        the caches, if no other refresh came in between; otherwise the stale result is only
        kept in the caches. The numbers shown are always those of a complete ``compute``.
        A change made in Python (or a direct ``compute`` call) computes every part at once.
        """
        self._token += 1
        token = self._token
        result = super().refresh()
        job, self._job = self._job, None
        if result is not None and job is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover - deferring happens on the event loop only
                loop = None
            if loop is None:  # pragma: no cover
                self._deferring = False
                return self.refresh()
            self._background.submit(lambda: self._run_job(job, token, loop))
        return result

    def _flush(self) -> None:
        # a refresh scheduled by browser changes: slow parts may be deferred
        self._deferring = True
        try:
            super()._flush()
        finally:
            self._deferring = False

    def _run_job(self, job: _Job, token: int, loop) -> None:
        """Background thread: compute the slow parts of ``job``, hand them to the event loop."""
        out, error = {}, None
        try:
            exact_future = None
            if job.exact is not None:
                # the dense eigh (one BLAS thread) overlaps with the SLQ run
                exact_future = _EXECUTOR.submit(self._timed_eigvalsh, job.exact[0], job.timing_key[1])
            if job.slq is not None:
                op, _, key, prng_key = job.slq
                out["slq"] = self._slq_run(op, *key[-2:], prng_key, job.timing_key[0])
            if exact_future is not None:
                out["exact"] = exact_future.result()
        except Exception as err:  # noqa: BLE001 - reported by the synchronous refresh that follows
            error = err
        try:
            loop.call_soon_threadsafe(self._job_done, job, token, out, error)
        except RuntimeError:  # pragma: no cover - the event loop is closed (kernel shutting down)
            pass

    def _job_done(self, job: _Job, token: int, out: dict, error) -> None:
        """Event loop: store what the background computed; refresh if it is still current."""
        if "slq" in out:
            _, target, key, _ = job.slq
            target[key] = out["slq"]
        if "exact" in out:
            job.exact[1](out["exact"])
        if token != self._token:
            return  # a newer refresh came in between: its own numbers are shown
        if self._hold_depth:
            self._dirty = True
            return
        # every part is cached now (after an error: recomputed here, and the error shown)
        self.refresh()

    def _render(self, result: SpectrumResult) -> None:
        r = result
        density_title = f"SLQ density ({r.num_probes} probes × {r.slq_steps} steps)"
        if "density" in r.pending:
            density_title += " · computing…"
        title = r.label
        if r.preconditioned:
            title += ", Jacobi-preconditioned"
        if r.damping:
            title += f", damping λ = {r.damping:g}"
        fig = self.figure
        empty = np.zeros(0)
        data = {
            **viz.ritz_data(r.ritz_history, exact_eigenvalues=r.exact_eigenvalues, ghosts=r.ghosts),
            **viz.density_data(
                empty if r.grid is None else r.grid,
                empty if r.density is None else r.density,
                None if r.density_stderr is None else r.density_stderr,
                exact_eigenvalues=r.exact_eigenvalues,
            ),
        }
        context = (r.label, r.preconditioned)
        if [t.name for t in fig.data] != list(data):
            # first render: build the figure once; later renders only replace data
            new = viz.spectrum_figure(
                r.ritz_history,
                data["SLQ density"]["x"],
                data["SLQ density"]["y"],
                exact_eigenvalues=r.exact_eigenvalues,
                ghosts=r.ghosts,
                density_title=density_title,
                title=title,
            )
            viz.update_figure(fig, new)
            fig.layout.width = None
            self._opacity = {t.name: 1.0 if t.opacity is None else float(t.opacity) for t in fig.data}
            self._shown_context = None
        # pending parts keep their last numbers, dimmed, if they belong to the same problem
        keep = context == self._shown_context
        stale = set()
        if "density" in r.pending:
            stale.update(_DENSITY_TRACES)
        if "exact" in r.pending:
            stale.update(_EXACT_TRACES)
        for trace, (name, props) in zip(fig.data, data.items(), strict=True):
            opacity = self._opacity.get(name, 1.0)
            if name in stale:
                opacity *= PENDING_OPACITY
                if keep:
                    if name == "exact eigenvalues":  # the rug stays right of the last step
                        trace.x = np.full(len(trace.y if trace.y is not None else ()), r.num_steps + 1.5)
                    props = {}
            trace.update(props)
            if trace.opacity != opacity:
                trace.opacity = opacity
        fig.layout.xaxis.range = [0, r.num_steps + 2.5]
        fig.layout.annotations[1].text = density_title
        fig.layout.title.text = title
        self._shown_context = context
        self.readout.value = _readout(r)


def _lanczos_run(lres, steps: int) -> _LanczosRun:
    """Host copy of a :class:`~curvlab._lanczos.LanczosResult` of ``steps`` steps (``history=False``)."""
    taken = int(lres.num_steps)
    return _LanczosRun(
        steps=int(steps),
        alpha=np.asarray(lres.alpha, dtype=np.float64)[:taken],
        beta=np.asarray(lres.beta, dtype=np.float64)[:taken],
        taken=taken,
        completed=int(lres.status) == Status.COMPLETED,
        anorm=float(lres.anorm),
        message=lres.message,
    )


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
    elif "exact" in r.pending:
        rows.append(("exact λ<sub>min</sub>, λ<sub>max</sub>", "computing…"))
    if r.num_copies_max > 1:
        extra = r.num_copies_max - 1
        rows.append(("ghosts", f"{extra} extra cop{'y' if extra == 1 else 'ies'} of λ<sub>max</sub>"))
    rows.append(("Lanczos", r.message))
    body = "".join(f"<tr><td>{k}</td><td><b>{v}</b></td></tr>" for k, v in rows)
    return f"<table class='curvlab-readout'>{body}</table>"

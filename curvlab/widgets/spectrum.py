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
  kept per damping value (the last :data:`DAMPED_CACHE_SIZE`), so moving back is free.
* **slow parts**: after a move in the browser, an SLQ run or a dense ``eigh`` that is slow
  (a large operator, a first run that compiles) is computed in the background: the figure
  first shows the new Ritz values with the pending traces dimmed and marked "computing…",
  then the complete figure (see :meth:`SpectrumExplorer.refresh`).

All numbers come from :class:`curvlab.SpectrumCache` (which holds the prefix and shift
algebra and the runs) and :func:`curvlab.ghost_mask`; the explorer keeps controls, the
choice of run lengths (buckets), the background scheduling and the rendering.
:meth:`SpectrumExplorer.compute` is a plain function of the control values.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import NamedTuple

import ipywidgets as widgets
import jax
import numpy as np
import plotly.graph_objects as go

from curvlab import problems, viz
from curvlab._curvature import hessian_operator
from curvlab._operators import LinearOperator, as_operator
from curvlab._spectrum_cache import SpectrumCache, ghost_mask
from curvlab.widgets._base import Explorer
from curvlab.widgets._worker import LRU, BackgroundWorker, alongside

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


class _Problem(NamedTuple):
    """One problem's operator behind its :class:`~curvlab.SpectrumCache`, and its title."""

    cache: SpectrumCache
    label: str


class _Job(NamedTuple):
    """The slow parts one refresh left pending: keyword arguments of the cache calls (or ``None``)."""

    cache: SpectrumCache
    density: dict | None
    exact: dict | None


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
        operator's dtype (:func:`curvlab.ghost_mask`): ghost copies.
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
        self._quadratics: LRU[_Problem] = LRU(8)
        self._fixed: dict[str, _Problem] = {}
        self._lanczos_key = jax.random.key(0)
        self._slq_key = jax.random.key(1)
        # background computation of slow parts (see refresh)
        self._deferring = False  # set while a refresh scheduled by a browser change runs
        self._job: _Job | None = None  # slow parts the last compute left pending
        self._token = 0  # refresh counter: a background result is shown only if no refresh followed
        self._background = BackgroundWorker("curvlab-spectrum")
        self.watch_worker(self._background, "computing the spectral density\u2026")
        self._seconds: dict[tuple, float] = {}  # fastest run seen per kind of slow part
        self._shown_context = None  # (problem label, preconditioned) of the figure's traces
        self._opacity: dict[str, float] = {}  # trace name -> opacity when not pending
        # the MLP operator is built on first selection (loading the digits costs seconds);
        # dense references on first use

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

    def operator(self, problem: str, kappa: float = 1e3, n: int = 100) -> LinearOperator:
        """The operator :math:`A` a problem shows (``kappa`` and ``n`` apply to the quadratics).

        The quadratics are ``problems.quadratic(eigenvalues=..., key=jax.random.key(n))``; the
        explorer's Lanczos runs start from ``jax.random.key(0)`` and its SLQ probes come from
        ``jax.random.key(1)`` (see :class:`curvlab.SpectrumCache`).
        """
        return self._problem(problem, kappa, n).cache.op

    def _problem(self, problem: str, kappa, n) -> _Problem:
        """The problem's operator and cache, built on first use (the last 8 quadratics are kept)."""
        if problem in QUADRATICS:
            kappa, n = float(kappa), int(n)
            return self._quadratics.get((problem, kappa, n), lambda: self._quadratic(problem, kappa, n))
        if problem not in ("mlp", "custom"):
            raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {problem!r}")
        if problem == "custom" and self._custom is None:
            raise ValueError("problem 'custom' needs SpectrumExplorer(operator=...)")
        if problem not in self._fixed:
            if problem == "mlp":
                p = problems.mlp(hidden=self._mlp_hidden, num_examples=self._mlp_examples)
                op = hessian_operator(p.loss, p.x0, p.batch)
                widths = "-".join(map(str, (64, *self._mlp_hidden, 10)))
                label = f"MLP {widths} Hessian at init (n = {op.size})"
            else:
                op, label = self._custom, f"your operator (n = {self._custom.size})"
            self._fixed[problem] = self._new_problem(op, label)
        return self._fixed[problem]

    def _quadratic(self, problem: str, kappa: float, n: int) -> _Problem:
        lam = problems.strakos(n, kappa) if problem == "strakos" else np.geomspace(1.0, kappa, n)
        p = problems.quadratic(eigenvalues=lam, key=jax.random.key(n))
        return self._new_problem(as_operator(p.matrix), f"{PROBLEMS[problem]}, κ = {kappa:.3g}, n = {n}")

    def _new_problem(self, op: LinearOperator, label: str) -> _Problem:
        cache = SpectrumCache(
            op,
            key=self._lanczos_key,
            slq_key=self._slq_key,
            maxsize=DAMPED_CACHE_SIZE,
            dense_max_n=EXACT_MAX_N,
        )
        return _Problem(cache, label)

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

        A plain function of the control values: the numbers are those of
        :class:`curvlab.SpectrumCache` calls (which reuse runs across moves). Called directly it
        computes every part (``result.pending == ()``); only a refresh scheduled by a browser
        change may leave slow parts pending (see :meth:`refresh`).
        """
        damping, k, num_probes = _check_controls(problem, kappa, n, num_steps, num_probes, damping)
        self._job = None
        prob = self._problem(problem, kappa, n)
        cache, pre = prob.cache, bool(preconditioned)
        slq_steps = min(_bucket(k, SLQ_STEP_BUCKETS), SLQ_STEP_BUCKETS[-1], cache.op.size)
        density = dict(
            num_probes=_bucket(num_probes, PROBE_BUCKETS),
            num_steps=slq_steps,
            damping=damping,
            preconditioned=pre,
        )
        exact = dict(damping=damping, preconditioned=pre) if cache.op.size <= EXACT_MAX_N else None
        pending = self._slow_parts(cache, density, exact)
        if pending:
            self._job = _Job(
                cache, density if "density" in pending else None, exact if "exact" in pending else None
            )
        # the dense eigh (one BLAS thread) overlaps with the Krylov runs
        exact_future = None
        if exact is not None and "exact" not in pending:
            exact_future = alongside(self._timed, "exact", cache, cache.eigenvalues, exact)
        lres = cache.lanczos(
            k,
            damping=damping,
            preconditioned=pre,
            reorthogonalize=reorthogonalize,
            run_steps=_bucket(k, LANCZOS_BUCKETS),
        )
        sd = None if "density" in pending else self._timed("slq", cache, cache.spectral_density, density)
        return _spectrum_result(
            problem,
            prob.label,
            lres,
            sd,
            None if exact_future is None else exact_future.result(),
            dtype=cache.op.dtype,
            n=cache.op.size,
            slq_steps=slq_steps,
            damping=damping,
            preconditioned=pre,
            reorthogonalize=bool(reorthogonalize),
            num_steps=k,
            num_probes=num_probes,
            pending=pending,
        )

    def _slow_parts(self, cache: SpectrumCache, density: dict, exact: dict | None) -> tuple[str, ...]:
        """The parts to leave to the background: only while a browser move is refreshed, and only
        parts not in the cache whose fastest run so far took longer than :data:`DEFER_SECONDS`."""
        if not (self._deferring and self.defer_slow_parts):
            return ()
        pending = []
        if cache.spectral_density(**density, compute=False) is None and self._slow("slq", cache, density):
            pending.append("density")
        if (
            exact is not None
            and cache.eigenvalues(**exact, compute=False) is None
            and self._slow("exact", cache)
        ):
            pending.append("exact")
        return tuple(pending)

    @staticmethod
    def _timing_key(kind: str, cache: SpectrumCache, request: dict | None) -> tuple:
        if kind == "slq":
            return ("slq", id(cache), request["num_probes"], request["num_steps"])
        return ("exact", id(cache))

    def _slow(self, kind: str, cache: SpectrumCache, request: dict | None = None) -> bool:
        return self._seconds.get(self._timing_key(kind, cache, request), math.inf) > DEFER_SECONDS

    def _timed(self, kind: str, cache: SpectrumCache, call, request: dict):
        """``call(**request)``, timed when it was not already in the cache (the fastest run is kept)."""
        cached = call(**request, compute=False)
        if cached is not None:
            return cached
        start = time.perf_counter()
        out = call(**request)
        key = self._timing_key(kind, cache, request)
        self._seconds[key] = min(self._seconds.get(key, math.inf), time.perf_counter() - start)
        return out

    @property
    def pending(self) -> tuple[str, ...]:
        """Parts of the figure still being computed in the background (empty when complete)."""
        r = self.last_result
        return r.pending if r is not None and self.last_error is None else ()

    # -- background computation of slow parts ----------------------------------
    def refresh(self):
        """``compute`` then ``_render`` (see :meth:`Explorer.refresh`); slow parts may follow later.

        After a slider move from the browser (a refresh scheduled on the kernel's event loop)
        the parts whose runs are slow -- an SLQ run or a dense ``eigh`` that took longer than
        :data:`DEFER_SECONDS` before, or has not run yet (it compiles) -- are left out of the
        first figure update: it shows the new Ritz values at once, with the pending traces
        dimmed and marked "computing…" (``result.pending`` names them). The explorer's
        :class:`~curvlab.widgets._worker.BackgroundWorker` then computes them into the
        :class:`~curvlab.SpectrumCache` (only the newest request: older queued ones are
        dropped) and the kernel's event loop refreshes again, now from the cache, if no other
        refresh came in between; a stale result is only kept in the cache. The numbers shown
        are always those of a complete ``compute``. A change made in Python (or a direct
        ``compute`` call) computes every part at once.
        """
        self._background.invalidate()
        result = super().refresh()
        job, self._job = self._job, None
        if result is not None and job is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover - deferring happens on the event loop only
                self._deferring = False
                return self.refresh()
            self._background.submit(lambda: self._run_job(job), self._job_done, loop)
        return result

    def _flush(self) -> None:
        # a refresh scheduled by browser changes: slow parts may be deferred
        self._deferring = True
        try:
            super()._flush()
        finally:
            self._deferring = False

    def _run_job(self, job: _Job) -> None:
        """Background thread: compute the slow parts of ``job`` into the cache."""
        exact_future = None
        if job.exact is not None:
            exact_future = alongside(self._timed, "exact", job.cache, job.cache.eigenvalues, job.exact)
        if job.density is not None:
            self._timed("slq", job.cache, job.cache.spectral_density, job.density)
        if exact_future is not None:
            exact_future.result()

    def _job_done(self, _, error) -> None:
        """Event loop, still current: refresh from the cache (after an error: recomputed and shown)."""
        if self._hold_depth:
            self._dirty = True
            return
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


def _check_controls(problem, kappa, n, num_steps, num_probes, damping) -> tuple[float, int, int]:
    """Check the control values before any work; returns ``(damping, num_steps, num_probes)``."""
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {problem!r}")
    damping = float(damping)
    if not math.isfinite(damping):
        raise ValueError(f"damping must be finite, got {damping}")
    if problem in QUADRATICS:
        kappa = float(kappa)
        if not (math.isfinite(kappa) and kappa >= 1):
            raise ValueError(f"kappa must be a finite number >= 1, got {kappa}")
        if int(n) < 2:
            raise ValueError(f"n must be >= 2, got {n}")
    num_steps, num_probes = int(num_steps), int(num_probes)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    return damping, num_steps, num_probes


def _spectrum_result(problem, label, lres, sd, exact, *, dtype, num_steps, num_probes, pending, **controls):
    """The :class:`SpectrumResult` of a Lanczos run, an SLQ density (or ``None``) and the exact spectrum.

    SLQ draws probes in buckets: the density of the first ``num_probes`` probes is their mean.
    """
    m = min(num_steps, int(lres.num_steps))
    ritz = np.asarray(lres.ritz_history, dtype=np.float64)[:m, :m]
    final = ritz[-1][np.isfinite(ritz[-1])]
    ghosts = ghost_mask(ritz, dtype=dtype, exact_eigenvalues=exact)
    done = "completed all requested Lanczos steps" if m == num_steps else lres.message
    grid = density = stderr = None
    if sd is not None:
        per_probe = np.asarray(sd.per_probe_density, dtype=np.float64)[:num_probes]
        density = per_probe.mean(axis=0)
        stderr = np.full_like(density, np.nan)
        if num_probes > 1:
            stderr = per_probe.std(axis=0, ddof=1) / math.sqrt(num_probes)
        grid = np.asarray(sd.grid, dtype=np.float64)
    lmin, lmax = (float(final[0]), float(final[-1])) if final.size else (math.nan, math.nan)
    return SpectrumResult(
        problem=problem,
        label=label,
        num_steps=m,
        ritz_history=ritz,
        grid=grid,
        density=density,
        density_stderr=stderr,
        num_probes=num_probes,
        exact_eigenvalues=exact,
        lambda_min=lmin,
        lambda_max=lmax,
        kappa=lmax / lmin if lmin > 0 else float("nan"),
        ghosts=ghosts,
        num_copies_max=_copies_of_max(ghosts[-1], final.size),
        message=f"{m} steps: {done}",
        pending=pending,
        **controls,
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

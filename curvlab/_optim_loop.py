"""The one outer loop of curvlab's optimizers, their result and what the callback sees.

:func:`newton_cg`, :func:`trust_region_newton` and :func:`hessian_free` differ only in
what one iteration does. Everything around it lives here, written once: the Python
loop over iterations, the stopping tests (gradient norm :math:`\\|g_k\\| \\le` ``gtol``,
non-finite values, the iteration cap, a method's own reason such as a failed line
search, the callback, the end of the data), the per-iteration ``history``, the clock
(which excludes time spent in the callback), the counts of function, gradient and
curvature evaluations, and ``throw=True``.

An optimizer supplies ``init()`` and ``step(iterate)``, each returning an
:class:`Iterate` (the point, the method's carry, this iteration's history entry and,
optionally, a method-specific stop status). Each iteration is one call of a jitted
function compiled once per problem and shapes, so the loop can run in Python and a
notebook or widget can watch every iteration through ``callback``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from curvlab import _validation
from curvlab._status import Status, check_throw, converged_of, raise_if_failed
from curvlab._validation import check_real_floating

PyTree = Any

__all__ = ["HISTORY_KEYS", "IterationInfo", "Iterate", "OptimizeResult", "run_optimizer"]

#: Keys present in every optimizer's ``history`` (method-specific keys are added to these).
HISTORY_KEYS = (
    "loss",
    "grad_norm",
    "damping",
    "rho",
    "cg_iterations",
    "cg_residual",
    "cg_status",
    "step_length",
    "step_norm",
    "num_hvps",
    "num_fun_evals",
    "num_grad_evals",
    "time",
)
#: Per-iteration increments an :class:`Iterate` entry reports, and the cumulative key each feeds.
_COUNTS = {"hvps": "num_hvps", "fun_evals": "num_fun_evals", "grad_evals": "num_grad_evals"}
_INT_KEYS = frozenset(
    {"cg_iterations", "cg_status", "num_hvps", "num_fun_evals", "num_grad_evals", "backtrack_iteration"}
)


class OptimizeResult(NamedTuple):
    """Result of :func:`~curvlab.newton_cg`, :func:`~curvlab.trust_region_newton` and
    :func:`~curvlab.hessian_free`.

    Attributes
    ----------
    x : pytree
        The final point, shaped like the starting point (with status ``NONFINITE``: the last
        point with finite values).
    fun : float
        Objective at ``x`` (for :func:`~curvlab.hessian_free`: on the last iteration's batch).
    grad_norm : float
        Last recorded gradient norm (``history["grad_norm"][-1]``).
    history : dict of numpy arrays
        Entry 0 is the starting point, entry ``k`` iteration ``k``; keys :data:`HISTORY_KEYS`
        (NaN, or 0 for integer keys, where a field does not apply, e.g. ``rho`` for Newton-CG)
        plus method-specific ones:

        - ``loss``: objective after the iteration; ``grad_norm``: see each optimizer;
        - ``damping``: :math:`\\lambda` used by the iteration (HF); ``rho``: reduction ratio;
        - ``cg_iterations``, ``cg_residual`` (:math:`\\|r\\|/\\|b\\|` at the end of the solve),
          ``cg_status`` (a :class:`~curvlab.Status` value);
        - ``step_length``: line-search multiplier :math:`t` (0 for a rejected step);
          ``step_norm``: :math:`\\|x_{k} - x_{k-1}\\|`;
        - ``num_hvps``, ``num_fun_evals``, ``num_grad_evals``: cumulative curvature-vector
          products, objective evaluations and gradient evaluations;
        - ``time``: seconds since the start, excluding the time spent in ``callback``.
    status : Status
        ``CONVERGED``, ``MAX_ITERATIONS``, ``CALLBACK``, ``LINE_SEARCH_FAILED``, ``NONFINITE``
        or ``DATA_EXHAUSTED``.
    num_iterations : int
    num_hvps, num_fun_evals, num_grad_evals : int
        Totals (the last entries of the cumulative history columns).
    """

    x: PyTree
    fun: float
    grad_norm: float
    history: dict
    status: Status
    num_iterations: int
    num_hvps: int
    num_fun_evals: int
    num_grad_evals: int

    @property
    def message(self) -> str:
        """Why the optimizer stopped, in words, with the number of iterations."""
        return f"{self.status.message} (after {self.num_iterations} iterations)"

    @property
    def converged(self) -> bool:
        """Whether the result can be used (``CONVERGED`` or stopped by the callback)."""
        return bool(converged_of(self.status))


class IterationInfo(NamedTuple):
    """What ``callback`` receives after every iteration: the history entry plus the point."""

    iteration: int
    x: PyTree
    loss: float
    grad_norm: float
    damping: float
    rho: float
    cg_iterations: int
    cg_residual: float
    cg_status: int
    step_length: float
    step_norm: float
    num_hvps: int
    num_fun_evals: int
    num_grad_evals: int
    time: float


class Iterate(NamedTuple):
    """One iteration's outcome, as an optimizer's ``init``/``step`` hands it to the loop.

    ``entry`` maps history keys to this iteration's values (``loss`` and ``grad_norm`` at
    least) and the increments ``hvps``, ``fun_evals``, ``grad_evals`` spent by it; ``status``
    is a method-specific reason to stop (e.g. ``LINE_SEARCH_FAILED``) or ``None``.
    """

    x: PyTree
    carry: Any
    entry: dict
    status: Status | None = None


class _Recorder:
    """Per-iteration history as Python lists, turned into numpy arrays at the end."""

    def __init__(self, extra=()):
        self.data = {k: [] for k in HISTORY_KEYS + tuple(extra)}
        self.totals = dict.fromkeys(_COUNTS.values(), 0)

    def append(self, entry: dict, now: float) -> None:
        values = dict(entry)
        for inc, total in _COUNTS.items():
            self.totals[total] += int(values.pop(inc, 0))
        values.update(self.totals, time=now)
        unknown = set(values) - set(self.data)
        if unknown:  # pragma: no cover - programming error
            raise KeyError(f"unknown history keys {sorted(unknown)}")
        for k, lst in self.data.items():
            lst.append(values.get(k, 0 if k in _INT_KEYS else math.nan))

    def info(self, iteration: int, x) -> IterationInfo:
        last = {k: v[-1] for k, v in self.data.items()}
        return IterationInfo(iteration=iteration, x=x, **{f: last[f] for f in IterationInfo._fields[2:]})

    def result(self, x, status: Status, num_iterations: int) -> OptimizeResult:
        hist = {
            k: np.asarray(v, dtype=np.int64 if k in _INT_KEYS else np.float64) for k, v in self.data.items()
        }
        return OptimizeResult(
            x=x,
            fun=float(hist["loss"][-1]),
            grad_norm=float(hist["grad_norm"][-1]),
            history=hist,
            status=status,
            num_iterations=num_iterations,
            **{k: int(hist[k][-1]) for k in _COUNTS.values()},
        )


class _Clock:
    """Elapsed time excluding the time spent in callbacks."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.paused = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def run_callback(self, callback, info) -> bool:
        if callback is None:
            return False
        t = time.perf_counter()
        try:
            return bool(callback(info))
        finally:
            self.paused += time.perf_counter() - t


def _all_finite(x) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(x))


def _stop_status(it: Iterate, gtol: float) -> Status | None:
    loss, gnorm = float(it.entry["loss"]), float(it.entry["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        return Status.NONFINITE
    if gnorm <= gtol:
        return Status.CONVERGED
    return it.status


def run_optimizer(
    solver: str,
    init: Callable[[], Iterate],
    step: Callable[[Iterate], Iterate],
    *,
    maxiter: int,
    gtol: float,
    callback: Callable[[IterationInfo], bool | None] | None,
    throw: bool,
    extra_keys: tuple[str, ...] = (),
) -> OptimizeResult:
    """Run ``step`` from ``init()`` until a stopping test fires; the loop every optimizer shares.

    After the start and after every iteration, in this order: non-finite loss or gradient norm
    gives ``NONFINITE`` (the last point with finite values is returned); ``grad_norm <= gtol``
    ``CONVERGED``; the step's own status (if any); then ``callback(info)`` returning True gives
    ``CALLBACK``. ``step`` raising ``StopIteration`` (no more batches) gives ``DATA_EXHAUSTED``;
    reaching ``maxiter`` iterations ``MAX_ITERATIONS``. With ``throw=True`` an unsuccessful
    status raises :class:`~curvlab.SolverError`.
    """
    clock = _Clock()
    rec = _Recorder(extra_keys)
    it = init()
    rec.append(it.entry, clock.now())
    status = _stop_status(it, gtol)
    x_out, k = it.x, 0
    while status is None and k < maxiter:
        try:
            it_new = step(it)
        except StopIteration:
            status = Status.DATA_EXHAUSTED
            break
        k += 1
        rec.append(it_new.entry, clock.now())
        status = _stop_status(it_new, gtol)
        if status != Status.NONFINITE or _all_finite(it_new.x):
            x_out = it_new.x
        it = it_new
        if clock.run_callback(callback, rec.info(k, it.x)) and status is None:
            status = Status.CALLBACK
    if status is None:
        status = Status.MAX_ITERATIONS
    raise_if_failed(solver, status, throw)
    return rec.result(x_out, status, k)


# ---------------------------------------------------------------------------
# argument checks shared by the optimizers (all before any work)
# ---------------------------------------------------------------------------


def check_not_traced(solver: str, **values) -> None:
    """Refuse traced arguments with one clear message (the loop runs in Python, between jitted steps)."""
    _validation.check_not_traced(
        solver,
        "its outer loop runs in Python so that callback sees every iteration, and each iteration is "
        "already one compiled call",
        **values,
    )


def check_nonneg_float(name: str, value, *, allow_inf: bool = False) -> float:
    """``value`` as a float, raising unless it is a real number >= 0 (finite unless ``allow_inf``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return v


def check_choice(name: str, value, choices):
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """Raise ``TypeError`` unless ``value`` is a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def check_callback(callback) -> None:
    """Raise ``TypeError`` unless ``callback`` is None or callable."""
    if callback is not None and not callable(callback):
        raise TypeError(
            f"callback must be callable(IterationInfo) -> bool | None, got {type(callback).__name__}"
        )


def check_point(name: str, x) -> None:
    """Raise unless ``x`` is a non-empty pytree of finite, real floating-point arrays."""
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError(f"{name} has no array leaves")
    check_real_floating(name, x)
    if not bool(jnp.all(jnp.isfinite(ravel_pytree(x)[0]))):
        raise ValueError(f"{name} contains non-finite values (NaN or infinity)")


def check_common(solver: str, *, gtol, maxiter, callback, throw) -> tuple[float, int, bool]:
    """Validate the options every optimizer has: ``gtol``, ``maxiter``, ``callback``, ``throw``."""
    from curvlab._validation import check_positive_int

    check_not_traced(solver, gtol=gtol, maxiter=maxiter)
    gtol = check_nonneg_float("gtol", gtol)
    maxiter = check_positive_int("maxiter", maxiter, minimum=0)
    check_callback(callback)
    return gtol, maxiter, check_throw(solver, throw)


# ---------------------------------------------------------------------------
# pieces of an iteration shared by the optimizers (traced, inside their jitted steps)
# ---------------------------------------------------------------------------


def armijo(phi, f0, slope, f1, *, c1, shrink, max_trials):
    """Backtracking :math:`t \\leftarrow \\text{shrink}\\cdot t` from ``t = 1`` until
    :math:`\\phi(t) \\le f_0 + c_1 t \\min(\\text{slope}, 0)` (and finite); ``f1 = phi(1)``.

    Returns ``(t, phi(t), trials, success)`` where ``trials`` counts the evaluations of
    :math:`\\phi` including ``f1``; a whole ``lax.while_loop``.
    """
    dtype = jnp.result_type(f0)
    slope = jnp.minimum(slope, 0.0)

    def ok(t, ft):
        return jnp.isfinite(ft) & (ft <= f0 + c1 * t * slope)

    def cond(s):
        t, ft, k = s
        return ~ok(t, ft) & (k < max_trials)

    def body(s):
        t, _, k = s
        t = t * shrink
        return t, phi(t), k + 1

    t, ft, k = lax.while_loop(cond, body, (jnp.ones((), dtype), jnp.asarray(f1, dtype), jnp.asarray(1)))
    return t, ft, k, ok(t, ft)


def expand(phi, f0, slope, t, ft, enabled, *, c1, max_doublings=30):
    """Doubling phase after an accepted ``t = 1``: ``t <- 2t`` while that lowers ``phi`` and keeps
    the Armijo condition (for directions of negative curvature, whose scale CG cannot tell).

    Returns ``(t, phi(t), evaluations)``.
    """
    slope = jnp.minimum(slope, 0.0)

    def cond(s):
        return s[3] & (s[2] < max_doublings)

    def body(s):
        t, ft, k, _ = s
        t2 = 2.0 * t
        f2 = phi(t2)
        better = jnp.isfinite(f2) & (f2 < ft) & (f2 <= f0 + c1 * t2 * slope)
        return jnp.where(better, t2, t), jnp.where(better, f2, ft), k + 1, better

    t, ft, k, _ = lax.while_loop(cond, body, (t, ft, jnp.asarray(0), enabled))
    return t, ft, k


def rel_residual(res, bnorm):
    """CG's final residual norm relative to ``bnorm`` (0 safe)."""
    return res.residual_norms[res.num_iterations] / jnp.where(bnorm > 0, bnorm, 1.0)

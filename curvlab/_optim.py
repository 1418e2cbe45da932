"""Second-order optimizers built on Hessian-vector products.

Three methods, all matrix-free (the curvature is only ever applied to vectors):

* :func:`newton_cg` -- line-search truncated Newton (Nocedal & Wright, Alg. 7.1):
  the Newton system :math:`\\nabla^2 f(x_k)\\, p = -\\nabla f(x_k)` is solved by CG
  only to a relative residual :math:`\\eta_k` (the forcing term), directions of
  negative curvature are handled, and an Armijo backtracking line search picks
  the step.
* :func:`trust_region_newton` -- trust-region Newton with the Steihaug-Toint
  truncated CG (:func:`curvlab._cg.steihaug_cg`) for the subproblem
  :math:`\\min_{\\|p\\| \\le \\Delta} g^\\top p + \\tfrac12 p^\\top H p`.
* :func:`hessian_free` -- Martens' (2010) Hessian-free optimization for neural
  networks: Gauss-Newton (or Hessian, or empirical Fisher) curvature with
  Tikhonov damping :math:`B + \\lambda I` adapted by the Levenberg-Marquardt
  rule (:func:`update_damping`), CG warm-started from the previous direction,
  Martens' relative-progress CG stopping rule, CG backtracking, an optional
  diagonal preconditioner, mini-batching, structural damping for recurrent
  networks (Martens & Sutskever 2011) and an Armijo line search.

The outer loop runs in Python so that a notebook or widget can watch every
iteration through ``callback``; each iteration is **one** call of a jitted
function (gradient, the whole CG solve, backtracking, line search), compiled
once per problem and shapes and reused by every iteration and by later calls
with the same functions. Every optimizer returns an :class:`OptimizeResult`
whose ``history`` holds one entry for the starting point and one per iteration.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from curvlab._cg import CGStatus, cg, steihaug_cg
from curvlab._operators import LinearOperator, fisher_operator, ggn_operator, hessian_operator
from curvlab._validation import check_positive_int, check_scalar_output
from curvlab.preconditioners import empirical_fisher_diagonal, martens

PyTree = Any

__all__ = [
    "OptimizeStatus",
    "OptimizeResult",
    "IterationInfo",
    "newton_cg",
    "trust_region_newton",
    "hessian_free",
    "update_damping",
    "HISTORY_KEYS",
]

#: cg() spends one matvec on the initial residual b - A x0 when warm-started (none for x0=None).
_CG_WARM_START_MATVECS = 1

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
    "time",
)
_INT_KEYS = ("cg_iterations", "cg_status", "num_hvps", "backtrack_iteration")


class OptimizeStatus(enum.IntEnum):
    """Why an optimizer stopped."""

    CONVERGED = 0
    MAX_ITERATIONS = 1
    CALLBACK = 2
    LINE_SEARCH_FAILED = 3
    NONFINITE = 4
    DATA_EXHAUSTED = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    OptimizeStatus.CONVERGED: "converged: the gradient norm fell below tol",
    OptimizeStatus.MAX_ITERATIONS: "stopped at maxiter",
    OptimizeStatus.CALLBACK: "stopped by the callback",
    OptimizeStatus.LINE_SEARCH_FAILED: (
        "stopped: the line search found no step with sufficient decrease (the gradient is probably "
        "at the level of rounding errors; tol may be too small for the dtype)"
    ),
    OptimizeStatus.NONFINITE: "stopped: the objective or its gradient became NaN or infinite",
    OptimizeStatus.DATA_EXHAUSTED: "stopped: the iterator of batches is exhausted",
}


class OptimizeResult(NamedTuple):
    """Result of :func:`newton_cg`, :func:`trust_region_newton` and :func:`hessian_free`.

    Attributes
    ----------
    x : pytree
        The final point, shaped like the starting point.
    fun : float
        Objective at ``x`` (for :func:`hessian_free`: on the last iteration's batch).
    grad_norm : float
        Last recorded gradient norm (``history["grad_norm"][-1]``).
    history : dict of numpy arrays
        Entry 0 is the starting point, entry ``k`` iteration ``k``; keys :data:`HISTORY_KEYS`
        (NaN where a field does not apply, e.g. ``rho`` for Newton-CG) plus method-specific ones:

        - ``loss``: objective after the iteration; ``grad_norm``: see each optimizer;
        - ``damping``: :math:`\\lambda` used by the iteration (HF); ``rho``: reduction ratio;
        - ``cg_iterations``, ``cg_residual`` (:math:`\\|r\\|/\\|b\\|` at the end of the solve),
          ``cg_status`` (a :class:`~curvlab._cg.CGStatus` value);
        - ``step_length``: line-search multiplier :math:`t` (HF: 0 for a rejected step);
          ``step_norm``: :math:`\\|x_{k} - x_{k-1}\\|`;
        - ``num_hvps``: cumulative curvature-vector products; ``time``: seconds since the start,
          excluding the time spent in ``callback``.
    status : OptimizeStatus
    message : str
    num_iterations : int
    num_hvps : int
        Total curvature-vector products (Hessian, Gauss-Newton, Fisher or damping-operator matvecs).
    """

    x: PyTree
    fun: float
    grad_norm: float
    history: dict
    status: OptimizeStatus
    message: str
    num_iterations: int
    num_hvps: int


class IterationInfo(NamedTuple):
    """What ``callback`` receives after every iteration (the history entry plus the point)."""

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
    num_hvps: int
    time: float


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------


class _Recorder:
    """Per-iteration history as Python lists, turned into numpy arrays at the end."""

    def __init__(self, extra=()):
        self.data = {k: [] for k in HISTORY_KEYS + tuple(extra)}

    def append(self, **values):
        unknown = set(values) - set(self.data)
        if unknown:  # pragma: no cover - programming error
            raise KeyError(unknown)
        for k, lst in self.data.items():
            lst.append(values.get(k, 0 if k in _INT_KEYS else math.nan))

    def last(self, key):
        return self.data[key][-1]

    def arrays(self):
        return {
            k: np.asarray(v, dtype=np.int64 if k in _INT_KEYS else np.float64) for k, v in self.data.items()
        }


class _Clock:
    """Elapsed time excluding the time spent in callbacks."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.paused = 0.0

    def now(self):
        return time.perf_counter() - self.t0 - self.paused

    def run_callback(self, callback, info):
        if callback is None:
            return False
        t = time.perf_counter()
        try:
            return bool(callback(info))
        finally:
            self.paused += time.perf_counter() - t


def _info(rec: _Recorder, iteration: int, x) -> IterationInfo:
    d = rec.data
    return IterationInfo(
        iteration=iteration,
        x=x,
        loss=d["loss"][-1],
        grad_norm=d["grad_norm"][-1],
        damping=d["damping"][-1],
        rho=d["rho"][-1],
        cg_iterations=d["cg_iterations"][-1],
        cg_residual=d["cg_residual"][-1],
        cg_status=d["cg_status"][-1],
        step_length=d["step_length"][-1],
        num_hvps=d["num_hvps"][-1],
        time=d["time"][-1],
    )


def _result(x, rec: _Recorder, status: OptimizeStatus, num_iterations: int) -> OptimizeResult:
    hist = rec.arrays()
    return OptimizeResult(
        x=x,
        fun=float(hist["loss"][-1]),
        grad_norm=float(hist["grad_norm"][-1]),
        history=hist,
        status=status,
        message=f"{status.message} (after {num_iterations} iterations)",
        num_iterations=num_iterations,
        num_hvps=int(hist["num_hvps"][-1]),
    )


def _check_nonneg_float(name, value, *, allow_inf=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return v


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_callback(callback):
    if callback is not None and not callable(callback):
        raise TypeError(
            f"callback must be callable(IterationInfo) -> bool | None, got {type(callback).__name__}"
        )


def _check_point(name, x):
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError(f"{name} has no array leaves")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"{name} must have floating-point leaves, got dtype {jnp.result_type(leaf)}")
    flat = ravel_pytree(x)[0]
    if not bool(jnp.all(jnp.isfinite(flat))):
        raise ValueError(f"{name} contains non-finite values (NaN or infinity)")


def _armijo(phi, f0, slope, f1, *, c1, shrink, max_trials):
    """Backtracking :math:`t \\leftarrow \\text{shrink}\\cdot t` from ``t = 1`` until
    :math:`\\phi(t) \\le f_0 + c_1 t \\min(\\text{slope}, 0)` (and finite); ``f1 = phi(1)``.

    Returns ``(t, phi(t), trials, success)``; a whole ``lax.while_loop``.
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


def _expand(phi, f0, slope, t, ft, enabled, *, c1, max_doublings=30):
    """Doubling phase after an accepted ``t = 1``: ``t <- 2t`` while that lowers ``phi`` and keeps
    the Armijo condition (for directions of negative curvature, whose scale CG cannot tell)."""
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


def _rel_residual(res, bnorm):
    k = res.num_iterations
    return res.residual_norms[k] / jnp.where(bnorm > 0, bnorm, 1.0)


def _flat_fn(f, unravel):
    """``f(x, *args)`` on a flat vector."""

    def ff(y, *args):
        return f(unravel(y), *args)

    return ff


@functools.partial(jax.jit, static_argnames=("f",))
def _value_and_grad(x, args, *, f):
    flat, unravel = ravel_pytree(x)
    val, g = jax.value_and_grad(_flat_fn(f, unravel))(flat, *args)
    return val, g


def _forcing_term(kind, constant, gnorm, gnorm_prev, eta_prev, tol):
    """Inner CG relative tolerance :math:`\\eta_k` (CG stops at :math:`\\|r\\| \\le \\eta_k \\|g_k\\|`).

    ``"eisenstat_walker"``: choice 2 of Eisenstat & Walker (1996),
    :math:`\\eta_k = 0.9 (\\|g_k\\| / \\|g_{k-1}\\|)^2` safeguarded by
    :math:`\\max(\\eta_k, 0.9 \\eta_{k-1}^2)` when :math:`0.9\\eta_{k-1}^2 > 0.1`, capped at 0.5
    and kept above :math:`0.5\\,\\text{tol}/\\|g_k\\|` (no oversolving at the end);
    ``"quadratic"``: :math:`\\min(0.5, \\|g_k\\|)`; ``"superlinear"``: :math:`\\min(0.5, \\sqrt{\\|g_k\\|})`;
    ``"constant"``: ``constant``.
    """
    if kind == "constant":
        return constant
    if kind == "quadratic":
        return min(0.5, gnorm)
    if kind == "superlinear":
        return min(0.5, math.sqrt(gnorm))
    if gnorm_prev is None or eta_prev is None:
        eta = 0.5
    else:
        eta = 0.9 * (gnorm / gnorm_prev) ** 2
        safe = 0.9 * eta_prev**2
        if safe > 0.1:
            eta = max(eta, safe)
    eta = min(eta, 0.5)
    if gnorm > 0:
        eta = max(eta, min(0.5, 0.5 * tol / gnorm))
    return eta


# ---------------------------------------------------------------------------
# Newton-CG
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("f", "mode", "cg_maxiter", "line_search"))
def _newton_step(x, fx, g, eta, args, *, f, mode, cg_maxiter, line_search):
    flat, unravel = ravel_pytree(x)
    dtype = flat.dtype
    ff = _flat_fn(f, unravel)
    op = hessian_operator(ff, flat, *args, mode=mode)
    gnorm = jnp.linalg.norm(g)
    res = cg(op, -g, rtol=eta, maxiter=cg_maxiter)
    p_cg = res.x
    descent = jnp.all(jnp.isfinite(p_cg)) & (jnp.vdot(g, p_cg) < 0)

    def newton(_):
        return p_cg, jnp.asarray(0)

    def steepest(_):
        # -g scaled by the inverse curvature along g (a Cauchy-like step), one more HVP.
        Hg = op.matvec(g)
        c = jnp.vdot(g, Hg) / jnp.vdot(g, g)
        tiny = jnp.finfo(dtype).eps * jnp.linalg.norm(Hg) / jnp.maximum(gnorm, jnp.finfo(dtype).tiny)
        scale = jnp.where(
            jnp.isfinite(c) & (jnp.abs(c) > tiny), 1.0 / jnp.abs(c), 1.0 / jnp.maximum(gnorm, 1.0)
        )
        return -scale * g, jnp.asarray(1)

    p, extra = lax.cond(descent, newton, steepest, None)
    negative = (res.status == CGStatus.NEGATIVE_CURVATURE) | ~descent

    def search(p, expand):
        def phi(t):
            return ff(flat + t * p, *args)

        f1 = phi(jnp.ones((), dtype))
        slope = jnp.vdot(g, p)
        t, ft, _, ok = _armijo(phi, fx, slope, f1, c1=1e-4, shrink=0.5, max_trials=50)
        t, ft, _ = _expand(phi, fx, slope, t, ft, ok & expand & (t == 1), c1=1e-4)
        return t, ft, ok

    if line_search == "armijo":
        t, ft, ok = search(p, negative)
        # CG's direction of negative curvature d, oriented downhill and scaled to |g.d| / |d.H d|:
        # f decreases along it to second order; keep it if its line search ends lower.
        d = res.negative_curvature_direction
        gd = jnp.vdot(g, d)
        dHd = res.curvature * jnp.vdot(d, d)
        scale = jnp.abs(gd) / jnp.abs(dHd)
        p_nc = -jnp.sign(gd) * scale * d
        use_nc = (res.status == CGStatus.NEGATIVE_CURVATURE) & (gd != 0) & jnp.isfinite(scale) & (scale > 0)
        t2, ft2, ok2 = lax.cond(
            use_nc,
            lambda: search(p_nc, jnp.asarray(True)),
            lambda: (jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype), jnp.asarray(False)),
        )
        better = ok2 & (~ok | (ft2 < ft))
        p, t, ok = jnp.where(better, p_nc, p), jnp.where(better, t2, t), ok | ok2
    else:
        t, ok = jnp.ones((), dtype), jnp.isfinite(ff(flat + p, *args))
    x_new = jnp.where(ok, flat + t * p, flat)
    f_new, g_new = jax.value_and_grad(ff)(x_new, *args)
    stats = {
        "cg_iterations": res.num_iterations,
        "cg_status": res.status,
        "cg_residual": _rel_residual(res, gnorm),
        "hvps": res.num_iterations + extra,
        "step_length": jnp.where(ok, t, 0.0),
        "step_norm": jnp.where(ok, t * jnp.linalg.norm(p), 0.0),
        "ok": ok,
    }
    return unravel(x_new), f_new, g_new, stats


def _check_newton_options(f, x0, args, forcing, forcing_constant, cg_maxiter, mode, callback):
    """Validate the options that Newton-CG and trust-region Newton share, before any work."""
    _check_choice("forcing", forcing, ("eisenstat_walker", "quadratic", "superlinear", "constant"))
    forcing_constant = _check_nonneg_float("forcing_constant", forcing_constant)
    if forcing_constant >= 1:
        raise ValueError(f"forcing_constant must be in [0, 1), got {forcing_constant}")
    if cg_maxiter is not None:
        cg_maxiter = check_positive_int("cg_maxiter", cg_maxiter)
    _check_choice("mode", mode, ("fwd_rev", "rev_fwd", "rev_rev"))
    _check_callback(callback)
    _check_point("x0", x0)
    check_scalar_output(f, x0, *args)
    args = tuple(args)
    if cg_maxiter is None:
        from curvlab._cg import default_maxiter

        cg_maxiter = default_maxiter(ravel_pytree(x0)[0].size)
    return forcing_constant, cg_maxiter, args


def newton_cg(
    f: Callable,
    x0: PyTree,
    *args,
    tol: float = 1e-6,
    maxiter: int = 100,
    line_search: str = "armijo",
    forcing: str = "eisenstat_walker",
    forcing_constant: float = 0.1,
    cg_maxiter: int | None = None,
    mode: str = "fwd_rev",
    callback: Callable[[IterationInfo], bool | None] | None = None,
) -> OptimizeResult:
    """Line-search truncated Newton (Newton-CG) for :math:`\\min_x f(x, *args)`.

    At each iterate :math:`x_k` with gradient :math:`g_k` and Hessian :math:`H_k` (never
    formed: a :func:`~curvlab._operators.hessian_operator`), CG solves
    :math:`H_k p = -g_k` until :math:`\\|H_k p + g_k\\| \\le \\eta_k \\|g_k\\|`. If CG meets a
    direction of non-positive curvature it stops with its last iterate, used when it is a
    descent direction (:math:`g_k^\\top p < 0`); otherwise (negative curvature at the first CG
    step) the step is steepest descent scaled by the inverse curvature along
    :math:`g_k`, :math:`p = -g_k / |g_k^\\top H_k g_k / g_k^\\top g_k|`. The Armijo line search
    takes :math:`x_{k+1} = x_k + t p` with the first :math:`t \\in \\{1, \\tfrac12, \\dots\\}` such that
    :math:`f(x_k + t p) \\le f(x_k) + 10^{-4}\\, t\\, g_k^\\top p`; when CG met negative curvature
    (the step's scale is then unknown) and ``t = 1`` passes, ``t`` is doubled while that keeps
    the condition and lowers :math:`f`. With negative curvature, the direction CG found,
    :math:`d` with :math:`d^\\top H_k d < 0`, oriented downhill and scaled to
    :math:`|g_k^\\top d| / |d^\\top H_k d|`, is line-searched too, and the lower end point is taken
    (no extra HVP: CG reports :math:`d^\\top H_k d`).

    Parameters
    ----------
    f : callable
        Scalar objective ``f(x, *args)``, jittable.
    x0 : pytree
        Starting point (floating-point leaves).
    *args
        Extra arguments of ``f`` (traced: new values of the same shapes reuse the compiled step).
    tol : float
        Stop when :math:`\\|\\nabla f(x_k)\\|_2 \\le` ``tol`` (``CONVERGED``).
    maxiter : int
        Maximum number of Newton iterations.
    line_search : {"armijo", "none"}
        ``"none"`` takes the full step ``t = 1``.
    forcing : {"eisenstat_walker", "quadratic", "superlinear", "constant"}
        Choice of :math:`\\eta_k` (see ``_forcing_term``): Eisenstat-Walker's choice 2,
        :math:`\\min(\\tfrac12, \\|g_k\\|)`, :math:`\\min(\\tfrac12, \\sqrt{\\|g_k\\|})`, or
        ``forcing_constant``.
    forcing_constant : float
        :math:`\\eta` for ``forcing="constant"``, in ``[0, 1)``.
    cg_maxiter : int, optional
        CG iteration cap per Newton step (default: CG's default, ``10 n`` for small ``n``).
    mode : str
        HVP mode (see :func:`curvlab._hvp.hvp`).
    callback : callable, optional
        Called with an :class:`IterationInfo` after every iteration; returning True stops.

    Returns
    -------
    OptimizeResult
        ``history["grad_norm"][k]`` is :math:`\\|\\nabla f(x_k)\\|`; ``num_hvps`` counts the CG
        matvecs (CG starts from 0, so none is spent on its initial residual) and the steepest-descent HVPs.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda x: jnp.sum((x - 2.0) ** 2) + jnp.sum(x**4) / 100
    >>> res = newton_cg(f, jnp.zeros(3), tol=1e-5)
    >>> res.status.name, [round(float(v), 3) for v in res.x]
    ('CONVERGED', [1.869, 1.869, 1.869])
    """
    if not callable(f):
        raise TypeError("f must be callable f(x, *args) -> scalar")
    tol = _check_nonneg_float("tol", tol)
    maxiter = check_positive_int("maxiter", maxiter, minimum=0)
    _check_choice("line_search", line_search, ("armijo", "none"))
    forcing_constant, cg_maxiter, args = _check_newton_options(
        f, x0, args, forcing, forcing_constant, cg_maxiter, mode, callback
    )

    clock = _Clock()
    rec = _Recorder()
    x = x0
    fx, g = _value_and_grad(x, args, f=f)
    gnorm = float(jnp.linalg.norm(g))
    rec.append(loss=float(fx), grad_norm=gnorm, num_hvps=0, time=clock.now())
    num_hvps, k = 0, 0
    gnorm_prev = eta_prev = None
    status = OptimizeStatus.MAX_ITERATIONS
    if not (math.isfinite(float(fx)) and math.isfinite(gnorm)):
        status = OptimizeStatus.NONFINITE
    elif gnorm <= tol:
        status = OptimizeStatus.CONVERGED
    while status == OptimizeStatus.MAX_ITERATIONS and k < maxiter:
        eta = _forcing_term(forcing, forcing_constant, gnorm, gnorm_prev, eta_prev, tol)
        x_new, f_new, g_new, stats = _newton_step(
            x,
            fx,
            g,
            jnp.asarray(eta, g.dtype),
            args,
            f=f,
            mode=mode,
            cg_maxiter=cg_maxiter,
            line_search=line_search,
        )
        stats = jax.device_get(stats)
        k += 1
        num_hvps += int(stats["hvps"])
        gnorm_prev, eta_prev = gnorm, eta
        x, fx, g = x_new, f_new, g_new
        gnorm = float(jnp.linalg.norm(g))
        rec.append(
            loss=float(fx),
            grad_norm=gnorm,
            cg_iterations=int(stats["cg_iterations"]),
            cg_residual=float(stats["cg_residual"]),
            cg_status=int(stats["cg_status"]),
            step_length=float(stats["step_length"]),
            step_norm=float(stats["step_norm"]),
            num_hvps=num_hvps,
            time=clock.now(),
        )
        if not (math.isfinite(float(fx)) and math.isfinite(gnorm)):
            status = OptimizeStatus.NONFINITE
        elif gnorm <= tol:
            status = OptimizeStatus.CONVERGED
        elif not bool(stats["ok"]):
            status = OptimizeStatus.LINE_SEARCH_FAILED
        if clock.run_callback(callback, _info(rec, k, x)) and status == OptimizeStatus.MAX_ITERATIONS:
            status = OptimizeStatus.CALLBACK
    return _result(x, rec, status, k)


# ---------------------------------------------------------------------------
# Trust-region Newton
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("f", "mode", "cg_maxiter"))
def _tr_step(x, fx, g, radius, eta, max_radius, accept_ratio, args, *, f, mode, cg_maxiter):
    flat, unravel = ravel_pytree(x)
    dtype = flat.dtype
    ff = _flat_fn(f, unravel)
    op = hessian_operator(ff, flat, *args, mode=mode)
    gnorm = jnp.linalg.norm(g)
    res = steihaug_cg(op, -g, radius, rtol=eta, maxiter=cg_maxiter)
    p = res.x
    pnorm = jnp.linalg.norm(p)
    pred = res.predicted_reduction
    f_trial = ff(flat + p, *args)
    actual = fx - f_trial
    valid = jnp.isfinite(f_trial) & (pred > 0)
    rho = jnp.where(valid, actual / jnp.where(valid, pred, 1.0), -jnp.inf)
    on_boundary = (res.status == CGStatus.BOUNDARY) | (res.status == CGStatus.NEGATIVE_CURVATURE)
    on_boundary = on_boundary | (pnorm >= 0.99 * radius)
    new_radius = jnp.where(
        rho < 0.25,
        0.25 * jnp.minimum(pnorm, radius),
        jnp.where((rho > 0.75) & on_boundary, jnp.minimum(2.0 * radius, max_radius), radius),
    )
    new_radius = jnp.where(new_radius > 0, new_radius, 0.25 * radius)
    accept = rho > accept_ratio
    x_new = jnp.where(accept, flat + p, flat)
    f_new, g_new = jax.value_and_grad(ff)(x_new, *args)
    stats = {
        "cg_iterations": res.num_iterations,
        "cg_status": res.status,
        "cg_residual": _rel_residual(res, gnorm),
        "hvps": res.num_iterations,
        "rho": rho,
        "accepted": accept,
        "radius": new_radius.astype(dtype),
        "step_norm": jnp.where(accept, pnorm, 0.0),
    }
    return unravel(x_new), f_new, g_new, stats


def trust_region_newton(
    f: Callable,
    x0: PyTree,
    *args,
    tol: float = 1e-6,
    maxiter: int = 100,
    radius0: float = 1.0,
    max_radius: float = 1000.0,
    eta: float = 0.15,
    forcing: str = "eisenstat_walker",
    forcing_constant: float = 0.1,
    cg_maxiter: int | None = None,
    mode: str = "fwd_rev",
    callback: Callable[[IterationInfo], bool | None] | None = None,
) -> OptimizeResult:
    """Trust-region Newton with Steihaug-Toint CG (Nocedal & Wright, Alg. 4.1 + 7.2).

    At :math:`x_k` the step approximately solves
    :math:`\\min_{\\|p\\| \\le \\Delta_k} m_k(p) = f_k + g_k^\\top p + \\tfrac12 p^\\top H_k p`
    (:func:`curvlab._cg.steihaug_cg`, inner tolerance :math:`\\eta_k` as in :func:`newton_cg`).
    With the reduction ratio :math:`\\rho_k = (f(x_k) - f(x_k + p)) / (m_k(0) - m_k(p))`:
    :math:`\\rho_k < \\tfrac14 \\Rightarrow \\Delta_{k+1} = \\tfrac14 \\|p\\|`;
    :math:`\\rho_k > \\tfrac34` and :math:`p` on the boundary :math:`\\Rightarrow
    \\Delta_{k+1} = \\min(2\\Delta_k, \\Delta_{\\max})`; the step is taken iff :math:`\\rho_k > \\eta`.

    Parameters
    ----------
    f, x0, *args, tol, maxiter, cg_maxiter, mode, callback
        As in :func:`newton_cg`.
    radius0 : float
        Initial trust radius :math:`\\Delta_0 > 0`.
    max_radius : float
        :math:`\\Delta_{\\max} \\ge \\Delta_0`.
    eta : float
        Acceptance threshold :math:`\\eta \\in [0, \\tfrac14)`.
    forcing : {"eisenstat_walker", "quadratic", "superlinear", "constant"}
        As in :func:`newton_cg`.
    forcing_constant : float

    Returns
    -------
    OptimizeResult
        ``rho`` is the trust-region ratio, ``history["radius"]`` the radius after each iteration,
        ``step_length`` 1 for an accepted step and 0 for a rejected one.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda x: jnp.sum((x - 2.0) ** 2) + jnp.sum(x**4) / 100
    >>> res = trust_region_newton(f, jnp.zeros(3), tol=1e-5)
    >>> res.status.name, [round(float(v), 3) for v in res.x]
    ('CONVERGED', [1.869, 1.869, 1.869])
    """
    if not callable(f):
        raise TypeError("f must be callable f(x, *args) -> scalar")
    tol = _check_nonneg_float("tol", tol)
    maxiter = check_positive_int("maxiter", maxiter, minimum=0)
    radius0 = _check_nonneg_float("radius0", radius0)
    max_radius = _check_nonneg_float("max_radius", max_radius)
    if radius0 <= 0:
        raise ValueError(f"radius0 must be > 0, got {radius0}")
    if max_radius < radius0:
        raise ValueError(f"max_radius must be >= radius0 = {radius0}, got {max_radius}")
    eta = _check_nonneg_float("eta", eta)
    if eta >= 0.25:
        raise ValueError(f"eta must be in [0, 0.25), got {eta}")
    forcing_constant, cg_maxiter, args = _check_newton_options(
        f, x0, args, forcing, forcing_constant, cg_maxiter, mode, callback
    )

    clock = _Clock()
    rec = _Recorder(extra=("radius",))
    x = x0
    fx, g = _value_and_grad(x, args, f=f)
    dtype = g.dtype
    gnorm = float(jnp.linalg.norm(g))
    radius = radius0
    rec.append(loss=float(fx), grad_norm=gnorm, num_hvps=0, time=clock.now(), radius=radius)
    num_hvps, k = 0, 0
    gnorm_prev = eta_prev = None
    status = OptimizeStatus.MAX_ITERATIONS
    if not (math.isfinite(float(fx)) and math.isfinite(gnorm)):
        status = OptimizeStatus.NONFINITE
    elif gnorm <= tol:
        status = OptimizeStatus.CONVERGED
    while status == OptimizeStatus.MAX_ITERATIONS and k < maxiter:
        rtol = _forcing_term(forcing, forcing_constant, gnorm, gnorm_prev, eta_prev, tol)
        x, fx, g, stats = _tr_step(
            x,
            fx,
            g,
            jnp.asarray(radius, dtype),
            jnp.asarray(rtol, dtype),
            jnp.asarray(max_radius, dtype),
            jnp.asarray(eta, dtype),
            args,
            f=f,
            mode=mode,
            cg_maxiter=cg_maxiter,
        )
        stats = jax.device_get(stats)
        k += 1
        num_hvps += int(stats["hvps"])
        if bool(stats["accepted"]):
            gnorm_prev, eta_prev = gnorm, rtol
        gnorm = float(jnp.linalg.norm(g))
        radius = float(stats["radius"])
        rec.append(
            loss=float(fx),
            grad_norm=gnorm,
            rho=float(stats["rho"]),
            cg_iterations=int(stats["cg_iterations"]),
            cg_residual=float(stats["cg_residual"]),
            cg_status=int(stats["cg_status"]),
            step_length=float(bool(stats["accepted"])),
            step_norm=float(stats["step_norm"]),
            num_hvps=num_hvps,
            time=clock.now(),
            radius=radius,
        )
        if not (math.isfinite(float(fx)) and math.isfinite(gnorm)):
            status = OptimizeStatus.NONFINITE
        elif gnorm <= tol:
            status = OptimizeStatus.CONVERGED
        elif radius < float(jnp.finfo(dtype).eps) * max(1.0, float(jnp.linalg.norm(ravel_pytree(x)[0]))):
            status = OptimizeStatus.LINE_SEARCH_FAILED
        if clock.run_callback(callback, _info(rec, k, x)) and status == OptimizeStatus.MAX_ITERATIONS:
            status = OptimizeStatus.CALLBACK
    return _result(x, rec, status, k)


# ---------------------------------------------------------------------------
# Hessian-free (Martens 2010)
# ---------------------------------------------------------------------------


def update_damping(
    lam, rho, *, lower: float = 0.25, upper: float = 0.75, increase: float = 1.5, decrease: float = 2 / 3
):
    """Levenberg-Marquardt damping rule of Martens (2010, §4.1).

    .. math::
        \\lambda \\leftarrow \\begin{cases}
        \\tfrac32 \\lambda & \\rho < \\tfrac14 \\text{ (or } \\rho \\text{ is NaN)} \\\\
        \\tfrac23 \\lambda & \\rho > \\tfrac34 \\\\
        \\lambda & \\text{otherwise} \\end{cases}

    where :math:`\\rho = (f(\\theta + d) - f(\\theta)) / (q(d) - q(0))` is the reduction ratio:
    the model is trusted more (less damping) when it predicts the decrease well. Pure and
    traceable (works on Python floats and on traced arrays).

    Examples
    --------
    >>> [round(float(update_damping(1.0, r)), 6) for r in (0.1, 0.5, 0.9)]
    [1.5, 1.0, 0.666667]
    """
    lam = jnp.asarray(lam)
    rho = jnp.asarray(rho, lam.dtype if jnp.issubdtype(lam.dtype, jnp.floating) else None)
    grow = (rho < lower) | jnp.isnan(rho)
    return jnp.where(grow, increase * lam, jnp.where(rho > upper, decrease * lam, lam))


@jax.tree_util.register_pytree_node_class
class _HiddenGramOperator(LinearOperator):
    """:math:`J_h^\\top J_h` for the Jacobian :math:`J_h` of ``hidden(x)`` (flat in, any pytree out)."""

    def __init__(self, hidden, x):
        self.hidden, self.x = hidden, x

    def tree_flatten(self):
        return (self.x,), (self.hidden,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], children[0])

    size = property(lambda self: self.x.shape[0])
    dtype = property(lambda self: self.x.dtype)

    def matvec(self, v):
        _, jv = jax.jvp(self.hidden, (self.x,), (v,))
        return jax.vjp(self.hidden, self.x)[1](jv)[0]

    def prepare(self):
        _, lin = jax.linearize(self.hidden, self.x)
        _, vjp_fn = jax.vjp(self.hidden, self.x)
        return lambda v: vjp_fn(lin(v))[0]

    def sq_norm(self, v):
        """:math:`\\|J_h v\\|^2`."""
        _, jv = jax.jvp(self.hidden, (self.x,), (v,))
        return sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(jv))


class _HFConfig(NamedTuple):
    curvature: str
    cg_maxiter: int
    cg_rtol: float
    martens_eps: float
    precondition: bool
    structural: bool
    backtracking: bool
    line_search: bool
    rho_model: str
    subsample: int | None
    ls_c1: float
    ls_shrink: float
    ls_max_trials: int


@functools.partial(jax.jit, static_argnames=("fns", "cfg"))
def _hf_step(params, lam, d0, gbatch, cbatch, key, mu, cg_decay, alpha, *, fns, cfg):
    loss_fn, model_fn, output_loss_fn, pel_fn, hidden_fn = fns
    flat, unravel = ravel_pytree(params)
    dtype = flat.dtype
    lam = jnp.asarray(lam, dtype)

    def L(y):
        return loss_fn(unravel(y), gbatch)

    f0, g = jax.value_and_grad(L)(flat)
    gnorm = jnp.linalg.norm(g)
    if cfg.subsample is not None:
        N = jax.tree_util.tree_leaves(gbatch)[0].shape[0]
        idx = jax.random.choice(key, N, (cfg.subsample,), replace=False)
        cbatch = jax.tree_util.tree_map(lambda a: a[idx], gbatch)
    elif cbatch is None:
        cbatch = gbatch

    # undamped curvature B on the curvature batch
    if cfg.curvature == "ggn":
        B = ggn_operator(lambda y, inputs: model_fn(unravel(y), inputs), output_loss_fn, flat, tuple(cbatch))
    elif cfg.curvature == "hessian":
        B = hessian_operator(lambda y, batch: loss_fn(unravel(y), batch), flat, cbatch)
    else:
        B = fisher_operator(lambda y, *a: pel_fn(unravel(y), *a), flat, *cbatch)
    A = B.damped(lam)
    S = None
    if cfg.structural:
        S = _HiddenGramOperator(lambda y: hidden_fn(unravel(y), cbatch), flat)
        A = A + (mu * lam) * S
    P = None
    if cfg.precondition:
        diag = empirical_fisher_diagonal(lambda y, *a: pel_fn(unravel(y), *a), flat, *gbatch, chunk_size=128)
        P = martens(diag, lam, alpha)

    res = cg(
        A,
        -g,
        x0=d0,
        preconditioner=P,
        rtol=cfg.cg_rtol,
        maxiter=cfg.cg_maxiter,
        stop_rule="martens",
        martens_eps=cfg.martens_eps,
        save_iterates=cfg.backtracking,
    )
    # q(x_k) = 1/2 x^T A x + g^T x for every CG iterate (no extra matvec)
    qvals = res.quadratic_values
    num = res.num_iterations
    if cfg.backtracking:
        # CG backtracking: the saved iterates plus the last one, keep the best objective on the batch
        cands = jnp.concatenate([res.saved_iterates, res.x[None, :]], axis=0)
        its = jnp.concatenate([res.saved_iterations, num[None].astype(res.saved_iterations.dtype)])
        valid = (its <= num) & jnp.all(jnp.isfinite(cands), axis=1)

        def value(args):
            d, ok = args
            return lax.cond(ok, lambda: L(flat + d), lambda: jnp.asarray(jnp.inf, dtype))

        vals = lax.map(value, (cands, valid))
        vals = jnp.where(jnp.isfinite(vals), vals, jnp.inf)
        best = jnp.argmin(vals)
        p, f_p, p_it = cands[best], vals[best], its[best]
    else:
        p, p_it = res.x, num
        f_p = L(flat + p)
    q_damped = qvals[p_it]
    tikhonov = 0.5 * lam * jnp.vdot(p, p)
    if cfg.structural:
        tikhonov = tikhonov + 0.5 * mu * lam * S.sq_norm(p)
    q = q_damped - tikhonov if cfg.rho_model == "undamped" else q_damped
    valid_rho = jnp.isfinite(f_p) & jnp.isfinite(q) & (q < 0)
    rho = jnp.where(valid_rho, (f_p - f0) / jnp.where(valid_rho, q, -1.0), -jnp.inf)
    new_lam = update_damping(lam, rho)

    slope = jnp.vdot(g, p)
    if cfg.line_search:
        t, f_t, _, ok = _armijo(
            lambda t: L(flat + t * p),
            f0,
            slope,
            f_p,
            c1=cfg.ls_c1,
            shrink=cfg.ls_shrink,
            max_trials=cfg.ls_max_trials,
        )
    else:
        t, f_t, ok = jnp.ones((), dtype), f_p, jnp.isfinite(f_p)
    t = jnp.where(ok, t, 0.0)
    f_new = jnp.where(ok, f_t, f0)
    new_flat = flat + t * p
    next_d0 = jnp.where(jnp.all(jnp.isfinite(res.x)), cg_decay * res.x, jnp.zeros_like(res.x))
    stats = {
        "loss_before": f0,
        "loss": f_new,
        "grad_norm": gnorm,
        "rho": rho,
        "cg_iterations": num,
        "cg_status": res.status,
        "cg_residual": _rel_residual(res, gnorm),
        "backtrack_iteration": p_it,
        "step_length": t,
        "step_norm": t * jnp.linalg.norm(p),
        "hvps": num + _CG_WARM_START_MATVECS,
    }
    return unravel(new_flat), new_lam, next_d0, stats


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _batch_value_and_grad(params, batch, *, loss_fn):
    flat, unravel = ravel_pytree(params)
    val, g = jax.value_and_grad(lambda y: loss_fn(unravel(y), batch))(flat)
    return val, jnp.linalg.norm(g)


def _is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _is_single_batch(b):
    if isinstance(b, dict):
        return True
    if isinstance(b, (tuple, list)) and len(b) > 0 and all(_is_array(a) for a in b):
        return True
    return _is_array(b)


def _leading_size(batch, what):
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(f"{what} has no arrays")
    sizes = {int(np.shape(a)[0]) if np.ndim(a) > 0 else None for a in leaves}
    if None in sizes:
        raise ValueError(f"every array of {what} needs a leading example axis")
    if len(sizes) != 1:
        raise ValueError(f"the arrays of {what} disagree on the number of examples: {sorted(sizes)}")
    (N,) = sizes
    if N == 0:
        raise ValueError(f"{what} is empty (0 examples)")
    return N


def _batch_stream(batches, name):
    """Return ``(first_batch, iterator over all batches from the first)`` with clear errors."""
    if batches is None:
        raise ValueError(f"{name} is required: a batch (inputs, targets) or a sequence/iterable of batches")
    if _is_single_batch(batches):
        return batches, itertools.repeat(batches), True
    if isinstance(batches, (list, tuple)):
        if len(batches) == 0:
            raise ValueError(f"{name} is empty")
        return batches[0], itertools.cycle(batches), len(batches) == 1
    if isinstance(batches, (Iterator, Iterable)):
        it = iter(batches)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError(f"{name} is empty (the iterator yielded no batch)") from None
        return first, itertools.chain([first], it), False
    raise TypeError(
        f"{name} must be a batch tuple, a sequence of batches or an iterable, got {type(batches).__name__}"
    )


def _problem_fields(obj):
    """Pull functions from a :class:`curvlab.problems.Problem`-like object."""
    return {
        "loss": getattr(obj, "loss", None),
        "model_fn": getattr(obj, "model_fn", None),
        "output_loss_fn": getattr(obj, "loss_fn", None),
        "per_example_loss_fn": getattr(obj, "per_example_loss_fn", None),
        "x0": getattr(obj, "x0", None),
        "batch": getattr(obj, "batch", None),
    }


def hessian_free(
    loss_fn: Callable | Any,
    params: PyTree | None = None,
    batches: Any = None,
    *,
    curvature: str = "ggn",
    damping: float = 1.0,
    model_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    per_example_loss_fn: Callable | None = None,
    maxiter: int = 100,
    tol: float = 1e-6,
    cg_maxiter: int = 250,
    cg_decay: float = 0.95,
    cg_rtol: float = 1e-10,
    martens_eps: float = 5e-4,
    cg_backtracking: bool = True,
    preconditioner: str | None = None,
    precond_alpha: float = 0.75,
    batching: str = "same",
    curvature_batches: Any = None,
    curvature_batch_fraction: float = 0.25,
    structural_damping: float = 0.0,
    hidden_fn: Callable | None = None,
    line_search: bool = True,
    rho_model: str = "undamped",
    key: jax.Array | None = None,
    callback: Callable[[IterationInfo], bool | None] | None = None,
) -> OptimizeResult:
    """Hessian-free optimization (Martens 2010) of ``loss_fn(params, batch)``.

    Each iteration :math:`k`, on a gradient batch with loss :math:`f` and gradient :math:`g`:

    1. **Curvature** :math:`B` on a curvature batch: the Gauss-Newton matrix
       :math:`J^\\top H_\\ell J` (``"ggn"``, positive semidefinite for convex output losses),
       the Hessian (``"hessian"``, may be indefinite) or the empirical Fisher (``"fisher"``).
    2. **Damping**: CG minimizes :math:`q(d) = g^\\top d + \\tfrac12 d^\\top (B + \\lambda I
       + \\mu\\lambda J_h^\\top J_h) d`, the last term being structural damping (below).
    3. **CG** (:func:`curvlab._cg.cg`) warm-started at ``cg_decay`` times the previous run's last
       iterate, stopped by Martens' relative-progress rule (``martens_eps``), by
       :math:`\\|r\\| \\le` ``cg_rtol`` :math:`\\|g\\|`, by negative curvature or at ``cg_maxiter``;
       optionally preconditioned by :math:`P = (\\operatorname{diag}(F) + \\lambda)^{-\\alpha}`
       with :math:`F` the empirical Fisher on the gradient batch (``preconditioner="martens"``).
    4. **CG backtracking**: of the iterates saved at :math:`\\lceil 1.3^j \\rceil` and the last one,
       keep the direction :math:`d` with the lowest :math:`f(\\theta + d)` on the gradient batch.
    5. **Damping update** (:func:`update_damping`) from
       :math:`\\rho = (f(\\theta + d) - f(\\theta)) / (q(d) - q(0))`; ``rho_model="undamped"``
       (default) uses the model without the damping terms, as a trust-region ratio should,
       ``"damped"`` the one CG minimized.
    6. **Line search**: Armijo backtracking :math:`t \\leftarrow 0.8 t` from 1 until
       :math:`f(\\theta + t d) \\le f(\\theta) + 10^{-2} t\\, g^\\top d`; no acceptable :math:`t`
       rejects the step (:math:`t = 0`; :math:`\\rho < 0` then raises :math:`\\lambda`).

    **Structural damping** (Martens & Sutskever 2011, for recurrent networks): with
    ``hidden_fn(params, batch)`` returning the hidden states (any pytree of arrays) and
    :math:`\\mu` = ``structural_damping``, the penalty :math:`\\tfrac{\\mu\\lambda}{2}\\|J_h d\\|^2`
    (the Gauss-Newton form of :math:`\\tfrac{\\mu\\lambda}{2}\\|h(\\theta + d) - h(\\theta)\\|^2`)
    discourages steps that change the hidden states much. Scale ``hidden_fn``'s output to your
    loss (e.g. divide by :math:`\\sqrt{N}` for a mean over :math:`N` sequences).

    Parameters
    ----------
    loss_fn : callable or Problem
        ``loss_fn(params, batch) -> scalar``, or a :class:`curvlab.problems.Problem` (any object
        with ``loss``, ``model_fn``, ``loss_fn``, ``per_example_loss_fn``, ``x0``, ``batch``):
        its functions fill the arguments not given, and ``params``/``batches`` default to its
        ``x0``/``batch``.
    params : pytree
        Starting parameters (floating-point leaves).
    batches : batch, sequence of batches, or iterable of batches
        A single batch is a tuple of arrays ``(inputs, targets)`` (or a dict or an array) and is
        used at every iteration (full-batch training). A list/tuple of batches is cycled; an
        iterator is consumed (``DATA_EXHAUSTED`` when it ends). Batches of different shapes
        trigger a new compilation; keep them equal.
    curvature : {"ggn", "hessian", "fisher"}
        ``"ggn"`` needs ``model_fn(params, inputs) -> outputs`` and
        ``output_loss_fn(outputs, targets) -> scalar`` (batches are ``(inputs, targets)``);
        the GGN ignores any term of ``loss_fn`` outside ``output_loss_fn`` (e.g. an L2 penalty;
        the damping stands in for it). ``"fisher"`` needs ``per_example_loss_fn(params, inputs,
        targets) -> (N,)``; ``"hessian"`` only ``loss_fn``.
    damping : float
        Initial :math:`\\lambda \\ge 0` (``0`` keeps it at 0).
    model_fn, output_loss_fn, per_example_loss_fn : callable, optional
        See ``curvature`` and ``preconditioner``.
    maxiter : int
        Number of HF iterations (outer steps).
    tol : float
        Stop when the gradient norm on the batch is :math:`\\le` ``tol`` (the step of that
        iteration is still taken).
    cg_maxiter : int
        CG iteration cap (also the length of CG's history buffers).
    cg_decay : float
        Warm-start factor :math:`\\zeta \\in [0, 1]` (0: cold start).
    cg_rtol : float
        CG's residual tolerance relative to :math:`\\|g\\|`.
    martens_eps : float
        :math:`\\varepsilon` of Martens' relative-progress rule.
    cg_backtracking : bool
        Backtrack over the saved CG iterates (otherwise use the last one).
    preconditioner : {None, "martens"}
        ``"martens"`` needs ``per_example_loss_fn``.
    precond_alpha : float
        :math:`\\alpha \\in (0, 1]`.
    batching : {"same", "separate", "subsample"}
        Curvature batch: the gradient batch (``"same"``); the next batch of the stream, or the
        next of ``curvature_batches`` if given (``"separate"``); a random subset of
        ``curvature_batch_fraction`` of the gradient batch's examples (``"subsample"``).
    curvature_batches : optional
        A separate stream of curvature batches for ``batching="separate"``.
    curvature_batch_fraction : float
        In ``(0, 1]``.
    structural_damping : float
        :math:`\\mu \\ge 0`; :math:`\\mu > 0` needs ``hidden_fn``.
    hidden_fn : callable, optional
        ``hidden_fn(params, batch) -> hidden states`` (pytree of arrays).
    line_search : bool
    rho_model : {"undamped", "damped"}
    key : jax.random key, optional
        For ``batching="subsample"`` (default ``PRNGKey(0)``).
    callback : callable, optional
        Called with an :class:`IterationInfo` after every iteration; returning True stops.

    Returns
    -------
    OptimizeResult
        ``history["loss"][k]`` is the loss after iteration ``k`` on its gradient batch,
        ``history["grad_norm"][k]`` the norm of the gradient that iteration used (entry 0: both
        at the start, on the first batch), ``damping`` the :math:`\\lambda` it used;
        extra keys ``loss_before`` (the loss at the start of the iteration) and
        ``backtrack_iteration`` (the CG iteration of the chosen direction). ``num_hvps`` counts
        the matvecs of the damped curvature operator.

    Raises
    ------
    ValueError
        Bad configuration (negative damping, ``precond_alpha`` outside (0, 1], empty batches,
        unknown ``curvature``, ``"ggn"`` without ``model_fn``/``output_loss_fn``, ...), before
        any computation.

    Examples
    --------
    >>> from curvlab.problems import logistic_regression
    >>> prob = logistic_regression(num_examples=128)
    >>> res = hessian_free(prob, maxiter=5)
    >>> bool(res.fun < res.history["loss"][0])
    True
    """
    # -- resolve a Problem-like first argument ----------------------------------------------
    if not callable(loss_fn) and hasattr(loss_fn, "loss"):
        fields = _problem_fields(loss_fn)
        loss_fn = fields["loss"]
        model_fn = model_fn if model_fn is not None else fields["model_fn"]
        output_loss_fn = output_loss_fn if output_loss_fn is not None else fields["output_loss_fn"]
        per_example_loss_fn = (
            per_example_loss_fn if per_example_loss_fn is not None else fields["per_example_loss_fn"]
        )
        params = params if params is not None else fields["x0"]
        batches = batches if batches is not None else fields["batch"]
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable loss_fn(params, batch) -> scalar, or a Problem")
    if params is None:
        raise ValueError("params is required (the starting parameters)")

    # -- configuration checks (before any work) ---------------------------------------------
    _check_choice("curvature", curvature, ("ggn", "hessian", "fisher"))
    damping = _check_nonneg_float("damping", damping)
    maxiter = check_positive_int("maxiter", maxiter, minimum=0)
    tol = _check_nonneg_float("tol", tol)
    cg_maxiter = check_positive_int("cg_maxiter", cg_maxiter)
    cg_decay = _check_nonneg_float("cg_decay", cg_decay)
    if cg_decay > 1:
        raise ValueError(f"cg_decay must be in [0, 1], got {cg_decay}")
    cg_rtol = _check_nonneg_float("cg_rtol", cg_rtol)
    martens_eps = _check_nonneg_float("martens_eps", martens_eps)
    _check_choice("preconditioner", preconditioner, (None, "martens"))
    precond_alpha = _check_nonneg_float("precond_alpha", precond_alpha)
    if not 0 < precond_alpha <= 1:
        raise ValueError(f"precond_alpha must be in (0, 1], got {precond_alpha}")
    _check_choice("batching", batching, ("same", "separate", "subsample"))
    curvature_batch_fraction = _check_nonneg_float("curvature_batch_fraction", curvature_batch_fraction)
    if not 0 < curvature_batch_fraction <= 1:
        raise ValueError(f"curvature_batch_fraction must be in (0, 1], got {curvature_batch_fraction}")
    structural_damping = _check_nonneg_float("structural_damping", structural_damping)
    _check_choice("rho_model", rho_model, ("undamped", "damped"))
    _check_callback(callback)
    for name, fn in (
        ("model_fn", model_fn),
        ("output_loss_fn", output_loss_fn),
        ("per_example_loss_fn", per_example_loss_fn),
        ("hidden_fn", hidden_fn),
    ):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if curvature == "ggn" and model_fn is None:
        raise ValueError(
            "curvature='ggn' needs model_fn(params, inputs) -> outputs and output_loss_fn(outputs, targets) "
            "(or pass a Problem); use curvature='hessian' for a bare loss_fn"
        )
    if curvature == "ggn" and output_loss_fn is None:
        raise ValueError(
            "curvature='ggn' needs output_loss_fn(outputs, targets) -> scalar (the loss on the outputs)"
        )
    if curvature == "fisher" and per_example_loss_fn is None:
        raise ValueError(
            "curvature='fisher' needs per_example_loss_fn(params, inputs, targets) -> (N,) losses"
        )
    if preconditioner == "martens" and per_example_loss_fn is None:
        raise ValueError(
            "preconditioner='martens' needs per_example_loss_fn(params, inputs, targets) -> (N,) losses"
        )
    if structural_damping > 0 and hidden_fn is None:
        raise ValueError("structural_damping > 0 needs hidden_fn(params, batch) -> hidden states")
    if not isinstance(line_search, bool):
        raise TypeError(f"line_search must be a bool, got {type(line_search).__name__}")
    if not isinstance(cg_backtracking, bool):
        raise TypeError(f"cg_backtracking must be a bool, got {type(cg_backtracking).__name__}")
    _check_point("params", params)

    first, stream, single = _batch_stream(batches, "batches")
    N = _leading_size(first, "the first batch")
    if curvature in ("ggn", "fisher") or preconditioner == "martens":
        if not (isinstance(first, (tuple, list)) and len(first) == 2):
            raise ValueError(
                f"curvature={curvature!r} and the Martens preconditioner need batches (inputs, targets)"
            )
    curv_stream = None
    if batching == "separate":
        if curvature_batches is not None:
            _, curv_stream, _ = _batch_stream(curvature_batches, "curvature_batches")
        elif single:
            raise ValueError(
                "batching='separate' needs at least two batches (or curvature_batches=); "
                "with a single batch use batching='same' or 'subsample'"
            )
    subsample = None
    if batching == "subsample":
        subsample = max(1, int(round(curvature_batch_fraction * N)))
    check_scalar_output(loss_fn, params, first)

    cfg = _HFConfig(
        curvature=curvature,
        cg_maxiter=cg_maxiter,
        cg_rtol=cg_rtol,
        martens_eps=martens_eps,
        precondition=preconditioner == "martens",
        structural=structural_damping > 0,
        backtracking=cg_backtracking,
        line_search=line_search,
        rho_model=rho_model,
        subsample=subsample,
        ls_c1=1e-2,
        ls_shrink=0.8,
        ls_max_trials=60,
    )
    fns = (loss_fn, model_fn, output_loss_fn, per_example_loss_fn, hidden_fn)

    # -- the loop ------------------------------------------------------------------------------
    clock = _Clock()
    flat0 = ravel_pytree(params)[0]
    dtype = flat0.dtype
    lam = jnp.asarray(damping, dtype)
    d0 = jnp.zeros_like(flat0)
    key = jax.random.PRNGKey(0) if key is None else key
    mu = jnp.asarray(structural_damping, dtype)
    decay = jnp.asarray(cg_decay, dtype)
    alpha = jnp.asarray(precond_alpha, dtype)
    rec = _Recorder(extra=("loss_before", "backtrack_iteration"))
    f_init, g_init = _batch_value_and_grad(params, first, loss_fn=loss_fn)
    rec.append(
        loss=float(f_init),
        loss_before=float(f_init),
        grad_norm=float(g_init),
        damping=damping,
        num_hvps=0,
        time=clock.now(),
    )
    num_hvps, k = 0, 0
    status = OptimizeStatus.MAX_ITERATIONS
    if not (math.isfinite(float(f_init)) and math.isfinite(float(g_init))):
        status = OptimizeStatus.NONFINITE
    while status == OptimizeStatus.MAX_ITERATIONS and k < maxiter:
        try:
            gbatch = next(stream)
            cbatch = None
            if batching == "separate":
                cbatch = next(curv_stream) if curv_stream is not None else next(stream)
        except StopIteration:
            status = OptimizeStatus.DATA_EXHAUSTED
            break
        key, sub = jax.random.split(key)
        lam_used = float(lam)
        params, lam, d0, stats = _hf_step(
            params, lam, d0, gbatch, cbatch, sub, mu, decay, alpha, fns=fns, cfg=cfg
        )
        stats = jax.device_get(stats)
        k += 1
        num_hvps += int(stats["hvps"])
        rec.append(
            loss=float(stats["loss"]),
            loss_before=float(stats["loss_before"]),
            grad_norm=float(stats["grad_norm"]),
            damping=lam_used,
            rho=float(stats["rho"]),
            cg_iterations=int(stats["cg_iterations"]),
            cg_residual=float(stats["cg_residual"]),
            cg_status=int(stats["cg_status"]),
            step_length=float(stats["step_length"]),
            step_norm=float(stats["step_norm"]),
            backtrack_iteration=int(stats["backtrack_iteration"]),
            num_hvps=num_hvps,
            time=clock.now(),
        )
        if not (math.isfinite(float(stats["loss"])) and math.isfinite(float(stats["grad_norm"]))):
            status = OptimizeStatus.NONFINITE
        elif float(stats["grad_norm"]) <= tol:
            status = OptimizeStatus.CONVERGED
        if clock.run_callback(callback, _info(rec, k, params)) and status == OptimizeStatus.MAX_ITERATIONS:
            status = OptimizeStatus.CALLBACK
    return _result(params, rec, status, k)

"""Newton methods on Hessian-vector products: line-search Newton-CG and trust-region Newton.

* :func:`newton_cg` -- line-search truncated Newton (Nocedal & Wright, Alg. 7.1):
  the Newton system :math:`\\nabla^2 f(x_k)\\, p = -\\nabla f(x_k)` is solved by CG
  only to a relative residual :math:`\\eta_k` (the forcing term), directions of
  negative curvature are handled, and an Armijo backtracking line search picks
  the step.
* :func:`trust_region_newton` -- trust-region Newton with the Steihaug-Toint
  truncated CG (:func:`curvlab._cg.steihaug_cg`) for the subproblem
  :math:`\\min_{\\|p\\| \\le \\Delta} g^\\top p + \\tfrac12 p^\\top H p`.

The Hessian is never formed (a :func:`~curvlab.hessian_operator` on the flattened
point). Each iteration is one jitted call; the outer loop, the stopping tests, the
history and the callback are :func:`curvlab._optim_loop.run_optimizer`'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from curvlab._cg import cg, default_maxiter, steihaug_cg
from curvlab._curvature import hessian_operator
from curvlab._optim_loop import (
    Iterate,
    IterationInfo,
    OptimizeResult,
    armijo,
    check_choice,
    check_common,
    check_nonneg_float,
    check_not_traced,
    check_point,
    expand,
    rel_residual,
    run_optimizer,
)
from curvlab._status import Status
from curvlab._validation import check_positive_int, check_scalar_output

PyTree = Any

__all__ = ["newton_cg", "trust_region_newton"]

_FORCING = ("eisenstat_walker", "quadratic", "superlinear", "constant")


def _flat_fn(f, unravel):
    """``f(x, *args)`` on a flat vector."""

    def ff(y, *args):
        return f(unravel(y), *args)

    return ff


@functools.partial(jax.jit, static_argnames=("f",))
def _value_and_grad(x, args, *, f):
    flat, unravel = ravel_pytree(x)
    return jax.value_and_grad(_flat_fn(f, unravel))(flat, *args)


def _forcing_term(kind, constant, gnorm, gnorm_prev, eta_prev, gtol):
    """Inner CG relative tolerance :math:`\\eta_k` (CG stops at :math:`\\|r\\| \\le \\eta_k \\|g_k\\|`).

    ``"eisenstat_walker"``: choice 2 of Eisenstat & Walker (1996),
    :math:`\\eta_k = 0.9 (\\|g_k\\| / \\|g_{k-1}\\|)^2` safeguarded by
    :math:`\\max(\\eta_k, 0.9 \\eta_{k-1}^2)` when :math:`0.9\\eta_{k-1}^2 > 0.1`, capped at 0.5
    and kept above :math:`0.5\\,\\text{gtol}/\\|g_k\\|` (no oversolving at the end);
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
        eta = max(eta, min(0.5, 0.5 * gtol / gnorm))
    return eta


class _Carry(NamedTuple):
    """What a Newton iteration passes to the next: value, gradient, forcing history, radius."""

    fx: jax.Array
    g: jax.Array
    gnorm: float
    gnorm_prev: float | None
    eta_prev: float | None
    radius: float | None = None


def _start(f, x0, args, extra=None):
    def init():
        fx, g = _value_and_grad(x0, args, f=f)
        gnorm = float(jnp.linalg.norm(g))
        entry = dict(loss=float(fx), grad_norm=gnorm, fun_evals=1, grad_evals=1, **(extra or {}))
        radius = None if extra is None else extra["radius"]
        return Iterate(x0, _Carry(fx, g, gnorm, None, None, radius), entry)

    return init


def _entry(stats, fx, gnorm, **more):
    """History entry of a Newton-type iteration from its jitted step's :class:`_StepStats`."""
    return dict(
        loss=float(fx),
        grad_norm=gnorm,
        cg_iterations=int(stats.cg_iterations),
        cg_residual=float(stats.cg_residual),
        cg_status=int(stats.cg_status),
        step_length=float(stats.step_length),
        step_norm=float(stats.step_norm),
        hvps=int(stats.hvps),
        fun_evals=int(stats.fun_evals),
        grad_evals=1,
        **more,
    )


# ---------------------------------------------------------------------------
# Newton-CG
# ---------------------------------------------------------------------------


class _StepStats(NamedTuple):
    """What one jitted Newton-type iteration reports (device scalars; see :func:`_entry`).

    ``accepted``: the step was taken (Newton-CG: the line search succeeded); ``rho`` and
    ``radius`` (the next trust radius) only for trust-region Newton.
    """

    cg_iterations: jax.Array
    cg_status: jax.Array
    cg_residual: jax.Array
    hvps: jax.Array
    fun_evals: jax.Array
    step_length: jax.Array
    step_norm: jax.Array
    accepted: jax.Array
    rho: jax.Array | None = None
    radius: jax.Array | None = None


def _steepest(op, g, gnorm, dtype):
    """``-g`` scaled by the inverse curvature along ``g`` (a Cauchy-like step), one more HVP."""
    Hg = op.matvec(g)
    c = jnp.vdot(g, Hg) / jnp.vdot(g, g)
    tiny = jnp.finfo(dtype).eps * jnp.linalg.norm(Hg) / jnp.maximum(gnorm, jnp.finfo(dtype).tiny)
    scale = jnp.where(jnp.isfinite(c) & (jnp.abs(c) > tiny), 1.0 / jnp.abs(c), 1.0 / jnp.maximum(gnorm, 1.0))
    return -scale * g


def _newton_direction(op, res, g, gnorm, dtype):
    """CG's iterate when it is a finite descent direction, else :func:`_steepest`.

    Returns ``(p, HVPs spent beyond CG's, descent)``.
    """
    descent = jnp.all(jnp.isfinite(res.x)) & (jnp.vdot(g, res.x) < 0)
    p, extra = lax.cond(
        descent,
        lambda: (res.x, jnp.asarray(0)),
        lambda: (_steepest(op, g, gnorm, dtype), jnp.asarray(1)),
    )
    return p, extra, descent


def _negative_curvature_step(res, g):
    """CG's direction :math:`d` of negative curvature, oriented downhill and scaled to
    :math:`|g^\\top d| / |d^\\top H d|` (no HVP: CG reports the curvature), and whether it is usable."""
    d = res.negative_curvature_direction
    gd = jnp.vdot(g, d)
    scale = jnp.abs(gd) / jnp.abs(res.curvature * jnp.vdot(d, d))
    use = (res.status == Status.NEGATIVE_CURVATURE) & (gd != 0) & jnp.isfinite(scale) & (scale > 0)
    return -jnp.sign(gd) * scale * d, use


def _search(phi, fx, g, p, enlarge, dtype):
    """Armijo backtracking (:math:`c_1 = 10^{-4}`, halving) along ``p``, then doubling when
    ``enlarge`` and ``t = 1`` passed. Returns ``(t, phi(t), ok, evaluations)``."""
    slope = jnp.vdot(g, p)
    t, ft, trials, ok = armijo(phi, fx, slope, phi(jnp.ones((), dtype)), c1=1e-4, shrink=0.5, max_trials=50)
    t, ft, doublings = expand(phi, fx, slope, t, ft, ok & enlarge & (t == 1), c1=1e-4)
    return t, ft, ok, trials + doublings


def _newton_line_search(ff, flat, args, fx, g, p, res, descent, dtype):
    """Line search along ``p`` (enlarging when CG met negative curvature or ``p`` is steepest
    descent) and, with negative curvature, along :func:`_negative_curvature_step` too; the lower
    end point wins. Returns ``(p, t, ok, evaluations)``."""

    def along(direction):
        return lambda t: ff(flat + t * direction, *args)

    met_negative = res.status == Status.NEGATIVE_CURVATURE
    t, ft, ok, evals = _search(along(p), fx, g, p, met_negative | ~descent, dtype)
    p_nc, use_nc = _negative_curvature_step(res, g)
    t2, ft2, ok2, evals2 = lax.cond(
        use_nc,
        lambda: _search(along(p_nc), fx, g, p_nc, jnp.asarray(True), dtype),
        lambda: (jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype), jnp.asarray(False), jnp.asarray(0)),
    )
    better = ok2 & (~ok | (ft2 < ft))
    return jnp.where(better, p_nc, p), jnp.where(better, t2, t), ok | ok2, evals + evals2


@functools.partial(jax.jit, static_argnames=("f", "mode", "cg_maxiter", "line_search"))
def _newton_step(x, fx, g, eta, args, *, f, mode, cg_maxiter, line_search):
    """One Newton-CG iteration: CG to the forcing tolerance ``eta``, direction, line search."""
    flat, unravel = ravel_pytree(x)
    dtype = flat.dtype
    ff = _flat_fn(f, unravel)
    op = hessian_operator(ff, flat, *args, mode=mode)
    gnorm = jnp.linalg.norm(g)
    res = cg(op, -g, rtol=eta, maxiter=cg_maxiter)
    p, extra, descent = _newton_direction(op, res, g, gnorm, dtype)
    if line_search == "armijo":
        p, t, ok, evals = _newton_line_search(ff, flat, args, fx, g, p, res, descent, dtype)
    else:
        t, ok, evals = jnp.ones((), dtype), jnp.isfinite(ff(flat + p, *args)), jnp.asarray(1)
    x_new = jnp.where(ok, flat + t * p, flat)
    f_new, g_new = jax.value_and_grad(ff)(x_new, *args)
    stats = _StepStats(
        cg_iterations=res.num_iterations,
        cg_status=res.status,
        cg_residual=rel_residual(res, gnorm),
        hvps=res.num_matvecs + extra,
        fun_evals=evals + 1,
        step_length=jnp.where(ok, t, 0.0),
        step_norm=jnp.where(ok, t * jnp.linalg.norm(p), 0.0),
        accepted=ok,
    )
    return unravel(x_new), f_new, g_new, stats


def _check_newton_options(solver, f, x0, args, forcing, forcing_constant, cg_maxiter, mode):
    """Validate the options that Newton-CG and trust-region Newton share, before any work."""
    if not callable(f):
        raise TypeError("f must be callable f(x, *args) -> scalar")
    check_not_traced(solver, x0=x0, args=args)
    check_choice("forcing", forcing, _FORCING)
    forcing_constant = check_nonneg_float("forcing_constant", forcing_constant)
    if forcing_constant >= 1:
        raise ValueError(f"forcing_constant must be in [0, 1), got {forcing_constant}")
    if cg_maxiter is not None:
        cg_maxiter = check_positive_int("cg_maxiter", cg_maxiter)
    check_choice("mode", mode, ("fwd_rev", "rev_fwd", "rev_rev"))
    check_point("x0", x0)
    args = tuple(args)
    check_scalar_output(f, x0, *args)
    if cg_maxiter is None:
        cg_maxiter = default_maxiter(ravel_pytree(x0)[0].size)
    return forcing_constant, cg_maxiter, args


def newton_cg(
    f: Callable,
    x0: PyTree,
    *args,
    gtol: float = 1e-6,
    maxiter: int = 100,
    line_search: str = "armijo",
    forcing: str = "eisenstat_walker",
    forcing_constant: float = 0.1,
    cg_maxiter: int | None = None,
    mode: str = "fwd_rev",
    callback: Callable[[IterationInfo], bool | None] | None = None,
    throw: bool = False,
) -> OptimizeResult:
    """Line-search truncated Newton (Newton-CG) for :math:`\\min_x f(x, *args)`.

    At each iterate :math:`x_k` with gradient :math:`g_k` and Hessian :math:`H_k` (never
    formed: a :func:`~curvlab.hessian_operator`), CG solves
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
        Starting point (real floating-point leaves).
    *args
        Extra arguments of ``f`` (traced: new values of the same shapes reuse the compiled step).
    gtol : float
        Stop when :math:`\\|\\nabla f(x_k)\\|_2 \\le` ``gtol`` (``CONVERGED``).
    maxiter : int
        Maximum number of Newton iterations (``MAX_ITERATIONS``).
    line_search : {"armijo", "none"}
        ``"none"`` takes the full step ``t = 1``.
    forcing : {"eisenstat_walker", "quadratic", "superlinear", "constant"}
        Choice of :math:`\\eta_k`: Eisenstat-Walker's choice 2,
        :math:`\\min(\\tfrac12, \\|g_k\\|)`, :math:`\\min(\\tfrac12, \\sqrt{\\|g_k\\|})`, or
        ``forcing_constant``.
    forcing_constant : float
        :math:`\\eta` for ``forcing="constant"``, in ``[0, 1)``.
    cg_maxiter : int, optional
        CG iteration cap per Newton step (default: CG's default, ``10 n`` for small ``n``).
    mode : str
        HVP mode (see :func:`curvlab.hvp`).
    callback : callable, optional
        Called with an :class:`IterationInfo` after every iteration; returning True stops.
    throw : bool
        Raise :class:`~curvlab.SolverError` unless the status is successful.

    Returns
    -------
    OptimizeResult
        ``history["grad_norm"][k]`` is :math:`\\|\\nabla f(x_k)\\|`; ``num_hvps`` counts the CG
        matvecs (CG starts from 0, so none is spent on its initial residual) and the
        steepest-descent HVPs; ``num_fun_evals`` the line-search trials plus one per iterate.
        Status ``LINE_SEARCH_FAILED`` when no step decreased :math:`f`.

    Raises
    ------
    ValueError
        Bad options, a non-finite ``x0``, or a call under ``jax.jit`` (the loop runs in Python).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda x: jnp.sum((x - 2.0) ** 2) + jnp.sum(x**4) / 100
    >>> res = newton_cg(f, jnp.zeros(3), gtol=1e-5)
    >>> res.status.name, [round(float(v), 3) for v in res.x]
    ('CONVERGED', [1.869, 1.869, 1.869])
    """
    gtol, maxiter, throw = check_common(
        "newton_cg", gtol=gtol, maxiter=maxiter, callback=callback, throw=throw
    )
    check_choice("line_search", line_search, ("armijo", "none"))
    forcing_constant, cg_maxiter, args = _check_newton_options(
        "newton_cg", f, x0, args, forcing, forcing_constant, cg_maxiter, mode
    )

    def step(it: Iterate) -> Iterate:
        c = it.carry
        eta = _forcing_term(forcing, forcing_constant, c.gnorm, c.gnorm_prev, c.eta_prev, gtol)
        x, fx, g, stats = _newton_step(
            it.x, c.fx, c.g, jnp.asarray(eta, c.g.dtype), args,
            f=f, mode=mode, cg_maxiter=cg_maxiter, line_search=line_search,
        )  # fmt: skip
        stats = jax.device_get(stats)
        gnorm = float(jnp.linalg.norm(g))
        entry = _entry(stats, fx, gnorm)
        stop = None if bool(stats.accepted) else Status.LINE_SEARCH_FAILED
        return Iterate(x, _Carry(fx, g, gnorm, c.gnorm, eta), entry, stop)

    return run_optimizer(
        "newton_cg", _start(f, x0, args), step, maxiter=maxiter, gtol=gtol, callback=callback, throw=throw
    )


# ---------------------------------------------------------------------------
# Trust-region Newton
# ---------------------------------------------------------------------------


def _trust_ratio(fx, f_trial, predicted):
    """:math:`\\rho = (f(x) - f(x + p)) / (m(0) - m(p))`; ``-inf`` unless finite with a predicted decrease."""
    valid = jnp.isfinite(f_trial) & (predicted > 0)
    return jnp.where(valid, (fx - f_trial) / jnp.where(valid, predicted, 1.0), -jnp.inf)


def _next_radius(rho, res, pnorm, radius, max_radius):
    """Nocedal & Wright's Alg. 4.1: shrink to :math:`\\tfrac14\\min(\\|p\\|, \\Delta)` when
    :math:`\\rho < \\tfrac14`, double (up to :math:`\\Delta_{\\max}`) when :math:`\\rho > \\tfrac34` on the
    boundary, else keep; never 0."""
    on_boundary = (res.status == Status.TRUST_REGION_BOUNDARY) | (res.status == Status.NEGATIVE_CURVATURE)
    on_boundary = on_boundary | (pnorm >= 0.99 * radius)
    new_radius = jnp.where(
        rho < 0.25,
        0.25 * jnp.minimum(pnorm, radius),
        jnp.where((rho > 0.75) & on_boundary, jnp.minimum(2.0 * radius, max_radius), radius),
    )
    return jnp.where(new_radius > 0, new_radius, 0.25 * radius)


@functools.partial(jax.jit, static_argnames=("f", "mode", "cg_maxiter"))
def _tr_step(x, fx, g, radius, rtol, max_radius, accept_ratio, args, *, f, mode, cg_maxiter):
    """One trust-region iteration: Steihaug CG to ``rtol``, ratio, radius update, accept if
    :math:`\\rho >` ``accept_ratio``."""
    flat, unravel = ravel_pytree(x)
    ff = _flat_fn(f, unravel)
    op = hessian_operator(ff, flat, *args, mode=mode)
    gnorm = jnp.linalg.norm(g)
    res = steihaug_cg(op, -g, radius, rtol=rtol, maxiter=cg_maxiter)
    pnorm = jnp.linalg.norm(res.x)
    rho = _trust_ratio(fx, ff(flat + res.x, *args), res.predicted_reduction)
    accept = rho > accept_ratio
    x_new = jnp.where(accept, flat + res.x, flat)
    f_new, g_new = jax.value_and_grad(ff)(x_new, *args)
    stats = _StepStats(
        cg_iterations=res.num_iterations,
        cg_status=res.status,
        cg_residual=rel_residual(res, gnorm),
        hvps=res.num_matvecs,
        fun_evals=jnp.asarray(2),
        step_length=jnp.where(accept, 1.0, 0.0),
        step_norm=jnp.where(accept, pnorm, 0.0),
        accepted=accept,
        rho=rho,
        radius=_next_radius(rho, res, pnorm, radius, max_radius).astype(flat.dtype),
    )
    return unravel(x_new), f_new, g_new, stats


def trust_region_newton(
    f: Callable,
    x0: PyTree,
    *args,
    gtol: float = 1e-6,
    maxiter: int = 100,
    radius0: float = 1.0,
    max_radius: float = 1000.0,
    eta: float = 0.15,
    forcing: str = "eisenstat_walker",
    forcing_constant: float = 0.1,
    cg_maxiter: int | None = None,
    mode: str = "fwd_rev",
    callback: Callable[[IterationInfo], bool | None] | None = None,
    throw: bool = False,
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
    f, x0, *args, gtol, maxiter, cg_maxiter, mode, callback, throw
        As in :func:`newton_cg`.
    radius0 : float
        Initial trust radius :math:`\\Delta_0 > 0`.
    max_radius : float
        :math:`\\Delta_{\\max} \\ge \\Delta_0`.
    eta : float
        Acceptance threshold :math:`\\eta \\in [0, \\tfrac14)`.
    forcing, forcing_constant
        As in :func:`newton_cg`.

    Returns
    -------
    OptimizeResult
        ``rho`` is the trust-region ratio, ``history["radius"]`` the radius after each iteration,
        ``step_length`` 1 for an accepted step and 0 for a rejected one. Status
        ``LINE_SEARCH_FAILED`` when the radius shrank below rounding level.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda x: jnp.sum((x - 2.0) ** 2) + jnp.sum(x**4) / 100
    >>> res = trust_region_newton(f, jnp.zeros(3), gtol=1e-5)
    >>> res.status.name, [round(float(v), 3) for v in res.x]
    ('CONVERGED', [1.869, 1.869, 1.869])
    """
    solver = "trust_region_newton"
    gtol, maxiter, throw = check_common(solver, gtol=gtol, maxiter=maxiter, callback=callback, throw=throw)
    radius0 = check_nonneg_float("radius0", radius0)
    max_radius = check_nonneg_float("max_radius", max_radius)
    if radius0 <= 0:
        raise ValueError(f"radius0 must be > 0, got {radius0}")
    if max_radius < radius0:
        raise ValueError(f"max_radius must be >= radius0 = {radius0}, got {max_radius}")
    eta = check_nonneg_float("eta", eta)
    if eta >= 0.25:
        raise ValueError(f"eta must be in [0, 0.25), got {eta}")
    forcing_constant, cg_maxiter, args = _check_newton_options(
        solver, f, x0, args, forcing, forcing_constant, cg_maxiter, mode
    )

    def step(it: Iterate) -> Iterate:
        c = it.carry
        dtype = c.g.dtype
        rtol = _forcing_term(forcing, forcing_constant, c.gnorm, c.gnorm_prev, c.eta_prev, gtol)
        x, fx, g, stats = _tr_step(
            it.x, c.fx, c.g, jnp.asarray(c.radius, dtype), jnp.asarray(rtol, dtype),
            jnp.asarray(max_radius, dtype), jnp.asarray(eta, dtype), args,
            f=f, mode=mode, cg_maxiter=cg_maxiter,
        )  # fmt: skip
        stats = jax.device_get(stats)
        accepted = bool(stats.accepted)
        gnorm = float(jnp.linalg.norm(g))
        radius = float(stats.radius)
        entry = _entry(stats, fx, gnorm, rho=float(stats.rho), radius=radius)
        scale = max(1.0, float(jnp.linalg.norm(ravel_pytree(x)[0])))
        stop = Status.LINE_SEARCH_FAILED if radius < float(jnp.finfo(dtype).eps) * scale else None
        prev = (c.gnorm, rtol) if accepted else (c.gnorm_prev, c.eta_prev)
        return Iterate(x, _Carry(fx, g, gnorm, *prev, radius), entry, stop)

    return run_optimizer(
        solver,
        _start(f, x0, args, extra={"radius": radius0}),
        step,
        maxiter=maxiter,
        gtol=gtol,
        callback=callback,
        throw=throw,
        extra_keys=("radius",),
    )

"""Conjugate gradient for symmetric positive definite operators, with its full history.

:func:`cg` solves :math:`A x = b` for a symmetric positive definite operator
:math:`A` (any :class:`~curvlab._operators.LinearOperator`, e.g. a damped
Hessian or Gauss-Newton matrix), optionally preconditioned by
:math:`P \\approx A^{-1}` (see :mod:`curvlab.preconditioners`). Equivalently it
minimizes the quadratic

.. math:: q(x) = \\tfrac12 x^\\top A x - b^\\top x

over the Krylov spaces :math:`x_0 + \\mathcal K_k(PA, P r_0)`. The whole loop is
one jit-compiled ``lax.while_loop`` that records, in preallocated buffers, the
residual norms, :math:`q(x_k)`, optionally the :math:`A`-norm errors, and the
Lanczos tridiagonal implied by the CG coefficients, so that a plot can show how
it converged. CG never returns garbage: a direction of non-positive curvature
(an indefinite :math:`A`) or a non-finite number stops it with a
:class:`~curvlab._status.Status` saying so (the one status table shared by every
solver), and the last good iterate.

:func:`steihaug_cg` is the truncated CG of Steihaug and Toint for trust-region
subproblems, and :func:`condition_bound` the classical convergence bound.

Preconditioned CG here (PCG) is, with :math:`z = P r`:

.. math::
    r_0 = b - A x_0,\\ z_0 = P r_0,\\ p_0 = z_0,\\qquad
    \\gamma_k = \\frac{r_k^\\top z_k}{p_k^\\top A p_k},\\
    x_{k+1} = x_k + \\gamma_k p_k,\\ r_{k+1} = r_k - \\gamma_k A p_k,\\
    \\beta_k = \\frac{r_{k+1}^\\top z_{k+1}}{r_k^\\top z_k},\\ p_{k+1} = z_{k+1} + \\beta_k p_k .
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from curvlab._operators import LinearOperator
from curvlab._status import RUNNING, Status, as_status, check_throw, converged_of, message_of, raise_if_failed
from curvlab._tridiagonal import host_eigvals
from curvlab._validation import check_matvec_output, check_positive_int, check_real_floating, is_concrete

__all__ = [
    "CGResult",
    "SteihaugResult",
    "ConditionEstimate",
    "cg",
    "steihaug_cg",
    "condition_estimate",
    "condition_bound",
    "martens_schedule",
]


def _run_message(status, num_iterations, operator_psd=None) -> str:
    """The status table's message, the iteration count and, for ``NEGATIVE_CURVATURE``, the operator's tag."""
    if not is_concrete(status) or np.ndim(status) != 0:
        return message_of(status)
    s = Status(int(status))
    text = s.message
    if s is Status.NEGATIVE_CURVATURE and operator_psd is not None:
        if bool(operator_psd):
            text += (
                ". The operator is tagged positive semidefinite, so this direction is (numerically) in "
                "its null space: damp it"
            )
        else:
            text += (
                ". The operator is not tagged positive semidefinite ('psd' not in op.tags): a Hessian "
                "away from a minimum is indefinite"
            )
    return f"{text} (after {int(num_iterations)} iterations)"


class CGResult(NamedTuple):
    """Result of :func:`cg`. Histories have ``maxiter + 1`` entries (entry ``k`` is iterate ``k``),
    NaN past ``num_iterations``.

    Attributes
    ----------
    x : (n,) array
        Last iterate :math:`x_k` (the solution when converged).
    residual_norms : (maxiter + 1,) array
        :math:`\\|r_k\\|_2` of the recursively updated residual, entry 0 is :math:`\\|b - A x_0\\|`.
    num_iterations : int array
        Number of accepted CG steps :math:`k`.
    status : Status or int32 array
        A :class:`~curvlab._status.Status` (``CONVERGED``, ``MAX_ITERATIONS``,
        ``NEGATIVE_CURVATURE``, ``NONFINITE``, ``INDEFINITE_PRECONDITIONER`` or
        ``RELATIVE_PROGRESS``) when concrete, the ``int32`` code when traced; see :attr:`message`.
    num_matvecs : int array
        Products with :math:`A`: one per loop pass (including a pass that stopped on negative
        curvature or a non-finite value), one for :math:`r_0` with a warm start, and one per
        iterate (plus one) for ``anorm_errors`` when ``x_true`` is given.
    quadratic_values : (maxiter + 1,) array
        :math:`q(x_k) = \\tfrac12 x_k^\\top A x_k - b^\\top x_k = -\\tfrac12 (b + r_k)^\\top x_k`
        (no extra matvec).
    anorm_errors : (maxiter + 1,) array
        :math:`\\|x_k - x_\\star\\|_A` when ``x_true`` was given (one extra matvec per step), else NaN.
    lanczos_alpha, lanczos_beta : (maxiter,) arrays
        Diagonal and off-diagonal of the Lanczos tridiagonal :math:`T_k` of :math:`PA` implied by CG:
        :math:`\\alpha_j = 1/\\gamma_j + \\beta_{j-1}/\\gamma_{j-1}`,
        :math:`\\eta_j = \\sqrt{\\beta_j}/\\gamma_j`. :math:`T_k` uses the first ``k`` alphas and
        ``k - 1`` betas; see :func:`condition_estimate`.
    negative_curvature_direction : (n,) array
        The search direction :math:`p` with :math:`p^\\top A p \\le 0` when status is
        ``NEGATIVE_CURVATURE``, zeros otherwise.
    curvature : array
        :math:`p^\\top A p / p^\\top p` of that direction (NaN unless ``NEGATIVE_CURVATURE``).
    saved_iterates : (m, n) array
        With ``save_iterates=True``: :math:`x_k` at the iterations ``saved_iterations``
        (Martens' geometric schedule :math:`\\lceil 1.3^j \\rceil`), NaN rows not reached; else ``(0, n)``.
    saved_iterations : (m,) int32 array
        The iteration numbers of the rows of ``saved_iterates``.
    operator_psd : bool
        Whether the operator was tagged positive semidefinite (``"psd" in op.tags``); it words
        the ``NEGATIVE_CURVATURE`` message.
    """

    x: jax.Array
    residual_norms: jax.Array
    num_iterations: jax.Array
    status: Status | jax.Array
    num_matvecs: jax.Array
    quadratic_values: jax.Array
    anorm_errors: jax.Array
    lanczos_alpha: jax.Array
    lanczos_beta: jax.Array
    negative_curvature_direction: jax.Array
    curvature: jax.Array
    saved_iterates: jax.Array
    saved_iterations: jax.Array
    operator_psd: bool | jax.Array = False

    @property
    def message(self) -> str:
        """Why CG stopped: the status table's message and the iteration count."""
        return _run_message(self.status, self.num_iterations, self.operator_psd)

    @property
    def converged(self):
        """``True`` for ``CONVERGED`` and ``RELATIVE_PROGRESS`` (a traced boolean under ``jit``)."""
        return converged_of(self.status)


def _steihaug_converged(status):
    """Steihaug's step solves the subproblem on ``CONVERGED``, ``TRUST_REGION_BOUNDARY`` and
    ``NEGATIVE_CURVATURE`` (the step then follows that direction to the boundary)."""
    nc, ok = status == Status.NEGATIVE_CURVATURE, converged_of(status)
    if is_concrete(status) and np.ndim(status) == 0:
        return bool(nc) or ok
    return nc | ok


class SteihaugResult(NamedTuple):
    """Result of :func:`steihaug_cg`.

    Attributes
    ----------
    x : (n,) array
        The step :math:`p` (approximately) minimizing :math:`m(p) = g^\\top p + \\tfrac12 p^\\top B p`
        subject to :math:`\\|p\\| \\le \\Delta` (with ``b = -g``).
    status : Status or int32 array
        ``CONVERGED`` (interior, residual small), ``TRUST_REGION_BOUNDARY`` (a CG step left the
        trust region; the step was cut at the boundary), ``NEGATIVE_CURVATURE`` (went to the
        boundary along a direction of non-positive curvature), ``MAX_ITERATIONS`` or ``NONFINITE``.
    residual_norms : (maxiter + 1,) array
        :math:`\\|b - B p_k\\|`, NaN-padded.
    num_iterations : int array
    num_matvecs : int array
        Products with :math:`B`: one per loop pass.
    step_norm : array
        :math:`\\|p\\|` (the :math:`P^{-1}`-norm :math:`\\sqrt{p^\\top P^{-1} p}` when preconditioned).
    predicted_reduction : array
        :math:`m(0) - m(p) = b^\\top p - \\tfrac12 p^\\top B p \\ge 0`.
    """

    x: jax.Array
    status: Status | jax.Array
    residual_norms: jax.Array
    num_iterations: jax.Array
    num_matvecs: jax.Array
    step_norm: jax.Array
    predicted_reduction: jax.Array

    @property
    def message(self) -> str:
        """Why truncated CG stopped: the status table's message and the iteration count."""
        return _run_message(self.status, self.num_iterations)

    @property
    def converged(self):
        """``True`` when the step solves the subproblem: ``CONVERGED``, ``TRUST_REGION_BOUNDARY`` or
        ``NEGATIVE_CURVATURE`` (a boundary step along that direction)."""
        return _steihaug_converged(self.status)


class ConditionEstimate(NamedTuple):
    """Extreme eigenvalues of the CG Lanczos tridiagonal and their ratio (Ritz values of :math:`PA`)."""

    min_eigenvalue: float
    max_eigenvalue: float
    condition_number: float


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def default_maxiter(n: int) -> int:
    """Default iteration cap: ``10 n`` for small problems, but at most ``max(n, 1000)``.

    In exact arithmetic CG ends within ``n`` steps; in floating point an
    ill-conditioned problem can need a few times more, so small problems get
    the ``10 n`` of SciPy and ``jax.scipy``. For large ``n`` the cap keeps the
    history buffers (``maxiter + 1`` entries each) small.
    """
    return max(min(10 * n, max(n, 1000)), 1)


def martens_schedule(maxiter: int, base: float = 1.3) -> np.ndarray:
    """Distinct iterations :math:`\\lceil b^j \\rceil \\le` ``maxiter``, ascending (iterates saved)."""
    out, j = [], 0
    while True:
        it = math.ceil(base**j - 1e-12)
        if it > maxiter:
            break
        if not out or it != out[-1]:
            out.append(it)
        j += 1
    return np.asarray(out, dtype=np.int32)


def _check_tol(name, value):
    if is_concrete(value):
        v = np.asarray(value)
        if v.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _check_vector(name, v, n):
    v = jnp.asarray(v)
    if v.ndim != 1 or v.shape[0] != n:
        raise ValueError(
            f"{name} must be a 1-D array of length n = {n} (the operator's size), got shape {v.shape}"
        )
    check_real_floating(name, v)
    if is_concrete(v) and not bool(jnp.all(jnp.isfinite(v))):
        raise ValueError(f"{name} contains non-finite values (NaN or infinity)")
    return v


def _prepare_inputs(solver, op, b, x0, preconditioner, x_true, rtol, atol, maxiter):
    from curvlab.preconditioners import _as_real_operator, _check_real_operator, as_preconditioner

    op = _as_real_operator("op", op)
    n = op.shape[0]
    b = _check_vector("b", b, n)
    dtype = jnp.result_type(b.dtype, op.dtype)
    b = b.astype(dtype)
    # x0 = None stays None: the solver then starts from 0 without spending a matvec on r0 = b.
    x0 = None if x0 is None else _check_vector("x0", x0, n).astype(dtype)
    if x_true is not None:
        x_true = _check_vector("x_true", x_true, n).astype(dtype)
    _check_tol("rtol", rtol)
    _check_tol("atol", atol)
    maxiter = default_maxiter(n) if maxiter is None else check_positive_int("maxiter", maxiter, minimum=0)
    precond = as_preconditioner(preconditioner, n=n, dtype=dtype)
    if precond is not None:
        if precond.shape[0] != n:
            raise ValueError(f"preconditioner has size {precond.shape[0]}, the operator has size {n}")
        _check_real_operator("preconditioner", precond)
    return op, b, x0, precond, x_true, dtype, maxiter


def _make_mv(fn, n, dtype, what):
    """``fn`` checked once (abstractly, at trace time) to map ``(n,)`` to real ``(n,)``, cast to ``dtype``."""
    check_matvec_output(what, fn, n, dtype)

    def mv(v):
        return fn(v).astype(dtype)

    return mv


def _neg_curv(pAp, pp, ApAp, dtype):
    """Non-positive curvature test with a tiny relative threshold: p^T A p <= eps ||p|| ||A p||."""
    eps = jnp.finfo(dtype).eps
    return pAp <= eps * jnp.sqrt(pp * ApAp)


# ---------------------------------------------------------------------------
# CG
# ---------------------------------------------------------------------------


class _CGSetup(NamedTuple):
    """What every phase of one CG solve reads (built once per trace, closed over by the loop).

    ``mv`` is :math:`v \\mapsto Av` and ``pc`` :math:`r \\mapsto Pr` (``None``: no
    preconditioner), both checked and cast to ``dtype``; ``tol`` is
    :math:`\\max(\\text{rtol}\\,\\|b\\|, \\text{atol})`; ``schedule`` the iterations whose
    iterates are saved (empty unless ``save_iterates``).
    """

    mv: Callable
    pc: Callable | None
    b: jax.Array
    x_true: jax.Array | None
    tol: jax.Array
    martens_eps: jax.Array
    stop_rule: str
    schedule: np.ndarray

    @property
    def matvecs_per_iteration(self) -> int:
        """One product with :math:`p`, and one for the :math:`A`-norm error when ``x_true`` is given."""
        return 1 + int(self.x_true is not None)


class _CGHistory(NamedTuple):
    """Preallocated per-iteration buffers (NaN where not reached): entry ``k`` of ``res``,
    ``qvals``, ``aerr`` is iterate ``k``; ``gammas``/``betas`` the step coefficients of step ``k``;
    ``saved`` the iterates at ``schedule``, ``save_ptr`` the next row to fill."""

    res: jax.Array
    qvals: jax.Array
    aerr: jax.Array
    gammas: jax.Array
    betas: jax.Array
    saved: jax.Array
    save_ptr: jax.Array


class _CGState(NamedTuple):
    """The ``lax.while_loop`` carry: iterate ``k`` with residual :math:`r`, direction :math:`p`,
    :math:`r^\\top P r`, the status (``RUNNING`` while going on), the negative-curvature
    direction and its curvature, the matvec count and the history."""

    k: jax.Array
    status: jax.Array
    x: jax.Array
    r: jax.Array
    p: jax.Array
    rz: jax.Array
    ncdir: jax.Array
    curv: jax.Array
    matvecs: jax.Array
    hist: _CGHistory


class _CGStep(NamedTuple):
    """One tentative CG step from :class:`_CGState` (before it is accepted or refused)."""

    x: jax.Array
    r: jax.Array
    p: jax.Array
    rz: jax.Array
    rnorm: jax.Array
    gamma: jax.Array
    beta: jax.Array
    pAp: jax.Array
    pp: jax.Array
    ApAp: jax.Array


def _cg_setup(
    op, b, precond, x_true, rtol, atol, martens_eps, *, stop_rule, save_iterates, maxiter, solver="cg"
):
    """The :class:`_CGSetup` of a solve (abstract matvec checks, traced tolerances, save schedule)."""
    n, dtype = b.shape[0], b.dtype
    mv = _make_mv(op.prepare(), n, dtype, solver)
    pc = None if precond is None else _make_mv(precond.prepare(), n, dtype, f"{solver} (preconditioner)")
    rtol, atol, martens_eps = (jnp.asarray(t, dtype) for t in (rtol, atol, martens_eps))
    tol = jnp.maximum(rtol * jnp.linalg.norm(b), atol)
    schedule = martens_schedule(maxiter) if save_iterates else np.zeros(0, np.int32)
    return _CGSetup(mv, pc, b, x_true, tol, martens_eps, stop_rule, schedule)


def _precondition(setup: _CGSetup, r):
    """:math:`z = P r`, :math:`r^\\top z` and :math:`\\|r\\|` (unpreconditioned: the root of the former)."""
    z = r if setup.pc is None else setup.pc(r)
    rz = jnp.vdot(r, z)
    rnorm = jnp.sqrt(rz) if setup.pc is None else jnp.linalg.norm(r)
    return z, rz, rnorm


def _quadratic_value(setup: _CGSetup, x, r):
    """:math:`q(x) = \\tfrac12 x^\\top A x - b^\\top x = -\\tfrac12 (b + r)^\\top x`, :math:`r = b - Ax`."""
    return -0.5 * jnp.vdot(setup.b + r, x)


def _anorm_error(setup: _CGSetup, x):
    """:math:`\\|x - x_\\star\\|_A` (one matvec), NaN without ``x_true``."""
    if setup.x_true is None:
        return jnp.asarray(jnp.nan, setup.b.dtype)
    e = x - setup.x_true
    return jnp.sqrt(jnp.maximum(jnp.vdot(e, setup.mv(e)), 0.0))


def _initial_status(setup: _CGSetup, rz0, rnorm0):
    """``CONVERGED`` when :math:`\\|r_0\\| \\le` tol, ``NONFINITE``, ``INDEFINITE_PRECONDITIONER``
    when :math:`r_0^\\top P r_0 \\le 0`, else ``RUNNING``."""
    status = jnp.where(
        rnorm0 <= setup.tol,
        Status.CONVERGED,
        jnp.where(jnp.isfinite(rz0) & jnp.isfinite(rnorm0), RUNNING, Status.NONFINITE),
    ).astype(jnp.int32)
    return jnp.where((status == RUNNING) & (rz0 <= 0), Status.INDEFINITE_PRECONDITIONER, status).astype(
        jnp.int32
    )


def _cg_init(setup: _CGSetup, x0, maxiter: int) -> _CGState:
    """Iterate 0: :math:`r_0 = b - A x_0` (:math:`b`, no matvec, on a cold start), :math:`p_0 = P r_0`."""
    b = setup.b
    n, dtype = b.shape[0], b.dtype
    nan = jnp.asarray(jnp.nan, dtype)
    warm = x0 is not None
    if not warm:
        x0, r0 = jnp.zeros_like(b), b
    else:
        # b = 0: the solution is 0 whatever x0 is (as in SciPy).
        x0 = jnp.where(jnp.linalg.norm(b) == 0, jnp.zeros_like(x0), x0)
        r0 = b - setup.mv(x0)
    z0, rz0, rnorm0 = _precondition(setup, r0)
    hist = _CGHistory(
        res=jnp.full(maxiter + 1, nan).at[0].set(rnorm0),
        qvals=jnp.full(maxiter + 1, nan).at[0].set(_quadratic_value(setup, x0, r0)),
        aerr=jnp.full(maxiter + 1, nan).at[0].set(_anorm_error(setup, x0)),
        gammas=jnp.full(maxiter, nan),
        betas=jnp.full(maxiter, nan),
        saved=jnp.full((setup.schedule.shape[0], n), nan, dtype),
        save_ptr=jnp.asarray(0, jnp.int32),
    )
    return _CGState(
        k=jnp.asarray(0, jnp.int32),
        status=_initial_status(setup, rz0, rnorm0),
        x=x0,
        r=r0,
        p=z0,
        rz=rz0,
        ncdir=jnp.zeros(n, dtype),
        curv=nan,
        matvecs=jnp.asarray(int(warm) + int(setup.x_true is not None), jnp.int32),
        hist=hist,
    )


def _cg_step(setup: _CGSetup, s: _CGState) -> _CGStep:
    """The PCG recurrences of the module docstring: :math:`\\gamma, x, r, z, \\beta, p`."""
    Ap = setup.mv(s.p)
    pAp, pp, ApAp = jnp.vdot(s.p, Ap), jnp.vdot(s.p, s.p), jnp.vdot(Ap, Ap)
    gamma = s.rz / pAp
    x = s.x + gamma * s.p
    r = s.r - gamma * Ap
    z, rz, rnorm = _precondition(setup, r)
    beta = rz / s.rz
    return _CGStep(x, r, z + beta * s.p, rz, rnorm, gamma, beta, pAp, pp, ApAp)


def _martens_stalled(setup: _CGSetup, qvals, k1, q):
    """Martens' relative-progress test at iteration :math:`i` = ``k1`` with gap
    :math:`k = \\max(10, \\lceil 0.1 i \\rceil)`: :math:`i > k`, :math:`q_i < 0`,
    :math:`(q_i - q_{i-k}) / q_i < k \\varepsilon`."""
    gap = jnp.maximum(10, jnp.ceil(0.1 * k1).astype(jnp.int32))
    q_old = qvals[jnp.maximum(k1 - gap, 0)]
    return (k1 > gap) & (q < 0) & ((q - q_old) / q < gap * setup.martens_eps)


def _step_status(setup: _CGSetup, qvals, k1, q, step: _CGStep, finite, negative):
    """Status after a step, first reason wins: ``NONFINITE``, ``NEGATIVE_CURVATURE``,
    ``CONVERGED`` (tolerance), ``RELATIVE_PROGRESS`` (Martens rule), ``INDEFINITE_PRECONDITIONER``
    (breakdown :math:`r^\\top P r \\le 0`), else ``RUNNING``."""
    status = jnp.where(step.rnorm <= setup.tol, Status.CONVERGED, RUNNING)
    if setup.stop_rule == "martens":
        stalled = _martens_stalled(setup, qvals, k1, q)
        status = jnp.where(status == RUNNING, jnp.where(stalled, Status.RELATIVE_PROGRESS, RUNNING), status)
    status = jnp.where((status == RUNNING) & (step.rz <= 0), Status.INDEFINITE_PRECONDITIONER, status)
    return jnp.where(finite, jnp.where(negative, Status.NEGATIVE_CURVATURE, status), Status.NONFINITE).astype(
        jnp.int32
    )


def _record(setup: _CGSetup, hist: _CGHistory, k, accept, step: _CGStep, q) -> _CGHistory:
    """Write step ``k``'s entries (only when accepted) and save :math:`x_{k+1}` if it is on the schedule."""
    k1 = k + 1

    def put(buf, i, val):
        return buf.at[i].set(jnp.where(accept, val, buf[i]))

    saved, save_ptr, m = hist.saved, hist.save_ptr, setup.schedule.shape[0]
    if m:
        ptr = jnp.minimum(save_ptr, m - 1)
        hit = accept & (save_ptr < m) & (jnp.asarray(setup.schedule, jnp.int32)[ptr] == k1)
        saved = saved.at[ptr].set(jnp.where(hit, step.x, saved[ptr]))
        save_ptr = save_ptr + hit.astype(jnp.int32)
    return _CGHistory(
        res=put(hist.res, k1, step.rnorm),
        qvals=put(hist.qvals, k1, q),
        aerr=hist.aerr if setup.x_true is None else put(hist.aerr, k1, _anorm_error(setup, step.x)),
        gammas=put(hist.gammas, k, step.gamma),
        betas=put(hist.betas, k, step.beta),
        saved=saved,
        save_ptr=save_ptr,
    )


def _cg_iteration(setup: _CGSetup, s: _CGState) -> _CGState:
    """One CG iteration: a step, its stopping tests, and the history; a refused step (negative
    curvature, non-finite) keeps the last iterate and records the direction of negative curvature."""
    step = _cg_step(setup, s)
    curv_ok = jnp.isfinite(step.pAp) & jnp.isfinite(step.ApAp)
    negative = curv_ok & _neg_curv(step.pAp, step.pp, step.ApAp, setup.b.dtype)
    finite = curv_ok & (negative | (jnp.isfinite(step.rz) & jnp.isfinite(step.rnorm)))
    accept = finite & ~negative
    q = _quadratic_value(setup, step.x, step.r)
    sel = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
    return _CGState(
        k=jnp.where(accept, s.k + 1, s.k),
        status=_step_status(setup, s.hist.qvals, s.k + 1, q, step, finite, negative),
        x=sel(step.x, s.x),
        r=sel(step.r, s.r),
        p=sel(step.p, s.p),
        rz=sel(step.rz, s.rz),
        ncdir=jnp.where(negative, s.p, s.ncdir),
        curv=jnp.where(negative, step.pAp / step.pp, s.curv),
        matvecs=s.matvecs + setup.matvecs_per_iteration,
        hist=_record(setup, s.hist, s.k, accept, step, q),
    )


def _cg_result(setup: _CGSetup, s: _CGState, maxiter: int) -> CGResult:
    """``RUNNING`` at the cap becomes ``MAX_ITERATIONS``; the Lanczos tridiagonal from the coefficients."""
    h = s.hist
    status = jnp.where(s.status == RUNNING, Status.MAX_ITERATIONS, s.status).astype(jnp.int32)
    alpha, beta = _lanczos_from_cg(h.gammas, h.betas) if maxiter > 0 else (h.gammas, h.betas)
    return CGResult(
        x=s.x,
        residual_norms=h.res,
        num_iterations=s.k,
        status=status,
        num_matvecs=s.matvecs,
        quadratic_values=h.qvals,
        anorm_errors=h.aerr,
        lanczos_alpha=alpha,
        lanczos_beta=beta,
        negative_curvature_direction=s.ncdir,
        curvature=s.curv,
        saved_iterates=h.saved,
        saved_iterations=jnp.asarray(setup.schedule, jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("maxiter", "stop_rule", "save_iterates"))
def _cg_impl(op, b, x0, precond, x_true, rtol, atol, martens_eps, *, maxiter, stop_rule, save_iterates):
    """The whole solve, one compiled ``lax.while_loop``: setup, init, iterations, result."""
    setup = _cg_setup(
        op, b, precond, x_true, rtol, atol, martens_eps,
        stop_rule=stop_rule, save_iterates=save_iterates, maxiter=maxiter,
    )  # fmt: skip

    def running(s):
        return (s.status == RUNNING) & (s.k < maxiter)

    s = _cg_init(setup, x0, maxiter)
    if maxiter > 0:
        s = lax.while_loop(running, functools.partial(_cg_iteration, setup), s)
    return _cg_result(setup, s, maxiter)


def _lanczos_from_cg(gammas, betas):
    """Lanczos tridiagonal from CG coefficients (Golub & Van Loan §11.3; Saad §6.7.3)."""
    prev = jnp.concatenate([jnp.zeros(1, gammas.dtype), betas[:-1] / gammas[:-1]])
    alpha = 1.0 / gammas + prev
    beta = jnp.sqrt(jnp.maximum(betas, 0.0)) / gammas
    return alpha, beta


def cg(
    op: LinearOperator | jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    *,
    x0: jax.typing.ArrayLike | None = None,
    preconditioner: Any = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    maxiter: int | None = None,
    x_true: jax.typing.ArrayLike | None = None,
    stop_rule: str = "residual",
    martens_eps: float = 5e-4,
    save_iterates: bool = False,
    throw: bool = False,
) -> CGResult:
    """Solve :math:`A x = b` by (preconditioned) conjugate gradient, recording the history.

    Stops at the first of: :math:`\\|r_k\\| \\le \\max(\\text{rtol}\\,\\|b\\|, \\text{atol})`
    (``CONVERGED``); ``maxiter`` steps (``MAX_ITERATIONS``); a search direction with
    :math:`p^\\top A p \\le \\epsilon\\,\\|p\\|\\,\\|Ap\\|` (``NEGATIVE_CURVATURE``: the last iterate
    and the direction are returned); a NaN or infinity (``NONFINITE``: the last finite
    iterate is returned); :math:`r^\\top P r \\le 0` with :math:`r \\ne 0`
    (``INDEFINITE_PRECONDITIONER``);
    and, with ``stop_rule="martens"``, Martens' (2010, §4.4) relative-progress test
    at iteration :math:`i`:

    .. math:: i > k,\\quad q(x_i) < 0,\\quad \\frac{q(x_i) - q(x_{i-k})}{q(x_i)} < k\\,\\varepsilon,
              \\qquad k = \\max(10, \\lceil 0.1\\,i \\rceil)

    (``RELATIVE_PROGRESS``), checked in addition to the residual test (pass ``rtol=0`` to
    use it alone).

    Parameters
    ----------
    op : LinearOperator or (n, n) array
        Symmetric positive definite :math:`A`. Called through ``op.prepare()`` once per solve.
    b : (n,) array
        Right-hand side. Must be finite.
    x0 : (n,) array, optional
        Starting point (default 0). Ignored when ``b = 0`` (the answer is then ``x = 0``).
    preconditioner : None, LinearOperator, callable ``r -> z``, or array
        :math:`P \\approx A^{-1}`, symmetric positive definite, applied as ``z = P(r)``; a 1-D
        array is the diagonal of :math:`P`. See :func:`curvlab.preconditioners.as_preconditioner`.
    rtol, atol : float
        Residual tolerances (see above); ``>= 0``. They are traced: changing them does not recompile.
    maxiter : int, optional
        Iteration cap and history buffer length (static). Default :func:`default_maxiter`:
        ``10 n`` for small ``n``, at most ``max(n, 1000)``, the same with or without a preconditioner.
    x_true : (n,) array, optional
        The exact solution; then ``anorm_errors`` records :math:`\\|x_k - x_\\star\\|_A`
        at the cost of one more matvec per step.
    stop_rule : {"residual", "martens"}
    martens_eps : float
        :math:`\\varepsilon` of the Martens rule.
    save_iterates : bool
        Save :math:`x_k` at :math:`k = \\lceil 1.3^j \\rceil` (for Hessian-free CG backtracking).
    throw : bool
        Raise :class:`~curvlab._status.SolverError` with the message unless the run converged
        (``CONVERGED`` or ``RELATIVE_PROGRESS``). Under ``jax.jit`` the status is not known at
        trace time, so ``throw=True`` raises a ``ValueError`` saying so: check ``result.converged``
        after the call instead.

    Returns
    -------
    CGResult
        ``status`` is a :class:`~curvlab._status.Status` member (the ``int32`` code under ``jit``).
        On an operator not tagged positive semidefinite, the ``NEGATIVE_CURVATURE`` message says so.

    Raises
    ------
    TypeError
        Complex or integer ``b``/``x0``/``x_true``, a complex operator or preconditioner, or a
        non-bool ``throw``.
    ValueError
        Wrong shapes (including a matvec whose output is not ``(n,)``, found abstractly before any
        product), non-finite ``b``, negative tolerances.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = cg(A, jnp.array([1.0, 2.0]), rtol=1e-5)
    >>> [round(float(v), 6) for v in res.x]
    [0.090909, 0.636364]
    >>> res.status.name, int(res.num_iterations), res.converged
    ('CONVERGED', 2, True)
    """
    throw = check_throw("cg", throw)
    if stop_rule not in ("residual", "martens"):
        raise ValueError(f"stop_rule must be 'residual' or 'martens', got {stop_rule!r}")
    _check_tol("martens_eps", martens_eps)
    op, b, x0, precond, x_true, dtype, maxiter = _prepare_inputs(
        "cg", op, b, x0, preconditioner, x_true, rtol, atol, maxiter
    )
    res = _cg_impl(
        op,
        b,
        x0,
        precond,
        x_true,
        rtol,
        atol,
        martens_eps,
        maxiter=maxiter,
        stop_rule=stop_rule,
        save_iterates=bool(save_iterates),
    )
    res = res._replace(status=as_status(res.status), operator_psd="psd" in getattr(op, "tags", frozenset()))
    raise_if_failed("cg", res.status, throw)
    return res


def condition_estimate(result: CGResult) -> ConditionEstimate:
    """Extreme eigenvalues of the Lanczos tridiagonal :math:`T_k` built from a CG run.

    After :math:`k` steps, the eigenvalues of :math:`T_k` (Ritz values) approximate
    those of :math:`PA` (:math:`A` without preconditioner), the extreme ones first;
    ``condition_number`` is their ratio, a lower bound on :math:`\\kappa(PA)` that
    tightens as :math:`k` grows. NaN when no step was taken. Runs on the host (NumPy).
    """
    k = int(result.num_iterations)
    if k == 0:
        return ConditionEstimate(math.nan, math.nan, math.nan)
    a = np.asarray(result.lanczos_alpha[:k], dtype=np.float64)
    e = np.asarray(result.lanczos_beta[: k - 1], dtype=np.float64)
    w = host_eigvals(a, e)
    lo, hi = float(w[0]), float(w[-1])
    return ConditionEstimate(lo, hi, hi / lo if lo > 0 else math.inf)


def condition_bound(
    condition_number: jax.typing.ArrayLike, num_iterations: jax.typing.ArrayLike
) -> jax.Array:
    """Classical CG convergence bound in the :math:`A`-norm, for condition number :math:`\\kappa`:

    .. math:: \\frac{\\|x_k - x_\\star\\|_A}{\\|x_0 - x_\\star\\|_A}
              \\le 2\\left(\\frac{\\sqrt\\kappa - 1}{\\sqrt\\kappa + 1}\\right)^k .

    Parameters
    ----------
    condition_number : float or array
        :math:`\\kappa = \\lambda_{\\max} / \\lambda_{\\min} \\ge 1` (of :math:`PA` when preconditioned).
    num_iterations : int or array
        :math:`k \\ge 0`. Broadcasts against ``condition_number``.

    Examples
    --------
    >>> [round(v, 6) for v in condition_bound(4.0, [0, 1, 2]).tolist()]
    [2.0, 0.666667, 0.222222]
    """
    kappa = jnp.asarray(condition_number, dtype=jnp.result_type(float))
    if is_concrete(kappa) and bool(jnp.any(~(kappa >= 1))):
        raise ValueError(f"condition_number must be >= 1, got {condition_number}")
    k = jnp.asarray(num_iterations)
    if is_concrete(k) and bool(jnp.any(k < 0)):
        raise ValueError(f"num_iterations must be >= 0, got {num_iterations}")
    s = jnp.sqrt(kappa)
    return 2.0 * ((s - 1.0) / (s + 1.0)) ** k


# ---------------------------------------------------------------------------
# Steihaug-Toint truncated CG
# ---------------------------------------------------------------------------


class _STState(NamedTuple):
    """Steihaug's loop carry: step ``x`` (called :math:`p` in the docstrings), residual, direction
    ``d``, :math:`r^\\top P r`, the :math:`P^{-1}`-inner products :math:`x^\\top M x, x^\\top M d,
    d^\\top M d` that locate the boundary, the residual history and the matvec count."""

    k: jax.Array
    status: jax.Array
    x: jax.Array
    r: jax.Array
    d: jax.Array
    rz: jax.Array
    xMx: jax.Array
    xMd: jax.Array
    dMd: jax.Array
    res: jax.Array
    matvecs: jax.Array


def _boundary_tau(xMx, xMd, dMd, radius):
    """Positive root of ||x + tau d||^2 = radius^2 (stable form, xMd >= 0 in Steihaug's CG)."""
    slack = jnp.maximum(radius**2 - xMx, 0.0)
    disc = jnp.sqrt(xMd**2 + dMd * slack)
    return jnp.where(xMd >= 0, slack / (xMd + disc), (disc - xMd) / dMd)


def _st_init(setup: _CGSetup, maxiter: int) -> _STState:
    """Step 0: :math:`p = 0`, :math:`r = b`, :math:`d = P b`; ``CONVERGED`` if :math:`\\|b\\| \\le` tol."""
    b, n, dtype = setup.b, setup.b.shape[0], setup.b.dtype
    bnorm = jnp.linalg.norm(b)
    z0 = b if setup.pc is None else setup.pc(b)
    rz0 = jnp.vdot(b, z0)
    zero = jnp.zeros((), dtype)
    return _STState(
        k=jnp.asarray(0, jnp.int32),
        status=jnp.where(bnorm <= setup.tol, Status.CONVERGED, RUNNING).astype(jnp.int32),
        x=jnp.zeros(n, dtype),
        r=b,
        d=z0,
        rz=rz0,
        xMx=zero,
        xMd=zero,
        dMd=rz0,
        res=jnp.full(maxiter + 1, jnp.asarray(jnp.nan, dtype)).at[0].set(bnorm),
        matvecs=jnp.asarray(0, jnp.int32),
    )


def _st_norms(setup: _CGSetup, s: _STState, x, d, rz, beta, gamma, outside, xMx_new, radius):
    """:math:`x^\\top M x, x^\\top M d, d^\\top M d` after a step: Euclidean, computed directly, or the
    :math:`P^{-1}`-norms by the Steihaug-Toint recurrences (Conn, Gould & Toint §7.5.1)."""
    if setup.pc is None:
        return jnp.vdot(x, x), jnp.vdot(x, d), jnp.vdot(d, d)
    xMx = jnp.where(outside, radius**2, xMx_new)
    return xMx, beta * (s.xMd + gamma * s.dMd), rz + beta**2 * s.dMd


def _st_iteration(setup: _CGSetup, radius, s: _STState) -> _STState:
    """One truncated-CG iteration: a CG step, cut at the boundary when it leaves the trust region
    or follows negative curvature; status ``NEGATIVE_CURVATURE``, ``TRUST_REGION_BOUNDARY``,
    ``CONVERGED``, ``NONFINITE`` (the step is then refused) or ``RUNNING``."""
    Bd = setup.mv(s.d)
    dBd, dd, BdBd = jnp.vdot(s.d, Bd), jnp.vdot(s.d, s.d), jnp.vdot(Bd, Bd)
    negative = _neg_curv(dBd, dd, BdBd, setup.b.dtype)
    gamma = s.rz / dBd
    xMx_new = s.xMx + 2 * gamma * s.xMd + gamma**2 * s.dMd
    outside = negative | (xMx_new >= radius**2)
    step = jnp.where(outside, _boundary_tau(s.xMx, s.xMd, s.dMd, radius), gamma)
    x, r = s.x + step * s.d, s.r - step * Bd
    z = r if setup.pc is None else setup.pc(r)
    rz, rnorm = jnp.vdot(r, z), jnp.linalg.norm(r)
    beta = rz / s.rz
    d = z + beta * s.d
    xMx, xMd, dMd = _st_norms(setup, s, x, d, rz, beta, gamma, outside, xMx_new, radius)
    finite = jnp.isfinite(dBd) & jnp.isfinite(BdBd) & jnp.isfinite(rnorm) & jnp.all(jnp.isfinite(x))
    finite = finite & (jnp.isfinite(rz) | outside)
    inner = jnp.where(rnorm <= setup.tol, Status.CONVERGED, RUNNING)
    status = jnp.where(outside, Status.TRUST_REGION_BOUNDARY, inner)
    status = jnp.where(negative, Status.NEGATIVE_CURVATURE, status)
    sel = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    return _STState(
        k=jnp.where(finite, s.k + 1, s.k),
        status=jnp.where(finite, status, Status.NONFINITE).astype(jnp.int32),
        x=sel(x, s.x),
        r=sel(r, s.r),
        d=sel(d, s.d),
        rz=sel(rz, s.rz),
        xMx=sel(xMx, s.xMx),
        xMd=sel(xMd, s.xMd),
        dMd=sel(dMd, s.dMd),
        res=s.res.at[s.k + 1].set(jnp.where(finite, rnorm, jnp.nan)),
        matvecs=s.matvecs + 1,
    )


@functools.partial(jax.jit, static_argnames=("maxiter",))
def _steihaug_impl(op, b, precond, radius, rtol, atol, *, maxiter):
    """The whole truncated CG, one compiled ``lax.while_loop`` (the setup shared with :func:`cg`)."""
    setup = _cg_setup(
        op, b, precond, None, rtol, atol, 0.0,
        stop_rule="residual", save_iterates=False, maxiter=maxiter, solver="steihaug_cg",
    )  # fmt: skip
    radius = jnp.asarray(radius, b.dtype)

    def running(s):
        return (s.status == RUNNING) & (s.k < maxiter)

    s = _st_init(setup, maxiter)
    if maxiter > 0:
        s = lax.while_loop(running, functools.partial(_st_iteration, setup, radius), s)
    status = jnp.where(s.status == RUNNING, Status.MAX_ITERATIONS, s.status).astype(jnp.int32)
    step_norm = jnp.linalg.norm(s.x) if setup.pc is None else jnp.sqrt(jnp.maximum(s.xMx, 0.0))
    return SteihaugResult(
        x=s.x,
        status=status,
        residual_norms=s.res,
        num_iterations=s.k,
        num_matvecs=s.matvecs,
        step_norm=step_norm,
        predicted_reduction=0.5 * jnp.vdot(b + s.r, s.x),
    )


def steihaug_cg(
    op: LinearOperator | jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    radius: float,
    *,
    preconditioner: Any = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    maxiter: int | None = None,
    throw: bool = False,
) -> SteihaugResult:
    """Steihaug-Toint truncated CG for the trust-region subproblem.

    Convention: with gradient :math:`g` and curvature :math:`B` (possibly indefinite), pass
    ``b = -g``; the function approximately solves

    .. math:: \\min_p\\ m(p) = g^\\top p + \\tfrac12 p^\\top B p = -b^\\top p + \\tfrac12 p^\\top B p
              \\quad\\text{s.t.}\\quad \\|p\\| \\le \\Delta

    by CG on :math:`B p = b` from :math:`p_0 = 0` (Nocedal & Wright, Alg. 7.2). CG iterates
    grow in norm, so the first step leaving the ball is cut at the boundary
    (``TRUST_REGION_BOUNDARY``);
    a direction :math:`d` with :math:`d^\\top B d \\le 0` is followed to the boundary
    (``NEGATIVE_CURVATURE``); otherwise CG runs until
    :math:`\\|b - B p\\| \\le \\max(\\text{rtol}\\,\\|b\\|, \\text{atol})` (``CONVERGED``, an interior
    Newton step).
    With a preconditioner :math:`P \\approx B^{-1}` the trust region is measured in the
    :math:`P^{-1}`-norm :math:`\\sqrt{p^\\top P^{-1} p}` (computed by recurrences, without
    :math:`P^{-1}`), the norm in which preconditioned CG iterates grow.

    Parameters
    ----------
    op : LinearOperator or (n, n) array
        :math:`B`, symmetric.
    b : (n,) array
        Minus the gradient.
    radius : float
        Trust radius :math:`\\Delta > 0` (traced; does not recompile).
    preconditioner : optional
        As in :func:`cg`.
    rtol, atol : float
        Residual tolerances, as in :func:`cg`.
    maxiter : int, optional
        Default as in :func:`cg`.
    throw : bool
        Raise :class:`~curvlab._status.SolverError` unless the step solves the subproblem
        (``CONVERGED``, ``TRUST_REGION_BOUNDARY`` or ``NEGATIVE_CURVATURE``; see
        :attr:`SteihaugResult.converged`). Not under ``jax.jit`` (as in :func:`cg`).

    Returns
    -------
    SteihaugResult

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> res = steihaug_cg(jnp.eye(2), jnp.array([3.0, 4.0]), radius=1.0)
    >>> res.status.name, round(float(res.step_norm), 6), res.num_matvecs.item()
    ('TRUST_REGION_BOUNDARY', 1.0, 1)
    """
    throw = check_throw("steihaug_cg", throw)
    if is_concrete(radius):
        rad = np.asarray(radius)
        if rad.ndim != 0 or not np.isfinite(rad) or rad <= 0:
            raise ValueError(f"radius must be a finite number > 0, got {radius}")
    op, b, _, precond, _, _, maxiter = _prepare_inputs(
        "steihaug_cg", op, b, None, preconditioner, None, rtol, atol, maxiter
    )
    res = _steihaug_impl(op, b, precond, radius, rtol, atol, maxiter=maxiter)
    res = res._replace(status=as_status(res.status))
    if throw and is_concrete(res.status) and res.status is Status.NEGATIVE_CURVATURE:
        return res  # a boundary step along negative curvature solves the subproblem
    raise_if_failed("steihaug_cg", res.status, throw)
    return res

"""Eigenpairs of a symmetric operator: :func:`eigsh`.

By default :func:`eigsh` runs thick-restart **block** Lanczos
(:mod:`curvlab._block_lanczos`): a block of ``b >= 2`` vectors per step, one batched
(vmapped) product per block, locking of converged pairs and a final check that no wanted
eigenvalue is missing, so that every copy of a repeated eigenvalue is found.

``block_size=1`` runs the single-vector thick-restart Lanczos of this module (Wu & Simon,
SIAM J. Matrix Anal. Appl. 22, 2000): after ``ncv`` steps
it keeps the ``l`` most wanted Ritz vectors, whose projected matrix is
:math:`\\operatorname{diag}(\\theta_1..\\theta_l)` bordered by the residual
couplings :math:`\\beta_m s_{m,i}`, and continues the Lanczos process from the
last residual vector. The residual of a Ritz pair :math:`(\\theta_i, y_i = V s_i)`
is :math:`\\|A y_i - \\theta_i y_i\\| = |\\beta_m s_{m,i}|`, which drives the
convergence test; the final residuals are recomputed with true matvecs.
Each step is :func:`curvlab._lanczos.lanczos_step` (the one Lanczos step), whose
known couplings are the three-term recurrence or, right after a restart, the arrow
row; after an invariant subspace the process continues from a fresh random direction
orthogonal to the basis. A single-vector Krylov space holds one direction per distinct
eigenvalue, so this path can skip copies of a repeated eigenvalue (it has no
missing-eigenvalue check).
The projected matrices are diagonalized by :func:`curvlab._tridiagonal.projected_eigh`.

The single-vector loop is one ``lax.while_loop`` over :class:`_EigshState`; each iteration runs the phases
:func:`_compress` (thick restart of a full basis), :func:`_extend` (Lanczos steps) and
:func:`_verify` (true residuals when the estimates converged or the run stops). One budget guard,
:func:`_room_for_a_step`, lets a step start only while it and the ``k``-matvec verification fit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvlab import _block_lanczos, _tridiagonal
from curvlab._block_lanczos import convergence_floor, priority
from curvlab._lanczos import (
    _orthogonalize,
    _row_blocks,
    check_breakdown_tol,
    check_operator,
    lanczos_step,
    start_vector,
)
from curvlab._operators import LinearOperator
from curvlab._status import Status, as_status, check_throw, converged_of, message_of, raise_if_failed
from curvlab._validation import as_key, check_positive_int, is_concrete

__all__ = ["EigshResult", "eigsh"]

_WHICH = ("LA", "SA", "LM", "BE")
#: restarts allowed after the Ritz estimates converged but a true residual did not
_MAX_VERIFY = _block_lanczos.MAX_VERIFY
#: automatic block size. Measured (MLP 784-256-256-10 Hessian, n = 269,322, float32, top-5 to
#: rtol 1e-5, CPU): b = 2 / 3 / 5 took 193 / 236 / 325 products, 2.4 / 3.1 / 5.5 s (a deeper block
#: Krylov space per product wins; a vmapped block of 8 HVPs costs 0.93x per vector there). The
#: missing-eigenvalue check finds copies beyond b (tests: multiplicities 2, 3 and 5).
_AUTO_BLOCK = 2


class EigshResult(NamedTuple):
    """Result of :func:`eigsh`.

    Attributes
    ----------
    eigenvalues : Array, shape (k,)
        Rayleigh quotients :math:`y_i^\\top A y_i` of the returned vectors. Descending for
        ``"LA"``, ascending for ``"SA"`` and ``"BE"``, by :math:`|\\theta|` descending for ``"LM"``.
    eigenvectors : Array, shape (n, k)
        Unit Ritz vectors (columns), in the order of ``eigenvalues``.
    residual_norms : Array, shape (k,)
        True residuals :math:`\\|A y_i - \\theta_i y_i\\|_2`, from ``k`` extra matvecs.
    num_matvecs : int
        Matvecs used, the final residual check included.
    pair_converged : Array of bool, shape (k,)
        :math:`\\|A y_i - \\theta_i y_i\\| \\le
        \\max(\\mathrm{rtol}\\cdot\\max(|\\theta_i|, \\gamma\\|A\\|), \\mathrm{atol})` (see :func:`eigsh`).
    status : Status
        ``CONVERGED`` (every pair converged and, block path, the missing-eigenvalue check found no
        wanted eigenvalue missing), ``MAX_ITERATIONS`` (the ``max_matvecs`` budget ran out, also
        before that check completed), ``INACCURATE`` (the estimates converged, a true residual did
        not) or ``NONFINITE``.
    num_restarts : int
        Restarts performed (0: the first ``ncv`` steps sufficed).
    ritz_history : Array, shape (max_passes, k)
        Wanted Ritz values after each Lanczos pass (NaN past the last).
    residual_history : Array, shape (max_passes, k)
        Their estimated residuals :math:`|\\beta_m s_{m,i}|` (NaN past the last).
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residual_norms: jax.Array
    num_matvecs: int | jax.Array
    pair_converged: jax.Array
    status: Status | jax.Array
    num_restarts: int | jax.Array
    ritz_history: jax.Array
    residual_history: jax.Array

    @property
    def message(self) -> str:
        """Readable description of :attr:`status`."""
        return message_of(self.status)

    @property
    def converged(self):
        """Whether every wanted pair converged (``status`` is ``CONVERGED``)."""
        return converged_of(self.status)


_priority = priority


# ---------------------------------------------------------------------------
# The thick-restart loop: each iteration compresses a full basis, extends it, verifies when due
# ---------------------------------------------------------------------------


class _Setup(NamedTuple):
    """Constants of one solve (closed over, not carried by the loop)."""

    mv: Callable[[jax.Array], jax.Array]
    k: int
    ncv: int
    keep: int
    max_passes: int
    #: Ritz estimates are checked inside a pass every ``check_every`` steps (static)
    check_every: int
    #: static row counts of the Gram-Schmidt passes (``_row_blocks``)
    blocks: tuple[int, ...]
    rtol: jax.Array
    #: ``atol / rtol``: the relative test's floor, so that a residual ``<= atol`` also passes
    atol_rel: jax.Array
    #: :func:`~curvlab._block_lanczos.convergence_floor` of ``rtol``
    floor: jax.Array
    breakdown_tol: jax.Array
    which_id: jax.Array
    budget: jax.Array


class _Basis(NamedTuple):
    """Lanczos basis rows ``V[:size]``, next vector ``V[size]`` and projected matrix ``T``.

    ``T[:size, :size]`` is :math:`V A V^\\top` (tridiagonal, with an arrow row and column at
    ``j0`` after a thick restart) and ``T[size, size - 1]`` is the residual norm :math:`\\beta`,
    so that :math:`A V_{:s}^\\top = V_{:s}^\\top T_{:s,:s} + \\beta\\, v_s e_s^\\top`.
    """

    V: jax.Array  # (ncv + 1, n)
    T: jax.Array  # (ncv + 1, ncv + 1)
    size: jax.Array
    #: first step of the current pass (the one whose known couplings are the arrow row)
    j0: jax.Array
    key: jax.Array
    #: running :math:`\\max_i \\|A q_i\\|`
    anorm: jax.Array
    #: a nonfinite step was met
    bad: jax.Array
    #: an invariant subspace was met (in-pass checks stop: copies of an eigenvalue may follow)
    broke: jax.Array


class _Estimates(NamedTuple):
    """Ritz estimates of the wanted pairs from the projected matrix (no matvec)."""

    theta: jax.Array  # (k,) wanted Ritz values
    residuals: jax.Array  # (k,) |beta s_{size-1, i}|
    S: jax.Array  # (ncv, k) their eigenvectors of T[:size, :size]
    #: floor of :math:`|\\theta|` in the relative test,
    #: :math:`\\max(\\gamma\\|A\\|, \\mathrm{atol}/\\mathrm{rtol})` (:func:`convergence_floor`)
    tiny: jax.Array
    converged: jax.Array


_Pairs = _block_lanczos.Pairs  # the wanted pairs as last verified with true residuals


class _EigshState(NamedTuple):
    """State of the thick-restart loop (see :func:`_thick_restart_pass`)."""

    basis: _Basis
    #: estimates at the end of the last pass
    estimates: _Estimates
    pairs: _Pairs
    num_matvecs: jax.Array
    num_restarts: jax.Array
    #: verifications made of converged estimates
    checks: jax.Array
    #: worst ratio residual / tolerance of the last such verification (stagnation test)
    worst: jax.Array
    ritz_history: jax.Array
    residual_history: jax.Array
    done: jax.Array


def _room_for_a_step(setup: _Setup, num_matvecs):
    """The budget guard: one more Lanczos step still leaves the ``k`` matvecs of a verification."""
    return num_matvecs + 1 + setup.k <= setup.budget


def _ritz_pairs(setup: _Setup, T, size):
    """Ritz values (ascending), vectors, estimated residuals and wanted order of ``T[:size, :size]``.

    The inactive rows get a diagonal far above the active block's Gershgorin bound
    (:func:`curvlab._tridiagonal.projected_eigh`), so the ``size`` real Ritz values are the smallest
    eigenvalues and their vectors vanish there. The residual of :math:`(\\theta_i, V^\\top s_i)` is
    :math:`|\\beta\\, s_{size-1,i}|`.
    """
    m = setup.ncv
    theta, S = _tridiagonal.projected_eigh(T[:m, :m], size)
    res = jnp.abs(T[size, size - 1] * S[size - 1, :])
    priority = jnp.where(jnp.arange(m) < size, _priority(theta, setup.which_id, size), -jnp.inf)
    return theta, S, res, jnp.argsort(-priority, stable=True)


def _estimate(setup: _Setup, basis: _Basis) -> _Estimates:
    """Wanted Ritz estimates of the basis (no matvec).

    Converged when :math:`|\\beta s_i| \\le \\mathrm{rtol}\\max(|\\theta_i|, \\mathrm{tiny})` for all of them.
    """
    theta, S, res, order = _ritz_pairs(setup, basis.T, basis.size)
    wanted = order[: setup.k]
    real = jnp.where(jnp.arange(setup.ncv) < basis.size, jnp.abs(theta), 0)
    tiny = jnp.maximum(setup.floor * jnp.maximum(basis.anorm, jnp.max(real)), setup.atol_rel)
    tw, rw = theta[wanted], res[wanted]
    converged = jnp.all(rw <= setup.rtol * jnp.maximum(jnp.abs(tw), tiny))
    return _Estimates(tw, rw, S[:, wanted], tiny, converged)


def _lanczos_step_into(setup: _Setup, basis: _Basis) -> _Basis:
    """One :func:`~curvlab._lanczos.lanczos_step` from row ``j = size``: ``T[j, j]``, ``beta``, ``V[j + 1]``.

    The known couplings are the whole arrow row on the first step of a pass (``j == j0``; one
    GEMV per restart), else the three-term recurrence. After an invariant subspace the basis
    continues from a random unit vector orthogonal to it, with :math:`\\beta = 0` (``T`` decouples).
    """
    V, T, j, m = basis.V, basis.T, basis.size, setup.ncv
    dtype = V.dtype

    def known(w):
        return jax.lax.cond(
            j == basis.j0,
            lambda w: w - T[: m + 1, j] @ V,
            lambda w: w - T[jnp.maximum(j - 1, 0), j] * V[jnp.maximum(j - 1, 0)],
            w,
        )

    s = lanczos_step(setup.mv, V, j, known, basis.anorm, setup.breakdown_tol, blocks=setup.blocks)
    key, sub = jax.random.split(basis.key)

    def fresh(_):
        r, _ = _orthogonalize(V, jax.random.normal(sub, (V.shape[1],), dtype))
        nr = jnp.linalg.norm(r)
        zero = jnp.zeros((), dtype)
        return jnp.where((j + 1 < m) & (nr > 0), r / jnp.where(nr > 0, nr, 1), zero), zero

    def regular(_):
        return s.w / jnp.where(s.beta > 0, s.beta, 1), s.beta

    q_next, b = jax.lax.cond(s.breakdown, fresh, regular, None)
    V = V.at[j + 1].set(q_next)
    T = T.at[j, j].set(s.alpha).at[j + 1, j].set(b).at[j, j + 1].set(b)
    return _Basis(V, T, j + 1, basis.j0, key, s.anorm, basis.bad | ~s.finite, basis.broke | s.breakdown)


def _extend(setup: _Setup, state: _EigshState) -> _EigshState:
    """Lanczos steps until the basis is full, the in-pass estimates converge, the budget or a NaN.

    Inside a pass the estimates are checked every ``check_every`` steps, so a run stops close to
    the step where they converge; only until a verification has failed (then the residuals are
    near the rounding floor, and each further verification would cost ``k`` matvecs) and while no
    invariant subspace was met (a repeated eigenvalue may have copies still to be found).
    """
    start, m = state.basis.size, setup.ncv
    check_inside = state.checks == 0

    def cond(carry):
        basis, stop = carry
        return (basis.size < m) & ~stop & _room_for_a_step(setup, state.num_matvecs + basis.size - start)

    def body(carry):
        basis = _lanczos_step_into(setup, carry[0])
        check = check_inside & ~basis.broke & (basis.size > setup.k) & (basis.size < m)
        check = check & ((basis.size - basis.j0) % setup.check_every == 0)
        return basis, basis.bad | jax.lax.cond(
            check, lambda: _estimate(setup, basis).converged, lambda: False
        )

    basis, _ = jax.lax.while_loop(cond, body, (state.basis, jnp.asarray(False)))
    est = _estimate(setup, basis)
    nmv = state.num_matvecs + basis.size - start
    row = jnp.minimum(state.num_restarts, setup.max_passes - 1)
    return state._replace(
        basis=basis,
        estimates=est,
        num_matvecs=nmv.astype(jnp.int32),
        ritz_history=state.ritz_history.at[row].set(est.theta),
        residual_history=state.residual_history.at[row].set(est.residuals),
    )


def _compress(setup: _Setup, state: _EigshState) -> _EigshState:
    """Thick restart of a full basis: keep the ``keep`` most wanted Ritz vectors :math:`y_i = V^\\top s_i`.

    The new projected matrix is :math:`\\operatorname{diag}(\\theta_i)` bordered by the couplings
    :math:`\\beta_m s_{m,i}` to the kept residual vector :math:`v_m`, which starts the next pass.
    """
    m, keep, basis = setup.ncv, setup.keep, state.basis
    theta, S, _, order = _ritz_pairs(setup, basis.T, m)
    kept = order[:keep]
    s = basis.T[m, m - 1] * S[m - 1, kept]
    V = jnp.zeros_like(basis.V).at[:keep].set(S[:, kept].T @ basis.V[:m])
    key, sub = jax.random.split(basis.key)

    def fresh(_):
        # the pass ended on an invariant subspace (v_m = 0, beta_m = 0): a zero row here would be a
        # phantom Ritz pair (theta = 0, zero vector), wanted on a singular PSD operator. Continue
        # from a random unit vector orthogonal to the kept ones instead (the couplings s are 0).
        r, _ = _orthogonalize(V, jax.random.normal(sub, (V.shape[1],), V.dtype))
        nr = jnp.linalg.norm(r)
        return r / jnp.where(nr > 0, nr, 1)

    v_next = jax.lax.cond(jnp.linalg.norm(basis.V[m]) > 0, lambda _: basis.V[m], fresh, None)
    V = V.at[keep].set(v_next)
    T = jnp.zeros_like(basis.T).at[jnp.arange(keep), jnp.arange(keep)].set(theta[kept])
    T = T.at[keep, :keep].set(s).at[:keep, keep].set(s)
    keep_ = jnp.asarray(keep, jnp.int32)
    return state._replace(
        basis=basis._replace(V=V, T=T, size=keep_, j0=keep_, key=key),
        num_restarts=state.num_restarts + 1,
    )


def _rayleigh_ritz(setup: _Setup, est: _Estimates, V) -> _Pairs:
    """Wanted Ritz pairs refined by Rayleigh-Ritz on their span, with true residuals (``k`` matvecs;
    :func:`curvlab._block_lanczos.refined_pairs`)."""
    Y = est.S.T @ V[: setup.ncv]
    Y = Y / jnp.linalg.norm(Y, axis=1, keepdims=True)
    AY = jax.lax.map(setup.mv, Y)
    return _block_lanczos.refined_pairs(Y, AY, setup.which_id, setup.k, setup.rtol, est.tiny)


def _verify(setup: _Setup, state: _EigshState) -> _EigshState:
    """True residuals of the wanted pairs (:func:`_rayleigh_ritz`) when due, and the stopping decision.

    Due when the estimates converged: if rounding keeps a true residual above the tolerance the
    run goes on (at most ``_MAX_VERIFY`` such checks, fewer when the worst residual stops
    halving) and ends ``INACCURATE``. Also due when the run stops otherwise (the budget leaves no
    room for another step, or a NaN): these are then the final pairs.
    """
    est, basis = state.estimates, state.basis
    check = est.converged
    due = check | basis.bad | ~_room_for_a_step(setup, state.num_matvecs)
    pairs = jax.lax.cond(due, lambda: _rayleigh_ritz(setup, est, basis.V), lambda: state.pairs)
    worst = jnp.max(pairs.resid / (setup.rtol * jnp.maximum(jnp.abs(pairs.theta), est.tiny)))
    stagnated = check & (state.checks > 0) & (worst > 0.5 * state.worst)
    checks = state.checks + check.astype(jnp.int32)
    nmv = state.num_matvecs + jnp.where(due, setup.k, 0)
    done = (due & ~check) | jnp.all(pairs.converged & check) | basis.bad | stagnated
    done = done | (checks >= _MAX_VERIFY) | ~_room_for_a_step(setup, nmv)
    return state._replace(
        pairs=pairs,
        num_matvecs=nmv.astype(jnp.int32),
        checks=checks,
        worst=jnp.where(check, worst, state.worst),
        done=done,
    )


def _thick_restart_pass(setup: _Setup, state: _EigshState) -> _EigshState:
    """One iteration of the loop: compress a full basis, extend it, verify when due."""
    full = state.basis.size >= setup.ncv
    state = jax.lax.cond(full, functools.partial(_compress, setup), lambda state: state, state)
    return _verify(setup, _extend(setup, state))


def _initial_state(setup: _Setup, v0, key) -> _EigshState:
    """A basis holding ``v0 / |v0|``, nothing verified; the first phase extends it."""
    m, k, n, dtype = setup.ncv, setup.k, v0.shape[0], v0.dtype
    i0, false = jnp.zeros((), jnp.int32), jnp.asarray(False)
    V = jnp.zeros((m + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    basis = _Basis(V, jnp.zeros((m + 1, m + 1), dtype), i0, i0, key, jnp.zeros((), dtype), false, false)
    zeros_k = jnp.zeros((k,), dtype)
    est = _Estimates(zeros_k, zeros_k, jnp.zeros((m, k), dtype), jnp.zeros((), dtype), false)
    pairs = _Pairs(zeros_k, jnp.zeros((k, n), dtype), jnp.full((k,), jnp.inf, dtype), jnp.zeros((k,), bool))
    nan_history = jnp.full((setup.max_passes, k), jnp.nan, dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    return _EigshState(basis, est, pairs, i0, i0, i0, inf, nan_history, nan_history, false)


def _result(setup: _Setup, state: _EigshState) -> EigshResult:
    """The verified pairs (``"BE"``: ascending) and the status of a finished loop."""
    p = state.pairs
    srt = jnp.where(
        setup.which_id == _WHICH.index("BE"), jnp.argsort(p.theta, stable=True), jnp.arange(setup.k)
    )
    theta, Y, resid, converged = p.theta[srt], p.Y[srt], p.resid[srt], p.converged[srt]
    failed = jnp.where(state.estimates.converged, int(Status.INACCURATE), int(Status.MAX_ITERATIONS))
    status = jnp.where(jnp.all(converged), int(Status.CONVERGED), failed)
    status = jnp.where(state.basis.bad | ~jnp.all(jnp.isfinite(resid)), int(Status.NONFINITE), status)
    return EigshResult(
        theta,
        Y.T,
        resid,
        state.num_matvecs,
        converged,
        status.astype(jnp.int32),
        state.num_restarts,
        state.ritz_history,
        state.residual_history,
    )


def _make_setup(
    op, rtol, atol, breakdown_tol, which_id, budget, *, dtype, k, ncv, keep, max_passes
) -> _Setup:
    """The loop's constants; ``check_every``: about four in-pass checks per restarted pass."""
    rtol = jnp.asarray(rtol, dtype)
    return _Setup(
        mv=op.prepare(),
        k=k,
        ncv=ncv,
        keep=keep,
        max_passes=max_passes,
        check_every=max(1, (ncv - keep) // 4),
        blocks=_row_blocks(ncv + 1, True),
        rtol=rtol,
        atol_rel=jnp.asarray(atol, dtype) / rtol,
        floor=convergence_floor(rtol, dtype),
        breakdown_tol=jnp.asarray(breakdown_tol, dtype),
        which_id=which_id,
        budget=budget,
    )


def _eigsh_loop(op, v0, key, rtol, atol, breakdown_tol, which_id, budget, *, k, ncv, keep, max_passes):
    """The whole solve: one ``lax.while_loop`` of :func:`_thick_restart_pass`."""
    sizes = dict(k=k, ncv=ncv, keep=keep, max_passes=max_passes)
    setup = _make_setup(op, rtol, atol, breakdown_tol, which_id, budget, dtype=v0.dtype, **sizes)
    state = jax.lax.while_loop(
        lambda state: ~state.done,
        functools.partial(_thick_restart_pass, setup),
        _initial_state(setup, v0, key),
    )
    return _result(setup, state)


_eigsh_jit = jax.jit(_eigsh_loop, static_argnames=("k", "ncv", "keep", "max_passes"))


def _block_loop(
    op, v0, key, rtol, atol, breakdown_tol, which_id, budget, *, k, b, ncv, keep, max_passes, max_probes
):
    """The block solve (:func:`curvlab._block_lanczos.block_eigsh`) as an :class:`EigshResult`."""
    sizes = dict(k=k, b=b, ncv=ncv, keep=keep, max_passes=max_passes, max_probes=max_probes)
    setup = _block_lanczos.make_setup(
        op.prepare(), rtol, atol, breakdown_tol, which_id, budget, dtype=v0.dtype, **sizes
    )
    state, (theta, Y, resid, converged, status) = _block_lanczos.block_eigsh(setup, v0, key)
    return EigshResult(
        theta,
        Y.T,
        resid,
        state.num_matvecs,
        converged,
        status,
        state.num_restarts,
        state.ritz_history,
        state.residual_history,
    )


_block_jit = jax.jit(_block_loop, static_argnames=("k", "b", "ncv", "keep", "max_passes", "max_probes"))


def _check_tolerance(name: str, value, positive: bool):
    """Concrete tolerances are checked here; traced ones (under the user's jit) are used as they are."""
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    if not is_concrete(value):
        return value
    v = float(value)
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        kind = "positive" if positive else "nonnegative"
        raise ValueError(f"{name} must be a {kind} finite scalar, got {value!r}")
    return v


class _Arguments(NamedTuple):
    """:func:`eigsh`'s arguments, checked, with the defaults and sizes derived from them."""

    op: LinearOperator
    k: int
    rtol: float | jax.Array
    atol: float | jax.Array
    max_matvecs: int
    ncv: int
    #: Ritz vectors kept at a thick restart
    keep: int
    #: rows of the history buffers (an upper bound on the Lanczos passes)
    max_passes: int
    breakdown_tol: float
    #: block size (1: single-vector Lanczos)
    block_size: int = 1
    #: missing-eigenvalue checks allowed (block path)
    max_probes: int = 0


def _check_block_size(block_size, k: int, n: int) -> int:
    """``None``: automatic, :math:`b = \\min(2, n)` (1 only when ``n = 1``)."""
    if block_size is None:
        return max(1, min(_AUTO_BLOCK, n))
    b = check_positive_int("block_size", block_size)
    if b > n:
        raise ValueError(f"block_size must be <= n = {n}, got {b}")
    return b


def _check_arguments(op, k, which, rtol, atol, max_matvecs, ncv, breakdown_tol, block_size=1) -> _Arguments:
    """Every argument check of :func:`eigsh` (before any tracing), naming the argument."""
    op = check_operator(op, "eigsh")
    n = op.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        raise ValueError(
            f"k = {k} is larger than or equal to n = {n} (k larger than n - 1); "
            "for all eigenvalues use a dense eigensolver on op.to_dense()"
        )
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    rtol = _check_tolerance("rtol", rtol, positive=True)
    atol = _check_tolerance("atol", atol, positive=False)
    b = _check_block_size(block_size, k, n)
    if b > 1:
        return _check_block_arguments(op, k, rtol, atol, max_matvecs, ncv, breakdown_tol, b)
    if ncv is None:
        # small k: a smaller basis costs less reorthogonalization per step (memory traffic (ncv + 1) n)
        # and thick restarts keep the convergence of the unrestarted process closely
        ncv = min(n, max(2 * k + 1, min(20, 8 + 4 * k)))
    else:
        ncv = check_positive_int("ncv", ncv)
        if not k < ncv <= n:
            raise ValueError(f"ncv must satisfy k < ncv <= n (k = {k}, n = {n}), got {ncv}")
    keep = min(ncv - 1, k + (ncv - k) // 2)
    if max_matvecs is None:
        max_matvecs = max(ncv + 300 * (ncv - keep), 20 * n) + (_MAX_VERIFY + 1) * k
    else:
        max_matvecs = check_positive_int("max_matvecs", max_matvecs)
        if max_matvecs < 2 * k + 2:
            raise ValueError(
                f"max_matvecs must be >= 2k + 2 = {2 * k + 2} (k + 1 Lanczos steps and the k-matvec "
                f"residual check), got {max_matvecs}"
            )
    max_passes = 2 + _MAX_VERIFY + math.ceil(max(max_matvecs - ncv, 0) / (ncv - keep))
    breakdown_tol = check_breakdown_tol(breakdown_tol, op.dtype)
    return _Arguments(op, k, rtol, atol, max_matvecs, ncv, keep, max_passes, breakdown_tol)


def _check_max_matvecs(max_matvecs, k: int, default: int) -> int:
    if max_matvecs is None:
        return default
    max_matvecs = check_positive_int("max_matvecs", max_matvecs)
    if max_matvecs < 2 * k + 2:
        raise ValueError(
            f"max_matvecs must be >= 2k + 2 = {2 * k + 2} (k + 1 Lanczos steps and the k-matvec "
            f"residual check), got {max_matvecs}"
        )
    return max_matvecs


def _check_block_arguments(op, k, rtol, atol, max_matvecs, ncv, breakdown_tol, b) -> _Arguments:
    """Sizes of the block path: ``ncv`` rows, ``keep = ncv - q b`` kept at a restart (``q`` block steps)."""
    n = op.size
    if ncv is None:
        # a block Krylov space of ncv rows has degree ncv / b: at least 8 blocks deep
        ncv = max(k + b, min(n, b * -(-max(20, 2 * k + 2 * b, 8 * b) // b)))
    else:
        ncv = check_positive_int("ncv", ncv)
        if not (k + b <= ncv and ncv <= max(n, k + b)):
            raise ValueError(
                f"ncv must satisfy k + block_size <= ncv <= n (k = {k}, block_size = {b}, n = {n}), got {ncv}"
            )
    steps = min(-(-(ncv - k) // (2 * b)), (ncv - k) // b)
    keep = ncv - steps * b
    max_probes = 1 + -(-k // b)
    # default: 300 restarts, or 20 n products for slowly converging spectra (the 1-D Laplacian)
    default = max(ncv + 300 * (ncv - keep), 20 * n) + (_MAX_VERIFY + 1 + max_probes) * (ncv + k)
    max_matvecs = _check_max_matvecs(max_matvecs, k, default)
    max_passes = 2 + math.ceil(max_matvecs / (ncv - keep)) + (_MAX_VERIFY + 2) * (max_probes + 1)
    breakdown_tol = check_breakdown_tol(breakdown_tol, op.dtype)
    return _Arguments(op, k, rtol, atol, max_matvecs, ncv, keep, max_passes, breakdown_tol, b, max_probes)


def eigsh(
    op: LinearOperator,
    k: int = 6,
    *,
    which: str = "LA",
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_matvecs: int | None = None,
    key: jax.Array | None = None,
    throw: bool = False,
    v0: jax.typing.ArrayLike | None = None,
    ncv: int | None = None,
    breakdown_tol: float | None = None,
    block_size: int | None = None,
) -> EigshResult:
    """``k`` eigenpairs of a symmetric operator by thick-restart block Lanczos.

    A pair is converged when :math:`\\|A y - \\theta y\\|_2 \\le \\max\\big(\\mathrm{rtol} \\cdot
    \\max(|\\theta|, \\gamma\\|A\\|), \\mathrm{atol}\\big)` with
    :math:`\\gamma = \\operatorname{clip}(1000\\varepsilon/\\mathrm{rtol}, \\varepsilon^{2/3}, 1)`: the
    relative test, except that an eigenvalue at or near zero (below :math:`\\gamma\\|A\\|`) is converged
    at the rounding floor :math:`\\min(\\mathrm{rtol}, 1000\\varepsilon)\\|A\\|` of a true residual, so the
    zero eigenvalues of a singular operator converge with the default ``rtol``. :math:`\\|A\\|` is
    estimated by :math:`\\max(\\max_i \\|A q_i\\|, \\max|\\theta|)` over the basis. Memory is
    ``(ncv + b) n``; the whole algorithm, restarts included, is one jit-compiled ``lax.while_loop``.

    Default (``block_size=None``): thick-restart block Lanczos (:mod:`curvlab._block_lanczos`) with
    ``b = 2`` vectors per step, each block one batched product (``jax.vmap`` of the
    prepared product), full reorthogonalization, locking of converged pairs, and, once the ``k``
    wanted pairs are verified with true residuals (``k`` products), a missing-eigenvalue check: a
    fresh random block orthogonal to them fills the basis again (``ncv - k`` products); the status is
    ``CONVERGED`` only if no Ritz value of that basis enters the wanted set. ``block_size=1``: the
    single-vector thick-restart Lanczos (no missing-eigenvalue check).

    Limitation: the check finds a missing eigenvalue once a few block Krylov steps from a random
    start resolve it; a copy hidden behind a relative gap of order ``rtol`` (or one of an eigenvalue
    of multiplicity above ``b`` whose extra copies a random block does not reveal within the budget)
    can still be missed; such a set is then the wanted one to within the tolerance or the status is
    not ``CONVERGED``. Larger ``block_size`` (at least the multiplicity you expect) makes it reliable.

    Parameters
    ----------
    op : LinearOperator or square array
        Symmetric, real floating dtype.
    k : int
        Number of eigenpairs, ``1 <= k < n``.
    which : {"LA", "SA", "LM", "BE"}
        Largest algebraic, smallest algebraic, largest magnitude, or both ends
        (``k // 2`` smallest and ``k - k // 2`` largest).
    rtol : float
        Relative residual tolerance (float32: use ``rtol >= 1e-5``; below that the
        status may be ``INACCURATE``). May be traced (under the caller's ``jax.jit``).
    atol : float
        Absolute residual tolerance: a pair is also converged when
        :math:`\\|A y - \\theta y\\| \\le` ``atol``. Use it for eigenvalues at or near zero
        (``which="SA"`` on a singular Gauss-Newton or Fisher matrix), where a relative
        test cannot be met; e.g. ``atol = rtol * lambda_max``.
    max_matvecs : int, optional
        The budget: every matvec (Lanczos steps and the ``k``-matvec residual checks) counts,
        and ``num_matvecs <= max_matvecs``. At least ``2k + 2``. Default: one pass of ``ncv``
        steps and 300 restarts, or ``20 n`` products if more (slowly converging spectra such as the
        1-D Laplacian), and room for the residual (and missing-eigenvalue) checks.
    key : PRNG key, optional
        Start vector (and fresh directions after an invariant subspace); default ``jax.random.key(0)``.
    throw : bool
        Raise :class:`~curvlab.SolverError` unless the status is ``CONVERGED``.
    v0 : array, optional
        Start vector (real, nonzero).
    ncv : int, optional
        Basis size ``m``. Block path: ``k + b <= m <= n``, default ``max(20, 2k + 2b, 8b)`` rounded up to
        a multiple of ``b`` (at most ``n``, at least ``k + b``)
        (a restart keeps about ``(m + k) / 2`` Ritz vectors, ``m - keep`` a multiple of ``b``).
        ``block_size=1``: ``k < m <= n``, default ``min(n, max(2k + 1, min(20, 8 + 4k)))``.
    breakdown_tol : float, optional
        Invariant-subspace threshold relative to :math:`\\max\\|A q\\|` (default :math:`\\varepsilon^{2/3}`);
        block path: singular values of a new block below it are rank deficiency.
    block_size : int, optional
        Vectors per block step, ``1 <= b <= n``; default (``None``) ``min(2, n)``; ``1`` runs
        single-vector Lanczos.

    Returns
    -------
    EigshResult

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab._operators import DiagonalOperator
    >>> res = eigsh(DiagonalOperator(jnp.arange(1.0, 101.0)), k=2, rtol=1e-5)
    >>> res.status.name, [round(float(t), 3) for t in res.eigenvalues]
    ('CONVERGED', [100.0, 99.0])
    """
    throw = check_throw("eigsh", throw)
    args = _check_arguments(op, k, which, rtol, atol, max_matvecs, ncv, breakdown_tol, block_size)
    key, sub = jax.random.split(as_key("key", key, required=False))
    v0 = start_vector(args.op, sub, v0, "eigsh")
    common = (
        args.op,
        v0,
        key,
        args.rtol,
        args.atol,
        args.breakdown_tol,
        jnp.asarray(_WHICH.index(which), jnp.int32),
        jnp.asarray(args.max_matvecs, jnp.int32),
    )
    sizes = dict(k=args.k, ncv=args.ncv, keep=args.keep, max_passes=args.max_passes)
    if args.block_size > 1:
        res = _block_jit(*common, b=args.block_size, max_probes=args.max_probes, **sizes)
    else:
        res = _eigsh_jit(*common, **sizes)
    if is_concrete(res.status):
        res = res._replace(num_matvecs=int(res.num_matvecs), num_restarts=int(res.num_restarts))
    res = res._replace(status=as_status(res.status))
    raise_if_failed("eigsh", res.status, throw)
    return res

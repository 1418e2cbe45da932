"""A thick-restart Lanczos eigensolver: :func:`eigsh`.

:func:`eigsh` finds ``k`` wanted eigenpairs with bounded memory by thick-restart
Lanczos (Wu & Simon, SIAM J. Matrix Anal. Appl. 22, 2000): after ``ncv`` steps
it keeps the ``l`` most wanted Ritz vectors, whose projected matrix is
:math:`\\operatorname{diag}(\\theta_1..\\theta_l)` bordered by the residual
couplings :math:`\\beta_m s_{m,i}`, and continues the Lanczos process from the
last residual vector. The residual of a Ritz pair :math:`(\\theta_i, y_i = V s_i)`
is :math:`\\|A y_i - \\theta_i y_i\\| = |\\beta_m s_{m,i}|`, which drives the
convergence test; the final residuals are recomputed with true matvecs.
Each step is :func:`curvlab._lanczos.lanczos_step` (the one Lanczos step), whose
known couplings are the three-term recurrence or, right after a restart, the arrow
row; after an invariant subspace the process continues from a fresh random direction
orthogonal to the basis (a repeated eigenvalue may have copies still to be found).
The projected matrices are diagonalized by :func:`curvlab._tridiagonal.projected_eigh`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvlab import _tridiagonal
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
_MAX_VERIFY = 3


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
        \\max(\\mathrm{rtol}\\cdot\\max(|\\theta_i|, \\varepsilon^{2/3}\\|A\\|), \\mathrm{atol})`.
    status : Status
        ``CONVERGED``, ``MAX_ITERATIONS`` (the ``max_matvecs`` budget ran out), ``INACCURATE``
        (the estimates converged, a true residual did not) or ``NONFINITE``.
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


def _priority(theta, which_id, size=None):
    """Higher = more wanted; ``theta`` ascending (NaN-free); ``which_id`` indexes ``_WHICH`` (traced).

    ``size``: only the first ``size`` entries are real Ritz values (the rest rank below them).
    """
    m = theta.shape[0]
    size = m if size is None else size
    i = jnp.arange(m)
    # BE: alternate largest, smallest, second largest, second smallest, ...
    both = -jnp.minimum(2 * (size - 1 - i), 2 * i + 1).astype(theta.dtype)
    return jnp.stack([theta, -theta, jnp.abs(theta), both])[which_id]


def _eigsh_loop(op, v0, key, tol, atol, breakdown_tol, which_id, budget, *, k, ncv, keep, max_passes):
    mv = op.prepare()
    n = v0.shape[0]
    m = ncv
    dtype = v0.dtype
    zero = jnp.zeros((), dtype)
    eps = jnp.finfo(dtype).eps
    tol = jnp.asarray(tol, dtype)
    # residual <= tol * max(|theta|, tiny) with tiny >= atol / tol, i.e. also accept residual <= atol
    atol_rel = jnp.asarray(atol, dtype) / tol
    btol = jnp.asarray(breakdown_tol, dtype)
    blocks = _row_blocks(m + 1, True)
    # the Ritz estimates are also checked inside a pass, every ``check_every`` steps, so a run
    # stops close to the step where they converge rather than at the end of the pass
    check_every = max(1, (m - keep) // 4)
    V = jnp.zeros((m + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    T = jnp.zeros((m + 1, m + 1), dtype)  # T[:m, :m] projected matrix, T[j+1, j] = beta_{j+1}

    def step(j, carry, j0):
        V, T, key, anorm, bad, broke = carry

        def known(w):
            # the whole arrow row on the first step after a restart (one GEMV, once per restart),
            # else the three-term recurrence
            return jax.lax.cond(
                j == j0,
                lambda w: w - T[: m + 1, j] @ V,
                lambda w: w - T[jnp.maximum(j - 1, 0), j] * V[jnp.maximum(j - 1, 0)],
                w,
            )

        s = lanczos_step(mv, V, j, known, anorm, btol, blocks=blocks)
        a, b, w, anorm, brk = s.alpha, s.beta, s.w, s.anorm, s.breakdown
        bad = bad | ~s.finite
        key, sub = jax.random.split(key)

        def fresh(_):
            # invariant subspace: continue from a random vector orthogonal to the basis (T decouples)
            r = jax.random.normal(sub, (n,), dtype)
            r, _ = _orthogonalize(V, r)
            nr = jnp.linalg.norm(r)
            return jnp.where((j + 1 < m) & (nr > 0), r / jnp.where(nr > 0, nr, 1), zero), zero

        def regular(_):
            return w / jnp.where(b > 0, b, 1), b

        q_next, b = jax.lax.cond(brk, fresh, regular, None)
        V = V.at[j + 1].set(q_next)
        T = T.at[j, j].set(a).at[j + 1, j].set(b).at[j, j + 1].set(b)
        return V, T, key, anorm, bad, broke | brk

    def analyse(T, size):
        """Ritz pairs of the leading ``size x size`` block of ``T``, most wanted first.

        The inactive rows get a diagonal far above the active block's Gershgorin bound, so the
        ``size`` real Ritz values are the smallest eigenvalues and their vectors vanish there.
        """
        active = jnp.arange(m) < size
        theta, S = _tridiagonal.projected_eigh(T[:m, :m], size)
        res = jnp.abs(T[size, size - 1] * S[size - 1, :])
        priority = jnp.where(active, _priority(theta, which_id, size), -jnp.inf)
        order = jnp.argsort(-priority, stable=True)
        return theta, S, res, order

    def tiny_of(theta, size, anorm):
        real = jnp.where(jnp.arange(m) < size, jnp.abs(theta), 0)
        return jnp.maximum(eps ** (2 / 3) * jnp.maximum(anorm, jnp.max(real)), atol_rel)

    def estimates_converged(T, size, anorm):
        theta, _, res, order = analyse(T, size)
        tw, rw = theta[order[:k]], res[order[:k]]
        return jnp.all(rw <= tol * jnp.maximum(jnp.abs(tw), tiny_of(theta, size, anorm)))

    def ritz_check(theta, S, V, wanted, tiny):
        """Wanted Ritz pairs, refined by Rayleigh-Ritz on their span, with true residuals (``k`` matvecs).

        With ``Y`` the unit Ritz vectors and ``AY`` their products, the eigenpairs of
        :math:`G = Y (AY)^\\top` (symmetrized) give the best pairs in ``span(Y)``: rotating both
        ``Y`` and ``AY`` costs no matvec and lowers the residuals that rounding left in the
        Lanczos projection (float32 especially).
        """
        Y = S[:, wanted].T @ V[:m]
        Y = Y / jnp.linalg.norm(Y, axis=1, keepdims=True)
        AY = jax.lax.map(mv, Y)
        G = Y @ AY.T
        mu, W = jnp.linalg.eigh((G + G.T) / 2)
        W = W[:, jnp.argsort(-_priority(mu, which_id, k), stable=True)]
        Y, AY = W.T @ Y, W.T @ AY
        scale = jnp.linalg.norm(Y, axis=1, keepdims=True)
        Y, AY = Y / scale, AY / scale
        tw = jnp.sum(Y * AY, axis=1)  # Rayleigh quotients
        resid = jnp.linalg.norm(AY - tw[:, None] * Y, axis=1)
        return tw, Y, resid, resid <= tol * jnp.maximum(jnp.abs(tw), tiny)

    def cond(state):
        return ~state["done"]

    def body(state):
        V, T, size, j0 = state["V"], state["T"], state["size"], state["j0"]

        def compress(V, T):
            theta, S, _, order = analyse(T, m)
            kept = order[:keep]
            Y = S[:, kept].T @ V[:m]
            s = T[m, m - 1] * S[m - 1, kept]
            Vn = jnp.zeros_like(V).at[:keep].set(Y).at[keep].set(V[m])
            Tn = jnp.zeros_like(T).at[jnp.arange(keep), jnp.arange(keep)].set(theta[kept])
            Tn = Tn.at[keep, :keep].set(s).at[:keep, keep].set(s)
            return Vn, Tn

        # a full basis is compressed to the ``keep`` most wanted Ritz vectors (thick restart)
        full = size >= m
        V, T = jax.lax.cond(full, compress, lambda V, T: (V, T), V, T)
        restarts = state["restarts"] + full.astype(jnp.int32)
        j0 = jnp.where(full, keep, j0).astype(jnp.int32)
        start = jnp.where(full, keep, size).astype(jnp.int32)
        # inside-pass checks only until a verification has failed (then the residuals are near the
        # rounding floor, and each further verification would cost k matvecs per check) and while
        # no invariant subspace was met (a repeated eigenvalue may have copies still to be found:
        # the pass goes on with fresh directions to its end)
        check_inside = state["checks"] == 0

        nmv0 = state["nmv"]

        def inner_cond(c):
            # a step is taken only while the budget leaves room for it and the final k-matvec check
            return (c[0] < m) & ~c[-1] & (nmv0 + (c[0] - start) + k < budget)

        def inner_body(c):
            j, V, T, key, anorm, bad, broke, _ = c
            V, T, key, anorm, bad, broke = step(j, (V, T, key, anorm, bad, broke), j0)
            size = j + 1
            check = check_inside & ~broke & (size > k) & (size < m) & ((size - j0) % check_every == 0)
            stop = bad | jax.lax.cond(check, lambda: estimates_converged(T, size, anorm), lambda: False)
            return size, V, T, key, anorm, bad, broke, stop

        size, V, T, key, anorm, bad, broke, _ = jax.lax.while_loop(
            inner_cond,
            inner_body,
            (start, V, T, state["key"], state["anorm"], state["bad"], state["broke"], jnp.asarray(False)),
        )
        theta, S, res, order = analyse(T, size)
        wanted = order[:k]
        tw, rw = theta[wanted], res[wanted]
        tiny = tiny_of(theta, size, anorm)
        est_conv = jnp.all(rw <= tol * jnp.maximum(jnp.abs(tw), tiny))
        # the estimates say converged: verify with true residuals; if rounding keeps them above tol,
        # go on (at most _MAX_VERIFY checks, fewer when the residuals stagnate) before INACCURATE
        tv, Y, resid, converged = jax.lax.cond(
            est_conv,
            lambda: ritz_check(theta, S, V, wanted, tiny),
            lambda: (state["theta"], state["Y"], state["resid"], jnp.zeros((k,), bool)),
        )
        worst = jnp.max(resid / (tol * jnp.maximum(jnp.abs(tv), tiny)))
        stagnated = est_conv & (state["checks"] > 0) & (worst > 0.5 * state["worst"])
        checks = state["checks"] + est_conv.astype(jnp.int32)
        nmv = state["nmv"] + (size - start) + jnp.where(est_conv, k, 0)
        out_of_budget = nmv + k >= budget
        done = jnp.all(converged) | bad | out_of_budget | (checks >= _MAX_VERIFY) | stagnated
        return dict(
            V=V,
            T=T,
            size=size,
            j0=j0,
            key=key,
            anorm=anorm,
            bad=bad,
            broke=broke,
            restarts=restarts,
            done=done,
            est_conv=est_conv,
            checks=checks,
            worst=jnp.where(est_conv, worst, state["worst"]),
            nmv=nmv.astype(jnp.int32),
            theta=tv,
            Y=Y,
            resid=resid,
            converged=converged,
            ritz_hist=state["ritz_hist"].at[jnp.minimum(restarts, max_passes - 1)].set(tw),
            res_hist=state["res_hist"].at[jnp.minimum(restarts, max_passes - 1)].set(rw),
        )

    nan_hist = jnp.full((max_passes, k), jnp.nan, dtype)
    i0 = jnp.zeros((), jnp.int32)
    state = dict(
        V=V,
        T=T,
        size=i0,
        j0=i0,
        key=key,
        anorm=zero,
        bad=jnp.asarray(False),
        broke=jnp.asarray(False),
        restarts=i0,
        done=jnp.asarray(False),
        est_conv=jnp.asarray(False),
        checks=i0,
        worst=jnp.asarray(jnp.inf, dtype),
        nmv=i0,
        theta=jnp.zeros((k,), dtype),
        Y=jnp.zeros((k, n), dtype),
        resid=jnp.full((k,), jnp.inf, dtype),
        converged=jnp.zeros((k,), bool),
        ritz_hist=nan_hist,
        res_hist=nan_hist,
    )
    state = jax.lax.while_loop(cond, body, state)
    V, T, size = state["V"], state["T"], state["size"]
    theta, S, _, order = analyse(T, size)
    wanted = order[:k]
    tiny = tiny_of(theta, size, state["anorm"])
    # pairs of the last pass were verified already when its estimates converged
    tw, Y, resid, converged = jax.lax.cond(
        state["est_conv"],
        lambda: (state["theta"], state["Y"], state["resid"], state["converged"]),
        lambda: ritz_check(theta, S, V, wanted, tiny),
    )
    num_matvecs = state["nmv"] + jnp.where(state["est_conv"], 0, k)
    srt = jnp.where(which_id == _WHICH.index("BE"), jnp.argsort(tw, stable=True), jnp.arange(k))
    tw, Y, resid, converged = tw[srt], Y[srt], resid[srt], converged[srt]
    status = jnp.where(
        state["bad"] | ~jnp.all(jnp.isfinite(resid)),
        int(Status.NONFINITE),
        jnp.where(
            jnp.all(converged),
            int(Status.CONVERGED),
            jnp.where(state["est_conv"], int(Status.INACCURATE), int(Status.MAX_ITERATIONS)),
        ),
    ).astype(jnp.int32)
    return EigshResult(
        tw,
        Y.T,
        resid,
        num_matvecs,
        converged,
        status,
        state["restarts"],
        state["ritz_hist"],
        state["res_hist"],
    )


_eigsh_jit = jax.jit(_eigsh_loop, static_argnames=("k", "ncv", "keep", "max_passes"))


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
) -> EigshResult:
    """``k`` eigenpairs of a symmetric operator by thick-restart Lanczos.

    A pair is converged when :math:`\\|A y - \\theta y\\|_2 \\le \\max\\big(\\mathrm{rtol} \\cdot
    \\max(|\\theta|, \\varepsilon^{2/3}\\|A\\|), \\mathrm{atol}\\big)` (the guard avoids an impossible
    relative test for :math:`\\theta \\approx 0`). Memory is ``(ncv + 1) n``; the whole algorithm,
    restarts included, is one jit-compiled ``lax.while_loop``. Full
    reorthogonalization keeps the basis orthonormal to working precision, so no
    spurious copies of converged eigenvalues appear. The Ritz estimates
    :math:`|\\beta_j s_{j,i}|` are also checked inside a pass, so the run stops near
    the step where they converge; the wanted pairs are then refined by Rayleigh-Ritz on
    their span and verified with true residuals (``k`` matvecs).

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
        steps, 300 restarts and four residual checks.
    key : PRNG key, optional
        Start vector (and fresh directions after an invariant subspace); default ``jax.random.key(0)``.
    throw : bool
        Raise :class:`~curvlab.SolverError` unless the status is ``CONVERGED``.
    v0 : array, optional
        Start vector (real, nonzero).
    ncv : int, optional
        Basis size ``m`` with ``k < m <= n``; default ``min(n, max(2k + 1, min(20, 8 + 4k)))``
        (12 for ``k = 1``, 16 for ``k = 2``, 20 for ``3 <= k <= 9``).
    breakdown_tol : float, optional
        Invariant-subspace threshold relative to :math:`\\max\\|A q\\|` (default :math:`\\varepsilon^{2/3}`).

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
        max_matvecs = ncv + 300 * (ncv - keep) + (_MAX_VERIFY + 1) * k
    else:
        max_matvecs = check_positive_int("max_matvecs", max_matvecs)
        if max_matvecs < 2 * k + 2:
            raise ValueError(
                f"max_matvecs must be >= 2k + 2 = {2 * k + 2} (k + 1 Lanczos steps and the k-matvec "
                f"residual check), got {max_matvecs}"
            )
    max_passes = 2 + _MAX_VERIFY + math.ceil(max(max_matvecs - ncv, 0) / (ncv - keep))
    breakdown_tol = check_breakdown_tol(breakdown_tol, op.dtype)
    key = as_key("key", key, required=False)
    key, sub = jax.random.split(key)
    v0 = start_vector(op, sub, v0, "eigsh")
    res = _eigsh_jit(
        op,
        v0,
        key,
        rtol,
        atol,
        breakdown_tol,
        jnp.asarray(_WHICH.index(which), jnp.int32),
        jnp.asarray(max_matvecs, jnp.int32),
        k=k,
        ncv=ncv,
        keep=keep,
        max_passes=max_passes,
    )
    if is_concrete(res.status):
        res = res._replace(num_matvecs=int(res.num_matvecs), num_restarts=int(res.num_restarts))
    res = res._replace(status=as_status(res.status))
    raise_if_failed("eigsh", res.status, throw)
    return res

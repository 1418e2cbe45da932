"""Lanczos tridiagonalization and a thick-restart Lanczos eigensolver.

Both work on a symmetric :class:`~curvlab._operators.LinearOperator` through its
matvec only, and both are whole jit-compiled loops.

:func:`lanczos` runs ``k`` steps of the Lanczos process from a unit vector
:math:`q_1`, building an orthonormal basis :math:`Q_k = [q_1, \\dots, q_k]` of
the Krylov space :math:`\\mathcal K_k(A, q_1)` and the tridiagonal matrix
:math:`T_k = Q_k^\\top A Q_k` such that

.. math::

    A Q_k = Q_k T_k + \\beta_k q_{k+1} e_k^\\top .

The eigenvalues of :math:`T_k` (Ritz values) approximate the extreme
eigenvalues of :math:`A` first. With full reorthogonalization every new vector
is orthogonalized (twice: "twice is enough", Giraud et al. 2005) against the
whole basis, which is kept in one preallocated ``(k + 1, n)`` buffer ``Q``:
``h = Q @ w`` gives all projections in one pass and ``w -= h @ Q`` removes
them, so the buffer is never copied.

:func:`eigsh` finds ``k`` wanted eigenpairs with bounded memory by thick-restart
Lanczos (Wu & Simon, SIAM J. Matrix Anal. Appl. 22, 2000): after ``ncv`` steps
it keeps the ``l`` most wanted Ritz vectors, whose projected matrix is
:math:`\\operatorname{diag}(\\theta_1..\\theta_l)` bordered by the residual
couplings :math:`\\beta_m s_{m,i}`, and continues the Lanczos process from the
last residual vector. The residual of a Ritz pair :math:`(\\theta_i, y_i = V s_i)`
is :math:`\\|A y_i - \\theta_i y_i\\| = |\\beta_m s_{m,i}|`, which drives the
convergence test; the final residuals are recomputed with true matvecs.
Each :func:`eigsh` step first applies the known couplings (the three-term
recurrence, or the arrow row right after a restart), then makes one full
Gram-Schmidt pass and a second one only when the first removed more than
:math:`1 - 1/\\sqrt 2` of the norm (Daniel, Gragg, Kaufman & Stewart 1976): the
basis stays orthonormal to working precision with two passes over the
``(ncv + 1, n)`` basis per step instead of four.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import eigh_tridiagonal

from curvlab._operators import LinearOperator, as_operator
from curvlab._validation import check_finite, check_positive_int, is_concrete

__all__ = [
    "LanczosStatus",
    "LanczosResult",
    "lanczos",
    "tridiagonal",
    "ritz_pairs",
    "EigshStatus",
    "EigshResult",
    "eigsh",
]

_RUNNING = -1


class LanczosStatus(enum.IntEnum):
    """How a :func:`lanczos` run ended."""

    #: all requested steps were taken
    COMPLETED = 0
    #: :math:`\beta_j \approx 0`: the Krylov space is invariant, the Ritz values are exact eigenvalues
    BREAKDOWN = 1
    #: a NaN or infinity appeared (in the operator's output); the steps before it are kept
    NONFINITE = 2


_LANCZOS_MESSAGES = {
    LanczosStatus.COMPLETED: "completed all requested Lanczos steps",
    LanczosStatus.BREAKDOWN: (
        "breakdown: beta ~ 0, an invariant subspace was found; the Ritz values are exact eigenvalues "
        "of the operator restricted to it"
    ),
    LanczosStatus.NONFINITE: "stopped: the operator produced a non-finite value (NaN or infinity)",
}


class EigshStatus(enum.IntEnum):
    """How an :func:`eigsh` run ended."""

    #: every wanted pair satisfies ``||A y - theta y|| <= tol * max(|theta|, tiny)`` (true residual)
    CONVERGED = 0
    #: the restart budget ran out before all wanted pairs converged
    MAX_RESTARTS = 1
    #: the Ritz estimates converged but a true residual exceeds ``tol`` (tol below attainable accuracy)
    INACCURATE = 2
    #: a NaN or infinity appeared
    NONFINITE = 3


_EIGSH_MESSAGES = {
    EigshStatus.CONVERGED: "converged: all wanted eigenpairs satisfy the residual tolerance",
    EigshStatus.MAX_RESTARTS: "not converged: the restart budget ran out (see `converged` per pair)",
    EigshStatus.INACCURATE: (
        "the Ritz estimates converged but some true residuals exceed tol: tol is below the accuracy "
        "attainable in this dtype (see `residual_norms`)"
    ),
    EigshStatus.NONFINITE: "stopped: the operator produced a non-finite value (NaN or infinity)",
}


def _as_status(enum_cls, s):
    """Enum member for a concrete scalar status, the array itself under tracing or batching."""
    if is_concrete(s) and np.ndim(s) == 0:
        return enum_cls(int(s))
    return s


def _message(enum_cls, table, s):
    if is_concrete(s) and np.ndim(s) == 0:
        return table[enum_cls(int(s))]
    if is_concrete(s):
        return "; ".join(sorted({table[enum_cls(int(x))] for x in np.ravel(np.asarray(s))}))
    return "<traced status>"


class LanczosResult(NamedTuple):
    """Result of :func:`lanczos`.

    Attributes
    ----------
    alpha : Array, shape (k,)
        Diagonal of :math:`T`; entries past ``num_steps`` are 0.
    beta : Array, shape (k,)
        ``beta[j]`` is the norm of the residual after step ``j`` (the
        off-diagonal :math:`T_{j+1,j}`); ``beta[num_steps - 1]`` is
        :math:`\\beta_k` of the Lanczos relation. Entries past ``num_steps`` are 0.
    basis : Array, shape (k + 1, n)
        Lanczos vectors as rows; row ``num_steps`` is :math:`q_{k+1}` (zero after a breakdown),
        rows past it are zero.
    ritz_history : Array, shape (k, k)
        Row ``j``: the Ritz values after step ``j + 1``, ascending, padded with NaN
        (rows past ``num_steps`` are all NaN; all NaN if ``history=False``).
    num_steps : int
        Steps actually taken (fewer than ``k`` after a breakdown or a non-finite value).
    status : LanczosStatus
    anorm : Array
        :math:`\\max_j \\|A q_j\\|`, a lower bound of :math:`\\|A\\|_2`.
    """

    alpha: jax.Array
    beta: jax.Array
    basis: jax.Array
    ritz_history: jax.Array
    num_steps: int | jax.Array
    status: LanczosStatus | jax.Array
    anorm: jax.Array

    @property
    def message(self) -> str:
        """Readable description of :attr:`status`."""
        return _message(LanczosStatus, _LANCZOS_MESSAGES, self.status)


# ---------------------------------------------------------------------------
# Tridiagonal helpers (static shapes, a dynamic number of active rows)
# ---------------------------------------------------------------------------


def _masked_tridiagonal(alpha, beta, m):
    """Diagonal and off-diagonal of a ``(k, k)`` tridiagonal whose leading ``m x m`` block is ``T_m``.

    The trailing block is decoupled (zero coupling) and its diagonal is a sentinel
    ``3 g`` above the Gershgorin bound ``g`` of ``T_m``, so the first ``m``
    ascending eigenvalues are exactly those of ``T_m`` and no eigenvector mixes
    the two blocks.
    """
    k = alpha.shape[0]
    idx = jnp.arange(k)
    active = idx < m
    a = jnp.where(active, alpha, 0)
    e = jnp.where(idx[:-1] < m - 1, beta[:-1], 0)
    ae = jnp.abs(e)
    zero = jnp.zeros((1,), ae.dtype)
    g = jnp.max(jnp.abs(a) + jnp.concatenate([ae, zero]) + jnp.concatenate([zero, ae]))
    sentinel = jnp.where(g > 0, 3 * g, 1).astype(a.dtype)
    return jnp.where(active, a, sentinel), e


def _tridiag_eigvals(alpha, beta, m):
    """Ascending eigenvalues of the leading ``m x m`` block, NaN-padded to length ``k``."""
    d, e = _masked_tridiagonal(alpha, beta, m)
    if d.shape[0] == 1:
        theta = d
    else:
        theta = jnp.sort(eigh_tridiagonal(d, e, eigvals_only=True))
    return jnp.where(jnp.arange(d.shape[0]) < m, theta, jnp.nan)


def _tridiag_eigh(alpha, beta, m):
    """Eigen-decomposition of the leading block: ascending ``theta`` (NaN-padded), ``S`` (k, k)."""
    d, e = _masked_tridiagonal(alpha, beta, m)
    T = jnp.diag(d) + jnp.diag(e, 1) + jnp.diag(e, -1)
    theta, S = jnp.linalg.eigh(T)
    active = jnp.arange(d.shape[0]) < m
    return jnp.where(active, theta, jnp.nan), jnp.where(active[None, :], S, 0)


def _default_breakdown_tol(dtype) -> float:
    return float(jnp.finfo(dtype).eps) ** (2 / 3)


# ---------------------------------------------------------------------------
# Lanczos
# ---------------------------------------------------------------------------


#: a second Gram-Schmidt pass is made when one pass leaves less than this fraction of the norm
_DGKS_ETA = 1 / math.sqrt(2)


def _orthogonalize(Q, w):
    """Classical Gram-Schmidt of ``w`` against the rows of ``Q``, twice. Returns ``(w, h)``."""
    h = Q @ w
    w = w - h @ Q
    h2 = Q @ w
    w = w - h2 @ Q
    return w, h + h2


def _row_blocks(num_rows: int, blocked: bool) -> tuple[int, ...]:
    """Static row counts ``r_0 < r_1 < ... = num_rows`` for passes against the rows in use.

    A basis buffer is filled row by row; rows past the current step are zero. Passing against
    the smallest ``r_i`` covering the filled rows halves the memory traffic on average. At most
    eight blocks of at least 16 rows (one compiled branch each); one block when not ``blocked``
    (under ``vmap`` a ``lax.switch`` on a batched index runs every branch).
    """
    if not blocked:
        return (num_rows,)
    size = max(16, -(-num_rows // 8))
    return tuple(min(num_rows, (i + 1) * size) for i in range(-(-num_rows // size)))


def _cgs_pass_in_use(Q, w, j, blocks: tuple[int, ...]):
    """One Gram-Schmidt pass of ``w`` against rows ``0..j`` of ``Q`` (rows ``> j`` are zero).

    Returns ``(w, h)`` with ``h`` of length ``Q.shape[0]`` (zero past the rows used).
    """

    def rows(r):
        def pass_(Q, w):
            h = Q[:r] @ w
            return w - h @ Q[:r], jnp.zeros((Q.shape[0],), w.dtype).at[:r].set(h)

        return pass_

    if len(blocks) == 1:
        return rows(blocks[0])(Q, w)
    index = jnp.minimum(j // blocks[0], len(blocks) - 1)
    return jax.lax.switch(index, [rows(r) for r in blocks], Q, w)


def _dgks_orthogonalize(Q, w, j, blocks: tuple[int, ...]):
    """Gram-Schmidt of ``w`` against rows ``0..j`` of ``Q``: one pass, a second only when needed.

    Daniel-Gragg-Kaufman-Stewart test: the second pass runs when the first one removed more
    than :math:`1 - 1/\\sqrt 2` of :math:`\\|w\\|` (cancellation); "twice is enough" then gives
    :math:`O(\\varepsilon)` orthogonality. The caller has already subtracted the local
    three-term recurrence, so one pass is the rule. Returns ``(w, h)``, ``h`` the coefficients
    removed (both passes).
    """
    norm_before = jnp.linalg.norm(w)
    w, h = _cgs_pass_in_use(Q, w, j, blocks)

    def second_pass(w):
        w, h2 = _cgs_pass_in_use(Q, w, j, blocks)
        return w, h + h2

    return jax.lax.cond(jnp.linalg.norm(w) < _DGKS_ETA * norm_before, second_pass, lambda w: (w, h), w)


def _lanczos_loop(
    mv, v0, num_steps: int, reorthogonalize: bool, breakdown_tol, history: bool, blocked: bool = True
):
    """Traceable Lanczos process (vmapped by :mod:`curvlab._spectral` with ``blocked=False``)."""
    n = v0.shape[0]
    k = num_steps
    dtype = v0.dtype
    q0 = v0 / jnp.linalg.norm(v0)
    Q = jnp.zeros((k + 1, n), dtype).at[0].set(q0)
    alpha = jnp.zeros((k,), dtype)
    beta = jnp.zeros((k,), dtype)
    zero = jnp.zeros((), dtype)
    tol = jnp.asarray(breakdown_tol, dtype)
    blocks = _row_blocks(k + 1, blocked)

    def cond(state):
        return state[5] == _RUNNING

    def body(state):
        j, Q, alpha, beta, steps, status, anorm = state
        q = Q[j]
        w = mv(q)
        anorm = jnp.maximum(anorm, jnp.linalg.norm(w))
        # three-term recurrence first, then (with reorthogonalization) Gram-Schmidt against the
        # rows filled so far: one pass, a second only on cancellation (DGKS)
        b_prev = jnp.where(j > 0, beta[j - 1], zero)
        w = w - b_prev * Q[jnp.maximum(j - 1, 0)]
        a = jnp.vdot(q, w)
        w = w - a * q
        if reorthogonalize:
            w, h = _dgks_orthogonalize(Q, w, j, blocks)
            a = a + h[j]
        b = jnp.linalg.norm(w)
        finite = jnp.isfinite(a) & jnp.isfinite(b)
        brk = b <= tol * anorm
        safe_b = jnp.where(brk | ~finite, jnp.ones_like(b), b)
        q_next = jnp.where(brk | ~finite, zero, w / safe_b)
        Q = Q.at[j + 1].set(q_next)
        alpha = alpha.at[j].set(a)
        beta = beta.at[j].set(b)
        steps = jnp.where(finite, j + 1, j).astype(jnp.int32)
        status = jnp.where(
            ~finite,
            int(LanczosStatus.NONFINITE),
            jnp.where(
                brk,
                int(LanczosStatus.BREAKDOWN),
                jnp.where(j + 1 >= k, int(LanczosStatus.COMPLETED), _RUNNING),
            ),
        ).astype(jnp.int32)
        return j + 1, Q, alpha, beta, steps, status, anorm

    i0 = jnp.zeros((), jnp.int32)
    state = (i0, Q, alpha, beta, i0, jnp.asarray(_RUNNING, jnp.int32), zero)
    _, Q, alpha, beta, steps, status, anorm = jax.lax.while_loop(cond, body, state)
    idx = jnp.arange(k)
    alpha = jnp.where(idx < steps, alpha, zero)
    beta = jnp.where(idx < steps, beta, zero)
    if history:
        ritz = jax.vmap(lambda i: _tridiag_eigvals(alpha, beta, i + 1))(idx)
        ritz = jnp.where((idx < steps)[:, None], ritz, jnp.nan)
    else:
        ritz = jnp.full((k, k), jnp.nan, dtype)
    return LanczosResult(alpha, beta, Q, ritz, steps, status, anorm)


@functools.partial(jax.jit, static_argnames=("num_steps", "reorthogonalize", "history"))
def _lanczos_jit(op, v0, breakdown_tol, *, num_steps, reorthogonalize, history):
    mv = op.prepare()
    return _lanczos_loop(mv, v0, num_steps, reorthogonalize, breakdown_tol, history)


def _start_vector(op: LinearOperator, key, v0, name="v0"):
    """Validated start vector (concrete checks happen before tracing)."""
    n = op.size
    if v0 is None:
        if key is None:
            key = jax.random.key(0)
        return jax.random.normal(key, (n,), dtype=op.dtype)
    v0 = jnp.asarray(v0)
    if v0.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the operator, got {tuple(v0.shape)}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array, got dtype {v0.dtype}")
    v0 = v0.astype(op.dtype)
    check_finite(name, v0)
    if is_concrete(v0) and not bool(jnp.any(v0 != 0)):
        raise ValueError(f"{name} must be nonzero: the Lanczos process cannot start from the zero vector")
    return v0


def _check_operator(op) -> LinearOperator:
    op = as_operator(op)
    if not jnp.issubdtype(op.dtype, jnp.floating):
        raise TypeError(f"op must have a real floating dtype, got {op.dtype}")
    return op


def lanczos(
    op: LinearOperator,
    num_steps: int,
    *,
    key: jax.Array | None = None,
    v0: jax.typing.ArrayLike | None = None,
    reorthogonalize: bool = True,
    breakdown_tol: float | None = None,
    history: bool = True,
) -> LanczosResult:
    """Run ``num_steps`` steps of the Lanczos process on a symmetric operator.

    Builds :math:`Q_k` with orthonormal rows and
    :math:`T_k = \\operatorname{tridiag}(\\beta, \\alpha, \\beta)` with
    :math:`A Q_k^\\top = Q_k^\\top T_k + \\beta_k q_{k+1} e_k^\\top`. The whole loop is one
    jit-compiled ``lax.while_loop``; the operator is an argument (a pytree), so
    another operator of the same kind and shapes reuses the compiled code.

    Parameters
    ----------
    op : LinearOperator or square array
        Symmetric operator :math:`A` of size ``n``.
    num_steps : int
        Number of steps ``k`` (may exceed ``n``: the process then stops at the
        invariant subspace, status ``BREAKDOWN``, with exact eigenvalues).
    key : PRNG key, optional
        Draws a Gaussian start vector when ``v0`` is not given (default ``jax.random.key(0)``).
    v0 : array, optional
        Start vector (normalized here); must be nonzero.
    reorthogonalize : bool
        Full reorthogonalization against the basis built so far (after the three-term
        recurrence, one Gram-Schmidt pass over the filled rows and a second only on
        cancellation, the Daniel-Gragg-Kaufman-Stewart test:
        :math:`\\|Q^\\top Q - I\\| = O(\\varepsilon)`). Without it the basis loses
        orthogonality once Ritz values converge and "ghost" copies appear.
    breakdown_tol : float, optional
        Stop when :math:`\\beta_j \\le` ``breakdown_tol`` :math:`\\cdot \\max_i \\|A q_i\\|`;
        default :math:`\\varepsilon^{2/3}` of the dtype.
    history : bool
        Compute ``ritz_history`` (Ritz values after every step, by tridiagonal
        bisection: :math:`O(k^3)` after the loop).

    Returns
    -------
    LanczosResult

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab._operators import DiagonalOperator
    >>> res = lanczos(DiagonalOperator(jnp.array([1.0, 2.0, 3.0])), 5)
    >>> res.status.name, res.num_steps
    ('BREAKDOWN', 3)
    >>> [round(float(t), 4) for t in res.ritz_history[2]]  # NaN-padded to num_steps=5
    [1.0, 2.0, 3.0, nan, nan]
    """
    op = _check_operator(op)
    num_steps = check_positive_int("num_steps", num_steps)
    v0 = _start_vector(op, key, v0)
    if breakdown_tol is None:
        breakdown_tol = _default_breakdown_tol(op.dtype)
    elif not (np.ndim(breakdown_tol) == 0 and float(breakdown_tol) >= 0):
        raise ValueError(f"breakdown_tol must be a nonnegative scalar, got {breakdown_tol!r}")
    res = _lanczos_jit(
        op,
        v0,
        breakdown_tol,
        num_steps=num_steps,
        reorthogonalize=bool(reorthogonalize),
        history=bool(history),
    )
    steps = int(res.num_steps) if is_concrete(res.num_steps) else res.num_steps
    return res._replace(num_steps=steps, status=_as_status(LanczosStatus, res.status))


def _concrete_steps(result: LanczosResult) -> int:
    if not is_concrete(result.num_steps):
        raise TypeError("this helper needs a concrete num_steps (call it outside jit)")
    return int(result.num_steps)


def tridiagonal(result: LanczosResult) -> jax.Array:
    """Dense ``(m, m)`` tridiagonal :math:`T_m` of a :class:`LanczosResult` (``m = num_steps``)."""
    m = _concrete_steps(result)
    a = result.alpha[:m]
    b = result.beta[: max(m - 1, 0)]
    return jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)


def ritz_pairs(result: LanczosResult) -> tuple[jax.Array, jax.Array]:
    """Ritz values (ascending, shape ``(m,)``) and Ritz vectors (shape ``(n, m)``).

    With :math:`T_m = S \\Theta S^\\top`, the Ritz vectors are :math:`Y = Q_m^\\top S`; the
    residual of pair ``i`` is :math:`|\\beta_m S_{m,i}|`.
    """
    m = _concrete_steps(result)
    theta, S = jnp.linalg.eigh(tridiagonal(result))
    return theta, result.basis[:m].T @ S


# ---------------------------------------------------------------------------
# Thick-restart Lanczos eigensolver
# ---------------------------------------------------------------------------

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
    converged : Array of bool, shape (k,)
        :math:`\\|A y_i - \\theta_i y_i\\| \\le
        \\mathrm{tol}\\cdot\\max(|\\theta_i|, \\varepsilon^{2/3}\\|A\\|)`.
    status : EigshStatus
    num_restarts : int
        Restarts performed (0: the first ``ncv`` steps sufficed).
    ritz_history : Array, shape (max_restarts + 1, k)
        Wanted Ritz values after each Lanczos pass (NaN past the last).
    residual_history : Array, shape (max_restarts + 1, k)
        Their estimated residuals :math:`|\\beta_m s_{m,i}|` (NaN past the last).
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residual_norms: jax.Array
    num_matvecs: int | jax.Array
    converged: jax.Array
    status: EigshStatus | jax.Array
    num_restarts: int | jax.Array
    ritz_history: jax.Array
    residual_history: jax.Array

    @property
    def message(self) -> str:
        """Readable description of :attr:`status`."""
        return _message(EigshStatus, _EIGSH_MESSAGES, self.status)


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


def _eigsh_loop(op, v0, key, tol, atol, breakdown_tol, which_id, *, k, ncv, keep, max_restarts):
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
        q = V[j]
        w = mv(q)
        anorm = jnp.maximum(anorm, jnp.linalg.norm(w))
        # local recurrence first: the known couplings T[:j, j] are beta_{j-1} alone on a regular step,
        # the whole arrow row on the first step after a restart (one GEMV, once per restart)
        w = jax.lax.cond(
            j == j0,
            lambda w: w - T[: m + 1, j] @ V,
            lambda w: w - T[jnp.maximum(j - 1, 0), j] * V[jnp.maximum(j - 1, 0)],
            w,
        )
        a = jnp.vdot(q, w)
        w = w - a * q
        # then Gram-Schmidt against the rows filled so far: one pass, a second only on cancellation
        w, h = _dgks_orthogonalize(V, w, j, blocks)
        a = a + h[j]
        b = jnp.linalg.norm(w)
        bad = bad | ~(jnp.isfinite(a) & jnp.isfinite(b))
        brk = b <= btol * anorm
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
        idx = jnp.arange(m)
        active = idx < size
        Tm = jnp.where(active[:, None] & active[None, :], T[:m, :m], 0)
        sentinel = 3 * jnp.max(jnp.sum(jnp.abs(Tm), axis=1)) + 1
        theta, S = jnp.linalg.eigh(Tm + jnp.diag(jnp.where(active, zero, sentinel)))
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

        def inner_cond(c):
            return (c[0] < m) & ~c[-1]

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
        out_of_budget = (size >= m) & (restarts >= max_restarts)
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
            ritz_hist=state["ritz_hist"].at[restarts].set(tw),
            res_hist=state["res_hist"].at[restarts].set(rw),
        )

    nan_hist = jnp.full((max_restarts + 1, k), jnp.nan, dtype)
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
        int(EigshStatus.NONFINITE),
        jnp.where(
            jnp.all(converged),
            int(EigshStatus.CONVERGED),
            jnp.where(state["est_conv"], int(EigshStatus.INACCURATE), int(EigshStatus.MAX_RESTARTS)),
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


_eigsh_jit = jax.jit(_eigsh_loop, static_argnames=("k", "ncv", "keep", "max_restarts"))


def eigsh(
    op: LinearOperator,
    k: int = 6,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    atol: float = 0.0,
    max_steps: int | None = None,
    key: jax.Array | None = None,
    v0: jax.typing.ArrayLike | None = None,
    ncv: int | None = None,
    max_restarts: int | None = None,
    breakdown_tol: float | None = None,
) -> EigshResult:
    """``k`` eigenpairs of a symmetric operator by thick-restart Lanczos.

    A pair is converged when :math:`\\|A y - \\theta y\\|_2 \\le \\mathrm{tol} \\cdot
    \\max(|\\theta|, \\varepsilon^{2/3}\\|A\\|)` (the guard avoids an impossible relative
    test for :math:`\\theta \\approx 0`). Memory is ``(ncv + 1) n``; the whole algorithm,
    restarts included, is one jit-compiled ``lax.while_loop``. Full
    reorthogonalization keeps the basis orthonormal to working precision, so no
    spurious copies of converged eigenvalues appear. The Ritz estimates
    :math:`|\\beta_j s_{j,i}|` are also checked inside a pass, so the run stops near
    the step where they converge; the wanted pairs are then refined by Rayleigh-Ritz on
    their span and verified with true residuals (``k`` matvecs).

    Parameters
    ----------
    op : LinearOperator or square array
    k : int
        Number of eigenpairs, ``1 <= k < n``.
    which : {"LA", "SA", "LM", "BE"}
        Largest algebraic, smallest algebraic, largest magnitude, or both ends
        (``k // 2`` smallest and ``k - k // 2`` largest).
    tol : float
        Relative residual tolerance (float32: use ``tol >= 1e-5``; below that the
        status may be ``INACCURATE``).
    atol : float
        Absolute residual tolerance: a pair is also converged when
        :math:`\\|A y - \\theta y\\| \\le` ``atol``. Use it for eigenvalues at or near zero
        (``which="SA"`` on a singular Gauss-Newton or Fisher matrix), where a relative
        test cannot be met; e.g. ``atol = tol * lambda_max``.
    max_steps : int, optional
        Budget of Lanczos matvecs (the final ``k`` residual matvecs excluded);
        overrides ``max_restarts``.
    key : PRNG key, optional
        Start vector (and fresh directions after an invariant subspace); default ``key(0)``.
    v0 : array, optional
        Start vector.
    ncv : int, optional
        Basis size ``m`` with ``k < m <= n``; default ``min(n, max(2k + 1, min(20, 8 + 4k)))``
        (12 for ``k = 1``, 16 for ``k = 2``, 20 for ``3 <= k <= 9``).
    max_restarts : int, optional
        Default 300 (ignored when ``max_steps`` is given).
    breakdown_tol : float, optional
        Invariant-subspace threshold relative to :math:`\\max\\|A q\\|` (default :math:`\\varepsilon^{2/3}`).

    Returns
    -------
    EigshResult

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab._operators import DiagonalOperator
    >>> res = eigsh(DiagonalOperator(jnp.arange(1.0, 101.0)), k=2, tol=1e-5)
    >>> res.status.name, [round(float(t), 3) for t in res.eigenvalues]
    ('CONVERGED', [100.0, 99.0])
    """
    op = _check_operator(op)
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
    if not (np.ndim(tol) == 0 and np.isfinite(tol) and float(tol) > 0):
        raise ValueError(f"tol must be a positive finite scalar, got {tol!r}")
    if not (np.ndim(atol) == 0 and np.isfinite(atol) and float(atol) >= 0):
        raise ValueError(f"atol must be a nonnegative finite scalar, got {atol!r}")
    if ncv is None:
        # small k: a smaller basis costs less reorthogonalization per step (memory traffic (ncv + 1) n)
        # and thick restarts keep the convergence of the unrestarted process closely
        ncv = min(n, max(2 * k + 1, min(20, 8 + 4 * k)))
    else:
        ncv = check_positive_int("ncv", ncv)
        if not k < ncv <= n:
            raise ValueError(f"ncv must satisfy k < ncv <= n (k = {k}, n = {n}), got {ncv}")
    keep = min(ncv - 1, k + (ncv - k) // 2)
    if max_steps is not None:
        max_steps = check_positive_int("max_steps", max_steps)
        max_restarts = max(0, math.ceil((max_steps - ncv) / (ncv - keep)))
    elif max_restarts is None:
        max_restarts = 300
    else:
        max_restarts = check_positive_int("max_restarts", max_restarts, minimum=0)
    if breakdown_tol is None:
        breakdown_tol = _default_breakdown_tol(op.dtype)
    if key is None:
        key = jax.random.key(0)
    key, sub = jax.random.split(key)
    v0 = _start_vector(op, sub, v0)
    res = _eigsh_jit(
        op,
        v0,
        key,
        tol,
        atol,
        breakdown_tol,
        jnp.asarray(_WHICH.index(which), jnp.int32),
        k=k,
        ncv=ncv,
        keep=keep,
        max_restarts=max_restarts,
    )
    if is_concrete(res.status):
        res = res._replace(
            num_matvecs=int(res.num_matvecs),
            num_restarts=int(res.num_restarts),
            status=_as_status(EigshStatus, res.status),
        )
    return res

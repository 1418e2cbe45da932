"""Lanczos tridiagonalization: the one Lanczos step and :func:`lanczos`.

:func:`lanczos` runs ``k`` steps of the Lanczos process from a unit vector
:math:`q_1`, building an orthonormal basis :math:`Q_k = [q_1, \\dots, q_k]` of
the Krylov space :math:`\\mathcal K_k(A, q_1)` and the tridiagonal matrix
:math:`T_k = Q_k^\\top A Q_k` such that

.. math::

    A Q_k = Q_k T_k + \\beta_k q_{k+1} e_k^\\top .

The eigenvalues of :math:`T_k` (Ritz values, :mod:`curvlab._tridiagonal`) approximate the
extreme eigenvalues of :math:`A` first. With full reorthogonalization every new vector
is orthogonalized against the whole basis, which is kept in one preallocated
``(k + 1, n)`` buffer ``Q``: ``h = Q @ w`` gives all projections in one pass and
``w -= h @ Q`` removes them, so the buffer is never copied.

:func:`lanczos_step` is the one step shared by :func:`lanczos`, SLQ
(:mod:`curvlab._spectral`) and the thick-restart eigensolver (:mod:`curvlab._eigsh`):
a matvec, the known couplings (the three-term recurrence, or eigsh's arrow row after a
restart), one Gram-Schmidt pass and a second only when the first removed more than
:math:`1 - 1/\\sqrt 2` of the norm (Daniel, Gragg, Kaufman & Stewart 1976), and the
breakdown test :math:`\\beta_j \\le \\text{tol}\\cdot\\max_i \\|A q_i\\|`. What follows
a breakdown is the caller's: :func:`lanczos` stops (an invariant subspace, exact Ritz
values), eigsh continues from a fresh direction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvlab import _tridiagonal
from curvlab._operators import LinearOperator, as_operator
from curvlab._status import RUNNING, Status, as_status, check_throw, converged_of, message_of, raise_if_failed
from curvlab._validation import (
    as_key,
    check_finite,
    check_matvec_output,
    check_positive_int,
    check_real_floating,
    is_concrete,
)

__all__ = ["LanczosResult", "lanczos", "lanczos_step", "LanczosStep"]


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
        Lanczos vectors as rows; row ``num_steps`` is :math:`q_{k+1}` (zero after an
        invariant subspace), rows past it are zero.
    ritz_history : Array, shape (k, k)
        Row ``j``: the Ritz values after step ``j + 1``, ascending, padded with NaN
        (rows past ``num_steps`` are all NaN; all NaN if ``history=False``).
    num_steps : int
        Steps actually taken (fewer than ``k`` after an invariant subspace or a non-finite value).
    status : Status
        ``COMPLETED``, ``INVARIANT_SUBSPACE`` or ``NONFINITE``.
    anorm : Array
        :math:`\\max_j \\|A q_j\\|`, a lower bound of :math:`\\|A\\|_2`.
    matvec_norms : Array, shape (k,)
        :math:`\\|A q_j\\|` per step (0 past ``num_steps``).
    num_matvecs : int
        Matvecs used (``num_steps``, plus one when a non-finite product stopped the run).
    breakdown_tol : Array
        The invariant-subspace threshold the run used (relative to ``anorm``).
    reorthogonalized : bool
        Whether the run used full reorthogonalization (needed by :meth:`shifted`).
    """

    alpha: jax.Array
    beta: jax.Array
    basis: jax.Array
    ritz_history: jax.Array
    num_steps: int | jax.Array
    status: Status | jax.Array
    anorm: jax.Array
    matvec_norms: jax.Array
    num_matvecs: int | jax.Array
    breakdown_tol: jax.Array
    reorthogonalized: bool | jax.Array

    @property
    def message(self) -> str:
        """Readable description of :attr:`status`."""
        return message_of(self.status)

    @property
    def converged(self):
        """Whether the run succeeded (``COMPLETED`` or ``INVARIANT_SUBSPACE``)."""
        return converged_of(self.status)

    def tridiagonal(self) -> jax.Array:
        """Dense ``(m, m)`` tridiagonal :math:`T_m` (``m = num_steps``, concrete)."""
        return _tridiagonal.to_dense(self.alpha, self.beta, _concrete_steps(self, "tridiagonal"))

    def ritz_pairs(self) -> tuple[jax.Array, jax.Array]:
        """Ritz values (ascending, ``(m,)``) and unit Ritz vectors :math:`Y = Q_m^\\top S` (``(n, m)``).

        With :math:`T_m = S \\Theta S^\\top`; the residual of pair ``i`` is :math:`|\\beta_m S_{m,i}|`.
        """
        m = _concrete_steps(self, "ritz_pairs")
        return _tridiagonal.ritz_pairs(self.alpha, self.beta, self.basis, m)

    def prefix(self, k: int) -> LanczosResult:
        """The result of a ``k``-step run from the same start vector, without a matvec.

        The first ``k`` steps of a Lanczos run do not depend on how many follow, so the
        leading ``k`` entries of ``alpha``, ``beta``, ``matvec_norms``, the first ``k + 1``
        basis rows and the leading ``k x k`` block of ``ritz_history`` *are* the ``k``-step
        run: the same arithmetic (up to the order XLA sums over the larger basis buffer, i.e.
        to rounding), no matvec. Refused (``ValueError``) for ``k`` larger than the steps taken. The status is
        this run's when ``k = num_steps`` (``COMPLETED`` when this run went on to a
        non-finite product at step ``k + 1``, which a ``k``-step run never makes), else
        ``COMPLETED``.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from curvlab._operators import DiagonalOperator
        >>> op = DiagonalOperator(jnp.arange(1.0, 11.0))
        >>> a, b = lanczos(op, 8).prefix(3), lanczos(op, 3)
        >>> bool(jnp.allclose(a.alpha, b.alpha, rtol=1e-5)), a.num_steps, a.status.name
        (True, 3, 'COMPLETED')
        """
        taken = _concrete_steps(self, "prefix")
        k = check_positive_int("k", k)
        if k > taken:
            raise ValueError(
                f"prefix: k = {k} exceeds the {taken} steps this run took; a prefix exists only for "
                f"k <= num_steps (run lanczos with num_steps >= {k})"
            )
        status = self.status if k == taken and int(self.status) != Status.NONFINITE else Status.COMPLETED
        mv_norms = self.matvec_norms[:k]
        return LanczosResult(
            self.alpha[:k],
            self.beta[:k],
            self.basis[: k + 1],
            self.ritz_history[:k, :k],
            k,
            as_status(status),
            mv_norms.max(),  # NumPy for a host result: nothing compiled per k
            mv_norms,
            k,
            self.breakdown_tol,
            self.reorthogonalized,
        )

    def shifted(self, damping) -> LanczosResult:
        """The run on :math:`A + \\text{damping}\\,I` from the same start vector, without a matvec.

        In exact arithmetic the Krylov spaces of :math:`A` and :math:`A + dI` coincide, so the
        run has the same basis and :math:`\\beta_j`, with :math:`\\alpha_j + d` and Ritz values
        shifted by :math:`d`; the products' norms follow from the three-term relation,
        :math:`\\|(A + dI) q_j\\|^2 = \\beta_{j-1}^2 + (\\alpha_j + d)^2 + \\beta_j^2`. In
        floating point a fresh run on ``op.damped(d)`` agrees to rounding when it was fully
        reorthogonalized.

        Refused (``ValueError``) when the shifted values would not be those of a fresh run:
        the run was not reorthogonalized (without it rounding errors grow once orthogonality
        is lost, and a fresh run shows its ghost eigenvalues at other steps), it stopped on a
        non-finite value, or the fresh run's breakdown test
        :math:`\\beta_j \\le \\text{tol}\\cdot\\max_{i \\le j}\\|(A + dI) q_i\\|` would stop it at
        another step. When only the last step's test changes outcome from ``COMPLETED``, the
        status becomes ``INVARIANT_SUBSPACE`` (and the last basis row zero) as in a fresh run.
        A preconditioned or otherwise transformed operator is not a plain shift; shift the
        operator and run again.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from curvlab._operators import DiagonalOperator
        >>> op = DiagonalOperator(jnp.arange(1.0, 11.0))
        >>> a = lanczos(op, 6).shifted(0.5)
        >>> b = lanczos(DiagonalOperator(jnp.arange(1.0, 11.0) + 0.5), 6)
        >>> bool(jnp.allclose(a.alpha, b.alpha, rtol=1e-5))
        True
        """
        m = _concrete_steps(self, "shifted")
        if not (np.ndim(damping) == 0 and is_concrete(damping)):
            raise TypeError(f"shifted: damping must be a concrete real scalar, got {damping!r}")
        d = float(damping)
        if not math.isfinite(d):
            raise ValueError(f"shifted: damping must be finite, got {damping!r}")
        if not bool(np.asarray(self.reorthogonalized)):
            raise ValueError(
                "shifted: this run was not reorthogonalized, so a fresh run on the shifted operator "
                "differs by more than rounding; run lanczos(op.damped(damping), ...) instead"
            )
        if int(self.status) == Status.NONFINITE:
            raise ValueError("shifted: this run stopped on a non-finite value and cannot be shifted")
        dtype = self.alpha.dtype
        idx = jnp.arange(self.alpha.shape[0])
        active = idx < m
        alpha = jnp.where(active, self.alpha + jnp.asarray(d, dtype), 0)
        prev = jnp.concatenate([jnp.zeros((1,), dtype), self.beta[:-1]])
        mv_norms = jnp.where(active, jnp.sqrt(prev**2 + alpha**2 + self.beta**2), 0)
        running = np.maximum.accumulate(np.asarray(mv_norms)[:m])
        beta = np.asarray(self.beta)[:m]
        brk = beta <= float(self.breakdown_tol) * running
        status = Status(int(self.status))
        if np.any(brk[:-1]) or (status == Status.INVARIANT_SUBSPACE and not brk[-1]):
            raise ValueError(
                f"shifted: with damping = {d} the invariant-subspace test of a fresh run would stop at "
                "another step than this run did; run lanczos(op.damped(damping), ...) instead"
            )
        basis = self.basis
        if status == Status.COMPLETED and brk[-1]:
            status = Status.INVARIANT_SUBSPACE
            basis = basis.at[m].set(0)
        ritz = self.ritz_history + jnp.asarray(d, dtype)
        return self._replace(
            alpha=alpha,
            basis=basis,
            ritz_history=ritz,
            status=status,
            anorm=jnp.asarray(running[-1], dtype),
            matvec_norms=mv_norms,
        )


def _concrete_steps(result: LanczosResult, what: str) -> int:
    if not is_concrete(result.num_steps):
        raise TypeError(f"LanczosResult.{what} needs a concrete result: call it outside jax.jit")
    return int(result.num_steps)


def default_breakdown_tol(dtype) -> float:
    """Default invariant-subspace threshold :math:`\\varepsilon^{2/3}` of ``dtype``."""
    return float(jnp.finfo(dtype).eps) ** (2 / 3)


# ---------------------------------------------------------------------------
# The Lanczos step
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


class LanczosStep(NamedTuple):
    """One Lanczos step from row ``j`` of the basis (see :func:`lanczos_step`)."""

    #: the new residual :math:`\beta_j q_{j+1}`, orthogonal to rows ``0..j``
    w: jax.Array
    #: :math:`\alpha_j = q_j^\top A q_j` (with the Gram-Schmidt correction)
    alpha: jax.Array
    #: :math:`\beta_j = \|w\|`
    beta: jax.Array
    #: :math:`\|A q_j\|`
    matvec_norm: jax.Array
    #: running :math:`\max_i \|A q_i\|`
    anorm: jax.Array
    #: :math:`\beta_j \le \text{tol}\cdot\text{anorm}`: an invariant subspace
    breakdown: jax.Array
    #: ``alpha`` and ``beta`` are finite
    finite: jax.Array


def lanczos_step(
    mv: Callable[[jax.Array], jax.Array],
    Q: jax.Array,
    j,
    subtract_known: Callable[[jax.Array], jax.Array],
    anorm,
    breakdown_tol,
    *,
    reorthogonalize: bool = True,
    blocks: tuple[int, ...] | None = None,
) -> LanczosStep:
    """The one Lanczos step: :math:`w = A q_j - \\sum_i T_{ij} q_i`, orthogonalized.

    ``Q`` holds the basis as rows (rows past ``j`` zero), ``subtract_known(w)`` removes the
    couplings known before the step (:math:`\\beta_{j-1} q_{j-1}` in the three-term
    recurrence, eigsh's arrow row after a thick restart). Then :math:`\\alpha_j = q_j^\\top w`
    is removed and, with ``reorthogonalize``, one classical Gram-Schmidt pass against rows
    ``0..j`` is made and a second only on cancellation (DGKS), which keeps
    :math:`\\|Q^\\top Q - I\\| = O(\\varepsilon)`. ``blocks`` (static row counts, see
    ``_row_blocks``) limit the passes to the rows in use; default: the whole buffer.
    """
    q = Q[j]
    w = mv(q)
    nw = jnp.linalg.norm(w)
    anorm = jnp.maximum(anorm, nw)
    w = subtract_known(w)
    a = jnp.vdot(q, w)
    w = w - a * q
    if reorthogonalize:
        w, h = _dgks_orthogonalize(Q, w, j, blocks or (Q.shape[0],))
        a = a + h[j]
    b = jnp.linalg.norm(w)
    finite = jnp.isfinite(a) & jnp.isfinite(b)
    brk = b <= jnp.asarray(breakdown_tol, b.dtype) * anorm
    return LanczosStep(w, a, b, nw, anorm, brk, finite)


# ---------------------------------------------------------------------------
# Lanczos
# ---------------------------------------------------------------------------


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
    norms = jnp.zeros((k,), dtype)
    zero = jnp.zeros((), dtype)
    tol = jnp.asarray(breakdown_tol, dtype)
    blocks = _row_blocks(k + 1, blocked)

    def cond(state):
        return state[6] == RUNNING

    def body(state):
        j, Q, alpha, beta, norms, steps, status, anorm = state
        b_prev = jnp.where(j > 0, beta[j - 1], zero)
        q_prev = Q[jnp.maximum(j - 1, 0)]
        s = lanczos_step(
            mv,
            Q,
            j,
            lambda w: w - b_prev * q_prev,
            anorm,
            tol,
            reorthogonalize=reorthogonalize,
            blocks=blocks,
        )
        stop = s.breakdown | ~s.finite
        safe_b = jnp.where(stop, jnp.ones_like(s.beta), s.beta)
        Q = Q.at[j + 1].set(jnp.where(stop, zero, s.w / safe_b))
        alpha = alpha.at[j].set(s.alpha)
        beta = beta.at[j].set(s.beta)
        norms = norms.at[j].set(s.matvec_norm)
        steps = jnp.where(s.finite, j + 1, j).astype(jnp.int32)
        status = jnp.where(
            ~s.finite,
            int(Status.NONFINITE),
            jnp.where(
                s.breakdown,
                int(Status.INVARIANT_SUBSPACE),
                jnp.where(j + 1 >= k, int(Status.COMPLETED), RUNNING),
            ),
        ).astype(jnp.int32)
        return j + 1, Q, alpha, beta, norms, steps, status, s.anorm

    i0 = jnp.zeros((), jnp.int32)
    state = (i0, Q, alpha, beta, norms, i0, jnp.asarray(RUNNING, jnp.int32), zero)
    iters, Q, alpha, beta, norms, steps, status, _ = jax.lax.while_loop(cond, body, state)
    idx = jnp.arange(k)
    alpha = jnp.where(idx < steps, alpha, zero)
    beta = jnp.where(idx < steps, beta, zero)
    norms = jnp.where(idx < steps, norms, zero)
    anorm = jnp.max(norms)
    if history:
        ritz = jax.vmap(lambda i: _tridiagonal.eigvals(alpha, beta, i + 1))(idx)
        ritz = jnp.where((idx < steps)[:, None], ritz, jnp.nan)
    else:
        ritz = jnp.full((k, k), jnp.nan, dtype)
    return LanczosResult(
        alpha, beta, Q, ritz, steps, status, anorm, norms, iters, tol, jnp.asarray(bool(reorthogonalize))
    )


@functools.partial(jax.jit, static_argnames=("num_steps", "reorthogonalize", "history"))
def _lanczos_jit(op, v0, breakdown_tol, *, num_steps, reorthogonalize, history):
    mv = op.prepare()
    return _lanczos_loop(mv, v0, num_steps, reorthogonalize, breakdown_tol, history)


def check_operator(op, what: str) -> LinearOperator:
    """The operator checks every Krylov routine makes first (before any tracing or matvec).

    Real floating dtype (complex and integer refused by ``check_real_floating``), nonzero
    size, and a matvec mapping ``(n,)`` to ``(n,)`` (checked abstractly).
    """
    op = as_operator(op)
    check_real_floating(f"{what}: op", jax.ShapeDtypeStruct((), op.dtype))
    if op.size == 0:
        raise ValueError(f"{what}: op has size 0; a Krylov method needs at least one dimension")
    check_matvec_output(what, op.matvec, op.size, op.dtype)
    return op


def start_vector(op: LinearOperator, key, v0, what: str, name: str = "v0"):
    """Validated start vector: ``v0``, else a Gaussian draw from ``key`` (default ``jax.random.key(0)``)."""
    n = op.size
    if v0 is None:
        return jax.random.normal(as_key("key", key, required=False), (n,), dtype=op.dtype)
    v0 = jnp.asarray(v0)
    check_real_floating(f"{what}: {name}", v0)
    if v0.shape != (n,):
        raise ValueError(
            f"{what}: {name} must have shape ({n},) to match the operator, got {tuple(v0.shape)}"
        )
    v0 = v0.astype(op.dtype)
    check_finite(name, v0)
    if is_concrete(v0) and not bool(jnp.any(v0 != 0)):
        raise ValueError(
            f"{what}: {name} must be nonzero: the Lanczos process cannot start from the zero vector"
        )
    return v0


def check_breakdown_tol(breakdown_tol, dtype) -> float:
    if breakdown_tol is None:
        return default_breakdown_tol(dtype)
    if not (np.ndim(breakdown_tol) == 0 and is_concrete(breakdown_tol) and float(breakdown_tol) >= 0):
        raise ValueError(f"breakdown_tol must be a nonnegative scalar, got {breakdown_tol!r}")
    return float(breakdown_tol)


def lanczos(
    op: LinearOperator,
    num_steps: int,
    *,
    key: jax.Array | None = None,
    v0: jax.typing.ArrayLike | None = None,
    reorthogonalize: bool = True,
    throw: bool = False,
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
        Symmetric operator :math:`A` of size ``n`` (real floating dtype).
    num_steps : int
        Number of steps ``k`` (may exceed ``n``: the process then stops at the
        invariant subspace, status ``INVARIANT_SUBSPACE``, with exact eigenvalues).
    key : PRNG key, optional
        Draws a Gaussian start vector when ``v0`` is not given (default ``jax.random.key(0)``).
    v0 : array, optional
        Start vector (normalized here); must be real and nonzero.
    reorthogonalize : bool
        Full reorthogonalization against the basis built so far (after the three-term
        recurrence, one Gram-Schmidt pass over the filled rows and a second only on
        cancellation, the Daniel-Gragg-Kaufman-Stewart test:
        :math:`\\|Q^\\top Q - I\\| = O(\\varepsilon)`). Without it the basis loses
        orthogonality once Ritz values converge and "ghost" copies appear.
    throw : bool
        Raise :class:`~curvlab.SolverError` when the run stopped on a non-finite value.
    breakdown_tol : float, optional
        Stop when :math:`\\beta_j \\le` ``breakdown_tol`` :math:`\\cdot \\max_i \\|A q_i\\|`;
        default :math:`\\varepsilon^{2/3}` of the dtype.
    history : bool
        Compute ``ritz_history`` (Ritz values after every step, by tridiagonal
        bisection: :math:`O(k^3)` after the loop).

    Returns
    -------
    LanczosResult
        With :meth:`~LanczosResult.prefix` (a shorter run) and
        :meth:`~LanczosResult.shifted` (the run on :math:`A + dI`), both without matvecs.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab._operators import DiagonalOperator
    >>> res = lanczos(DiagonalOperator(jnp.array([1.0, 2.0, 3.0])), 5)
    >>> res.status.name, res.num_steps
    ('INVARIANT_SUBSPACE', 3)
    >>> [round(float(t), 4) for t in res.ritz_history[2]]  # NaN-padded to num_steps=5
    [1.0, 2.0, 3.0, nan, nan]
    """
    throw = check_throw("lanczos", throw)
    op = check_operator(op, "lanczos")
    num_steps = check_positive_int("num_steps", num_steps)
    v0 = start_vector(op, key, v0, "lanczos")
    breakdown_tol = check_breakdown_tol(breakdown_tol, op.dtype)
    res = _lanczos_jit(
        op,
        v0,
        breakdown_tol,
        num_steps=num_steps,
        reorthogonalize=bool(reorthogonalize),
        history=bool(history),
    )
    if is_concrete(res.num_steps):
        res = res._replace(
            num_steps=int(res.num_steps),
            num_matvecs=int(res.num_matvecs),
            reorthogonalized=bool(reorthogonalize),
        )
    res = res._replace(status=as_status(res.status))
    raise_if_failed("lanczos", res.status, throw)
    return res

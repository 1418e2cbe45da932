"""Inverse operators: :math:`(A + \\delta I)^{-1}` by conjugate gradient or in closed form.

:func:`inverse` returns an operator. ``method="cg"`` solves
:math:`(A + \\delta I) x = v` with :func:`curvlab.cg` at every product
(:class:`CGInverseOperator`); a solve that does not converge returns NaNs, never an
unconverged iterate passed off as :math:`A^{-1} v` (:meth:`CGInverseOperator.solve`
gives the full :class:`~curvlab.CGResult` with its status). ``method="exact"`` uses the
structure:

* diagonal :math:`\\operatorname{diag}(1/(d + \\delta))`, identity :math:`I/(1 + \\delta)`;
* block-diagonal: the blocks inverted one by one;
* Kronecker :math:`A \\otimes B`: :math:`A^{-1} \\otimes B^{-1}` without damping, else from
  the factors' eigendecompositions :math:`(Q_A \\otimes Q_B)(\\Lambda_A \\otimes \\Lambda_B +
  \\delta)^{-1}(Q_A \\otimes Q_B)^\\top`;
* dense (small): from its symmetric eigendecomposition;
* low rank with damping :math:`\\delta > 0` (Woodbury):
  :math:`(\\delta I + U S U^\\top)^{-1} = \\delta^{-1}\\,[I - U(\\delta I + S U^\\top U)^{-1} S U^\\top]`;
* a scaled operator :math:`cA` and a damped one :math:`A + \\gamma I` (``op.damped(gamma)``)
  reduce to the inverse of :math:`A`;
* any operator with an ``_exact_inverse()`` method (the K-FAC / EK-FAC operators), damped
  first with its own ``damped(damping)``.

A singular system (a zero eigenvalue of :math:`A + \\delta I`, found on concrete data)
raises ``ValueError``; under ``jax.jit`` the entries then come out infinite or NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._cg import cg
from curvlab._operators import (
    _SYM,
    _SYM_PSD,
    PSD,
    BlockDiagonalOperator,
    DenseOperator,
    DiagonalOperator,
    IdentityOperator,
    KroneckerOperator,
    LinearOperator,
    LowRankOperator,
    ScaledOperator,
    SumOperator,
    _set,
    as_operator,
    pytree_operator,
    static_field,
)
from curvlab._validation import check_positive_int, is_concrete

__all__ = ["INVERSE_METHODS", "CGInverseOperator", "EigenInverseOperator", "inverse"]

#: Methods of :func:`inverse`.
INVERSE_METHODS = ("cg", "exact")


@pytree_operator
class CGInverseOperator(LinearOperator):
    """:math:`(A + \\delta I)^{-1}` applied by CG solves; NaN where a solve did not converge.

    ``op`` and ``damping`` are leaves, the tolerances and ``maxiter`` static. Symmetric,
    PSD when ``op`` is tagged PSD (then :math:`A + \\delta I` is positive definite where
    the solves succeed).
    """

    op: LinearOperator
    damping: jax.Array
    rtol: float = static_field()
    atol: float = static_field()
    maxiter: int | None = static_field()

    def __init__(self, op, damping=0.0, *, rtol=1e-10, atol=0.0, maxiter=None):
        op = as_operator(op)
        _set(self, op=op, damping=jnp.asarray(damping, op.dtype), rtol=float(rtol), atol=float(atol))
        _set(self, maxiter=None if maxiter is None else check_positive_int("maxiter", maxiter))

    size = property(lambda self: self.op.size)
    dtype = property(lambda self: self.op.dtype)
    tags = property(lambda self: _SYM_PSD if PSD in self.op.tags else _SYM)

    def _system(self):
        return self.op + ScaledOperator(self.damping, IdentityOperator(self.size, self.dtype))

    def solve(self, v, **kwargs):
        """The CG result of :math:`(A + \\delta I) x = v`; ``kwargs`` go to :func:`curvlab.cg`."""
        opts = dict(rtol=self.rtol, atol=self.atol, maxiter=self.maxiter) | kwargs
        return cg(self._system(), v, **opts)

    def matvec(self, v):
        res = self.solve(v)
        return jnp.where(res.converged, res.x, jnp.full_like(res.x, jnp.nan))


@pytree_operator
class EigenInverseOperator(LinearOperator):
    """:math:`Q\\,\\operatorname{diag}(1/(\\lambda + \\delta))\\,Q^\\top` for each Kronecker factor's
    ``(Q, λ)``: one factor is a dense inverse, two a Kronecker inverse."""

    Qs: tuple
    eigs: tuple
    damping: jax.Array

    def __init__(self, Qs, eigs, damping):
        _set(self, Qs=tuple(Qs), eigs=tuple(eigs), damping=jnp.asarray(damping, Qs[0].dtype))

    size = property(lambda self: int(np.prod([Q.shape[0] for Q in self.Qs])))
    dtype = property(lambda self: self.Qs[0].dtype)

    @property
    def tags(self):
        ok = all(is_concrete(e) for e in self.eigs) and is_concrete(self.damping)
        return _SYM_PSD if ok and bool(jnp.all(self._denominator() > 0)) else _SYM

    def _denominator(self):
        lam = self.eigs[0]
        for e in self.eigs[1:]:
            lam = jnp.outer(lam, e).reshape(-1)
        return lam + self.damping

    def matvec(self, v):
        shape = tuple(Q.shape[0] for Q in self.Qs)
        X = v.reshape(shape)
        for axis, Q in enumerate(self.Qs):  # Q^T along every axis
            X = jnp.moveaxis(jnp.tensordot(Q.T, X, axes=(1, axis)), 0, axis)
        X = X / self._denominator().reshape(shape)
        for axis, Q in enumerate(self.Qs):
            X = jnp.moveaxis(jnp.tensordot(Q, X, axes=(1, axis)), 0, axis)
        return X.reshape(-1)


@pytree_operator
class _WoodburyInverse(LinearOperator):
    """:math:`\\delta^{-1}(I - U C U^\\top)`, :math:`C = (\\delta I + S U^\\top U)^{-1} S`."""

    U: jax.Array
    C: jax.Array
    damping: jax.Array
    psd: bool = static_field()

    def __init__(self, U, C, damping, psd):
        _set(self, U=U, C=C, damping=damping, psd=psd)

    size = property(lambda self: self.U.shape[0])
    dtype = property(lambda self: self.U.dtype)
    tags = property(lambda self: _SYM_PSD if self.psd else _SYM)

    def matvec(self, v):
        return (v - self.U @ (self.C @ (self.U.T @ v))) / self.damping


def _concrete_damping(op) -> float | None:
    """``gamma`` when ``op`` is ``A + gamma I`` with a concrete ``gamma`` (as ``A.damped(gamma)`` builds)."""
    if isinstance(op, ScaledOperator) and isinstance(op.op, IdentityOperator) and is_concrete(op.scale):
        return float(op.scale)
    if isinstance(op, IdentityOperator):
        return 1.0
    return None


def _check_nonsingular(values, what):
    if is_concrete(values):
        v = np.abs(np.asarray(values))
        floor = 64 * np.finfo(v.dtype).eps * max(v.max(initial=0.0), 1e-300)
        if v.size and (not np.all(np.isfinite(v)) or v.min() <= floor):
            raise ValueError(
                f"inverse(method='exact'): {what} is singular to working precision (smallest |eigenvalue| "
                f"{v.min():.3g}, largest {v.max():.3g}); pass damping > 0"
            )


def _eigh(op):
    w, Q = jnp.linalg.eigh(op.to_dense())
    return Q, w


def _exact(op: LinearOperator, damping):
    if hasattr(op, "_exact_inverse"):  # the hook: the closed-form inverse of the operator itself
        if not _is_zero(damping):
            op = op.damped(damping)  # must keep the structure (K-FAC adds damping to its eigenvalues)
            if not hasattr(op, "_exact_inverse"):
                raise TypeError(f"{type(op).__name__}.damped() lost the _exact_inverse structure")
        return op._exact_inverse()
    if isinstance(op, DiagonalOperator):
        d = op.diag + damping
        _check_nonsingular(d, "the diagonal plus damping")
        return DiagonalOperator(1.0 / d)
    if isinstance(op, IdentityOperator):
        _check_nonsingular(jnp.ones(1, op.dtype) + damping, "the scaled identity")
        return ScaledOperator(1.0 / (1.0 + damping), op)
    if isinstance(op, ScaledOperator) and is_concrete(op.scale):
        c = float(op.scale)
        if c == 0.0:
            return _exact(IdentityOperator(op.size, op.dtype), damping - 1.0)  # 0 A + damping I
        return ScaledOperator(1.0 / c, _exact(op.op, damping / c))
    if isinstance(op, SumOperator):
        gammas = [_concrete_damping(t) for t in op.terms]
        rest = [t for t, g in zip(op.terms, gammas, strict=True) if g is None]
        if len(rest) == 1:
            return _exact(rest[0], damping + sum(g for g in gammas if g is not None))
    if isinstance(op, BlockDiagonalOperator):
        return BlockDiagonalOperator([_exact(b, damping) for b in op.blocks])
    if isinstance(op, KroneckerOperator):
        if _is_zero(damping):
            return KroneckerOperator(_exact(op.A, 0.0), _exact(op.B, 0.0))
        (QA, wA), (QB, wB) = _eigh(op.A), _eigh(op.B)
        _check_nonsingular(jnp.outer(wA, wB).reshape(-1) + damping, "the Kronecker product plus damping")
        return EigenInverseOperator((QA, QB), (wA, wB), damping)
    if isinstance(op, DenseOperator):
        Q, w = _eigh(op)
        _check_nonsingular(w + damping, "the matrix plus damping")
        return EigenInverseOperator((Q,), (w,), damping)
    if isinstance(op, LowRankOperator):
        if _is_zero(damping):
            raise ValueError(
                "inverse(method='exact') of a LowRankOperator needs damping > 0 (U diag(s) U^T has rank "
                f"<= {op.U.shape[1]} < n unless r = n)"
            )
        r = op.U.shape[1]
        S = jnp.diag(op.s)
        C = jnp.linalg.solve(damping * jnp.eye(r, dtype=op.dtype) + S @ (op.U.T @ op.U), S)
        psd = op.nonnegative and is_concrete(damping) and float(damping) > 0
        return _WoodburyInverse(op.U, C, jnp.asarray(damping, op.dtype), psd)
    raise TypeError(
        f"inverse(method='exact') has no closed form for {type(op).__name__}: supported are Diagonal, "
        "Identity, BlockDiagonal, Kronecker, Dense, LowRank (with damping), scaled and damped versions of "
        "these, and operators with an _exact_inverse() method (K-FAC); use method='cg'"
    )


def _is_zero(damping) -> bool:
    return is_concrete(damping) and float(damping) == 0.0


def inverse(
    op: LinearOperator,
    *,
    method: str = "cg",
    damping=0.0,
    rtol: float = 1e-10,
    atol: float = 0.0,
    maxiter: int | None = None,
) -> LinearOperator:
    """The operator :math:`(A + \\delta I)^{-1}` (``damping`` :math:`= \\delta`); see :mod:`curvlab._inverse`.

    Parameters
    ----------
    op : LinearOperator or square array
        Symmetric :math:`A`; for ``"cg"``, :math:`A + \\delta I` positive definite.
    method : {"cg", "exact"}
        ``"cg"``: every product is a :func:`curvlab.cg` solve to ``rtol`` / ``atol`` within
        ``maxiter`` steps; an unconverged solve gives NaNs (use ``.solve(v)`` for the status).
        ``"exact"``: a closed form from the structure (``TypeError`` where there is none).
    damping : float
        :math:`\\delta \\ge 0` added to the diagonal.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab._operators import DiagonalOperator
    >>> (inverse(DiagonalOperator(jnp.array([1.0, 4.0])), method="exact", damping=1.0) @ jnp.ones(2)).tolist()
    [0.5, 0.2]
    >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> [round(float(x), 6) for x in inverse(A) @ jnp.array([1.0, 2.0])]
    [0.090909, 0.636364]
    """
    if method not in INVERSE_METHODS:
        raise ValueError(f"method must be one of {INVERSE_METHODS}, got {method!r}")
    op = as_operator(op)
    if is_concrete(damping) and (np.ndim(damping) != 0 or not np.isfinite(damping) or float(damping) < 0):
        raise ValueError(f"damping must be a finite scalar >= 0, got {damping!r}")
    if method == "cg":
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if not (np.isfinite(tol) and tol >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")
        return CGInverseOperator(op, damping, rtol=rtol, atol=atol, maxiter=maxiter)
    return _exact(op, damping)

"""Preconditioners for :func:`curvlab._cg`.

A preconditioner is a symmetric positive definite :math:`P \\approx A^{-1}`,
applied to a residual as ``z = P(r)``; CG then converges at the rate set by
the spectrum of :math:`PA` instead of :math:`A`. Preconditioners here are
:class:`~curvlab._operators.LinearOperator` objects (so they are pytrees and can
be arguments of jitted solvers), mostly a
:class:`~curvlab._operators.DiagonalOperator` holding an *inverse* diagonal:

- :func:`jacobi`: :math:`P = \\operatorname{diag}(A + \\lambda I)^{-1}` from the exact diagonal;
- :func:`hutchinson_jacobi`: the same from a stochastic (Hutchinson) estimate of the diagonal,
  for operators such as Hessians whose diagonal is not cheap;
- :func:`martens`: :math:`P = (\\operatorname{diag}(F) + \\lambda)^{-\\alpha}` from the empirical
  Fisher diagonal (Martens 2010, §4.7), with :func:`empirical_fisher_diagonal`;
- :func:`as_preconditioner`: turns ``None``, an operator, a callable ``r -> z`` or an array into one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from curvlab._operators import DenseOperator, DiagonalOperator, FunctionOperator, LinearOperator
from curvlab._validation import as_key, check_positive_int, check_real_floating, is_concrete

__all__ = [
    "as_preconditioner",
    "jacobi",
    "hutchinson_jacobi",
    "martens",
    "empirical_fisher_diagonal",
]


def _check_real_operator(name, op):
    """Refuse a complex operator before any product: its dtype, checked abstractly."""
    check_real_floating(name, jax.ShapeDtypeStruct(op.shape, op.dtype))


def _as_real_operator(name, op) -> LinearOperator:
    """``as_operator(op)``, refusing complex input (a matrix is checked before it could be cast)."""
    from curvlab._operators import as_operator

    if not isinstance(op, LinearOperator) and hasattr(op, "dtype"):
        check_real_floating(name, op)
    op = as_operator(op)
    _check_real_operator(name, op)
    return op


def _check_nonneg(name, value):
    if is_concrete(value):
        v = np.asarray(value)
        if v.ndim != 0 or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def as_preconditioner(p: Any, *, n: int | None = None, dtype=None) -> LinearOperator | None:
    """Normalize a preconditioner argument to a :class:`LinearOperator` (or ``None``).

    Parameters
    ----------
    p : None, LinearOperator, callable, or array
        ``None`` (no preconditioning) is returned as is; an operator as is; a 1-D array ``d`` is
        the diagonal of :math:`P` (already inverted: ``z = d * r``); a 2-D array is :math:`P`
        itself; a callable ``r -> z`` is wrapped in a
        :class:`~curvlab._operators.FunctionOperator` (pass the same function object to reuse
        compiled code), which needs ``n``.
    n : int, optional
        Problem size, checked against arrays and needed for callables.
    dtype : optional
        dtype of a wrapped callable.

    Raises
    ------
    TypeError
        A complex or integer array (``z = P r`` must stay real), or an unsupported type.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> P = as_preconditioner(jnp.array([0.5, 0.25]))
    >>> (P @ jnp.array([2.0, 4.0])).tolist()
    [1.0, 1.0]
    """
    if p is None or isinstance(p, LinearOperator):
        return p
    if hasattr(p, "shape") or isinstance(p, (list, tuple)):
        a = jnp.asarray(p)
        check_real_floating("preconditioner", a)
        if a.ndim == 1:
            op = DiagonalOperator(a)
        elif a.ndim == 2:
            op = DenseOperator(a)
        else:
            raise ValueError(f"preconditioner array must be 1-D (a diagonal) or 2-D, got shape {a.shape}")
        if n is not None and op.size != n:
            raise ValueError(f"preconditioner has size {op.size}, expected {n}")
        return op
    if callable(p):
        if n is None:
            raise ValueError("as_preconditioner needs n= to wrap a callable r -> z")
        return FunctionOperator(p, n, dtype)
    raise TypeError(
        "preconditioner must be None, a LinearOperator, an array or a callable r -> z, "
        f"got {type(p).__name__}"
    )


def _inverse_diagonal(d, floor, what):
    """``1 / d`` with a clear error (concrete input) or a floor for non-positive entries."""
    if floor is not None:
        _check_nonneg("floor", floor)
        d = jnp.maximum(d, floor)
    if is_concrete(d):
        bad = ~(jnp.isfinite(d) & (d > 0))
        if bool(jnp.any(bad)):
            i = int(jnp.argmax(bad))
            raise ValueError(
                f"{what} has {int(jnp.sum(bad))} non-positive or non-finite entries (e.g. entry {i} = "
                f"{float(d[i]):.3g}), so it cannot define a positive definite preconditioner; the operator "
                "is not positive definite there: pass damping= (e.g. 1e-3 * mean of the diagonal) or floor="
            )
    else:  # traced: cannot raise; replace bad entries by the largest entry (a conservative small step)
        ok = jnp.isfinite(d) & (d > 0)
        big = jnp.max(jnp.where(ok, d, 0.0))
        d = jnp.where(ok, d, jnp.where(big > 0, big, 1.0))
    return DiagonalOperator(1.0 / d)


def jacobi(op: LinearOperator, *, damping: float = 0.0, floor: float | None = None) -> DiagonalOperator:
    """Jacobi preconditioner :math:`P = \\operatorname{diag}(A + \\lambda I)^{-1}`.

    Parameters
    ----------
    op : LinearOperator
        An operator with a cheap exact ``diagonal()`` (dense, diagonal, low-rank, Kronecker, sums
        and scalings of these). For Hessians use :func:`hutchinson_jacobi`.
    damping : float
        :math:`\\lambda \\ge 0` added to the diagonal.
    floor : float, optional
        If given, diagonal entries below ``floor`` are raised to it. Otherwise a non-positive entry
        raises ``ValueError`` (when called outside ``jit``; under ``jit`` such entries are replaced
        by the largest diagonal entry).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> P = jacobi(jnp.array([[4.0, 1.0], [1.0, 2.0]]))
    >>> P.diag.tolist()
    [0.25, 0.5]
    """
    op = _as_real_operator("op", op)
    _check_nonneg("damping", damping)
    try:
        d = op.diagonal()
    except NotImplementedError as err:
        raise ValueError(
            f"jacobi needs the exact diagonal, and {type(op).__name__} has no cheap one; use "
            "curvlab.preconditioners.hutchinson_jacobi(op, num_probes=..., key=...) for a stochastic estimate"
        ) from err
    return _inverse_diagonal(d + damping, floor, "the diagonal (plus damping)")


def hutchinson_jacobi(
    op: LinearOperator,
    *,
    num_probes: int,
    key: jax.Array,
    damping: float = 0.0,
    floor: float | None = None,
    rel_floor: float = 1e-3,
) -> DiagonalOperator:
    """Jacobi preconditioner from a Hutchinson estimate of the diagonal.

    :math:`\\widehat{d} = \\frac1m \\sum_{i=1}^m z_i \\odot A z_i` with random probes
    :math:`z_i` (:func:`curvlab._spectral.diagonal`), then
    :math:`P = \\operatorname{diag}(\\max(\\widehat d + \\lambda, f))^{-1}`. The estimate is noisy
    (its entries can even be negative), so it is always floored: at ``floor`` if given, else at
    ``rel_floor`` times the mean absolute estimate.

    Parameters
    ----------
    op : LinearOperator
    num_probes : int
        Number of probe vectors :math:`m \\ge 2` (matvecs).
    key : jax.Array
        Typed PRNG key (``jax.random.key(0)``), keyword-only and required; a raw
        ``jax.random.PRNGKey`` is wrapped.
    damping : float
        :math:`\\lambda \\ge 0`.
    floor : float, optional
        Absolute floor :math:`f`.
    rel_floor : float
        Relative floor used when ``floor`` is None.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> P = hutchinson_jacobi(jnp.diag(jnp.array([2.0, 4.0])), num_probes=2, key=jax.random.key(0))
    >>> P.diag.tolist()  # Rademacher probes: z * (D z) = diag(D) exactly
    [0.5, 0.25]
    """
    op = _as_real_operator("op", op)
    key = as_key("key", key)
    num_probes = check_positive_int("num_probes", num_probes, minimum=2)
    _check_nonneg("damping", damping)
    _check_nonneg("rel_floor", rel_floor)
    from curvlab._spectral import diagonal as _diagonal  # lazy: spectral imports more of the core

    est = _diagonal(op, num_probes=num_probes, key=key).value
    d = jnp.asarray(est) + damping
    if floor is None:
        d = jnp.maximum(d, rel_floor * jnp.mean(jnp.abs(d)))
    return _inverse_diagonal(d, floor, "the estimated diagonal (plus damping)")


def martens(diag_fisher: jax.typing.ArrayLike, damping: float, alpha: float = 0.75) -> DiagonalOperator:
    """Martens' (2010, §4.7) diagonal preconditioner :math:`P = (\\mathrm{diag}(F) + \\lambda)^{-\\alpha}`.

    Parameters
    ----------
    diag_fisher : (n,) array
        Diagonal of the empirical Fisher, :math:`\\frac1N \\sum_i g_i^2`
        (:func:`empirical_fisher_diagonal`); non-negative.
    damping : float
        :math:`\\lambda \\ge 0`; ``diag_fisher + damping`` must be positive.
    alpha : float
        Exponent :math:`\\alpha \\in [0, 1]`; 0.75 as in the paper, 0 gives no preconditioning.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> [round(v, 6) for v in martens(jnp.array([0.0, 15.0]), 1.0, alpha=0.5).diag.tolist()]
    [1.0, 0.25]
    """
    d = jnp.asarray(diag_fisher)
    if d.ndim != 1:
        raise ValueError(f"diag_fisher must be a 1-D array, got shape {d.shape}")
    check_real_floating("diag_fisher", d)
    _check_nonneg("damping", damping)
    if is_concrete(alpha) and not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if is_concrete(d):
        if not bool(jnp.all(jnp.isfinite(d))) or bool(jnp.any(d < 0)):
            raise ValueError("diag_fisher must be finite and non-negative")
        if is_concrete(damping) and bool(jnp.any(d + damping <= 0)):
            raise ValueError("diag_fisher + damping must be positive: pass damping > 0")
    return DiagonalOperator((d + damping) ** (-jnp.asarray(alpha, d.dtype)))


def empirical_fisher_diagonal(
    per_example_loss_fn: Callable, params: Any, batch: Any, *, chunk_size: int = 64
) -> jax.Array:
    """Diagonal of the empirical Fisher, :math:`\\frac1N \\sum_{i=1}^N (\\nabla \\ell_i)^2`, flat.

    ``per_example_loss_fn(params, batch)`` returns the ``(N,)`` per-example losses (the
    convention of :func:`curvlab._curvature.fisher_operator`); every leaf of ``batch`` (e.g.
    ``(inputs, targets)``) has the examples along its leading axis, and example ``i``'s loss
    depends on row ``i`` only. The
    per-example gradients are computed ``chunk_size`` at a time as gradients on batches of one
    (memory ``chunk_size * n``). Returns a flat ``(n,)`` array in ``ravel_pytree`` order.
    Not jitted itself (so that a fresh ``lambda`` per call does not grow a compilation cache):
    call it inside your jitted step.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> losses = lambda w, X: 0.5 * (X @ w) ** 2  # batch = X; gradient of example i: (x_i . w) x_i
    >>> empirical_fisher_diagonal(losses, jnp.array([1.0, 1.0]), X).tolist()
    [0.5, 8.0]
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    out = jax.eval_shape(per_example_loss_fn, params, batch)
    if getattr(out, "ndim", None) != 1:
        raise ValueError(
            "per_example_loss_fn must return a 1-D vector of per-example losses, "
            f"got shape {getattr(out, 'shape', type(out).__name__)}"
        )
    return _fisher_diag_impl(per_example_loss_fn, params, batch, chunk_size)


def _fisher_diag_impl(fn, params, batch, chunk_size):
    # Each example's gradient is that of ``fn`` on a batch of one (per-example losses do not
    # couple examples): about one backward pass over the batch, memory ``chunk_size * n``.
    flat, unravel = ravel_pytree(params)
    N = jax.tree_util.tree_leaves(batch)[0].shape[0]
    c = min(chunk_size, N)
    num_chunks = -(-N // c)
    pad = num_chunks * c - N

    def chunked(a):
        a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) if pad else a
        return a.reshape(num_chunks, c, *a.shape[1:])

    chunks = jax.tree_util.tree_map(chunked, batch)
    weights = (jnp.arange(num_chunks * c) < N).astype(flat.dtype).reshape(num_chunks, c)

    def grad_one(example):
        one = jax.tree_util.tree_map(lambda a: a[None], example)
        return jax.grad(lambda y: fn(unravel(y), one)[0])(flat)

    def step(acc, xs):
        chunk, w = xs
        G = jax.vmap(grad_one)(chunk)
        return acc + jnp.sum(w[:, None] * G**2, axis=0), None

    acc, _ = jax.lax.scan(step, jnp.zeros_like(flat), (chunks, weights))
    return acc / N

"""Entries and norms of an operator read from matvecs: sub-matrices, Frobenius and spectral norms.

* :func:`submatrix` -- :math:`A_{R,C}` as a dense ``(|R|, |C|)`` array from :math:`|C|`
  products with unit vectors (:math:`\\min(|R|, |C|)` for a symmetric operator).
* :func:`frobenius_norm` -- :math:`\\|A\\|_F = (\\operatorname{tr} A^\\top A)^{1/2}` by
  Hutchinson: :math:`\\mathbb E_z \\|A z\\|^2 = \\|A\\|_F^2` for Rademacher :math:`z`, with
  the delta-method standard error of the square root; ``method="exact"`` uses ``n``
  products with the identity.
* :func:`spectral_norm` -- :math:`\\|A\\|_2 = \\max_i |\\lambda_i|` of a symmetric operator by
  :func:`curvlab.eigsh` with ``which="LM"``; the residual norm
  :math:`\\|A y - \\theta y\\|` bounds :math:`\\big||\\theta| - |\\lambda|\\big|` for the
  nearest eigenvalue (symmetric :math:`A`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._eigsh import eigsh
from curvlab._lanczos import check_operator
from curvlab._operators import SYMMETRIC, LinearOperator
from curvlab._spectral import Estimate, _check_chunk_size, _draw_probes, _map_rows, _mean_stderr
from curvlab._status import Status, converged_of, message_of
from curvlab._validation import as_key, check_positive_int

__all__ = ["SpectralNorm", "submatrix", "frobenius_norm", "spectral_norm"]


def _indices(name, idx, n) -> np.ndarray:
    a = np.asarray(idx)
    if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be a 1-D sequence of integer indices, got {a.dtype} of shape {a.shape}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name} must lie in [0, {n}) for an operator of size {n}, got {a.min()}..{a.max()}")
    return a


@jax.jit
def _columns(op, cols):
    E = jnp.zeros((op.size, cols.shape[0]), op.dtype).at[cols, jnp.arange(cols.shape[0])].set(1)
    return op.matmat(E)


def submatrix(op: LinearOperator, rows, cols) -> jax.Array:
    """The dense sub-matrix :math:`A_{R,C}` (rows ``rows``, columns ``cols``, in that order).

    Built from :math:`A e_j` for the unit vectors of ``cols`` (of ``rows`` when the operator
    is tagged symmetric and ``rows`` is shorter). Indices may repeat; they must lie in
    ``[0, n)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab._operators import DenseOperator
    >>> A = DenseOperator(jnp.arange(9.0).reshape(3, 3) + jnp.arange(9.0).reshape(3, 3).T)
    >>> submatrix(A, [0, 2], [1]).tolist()
    [[4.0], [12.0]]
    """
    op = check_operator(op, "submatrix")
    r, c = _indices("rows", rows, op.size), _indices("cols", cols, op.size)
    if r.size == 0 or c.size == 0:
        return jnp.zeros((r.size, c.size), op.dtype)
    if SYMMETRIC in op.tags and r.size < c.size:
        return _columns(op, jnp.asarray(r))[jnp.asarray(c)].T
    return _columns(op, jnp.asarray(c))[jnp.asarray(r)]


@functools.partial(jax.jit, static_argnames=("num_probes", "chunk_size"))
def _frobenius(op, key, *, num_probes, chunk_size):
    Z = _draw_probes(key, (num_probes, op.size), "rademacher", op.dtype)
    AZ = _map_rows(op.prepare(), Z, chunk_size)
    sq, sq_err = _mean_stderr(jnp.sum(AZ * AZ, axis=1))
    value = jnp.sqrt(sq)
    return value, jnp.where(value > 0, sq_err / (2 * jnp.where(value > 0, value, 1)), 0)


def frobenius_norm(
    op: LinearOperator,
    *,
    num_probes: int = 10,
    key: jax.Array | None = None,
    method: str = "hutchinson",
    chunk_size: int | None = None,
) -> Estimate:
    """:math:`\\|A\\|_F` as an :class:`~curvlab.Estimate` (value, standard error, matvecs).

    ``"hutchinson"`` (``key`` required, ``num_probes >= 2``): :math:`\\sqrt{\\frac1m\\sum_j
    \\|A z_j\\|^2}`, stderr by the delta method, :math:`\\mathrm{se}(s)/(2\\sqrt s)` (for PSD
    :math:`A`, :math:`\\|A\\|_F^2 = \\operatorname{tr} A^2`). ``"exact"``: from ``to_dense()``
    (``n`` matvecs, stderr 0; small ``n``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from curvlab._operators import DiagonalOperator
    >>> est = frobenius_norm(DiagonalOperator(jnp.array([3.0, -4.0])), num_probes=4, key=jax.random.key(0))
    >>> float(est.value), float(est.stderr)
    (5.0, 0.0)
    """
    op = check_operator(op, "frobenius_norm")
    if method == "exact":
        D = op.to_dense()
        return Estimate(jnp.sqrt(jnp.sum(D * D)), jnp.zeros((), op.dtype), op.size)
    if method != "hutchinson":
        raise ValueError(f"method must be 'hutchinson' or 'exact', got {method!r}")
    key = as_key("key", key, required=True)
    num_probes = check_positive_int("num_probes", num_probes, minimum=2)
    value, stderr = _frobenius(op, key, num_probes=num_probes, chunk_size=_check_chunk_size(chunk_size))
    return Estimate(value, stderr, num_probes)


class SpectralNorm(NamedTuple):
    """Result of :func:`spectral_norm`.

    Attributes
    ----------
    value : Array
        :math:`|\\theta|` of the largest-magnitude Ritz value.
    error_bound : Array
        :math:`\\|A y - \\theta y\\|_2`: some eigenvalue lies within it of :math:`\\theta`.
    eigenvalue : Array
        :math:`\\theta` itself (its sign says which end of the spectrum is larger).
    num_matvecs : int
    status : Status
        As :func:`curvlab.eigsh`.
    """

    value: jax.Array
    error_bound: jax.Array
    eigenvalue: jax.Array
    num_matvecs: int | jax.Array
    status: Status | jax.Array

    @property
    def message(self) -> str:
        return message_of(self.status)

    @property
    def converged(self):
        return converged_of(self.status)


def spectral_norm(
    op: LinearOperator,
    *,
    rtol: float = 1e-6,
    max_matvecs: int | None = None,
    key: jax.Array | None = None,
    throw: bool = False,
) -> SpectralNorm:
    """:math:`\\|A\\|_2 = \\max_i |\\lambda_i|` of a symmetric operator, by ``eigsh(op, 1, which="LM")``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab._operators import DiagonalOperator
    >>> res = spectral_norm(DiagonalOperator(jnp.array([1.0, -5.0, 2.0])))
    >>> round(float(res.value), 6), res.status.name
    (5.0, 'CONVERGED')
    """
    op = check_operator(op, "spectral_norm")
    if SYMMETRIC not in op.tags:
        raise ValueError(
            "spectral_norm needs a symmetric operator (eigsh); for a general A use "
            "spectral_norm of A^T A and take the square root"
        )
    if op.size == 1:
        theta = op.matvec(jnp.ones(1, op.dtype))[0]
        return SpectralNorm(jnp.abs(theta), jnp.zeros((), op.dtype), theta, 1, Status.CONVERGED)
    res = eigsh(op, 1, which="LM", rtol=rtol, max_matvecs=max_matvecs, key=key, throw=throw)
    theta = res.eigenvalues[0]
    return SpectralNorm(jnp.abs(theta), res.residual_norms[0], theta, res.num_matvecs, res.status)

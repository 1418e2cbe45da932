"""The one tridiagonal module: eigenvalues and Ritz pairs of Lanczos matrices.

A Lanczos run of ``k`` steps (:func:`curvlab.lanczos`, SLQ, the CG coefficients of
:func:`curvlab.condition_estimate`) is summarized by

.. math::

    T_m = \\begin{pmatrix} \\alpha_1 & \\beta_1 \\\\ \\beta_1 & \\alpha_2 & \\ddots \\\\
          & \\ddots & \\ddots & \\beta_{m-1} \\\\ & & \\beta_{m-1} & \\alpha_m \\end{pmatrix},
    \\qquad T_m = S \\Theta S^\\top,

whose eigenvalues :math:`\\theta_i` (Ritz values) approximate the extreme eigenvalues of
the operator and whose eigenvectors give the Ritz vectors :math:`Y = Q_m^\\top S` and the
Gauss quadrature weights :math:`S_{1i}^2`.

Inside jit the number of active rows ``m`` may be traced while the buffers have a static
length ``k``: :func:`masked_tridiagonal` embeds :math:`T_m` in a ``(k, k)`` matrix whose
trailing block is decoupled and sits above the Gershgorin bound of :math:`T_m`, so the
first ``m`` ascending eigenvalues are exactly those of :math:`T_m` and no eigenvector mixes
the blocks. :func:`eigvals` and :func:`eigh` return NaN-padded results of static shape;
:func:`projected_eigh` does the same for any symmetric projected matrix (eigsh's arrow
matrix after a thick restart). :func:`host_eigvals` is the NumPy version for host code
(widgets, CG's condition estimate).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import eigh_tridiagonal

__all__ = [
    "masked_tridiagonal",
    "eigvals",
    "eigh",
    "projected_eigh",
    "to_dense",
    "ritz_pairs",
    "host_eigvals",
]


def masked_tridiagonal(alpha: jax.Array, beta: jax.Array, m) -> tuple[jax.Array, jax.Array]:
    """Diagonal ``(k,)`` and off-diagonal ``(k - 1,)`` of a ``(k, k)`` tridiagonal holding ``T_m``.

    ``alpha`` and ``beta`` have length ``k``; ``beta[j]`` couples rows ``j`` and ``j + 1``
    (``beta[k - 1]`` is unused). The trailing ``k - m`` rows are decoupled and their diagonal
    is :math:`3g` with :math:`g` the Gershgorin bound of :math:`T_m` (1 when :math:`g = 0`).
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


def eigvals(alpha: jax.Array, beta: jax.Array, m) -> jax.Array:
    """Ascending eigenvalues of ``T_m``, NaN-padded to length ``k`` (``m`` may be traced).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> eigvals(jnp.array([2.0, 2.0, 9.0]), jnp.array([1.0, 5.0, 0.0]), 2).tolist()
    [1.0, 3.0, nan]
    """
    d, e = masked_tridiagonal(alpha, beta, m)
    theta = d if d.shape[0] == 1 else jnp.sort(eigh_tridiagonal(d, e, eigvals_only=True))
    return jnp.where(jnp.arange(d.shape[0]) < m, theta, jnp.nan)


def eigh(alpha: jax.Array, beta: jax.Array, m) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition :math:`T_m = S \\Theta S^\\top`: ascending ``theta`` (NaN-padded) and ``S`` (k, k).

    Columns of ``S`` past ``m`` and its rows past ``m`` are zero.
    """
    d, e = masked_tridiagonal(alpha, beta, m)
    T = jnp.diag(d) + jnp.diag(e, 1) + jnp.diag(e, -1)
    theta, S = jnp.linalg.eigh(T)
    active = jnp.arange(d.shape[0]) < m
    return jnp.where(active, theta, jnp.nan), jnp.where(active[None, :] & active[:, None], S, 0)


def projected_eigh(T: jax.Array, size) -> tuple[jax.Array, jax.Array]:
    """Eigenpairs of the leading ``size x size`` block of a symmetric ``(m, m)`` matrix ``T``.

    Same masking as :func:`masked_tridiagonal` (the inactive rows get a diagonal far above
    the block's Gershgorin bound): the first ``size`` ascending eigenvalues are the block's,
    and its eigenvectors vanish on the inactive rows. Entries past ``size`` are not NaN-padded
    (the caller ranks them last).
    """
    m = T.shape[0]
    active = jnp.arange(m) < size
    Tm = jnp.where(active[:, None] & active[None, :], T, 0)
    sentinel = 3 * jnp.max(jnp.sum(jnp.abs(Tm), axis=1)) + 1
    return jnp.linalg.eigh(Tm + jnp.diag(jnp.where(active, 0, sentinel).astype(T.dtype)))


def to_dense(alpha: jax.Array, beta: jax.Array, m: int) -> jax.Array:
    """Dense ``(m, m)`` tridiagonal ``T_m`` (``m`` concrete)."""
    a = alpha[:m]
    b = beta[: max(m - 1, 0)]
    return jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)


def ritz_pairs(alpha: jax.Array, beta: jax.Array, basis: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    """Ritz values (ascending, ``(m,)``) and unit Ritz vectors ``Y = Q_m^T S`` (``(n, m)``).

    ``basis`` holds the Lanczos vectors as rows. The residual of pair ``i`` is
    :math:`|\\beta_m S_{m,i}|`.
    """
    theta, S = jnp.linalg.eigh(to_dense(alpha, beta, m))
    return theta, basis[:m].T @ S


def host_eigvals(alpha, beta) -> np.ndarray:
    """Ascending eigenvalues of the tridiagonal with diagonal ``alpha`` (m,), off-diagonal ``beta`` (m - 1,).

    NumPy on the host, in float64 (SciPy's tridiagonal solver when SciPy is installed,
    :math:`O(m^2)`; else a dense ``eigvalsh``).

    Examples
    --------
    >>> host_eigvals([2.0, 2.0], [1.0]).tolist()
    [1.0, 3.0]
    """
    a = np.asarray(alpha, dtype=np.float64).reshape(-1)
    b = np.asarray(beta, dtype=np.float64).reshape(-1)
    if b.shape[0] != max(a.shape[0] - 1, 0):
        raise ValueError(f"beta must have length len(alpha) - 1 = {max(a.shape[0] - 1, 0)}, got {b.shape[0]}")
    if a.shape[0] <= 1:
        return a.copy()
    try:
        from scipy.linalg import eigvalsh_tridiagonal
    except ImportError:  # pragma: no cover - scipy is in the viz extra
        return np.linalg.eigvalsh(np.diag(a) + np.diag(b, 1) + np.diag(b, -1))
    return eigvalsh_tridiagonal(a, b)

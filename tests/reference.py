"""Dense references shared by the tests: matrices of prescribed spectrum, dense Hessians."""

from __future__ import annotations

import jax
import numpy as np
from jax.flatten_util import ravel_pytree


def random_orthogonal(n: int, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """Haar-random orthogonal matrix (QR of a Gaussian matrix with sign fix)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(dtype)


def matrix_with_spectrum(eigenvalues, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """Symmetric ``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q``."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    q = random_orthogonal(lam.size, seed)
    a = (q * lam) @ q.T
    return ((a + a.T) / 2).astype(dtype)


def dense_hessian(f, x, *args) -> np.ndarray:
    """Dense Hessian of ``f(x, *args)`` in ``ravel_pytree`` order (test reference only)."""
    flat, unravel = ravel_pytree(x)
    return np.asarray(jax.hessian(lambda y: f(unravel(y), *args))(flat))

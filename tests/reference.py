"""Dense references shared by the tests (curvlinops / matfree style): one place, so an operator test is short.

- :func:`matrix_with_spectrum`, :func:`random_orthogonal`: matrices of prescribed spectrum;
- :func:`dense_hessian`, :func:`dense_ggn`, :func:`dense_fisher`, :func:`dense_dataset_curvature`:
  curvature matrices from ``jax.hessian`` / ``jax.jacobian`` in ``ravel_pytree`` order;
- :func:`compare_operator`: an operator against its dense reference (matvec, matmat, ``@``,
  ``to_dense``, shape, dtype, and what its tags promise).

Small problems only: these build ``n x n`` matrices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from curvlab import problems


def random_orthogonal(n: int, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """Haar-random orthogonal matrix (QR of a Gaussian matrix with sign fix)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(dtype)


def matrix_with_spectrum(eigenvalues, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """Symmetric ``Q diag(eigenvalues) Q^T`` (numpy): ``problems.matrix_with_spectrum`` with ``key(seed)``."""
    a = problems.matrix_with_spectrum(eigenvalues, key=jax.random.key(seed), dtype=jnp.float64)
    return np.asarray(a).astype(dtype)


def _flat(fn, params):
    """``fn`` of the flat parameter vector, and that vector."""
    flat, unravel = ravel_pytree(params)
    return (lambda y: fn(unravel(y))), flat


def dense_hessian(f, x, *args) -> np.ndarray:
    """Dense Hessian of ``f(x, *args)`` in ``ravel_pytree`` order."""
    g, flat = _flat(lambda p: f(p, *args), x)
    return np.asarray(jax.hessian(g)(flat))


def dense_ggn(model_fn, output_loss_fn, params, batch) -> np.ndarray:
    """Dense :math:`J^\\top H_L J` from the Jacobian of the flattened outputs and the output-loss Hessian."""
    inputs, targets = batch
    model, flat = _flat(lambda p: model_fn(p, inputs), params)
    z = model(flat)
    J = np.asarray(jax.jacobian(lambda y: model(y).ravel())(flat))
    HL = np.asarray(jax.hessian(lambda zz: output_loss_fn(zz.reshape(z.shape), targets))(z.ravel()))
    return J.T @ HL @ J


def dense_fisher(per_example_loss_fn, params, batch) -> np.ndarray:
    """Dense empirical Fisher :math:`\\frac1N G^\\top G`, rows of ``G`` the per-example gradients."""
    losses, flat = _flat(lambda p: per_example_loss_fn(p, batch), params)
    G = np.asarray(jax.jacobian(losses)(flat))
    return G.T @ G / G.shape[0]


def dense_dataset_curvature(
    curvature, loss_fn, params, batches, *, model_fn=None, output_loss_fn=None, per_example_loss_fn=None
) -> np.ndarray:
    """:math:`\\sum_b (n_b / N) A_b` over a list of batches (leading axis: examples)."""
    sizes = [jax.tree_util.tree_leaves(b)[0].shape[0] for b in batches]
    total = np.zeros(2 * (ravel_pytree(params)[0].size,))
    for b, nb in zip(batches, sizes):
        if curvature == "hessian":
            A = dense_hessian(loss_fn, params, b)
        elif curvature == "ggn":
            A = dense_ggn(model_fn, output_loss_fn, params, b)
        else:
            A = dense_fisher(per_example_loss_fn, params, b)
        total += (nb / sum(sizes)) * A
    return total


def compare_operator(op, dense, rtol: float = 1e-12, *, atol: float | None = None, seed: int = 0) -> None:
    """Assert that ``op`` acts as the matrix ``dense`` in every way an operator can be used.

    Checks ``shape``, matvec, :meth:`matmat`, ``@`` on 1-D and 2-D arrays, ``to_dense``
    (tolerance ``atol``, default ``rtol * max(1, ||dense||_2)``), and what the tags promise:
    ``"symmetric"`` means :math:`u^\\top A v = v^\\top A u` and a symmetric ``dense``;
    ``"psd"`` means no eigenvalue of ``dense`` below ``-atol``.
    """
    dense = np.asarray(dense, dtype=np.float64)
    n = dense.shape[0]
    assert op.shape == (n, n) == dense.shape, (op.shape, dense.shape)
    scale = max(1.0, float(np.linalg.norm(dense, 2)))
    atol = rtol * scale if atol is None else atol
    rng = np.random.default_rng(seed)
    dtype = np.dtype(op.dtype)
    v = rng.standard_normal(n)
    V = rng.standard_normal((n, 3))
    vj, Vj = jnp.asarray(v, dtype), jnp.asarray(V, dtype)

    def close(actual, desired, what):
        np.testing.assert_allclose(
            np.asarray(actual, np.float64), desired, rtol=0, atol=atol * 4, err_msg=what
        )

    close(op.matvec(vj), dense @ v, "matvec")
    close(op @ vj, dense @ v, "op @ v")
    close(op.matmat(Vj), dense @ V, "matmat")
    close(op @ Vj, dense @ V, "op @ V")
    close(op.to_dense(), dense, "to_dense")
    tags = op.tags
    assert isinstance(tags, frozenset) and tags <= {"symmetric", "psd"}, tags
    if "psd" in tags:
        assert "symmetric" in tags
        lowest = float(np.linalg.eigvalsh((dense + dense.T) / 2)[0])
        assert lowest >= -4 * atol, f"tagged psd but the dense reference has eigenvalue {lowest}"
    if "symmetric" in tags:
        np.testing.assert_allclose(
            dense, dense.T, rtol=0, atol=4 * atol, err_msg="dense reference not symmetric"
        )
        u = jnp.asarray(rng.standard_normal(n), dtype)
        uAv, vAu = float(jnp.vdot(u, op @ vj)), float(jnp.vdot(vj, op @ u))
        assert abs(uAv - vAu) <= 4 * atol * float(jnp.linalg.norm(u) * jnp.linalg.norm(vj)), (uAv, vAu)


class CountingOperator:
    """A dense matrix as a :class:`~curvlab.FunctionOperator` whose products are counted as they
    execute (inside jit, too): ``out, n = c.matvecs(lambda: solver(c.op))``."""

    def __init__(self, A):
        from curvlab import FunctionOperator

        self.A = np.asarray(A)
        M = jnp.asarray(A)
        self.count = 0

        def fn(v):
            jax.debug.callback(self._tick)
            return M @ v

        self.op = FunctionOperator(fn, M.shape[0], M.dtype)

    def _tick(self):
        self.count += 1

    def matvecs(self, call):
        """``call()`` and the number of products it made."""
        before = self.count
        out = call()
        return out, self.count - before

"""Tests for curvlab.preconditioners (float64 against dense references)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._cg import cg
from curvlab._curvature import fisher_operator, hessian_operator
from curvlab._operators import (
    DenseOperator,
    DiagonalOperator,
    FunctionOperator,
    IdentityOperator,
)
from curvlab._status import Status
from curvlab.preconditioners import (
    as_preconditioner,
    empirical_fisher_diagonal,
    hutchinson_jacobi,
    jacobi,
    martens,
)
from tests.reference import matrix_with_spectrum


def badly_scaled(n=60, seed=0, decades=6):
    A0 = matrix_with_spectrum(np.geomspace(1.0, 10.0, n), seed=seed)
    D = 10.0 ** np.random.default_rng(seed).uniform(-decades / 2, decades / 2, n)
    return D[:, None] * A0 * D[None, :]


def test_as_preconditioner_variants():
    assert as_preconditioner(None) is None
    P = DiagonalOperator(jnp.arange(1.0, 4.0))
    assert as_preconditioner(P) is P
    d = as_preconditioner(np.array([1.0, 2.0, 3.0]), n=3)
    assert isinstance(d, DiagonalOperator)
    np.testing.assert_allclose(d @ jnp.ones(3), [1.0, 2.0, 3.0])
    M = as_preconditioner(2.0 * np.eye(3))
    assert isinstance(M, DenseOperator)
    f = as_preconditioner(lambda r: 0.5 * r, n=3, dtype=jnp.float64)
    assert isinstance(f, FunctionOperator) and f.size == 3
    np.testing.assert_allclose(f @ jnp.ones(3), 0.5 * np.ones(3))
    with pytest.raises(ValueError, match="needs n="):
        as_preconditioner(lambda r: r)
    with pytest.raises(ValueError, match="size 3, expected 4"):
        as_preconditioner(np.ones(3), n=4)
    with pytest.raises(ValueError, match="1-D"):
        as_preconditioner(np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="preconditioner must be"):
        as_preconditioner("jacobi")


def test_jacobi_exact_inverse_diagonal():
    A = badly_scaled(30, 1)
    P = jacobi(DenseOperator(A))
    np.testing.assert_allclose(P.diag, 1.0 / np.diag(A), rtol=1e-14)
    Pd = jacobi(A, damping=0.5)  # arrays accepted
    np.testing.assert_allclose(Pd.diag, 1.0 / (np.diag(A) + 0.5), rtol=1e-14)
    # structured operators with a cheap diagonal
    K = DiagonalOperator(jnp.array([2.0, 4.0])) + IdentityOperator(2)
    np.testing.assert_allclose(jacobi(K).diag, [1 / 3, 1 / 5])


def test_jacobi_nonpositive_diagonal():
    A = np.diag([1.0, -2.0, 0.0, 3.0])
    with pytest.raises(ValueError, match="2 non-positive.*damping="):
        jacobi(A)
    np.testing.assert_allclose(jacobi(A, floor=0.5).diag, [1.0, 2.0, 2.0, 1 / 3])
    # under jit it cannot raise: bad entries take the largest entry
    d = jax.jit(lambda M: jacobi(DenseOperator(M)).diag)(jnp.asarray(A))
    np.testing.assert_allclose(d, [1.0, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="damping"):
        jacobi(np.eye(2), damping=-1.0)


def test_jacobi_refuses_operator_without_diagonal():
    H = hessian_operator(lambda x: jnp.sum(x**4), jnp.ones(5))
    with pytest.raises(ValueError, match="hutchinson_jacobi"):
        jacobi(H)


def test_hutchinson_jacobi_estimate_and_pcg():
    # diagonal spread over 4 decades plus a coupling: Hutchinson's noise (set by the off-diagonal) is small
    d = 10.0 ** np.random.default_rng(2).uniform(0, 4, 50)
    A = np.diag(d) + 0.5 * matrix_with_spectrum(np.linspace(0.0, 1.0, 50), seed=2)
    Aj = jnp.asarray(A)
    op = FunctionOperator(lambda v: Aj @ v, 50)  # no cheap diagonal
    P = hutchinson_jacobi(op, num_probes=200, key=jax.random.key(0))
    est = 1.0 / np.asarray(P.diag)
    # Rademacher Hutchinson: error of entry i has std sqrt(sum_{l != i} A_il^2 / m)
    off = np.sqrt((np.sum(A**2, axis=1) - np.diag(A) ** 2) / 200)
    assert np.all(est > 0)
    assert np.all(np.abs(est - np.diag(A)) <= 5 * off + 1e-3 * np.mean(np.abs(np.diag(A))))
    b = np.random.default_rng(0).standard_normal(50)
    plain = cg(op, b, rtol=1e-8, maxiter=500)
    pcg = cg(op, b, rtol=1e-8, maxiter=500, preconditioner=P)
    assert pcg.status is Status.CONVERGED
    assert int(pcg.num_iterations) * 3 < int(plain.num_iterations)
    # the estimate is floored, so an indefinite operator still gives a positive definite P
    Pi = hutchinson_jacobi(np.diag([1.0, -1.0, 2.0]), num_probes=4, key=jax.random.key(1))
    assert np.all(np.asarray(Pi.diag) > 0)
    Pf = hutchinson_jacobi(np.diag([1.0, -1.0, 2.0]), num_probes=4, key=jax.random.key(1), floor=0.25)
    np.testing.assert_allclose(Pf.diag, [1.0, 4.0, 0.5])
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson_jacobi(op, num_probes=0, key=jax.random.key(0))


def test_martens_preconditioner():
    diag = jnp.array([0.0, 1.0, 3.0, 8.0])
    P = martens(diag, 1.0)
    np.testing.assert_allclose(P.diag, (np.asarray(diag) + 1.0) ** -0.75, rtol=1e-14)
    np.testing.assert_allclose(martens(diag, 1e-3, alpha=0.0).diag, np.ones(4))
    np.testing.assert_allclose(martens(diag, 2.0, alpha=1.0).diag, 1.0 / (np.asarray(diag) + 2.0))
    with pytest.raises(ValueError, match="damping > 0"):
        martens(diag, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        martens(jnp.array([-1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        martens(diag, 1.0, alpha=1.5)
    with pytest.raises(ValueError, match="1-D"):
        martens(jnp.ones((2, 2)), 1.0)


def _logistic_problem(N=37, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((N, d)))
    y = jnp.asarray(rng.integers(0, 2, N).astype(np.float64))
    params = {"w": jnp.asarray(rng.standard_normal(d)), "b": jnp.asarray(0.3)}

    def per_example(p, batch):
        X, y = batch
        z = X @ p["w"] + p["b"]
        return jnp.logaddexp(0.0, z) - y * z

    return per_example, params, X, y


@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_empirical_fisher_diagonal_matches_dense(chunk_size):
    per_example, params, X, y = _logistic_problem()
    d = empirical_fisher_diagonal(per_example, params, (X, y), chunk_size=chunk_size)
    J = jax.jacrev(lambda p: per_example(p, (X, y)))(params)
    G = np.concatenate([np.asarray(J["b"])[:, None], np.asarray(J["w"])], axis=1)  # ravel_pytree order: b, w
    np.testing.assert_allclose(d, np.mean(G**2, axis=0), rtol=1e-12)
    F = fisher_operator(per_example, params, (X, y))
    np.testing.assert_allclose(d, np.diag(np.asarray(F.to_dense())), rtol=1e-10)
    with pytest.raises(ValueError, match="per-example losses"):
        empirical_fisher_diagonal(lambda p, batch: jnp.sum(per_example(p, batch)), params, (X, y))


def test_martens_preconditioned_cg_on_damped_fisher():
    per_example, params, X, y = _logistic_problem(N=64, d=12, seed=1)
    damping = 1e-3
    F = fisher_operator(per_example, params, (X, y)).damped(damping)
    P = martens(empirical_fisher_diagonal(per_example, params, (X, y)), damping)
    b = np.random.default_rng(2).standard_normal(13)
    res = cg(F, b, preconditioner=P, rtol=1e-9, maxiter=200)
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(F.to_dense() @ np.asarray(res.x), b, atol=1e-7 * np.linalg.norm(b))


def test_hutchinson_jacobi_key_is_keyword_only_typed_and_required():
    A = np.diag([1.0, 2.0, 4.0]) + 0.1
    typed = hutchinson_jacobi(A, num_probes=8, key=jax.random.key(3))
    raw = hutchinson_jacobi(A, num_probes=8, key=jax.random.PRNGKey(3))  # raw key data: wrapped
    np.testing.assert_array_equal(typed.diag, raw.diag)
    with pytest.raises(TypeError, match=r"key is required: pass a typed key, e.g. key=jax.random.key\(0\)"):
        hutchinson_jacobi(A, num_probes=8, key=None)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        hutchinson_jacobi(A, num_probes=8, key=3)
    with pytest.raises(TypeError):
        hutchinson_jacobi(A, 8, jax.random.key(3))  # num_probes and key are keyword-only


def test_complex_and_integer_input_is_refused():
    H = jnp.array([[2.0, 1j], [-1j, 2.0]])  # Hermitian
    with pytest.raises(TypeError, match="op is complex"):
        jacobi(H)
    with pytest.raises(TypeError, match="op is complex"):
        hutchinson_jacobi(H, num_probes=4, key=jax.random.key(0))
    with pytest.raises(TypeError, match="preconditioner is complex"):
        as_preconditioner(jnp.array([1.0 + 1j, 2.0]))
    with pytest.raises(TypeError, match="preconditioner has dtype int"):
        as_preconditioner(np.array([1, 2]))
    with pytest.raises(TypeError, match="diag_fisher is complex"):
        martens(jnp.array([1.0 + 1j, 2.0]), 1.0)

"""Tests for curvlab._tridiagonal against dense numpy.linalg.eigh references (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab import _tridiagonal as tri


def _dense(a, b):
    return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_eigvals_and_eigh_match_each_leading_block(seed):
    rng = np.random.default_rng(seed)
    k = 9
    alpha, beta = rng.normal(size=k), rng.uniform(0.1, 2.0, size=k)
    for m in range(1, k + 1):
        ref = np.linalg.eigh(_dense(alpha[:m], beta[: m - 1]))[0]
        theta = np.asarray(tri.eigvals(jnp.asarray(alpha), jnp.asarray(beta), m))
        np.testing.assert_allclose(theta[:m], ref, atol=1e-12)
        assert np.all(np.isnan(theta[m:]))
        th, S = tri.eigh(jnp.asarray(alpha), jnp.asarray(beta), m)
        th, S = np.asarray(th), np.asarray(S)
        np.testing.assert_allclose(th[:m], ref, atol=1e-12)
        T = _dense(alpha[:m], beta[: m - 1])
        np.testing.assert_allclose(T @ S[:m, :m], S[:m, :m] * th[:m], atol=1e-12)
        np.testing.assert_allclose(S[:m, :m].T @ S[:m, :m], np.eye(m), atol=1e-12)
        assert np.all(S[m:] == 0) and np.all(S[:, m:] == 0)


def test_traced_number_of_rows_under_jit_and_vmap():
    alpha = jnp.array([2.0, 2.0, 9.0, -1.0])
    beta = jnp.array([1.0, 5.0, 0.5, 0.0])
    rows = jax.jit(jax.vmap(lambda m: tri.eigvals(alpha, beta, m)))(jnp.arange(1, 5))
    for m in range(1, 5):
        ref = np.linalg.eigvalsh(_dense(np.asarray(alpha[:m]), np.asarray(beta[: m - 1])))
        np.testing.assert_allclose(np.asarray(rows[m - 1, :m]), ref, atol=1e-12)


def test_degenerate_cases_n1_zero_matrix_repeated_eigenvalues():
    np.testing.assert_array_equal(np.asarray(tri.eigvals(jnp.array([3.0]), jnp.array([0.0]), 1)), [3.0])
    z = np.asarray(tri.eigvals(jnp.zeros(3), jnp.zeros(3), 3))  # singular: sentinel 1, all zero eigenvalues
    np.testing.assert_array_equal(z, [0.0, 0.0, 0.0])
    rep = np.asarray(tri.eigvals(jnp.array([2.0, 2.0, 2.0]), jnp.zeros(3), 2))  # decoupled repeated values
    np.testing.assert_allclose(rep[:2], [2.0, 2.0])
    assert np.isnan(rep[2])


def test_projected_eigh_of_an_arrow_matrix():
    rng = np.random.default_rng(3)
    m, size = 7, 5
    T = np.zeros((m, m))
    T[np.arange(4), np.arange(4)] = rng.normal(size=4)
    T[4, :4] = T[:4, 4] = rng.normal(size=4)
    T[4, 4] = 1.5
    T[5:, 5:] = 100.0  # stale entries past size are ignored
    theta, S = tri.projected_eigh(jnp.asarray(T), size)
    ref = np.linalg.eigh(T[:size, :size])[0]
    np.testing.assert_allclose(np.asarray(theta)[:size], ref, atol=1e-12)
    np.testing.assert_allclose(np.asarray(S)[size:, :size], 0, atol=1e-12)


def test_host_eigvals_and_ritz_pairs():
    a, b = np.array([4.0, 1.0, 3.0]), np.array([0.5, 2.0])
    np.testing.assert_allclose(tri.host_eigvals(a, b), np.linalg.eigvalsh(_dense(a, b)), atol=1e-12)
    np.testing.assert_array_equal(tri.host_eigvals([5.0], []), [5.0])
    with pytest.raises(ValueError, match="beta must have length"):
        tri.host_eigvals(a, a)
    Q = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 3)))[0].T
    theta, Y = tri.ritz_pairs(jnp.asarray(a), jnp.asarray(np.r_[b, 0.0]), jnp.asarray(Q), 3)
    np.testing.assert_allclose(np.asarray(theta), np.linalg.eigvalsh(_dense(a, b)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(Y).T @ np.asarray(Y), np.eye(3), atol=1e-12)

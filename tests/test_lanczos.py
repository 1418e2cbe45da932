"""Tests for curvlab._lanczos: the Lanczos process and the thick-restart eigensolver.

References are numpy.linalg.eigh on matrices of prescribed spectrum (tests/reference.py).
float32 tolerances are documented next to each check: orthogonality and the Lanczos relation
hold to ~1e-5 (a few hundred ulps at n ~ 100), eigenvalues to ~1e-4 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._lanczos import (
    EigshStatus,
    LanczosStatus,
    _eigsh_jit,
    _lanczos_jit,
    _lanczos_loop,
    _row_blocks,
    eigsh,
    lanczos,
    ritz_pairs,
    tridiagonal,
)
from curvlab._operators import DenseOperator, FunctionOperator, hessian_operator
from tests.reference import dense_hessian, matrix_with_spectrum

N = 120


def spectrum(name: str, n: int = N) -> np.ndarray:
    """Test spectra with known structure."""
    if name == "separated":
        return np.linspace(1.0, 10.0, n) + np.r_[np.zeros(n - 4), [5.0, 10.0, 20.0, 40.0]]
    if name == "clustered":
        base = np.repeat([1.0, 2.0, 3.0, 4.0], n // 4)
        return base + 1e-3 * np.tile(np.arange(n // 4), 4)
    if name == "repeated":
        return np.repeat([-2.0, 1.0, 3.0, 7.0, 11.0], n // 5)
    if name == "indefinite":
        return np.linspace(-5.0, 3.0, n) + np.r_[[-10.0], np.zeros(n - 2), [6.0]]
    if name == "kappa1e8":
        return np.logspace(-8, 0, n)
    raise ValueError(name)


SPECTRA = ["separated", "clustered", "repeated", "indefinite", "kappa1e8"]


def _op(lam, seed=0, dtype=np.float64):
    A = matrix_with_spectrum(lam, seed, dtype=dtype)
    return DenseOperator(jnp.asarray(A)), A


# ---------------------------------------------------------------------------
# lanczos
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SPECTRA)
@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_relation_and_orthonormality_float64(name, seed):
    lam = spectrum(name)
    op, A = _op(lam, seed)
    k = 30
    res = lanczos(op, k, key=jax.random.key(seed))
    m = res.num_steps
    Q = np.asarray(res.basis[:m])
    T = np.asarray(tridiagonal(res))
    scale = np.max(np.abs(lam))
    assert np.abs(Q @ Q.T - np.eye(m)).max() < 1e-12
    # A Q^T = Q^T T + beta_m q_{m+1} e_m^T (rows of Q are the Lanczos vectors)
    R = A @ Q.T - Q.T @ T
    R[:, -1] -= float(res.beta[m - 1]) * np.asarray(res.basis[m])
    assert np.abs(R).max() < 1e-12 * scale
    assert np.allclose(T, Q @ A @ Q.T, atol=1e-12 * scale)
    if name == "repeated":  # Krylov space of dimension = number of distinct eigenvalues
        assert res.status == LanczosStatus.BREAKDOWN and m == 5
    else:
        assert res.status == LanczosStatus.COMPLETED and m == k
    assert np.all(np.isfinite(np.asarray(res.basis)))


def test_row_blocks_cover_the_buffer():
    assert _row_blocks(31, False) == (31,)
    assert _row_blocks(31, True) == (16, 31)
    for rows in (2, 17, 61, 101, 201, 1001):
        blocks = _row_blocks(rows, True)
        assert blocks[-1] == rows and len(blocks) <= 8
        assert all(b - a == blocks[0] for a, b in zip(blocks[:-2], blocks[1:-1], strict=True))


@pytest.mark.parametrize("name", ["separated", "kappa1e8", "indefinite"])
def test_lanczos_passes_over_rows_in_use_equal_full_passes(name):
    # 100 steps on n = 120: the Gram-Schmidt passes run against the filled rows only (7 blocks of 16);
    # the process must be the one that passes over the whole (k+1, n) buffer gives, and stay orthonormal
    lam = spectrum(name)
    op, A = _op(lam, 3)
    k = 100
    v0 = jax.random.normal(jax.random.key(4), (N,))
    run = jax.jit(
        lambda v, blocked: _lanczos_loop(op.matvec, v, k, True, 1e-10, False, blocked=blocked),
        static_argnums=1,
    )
    blocked, full = run(v0, True), run(v0, False)
    assert int(blocked.status) == LanczosStatus.COMPLETED
    np.testing.assert_allclose(
        np.asarray(blocked.alpha), np.asarray(full.alpha), atol=1e-9 * np.abs(lam).max()
    )
    np.testing.assert_allclose(np.asarray(blocked.beta), np.asarray(full.beta), atol=1e-9 * np.abs(lam).max())
    Q = np.asarray(blocked.basis[:k])
    assert np.abs(Q @ Q.T - np.eye(k)).max() < 1e-12
    T = np.diag(np.asarray(blocked.alpha)) + np.diag(np.asarray(blocked.beta[:-1]), 1)
    T = T + np.diag(np.asarray(blocked.beta[:-1]), -1)
    assert np.allclose(T, Q @ A @ Q.T, atol=1e-11 * np.abs(lam).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_float32_documented_tolerance(seed):
    lam = spectrum("separated")
    op, A = _op(lam, seed, dtype=np.float32)
    res = lanczos(op, 30, key=jax.random.key(seed))
    assert res.alpha.dtype == jnp.float32 and res.basis.dtype == jnp.float32
    Q = np.asarray(res.basis[:30], dtype=np.float64)
    T = np.asarray(tridiagonal(res), dtype=np.float64)
    # float32: ~100 eps at n = 120
    assert np.abs(Q @ Q.T - np.eye(30)).max() < 2e-5
    R = A.astype(np.float64) @ Q.T - Q.T @ T
    R[:, -1] -= float(res.beta[29]) * np.asarray(res.basis[30], dtype=np.float64)
    assert np.abs(R).max() < 2e-5 * lam.max()
    # the top Ritz value (well separated outlier) to 1e-5 relative
    assert abs(float(res.ritz_history[29, 29]) - lam.max()) < 1e-5 * lam.max()


@pytest.mark.parametrize("name", ["separated", "indefinite"])
def test_extreme_ritz_values_converge(name):
    lam = spectrum(name)
    op, _ = _op(lam, 3)
    res = lanczos(op, 40, key=jax.random.key(3))
    theta = np.asarray(res.ritz_history[39])
    assert abs(theta[-1] - lam.max()) < 1e-10 * np.abs(lam).max()
    if name == "indefinite":  # an outlier at the bottom too
        assert abs(theta[0] - lam.min()) < 1e-10 * np.abs(lam).max()
    # Ritz values lie inside the spectrum
    assert lam.min() - 1e-12 <= theta[0] and theta[-1] <= lam.max() + 1e-12


def test_ritz_history_matches_leading_blocks():
    lam = spectrum("indefinite", 60)
    op, _ = _op(lam, 2)
    k = 12
    res = lanczos(op, k, key=jax.random.key(0))
    T = np.asarray(tridiagonal(res))
    for j in range(k):
        ref = np.linalg.eigvalsh(T[: j + 1, : j + 1])
        row = np.asarray(res.ritz_history[j])
        np.testing.assert_allclose(row[: j + 1], ref, atol=1e-12 * np.abs(lam).max())
        assert np.all(np.isnan(row[j + 1 :]))
    # Cauchy interlacing: the largest Ritz value increases with the step
    top = np.nanmax(np.asarray(res.ritz_history), axis=1)
    assert np.all(np.diff(top) >= -1e-12)


def test_ritz_pairs_residuals():
    lam = spectrum("separated", 80)
    op, A = _op(lam, 5)
    res = lanczos(op, 25, key=jax.random.key(1))
    theta, Y = ritz_pairs(res)
    theta, Y = np.asarray(theta), np.asarray(Y)
    assert Y.shape == (80, 25)
    np.testing.assert_allclose(Y.T @ Y, np.eye(25), atol=1e-12)
    S = np.linalg.eigh(np.asarray(tridiagonal(res)))[1]
    est = np.abs(float(res.beta[24]) * S[-1])
    true = np.linalg.norm(A @ Y - Y * theta, axis=0)
    np.testing.assert_allclose(true, est, atol=1e-11 * lam.max())


@pytest.mark.parametrize("name", ["separated", "indefinite", "kappa1e8", "repeated"])
def test_more_steps_than_n_stops_at_invariant_subspace(name):
    n = 40
    lam = spectrum(name, n)
    op, _ = _op(lam, 1)
    res = lanczos(op, n + 15, key=jax.random.key(0))
    distinct = np.unique(lam)
    assert res.status == LanczosStatus.BREAKDOWN, res.message
    assert res.num_steps == distinct.size
    assert "invariant subspace" in res.message
    m = res.num_steps
    theta = np.asarray(res.ritz_history[m - 1, :m])
    np.testing.assert_allclose(theta, distinct, atol=1e-10 * np.abs(lam).max())
    for arr in (res.alpha, res.beta, res.basis):
        assert np.all(np.isfinite(np.asarray(arr)))
    assert np.all(np.asarray(res.basis[m:]) == 0)
    assert np.all(np.isnan(np.asarray(res.ritz_history[m:])))


def test_without_reorthogonalization_loses_orthogonality_and_shows_ghosts():
    # A few well-separated outliers converge fast; plain Lanczos then loses orthogonality
    # and produces spurious copies ("ghosts") of them.
    n = 60
    lam = np.r_[np.linspace(0.0, 1.0, n - 2), [5.0, 10.0]]
    op, _ = _op(lam, 0)
    k = 100
    plain = lanczos(op, k, key=jax.random.key(0), reorthogonalize=False)
    assert plain.status == LanczosStatus.COMPLETED  # no breakdown although k > n
    Q = np.asarray(plain.basis[:k])
    assert np.abs(Q @ Q.T - np.eye(k)).max() > 0.5
    theta = np.asarray(plain.ritz_history[k - 1])
    assert np.sum(np.abs(theta - 10.0) < 1e-6) >= 2  # ghost copies of a simple eigenvalue

    full = lanczos(op, k, key=jax.random.key(0))
    assert full.status == LanczosStatus.BREAKDOWN and full.num_steps == n
    theta = np.asarray(full.ritz_history[n - 1, :n])
    assert np.sum(np.abs(theta - 10.0) < 1e-6) == 1
    np.testing.assert_allclose(theta, np.sort(lam), atol=1e-12 * 10)


def test_n_equals_one():
    res = lanczos(DenseOperator(jnp.array([[3.0]])), 4)
    assert res.status == LanczosStatus.BREAKDOWN and res.num_steps == 1
    assert float(res.ritz_history[0, 0]) == pytest.approx(3.0)
    assert np.all(np.isfinite(np.asarray(res.basis)))


def test_v0_is_used_and_normalized():
    lam = spectrum("separated", 30)
    op, _ = _op(lam)
    v0 = jnp.arange(1.0, 31.0)
    res = lanczos(op, 5, v0=v0)
    np.testing.assert_allclose(res.basis[0], v0 / jnp.linalg.norm(v0), rtol=1e-14)
    res2 = lanczos(op, 5, v0=3 * v0)
    np.testing.assert_allclose(res.alpha, res2.alpha, rtol=1e-13)


def test_invalid_arguments_raise():
    op, _ = _op(spectrum("separated", 10))
    with pytest.raises(ValueError, match="v0 must be nonzero"):
        lanczos(op, 3, v0=jnp.zeros(10))
    with pytest.raises(ValueError, match="v0 must have shape"):
        lanczos(op, 3, v0=jnp.ones(11))
    with pytest.raises(ValueError, match="v0 contains non-finite"):
        lanczos(op, 3, v0=jnp.full(10, jnp.nan))
    with pytest.raises(ValueError, match="num_steps"):
        lanczos(op, 0)
    with pytest.raises(TypeError, match="num_steps"):
        lanczos(op, 2.5)
    with pytest.raises(ValueError, match="breakdown_tol"):
        lanczos(op, 3, breakdown_tol=-1.0)


def test_nonfinite_operator_is_reported():
    calls = FunctionOperator(lambda v: v * jnp.nan, 8, jnp.float64)
    res = lanczos(calls, 5)
    assert res.status == LanczosStatus.NONFINITE
    assert res.num_steps == 0
    assert "non-finite" in res.message


def test_no_recompilation_on_second_call():
    lam = spectrum("separated", 50)
    op1, _ = _op(lam, 0)
    op2, _ = _op(lam[::-1] * 2, 1)
    lanczos(op1, 10, key=jax.random.key(0))
    before = _lanczos_jit._cache_size()
    r = lanczos(op2, 10, key=jax.random.key(1))
    assert _lanczos_jit._cache_size() == before
    assert float(r.ritz_history[9, 9]) == pytest.approx(2 * lam.max(), rel=1e-6)

    traces = []

    def fn(v):
        traces.append(1)  # runs only while tracing
        return 2.0 * v

    fop = FunctionOperator(fn, 20, jnp.float64)
    lanczos(fop, 6, key=jax.random.key(0))
    lanczos(fop, 6, key=jax.random.key(1))
    assert len(traces) == 1


# ---------------------------------------------------------------------------
# eigsh
# ---------------------------------------------------------------------------


def _reference(lam, which, k):
    lam = np.asarray(lam)
    if which == "LA":
        return np.sort(lam)[::-1][:k]
    if which == "SA":
        return np.sort(lam)[:k]
    if which == "LM":
        return lam[np.argsort(-np.abs(lam), kind="stable")][:k]
    s = np.sort(lam)
    return np.sort(np.r_[s[: k // 2], s[len(s) - (k - k // 2) :]])


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
@pytest.mark.parametrize("name", ["separated", "indefinite"])
@pytest.mark.parametrize("seed", [0, 1])
def test_eigsh_matches_eigh_float64(which, name, seed):
    lam = spectrum(name, 150)
    op, A = _op(lam, seed)
    k, tol = 4, 1e-9
    res = eigsh(op, k, which=which, tol=tol, key=jax.random.key(seed))
    assert res.status == EigshStatus.CONVERGED, res.message
    assert np.all(np.asarray(res.converged))
    ref = _reference(lam, which, k)
    theta = np.asarray(res.eigenvalues)
    np.testing.assert_allclose(theta, ref, rtol=0, atol=10 * tol * np.abs(ref).max())
    # eigenvectors up to sign (these wanted eigenvalues are simple with gap >= 1e-2)
    w, U = np.linalg.eigh(A)
    Y = np.asarray(res.eigenvectors)
    assert Y.shape == (150, k)
    for i, t in enumerate(theta):
        u = U[:, np.argmin(np.abs(w - t))]
        assert abs(abs(u @ Y[:, i]) - 1) < 1e-8
    # residual_norms are the true residuals
    true = np.linalg.norm(A @ Y - Y * theta, axis=0)
    np.testing.assert_allclose(np.asarray(res.residual_norms), true, rtol=1e-6, atol=1e-13)
    assert np.all(true <= tol * np.abs(theta))
    assert res.num_matvecs >= 20 + k


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_eigsh_clustered_spectrum(which):
    # wanted set = one whole cluster of 5 eigenvalues spaced 1e-3 apart
    lam = np.r_[np.linspace(0.0, 1.0, 110), 5.0 + 1e-3 * np.arange(5), -5.0 - 1e-3 * np.arange(5)]
    op, A = _op(lam, 4)
    res = eigsh(op, 5, which=which, tol=1e-9, key=jax.random.key(2), ncv=25)
    assert res.status == EigshStatus.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.eigenvalues), _reference(lam, which, 5), atol=1e-8)
    # the spanned subspace is the cluster's invariant subspace
    w, U = np.linalg.eigh(A)
    Uc = U[:, -5:] if which == "LA" else U[:, :5]
    Y = np.asarray(res.eigenvectors)
    assert np.linalg.norm(Uc - Y @ (Y.T @ Uc)) < 1e-6


@pytest.mark.parametrize("which", ["LA", "LM"])
def test_eigsh_ill_conditioned(which):
    lam = spectrum("kappa1e8", 150)
    op, _ = _op(lam, 7)
    res = eigsh(op, 4, which=which, tol=1e-8)
    assert res.status == EigshStatus.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.eigenvalues), np.sort(lam)[::-1][:4], rtol=1e-8)


def test_eigsh_stops_inside_a_pass_when_the_estimates_converge():
    # top-2 of a spectrum with two far outliers converge in a few steps: with a large basis (ncv = 60)
    # eigsh stops inside the first pass (no restart) instead of running all 60 steps, and is exact
    lam = np.r_[np.linspace(0.0, 1.0, 148), 50.0, 100.0]
    op, A = _op(lam, 6)
    res = eigsh(op, 2, which="LA", tol=1e-8, ncv=60, key=jax.random.key(1))
    assert res.status == EigshStatus.CONVERGED, res.message
    assert res.num_restarts == 0
    assert res.num_matvecs < 40
    np.testing.assert_allclose(np.asarray(res.eigenvalues), [100.0, 50.0], rtol=1e-8)
    Y = np.asarray(res.eigenvectors)
    true = np.linalg.norm(A @ Y - Y * np.asarray(res.eigenvalues), axis=0)
    np.testing.assert_allclose(np.asarray(res.residual_norms), true, rtol=1e-6, atol=1e-13)
    assert np.all(true <= 1e-8 * np.array([100.0, 50.0]))


def test_eigsh_repeated_eigenvalues_small_n_full_space():
    # n <= ncv: Lanczos spans the whole space, fresh random directions after each invariant subspace
    # recover every copy of a repeated eigenvalue.
    lam = np.repeat([1.0, 2.0, 4.0], 4)
    op, _ = _op(lam, 3)
    res = eigsh(op, 5, which="LA", tol=1e-10)
    assert res.status == EigshStatus.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.eigenvalues), [4, 4, 4, 4, 2], atol=1e-10)
    Y = np.asarray(res.eigenvectors)
    np.testing.assert_allclose(Y.T @ Y, np.eye(5), atol=1e-10)


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
def test_eigsh_tiny_n(which):
    lam = np.array([-3.0, 0.5, 1.0, 2.0])
    op, _ = _op(lam, 0)
    res = eigsh(op, 2, which=which, tol=1e-10)
    assert res.status == EigshStatus.CONVERGED
    np.testing.assert_allclose(np.asarray(res.eigenvalues), _reference(lam, which, 2), atol=1e-12)


def test_eigsh_reports_non_convergence_honestly():
    lam = spectrum("kappa1e8", 150)
    op, A = _op(lam, 0)
    # k = 4, ncv = 20 keeps 12 vectors: 20 steps, then 8 per restart; a budget of 28 steps = 1 restart
    res = eigsh(op, 4, which="SA", tol=1e-10, max_steps=28)
    assert res.status == EigshStatus.MAX_RESTARTS
    assert "not converged" in res.message
    assert not np.all(np.asarray(res.converged))
    assert res.num_restarts == 1
    assert res.num_matvecs == 20 + 8 + 4
    Y, theta = np.asarray(res.eigenvectors), np.asarray(res.eigenvalues)
    true = np.linalg.norm(A @ Y - Y * theta, axis=0)
    np.testing.assert_allclose(np.asarray(res.residual_norms), true, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(res.converged), true <= 1e-10 * np.abs(theta))
    # history: two Lanczos passes recorded, the rest NaN
    assert res.ritz_history.shape == (2, 4)
    assert np.all(np.isfinite(np.asarray(res.ritz_history)))
    assert np.all(np.isfinite(np.asarray(res.residual_history)))


def test_eigsh_top1_small_gap_many_restarts_float64():
    # k = 1 (default ncv = 12, 6 kept vectors): a relative gap of 1e-3 at the top needs many thick
    # restarts, i.e. many steps with one Gram-Schmidt pass plus the conditional second one and many
    # arrow-row steps; the result must still match the dense reference with a true residual.
    lam = np.r_[np.linspace(-1.0, 1.0, 198), 1.001, 1.002]
    op, A = _op(lam, 5)
    res = eigsh(op, 1, which="LA", tol=1e-10, key=jax.random.key(3))
    assert res.status == EigshStatus.CONVERGED, res.message
    assert res.num_restarts >= 3
    np.testing.assert_allclose(float(res.eigenvalues[0]), 1.002, rtol=1e-10)
    y = np.asarray(res.eigenvectors[:, 0])
    w, U = np.linalg.eigh(A)
    assert abs(abs(U[:, -1] @ y) - 1) < 1e-8
    assert np.linalg.norm(A @ y - float(res.eigenvalues[0]) * y) <= 1e-10 * 1.002


def test_eigsh_float32_documented_tolerance():
    lam = spectrum("separated", 150)
    op, _ = _op(lam, 1, dtype=np.float32)
    res = eigsh(op, 3, which="LA", tol=1e-5)
    assert res.eigenvectors.dtype == jnp.float32
    assert res.status == EigshStatus.CONVERGED, res.message
    # float32: eigenvalues to 1e-5 relative
    np.testing.assert_allclose(np.asarray(res.eigenvalues), np.sort(lam)[::-1][:3], rtol=1e-5)


def test_eigsh_tol_below_float32_accuracy_is_reported_inaccurate():
    # float32 Ritz estimates reach ~0 but the true residuals floor at ~1e-7 |A|: after a few verified
    # restarts eigsh stops with INACCURATE instead of claiming convergence or spinning to max_restarts.
    lam = spectrum("separated", 150)
    op, A = _op(lam, 1, dtype=np.float32)
    res = eigsh(op, 3, which="LA", tol=1e-9, max_restarts=30)
    assert res.status == EigshStatus.INACCURATE, res.message
    assert "attainable" in res.message
    assert not np.any(np.asarray(res.converged))
    assert res.num_restarts < 30
    Y = np.asarray(res.eigenvectors, dtype=np.float64)
    theta = np.asarray(res.eigenvalues, dtype=np.float64)
    true = np.linalg.norm(A.astype(np.float64) @ Y - Y * theta, axis=0)
    np.testing.assert_allclose(np.asarray(res.residual_norms), true, rtol=0.2, atol=1e-6)
    assert np.all(true > 1e-9 * theta) and np.all(true < 1e-4 * theta)


def test_eigsh_invalid_arguments():
    op, _ = _op(spectrum("separated", 10))
    with pytest.raises(ValueError, match="k larger than n"):
        eigsh(op, 10)
    with pytest.raises(ValueError, match="k must be >= 1"):
        eigsh(op, 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        eigsh(op, 2.0)
    with pytest.raises(ValueError, match="which"):
        eigsh(op, 2, which="XX")
    with pytest.raises(ValueError, match="tol"):
        eigsh(op, 2, tol=0.0)
    with pytest.raises(ValueError, match="ncv"):
        eigsh(op, 2, ncv=2)
    with pytest.raises(ValueError, match="v0 must be nonzero"):
        eigsh(op, 2, v0=jnp.zeros(10))
    with pytest.raises(ValueError, match="k larger than n"):
        eigsh(DenseOperator(jnp.ones((1, 1))), 1)


def test_eigsh_no_recompilation():
    lam = spectrum("separated", 60)
    op1, _ = _op(lam, 0)
    op2, _ = _op(lam + 1.0, 1)
    eigsh(op1, 2, tol=1e-8)
    before = _eigsh_jit._cache_size()
    r = eigsh(op2, 2, tol=1e-8)
    assert _eigsh_jit._cache_size() == before
    assert float(r.eigenvalues[0]) == pytest.approx(lam.max() + 1.0, rel=1e-8)


def test_eigsh_on_hessian_operator_of_a_pytree_function():
    def f(params, x):
        h = jnp.tanh(x @ params["w"] + params["b"][None, :])
        return jnp.sum(h**2) + 0.1 * jnp.sum(params["w"] ** 4)

    key = jax.random.key(0)
    params = {"w": jax.random.normal(key, (6, 5)), "b": jnp.linspace(-1.0, 1.0, 5)}
    x = jax.random.normal(jax.random.key(1), (8, 6))
    H = dense_hessian(f, params, x)
    w = np.linalg.eigh(H)[0]
    op = hessian_operator(f, params, x)
    for which, ref in (("LA", w[::-1][:3]), ("SA", w[:3])):
        res = eigsh(op, 3, which=which, tol=1e-10)
        assert res.status == EigshStatus.CONVERGED, res.message
        np.testing.assert_allclose(np.asarray(res.eigenvalues), ref, atol=1e-8 * np.abs(w).max())
    lres = lanczos(op, op.size + 3)
    assert lres.status == LanczosStatus.BREAKDOWN
    m = lres.num_steps
    np.testing.assert_allclose(
        np.asarray(lres.ritz_history[m - 1, [0, m - 1]]), [w[0], w[-1]], atol=1e-9 * np.abs(w).max()
    )


def test_eigsh_atol_converges_on_singular_psd():
    """Smallest eigenvalues of a rank-deficient PSD matrix (a Gauss-Newton-like operator): the
    eigenvalue 0 cannot satisfy a relative test, an absolute one converges to the right value."""
    lam = np.concatenate([np.zeros(40), np.linspace(1.0, 10.0, 60)])
    A = matrix_with_spectrum(lam, seed=3)
    strict = eigsh(DenseOperator(A), k=2, which="SA", tol=1e-8, ncv=12, max_restarts=20)
    assert not bool(np.all(strict.converged))
    res = eigsh(DenseOperator(A), k=2, which="SA", tol=1e-8, atol=1e-8 * 10.0, ncv=12)
    assert bool(np.all(res.converged)), res.message
    np.testing.assert_allclose(res.eigenvalues, [0.0, 0.0], atol=1e-7)
    assert np.all(np.asarray(res.residual_norms) <= 1e-7)
    with pytest.raises(ValueError, match="atol"):
        eigsh(DenseOperator(A), k=2, atol=-1.0)

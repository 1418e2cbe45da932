"""Tests for the block eigensolver (curvlab._block_lanczos) behind ``eigsh``'s default ``block_size``.

References are numpy.linalg.eigh on matrices of prescribed spectrum (tests/reference.py). The rule
checked everywhere: whenever the status is CONVERGED, the returned set is the wanted set of eigh.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab import _block_lanczos
from curvlab._eigsh import _WHICH, _check_arguments, eigsh
from curvlab._operators import DenseOperator, DiagonalOperator
from curvlab._status import Status
from tests.reference import matrix_with_spectrum


def _wanted(lam, which, k):
    s = np.sort(np.asarray(lam, np.float64))
    if which == "LA":
        return s[::-1][:k]
    if which == "SA":
        return s[:k]
    if which == "LM":
        return s[np.argsort(-np.abs(s), kind="stable")][:k]
    return np.sort(np.r_[s[: k // 2], s[len(s) - (k - k // 2) :]])


def _check_result(res, A, which, k, tol):
    """A CONVERGED result holds the wanted set (to ``tol * ||A||``) with orthonormal eigenvectors."""
    A = np.asarray(A, np.float64)
    lam = np.linalg.eigvalsh(A)
    theta = np.asarray(res.eigenvalues, np.float64)
    Y = np.asarray(res.eigenvectors, np.float64)
    assert np.all(np.isfinite(theta)) and np.all(np.isfinite(Y))
    scale = np.abs(lam).max()
    if res.status == Status.CONVERGED:
        ref = _wanted(lam, which, k)
        got = theta if which != "LM" else theta[np.argsort(-np.abs(theta), kind="stable")]
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * scale)
        np.testing.assert_allclose(Y.T @ Y, np.eye(k), atol=max(1e-6, 100 * tol))
        assert np.all(np.linalg.norm(A @ Y - Y * theta, axis=0) <= 10 * tol * scale + 1e-5 * tol)
    return theta


def _run(A, k, which="LA", **kw):
    return eigsh(DenseOperator(jnp.asarray(A)), k, which=which, **kw)


# ---------------------------------------------------------------------------
# every copy of a repeated eigenvalue
# ---------------------------------------------------------------------------


def _multiplicity_spectrum(mult, where, n=120):
    base = np.linspace(1.0, 9.0, n - 2 * mult)
    top = np.full(mult, 10.0) if where in ("top", "both") else np.full(mult, 9.5) + np.arange(mult)
    bottom = np.full(mult, 0.0) if where in ("bottom", "both") else -1.0 - np.arange(mult)
    return np.r_[bottom, base, top]


@pytest.mark.parametrize("mult", [2, 3, 5])
@pytest.mark.parametrize("where", ["top", "bottom", "both"])
def test_exact_multiplicities_float64(mult, where):
    lam = _multiplicity_spectrum(mult, where)
    A = matrix_with_spectrum(lam, seed=mult)
    k = mult + 1
    for which in ("LA", "SA", "BE"):
        if (where == "top" and which == "SA") or (where == "bottom" and which == "LA"):
            continue
        kk = 2 * mult if which == "BE" else k
        res = _run(A, kk, which, rtol=1e-9)
        assert res.status == Status.CONVERGED, (which, res.message)
        _check_result(res, A, which, kk, 1e-8)


def test_diagonal_triple_top_eigenvalue():
    # the case: [10, 10, 10, 9, ..., 1], k = 3 gave [10, 10, 9] with status CONVERGED
    res = eigsh(DiagonalOperator(jnp.asarray([10.0, 10.0, 10.0, *range(9, 0, -1)])), 3, rtol=1e-8)
    assert res.status == Status.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.eigenvalues), [10, 10, 10], atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_triple_top_eigenvalue_rotated(seed):
    lam = np.r_[np.full(3, 10.0), np.linspace(0.0, 9.0, 97)]
    A = matrix_with_spectrum(lam, seed=seed)
    res = _run(A, 3, rtol=1e-8, key=jax.random.key(seed))
    assert res.status == Status.CONVERGED, res.message
    _check_result(res, A, "LA", 3, 1e-7)


def _wilkinson_plus(n=21):
    m = (n - 1) // 2
    return np.diag(np.abs(np.arange(n) - m).astype(float)) + np.eye(n, k=1) + np.eye(n, k=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wilkinson_w21_top_pair(seed):
    # the top pair of W21+ is split by ~1e-13: k = 2 must return both copies
    W = _wilkinson_plus()
    res = _run(W, 2, rtol=1e-10, key=jax.random.key(seed))
    assert res.status == Status.CONVERGED, res.message
    theta = _check_result(res, W, "LA", 2, 1e-10)
    np.testing.assert_allclose(theta, np.linalg.eigvalsh(W)[::-1][:2], atol=1e-9)


def test_singular_psd_smallest_are_zero():
    # 100 zero eigenvalues: the 5 smallest are all zero (the single-vector path gave [0, 0, 0, 0.01, ...])
    lam = np.r_[np.zeros(100), np.linspace(0.01, 10.0, 100)]
    A = matrix_with_spectrum(lam, seed=1)
    res = _run(A, 5, "SA")  # default rtol: a zero eigenvalue converges at the rounding floor
    assert res.status == Status.CONVERGED, res.message
    theta = _check_result(res, A, "SA", 5, 1e-10)
    np.testing.assert_allclose(theta, 0.0, atol=1e-10)


def test_singular_psd_with_atol_finds_all_copies():
    # a 5-fold zero eigenvalue, k = 6 smallest with an absolute tolerance
    lam = np.r_[np.zeros(5), np.linspace(1.0, 10.0, 75)]
    A = matrix_with_spectrum(lam, seed=3)
    res = _run(A, 6, "SA", rtol=1e-8, atol=1e-8 * 10.0)
    assert res.status == Status.CONVERGED, res.message
    theta = _check_result(res, A, "SA", 6, 1e-7)
    np.testing.assert_allclose(theta, [0, 0, 0, 0, 0, 1.0], atol=1e-7)


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_clusters(which):
    lam = np.r_[np.linspace(0.0, 1.0, 110), 5.0 + 1e-3 * np.arange(5), -5.0 - 1e-3 * np.arange(5)]
    A = matrix_with_spectrum(lam, seed=4)
    res = _run(A, 5, which, rtol=1e-9)
    assert res.status == Status.CONVERGED, res.message
    _check_result(res, A, which, 5, 1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_multiplicity_larger_than_the_block(seed):
    # a 6-fold top eigenvalue with block_size = 2: the missing-eigenvalue checks must find the copies
    # the first block Krylov space cannot hold, or the status must not be CONVERGED
    lam = np.r_[np.full(6, 4.0), np.linspace(0.0, 3.0, 74)]
    A = matrix_with_spectrum(lam, seed=seed)
    res = _run(A, 6, rtol=1e-8, block_size=2, key=jax.random.key(seed))
    _check_result(res, A, "LA", 6, 1e-7)
    assert res.status == Status.CONVERGED, res.message


# ---------------------------------------------------------------------------
# the block relation of one pass, and rank-deficient blocks
# ---------------------------------------------------------------------------


def _setup_for(A, k, which="LA", b=None, ncv=None):
    a = _check_arguments(DenseOperator(jnp.asarray(A)), k, which, 1e-300, 0.0, 10_000, ncv, None, b)
    setup = _block_lanczos.make_setup(
        a.op.prepare(),
        a.rtol,
        a.atol,
        a.breakdown_tol,
        jnp.int32(_WHICH.index(which)),
        jnp.int32(10_000),
        dtype=A.dtype,
        k=a.k,
        b=a.block_size,
        ncv=a.ncv,
        keep=a.keep,
        max_passes=a.max_passes,
        max_probes=a.max_probes,
    )
    v0 = jax.random.normal(jax.random.key(5), (A.shape[0],), A.dtype)
    return setup, _block_lanczos.initial_state(setup, v0, jax.random.key(6))


def _check_block_relation(A, basis, b, tol):
    """``A V_{:s}^T = V_{:s+b}^T T_{:s+b,:s}`` and orthonormal valid rows; invalid rows are zero."""
    s = int(basis.size)
    V, T = np.asarray(basis.V, np.float64), np.asarray(basis.T, np.float64)
    valid = np.asarray(basis.valid)
    rows = s + b
    scale = np.linalg.norm(A, 2)
    np.testing.assert_allclose(A @ V[:s].T, V[:rows].T @ T[:rows, :s], atol=tol * scale)
    np.testing.assert_allclose(T, T.T, atol=0)
    Vv = V[:rows][valid[:rows]]
    np.testing.assert_allclose(Vv @ Vv.T, np.eye(Vv.shape[0]), atol=tol)
    assert np.all(V[:rows][~valid[:rows]] == 0)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
def test_block_relation_extend_and_compress(dtype, tol):
    lam = np.r_[np.full(3, 7.0), np.linspace(-2.0, 5.0, 77)]
    A = matrix_with_spectrum(lam, seed=2).astype(dtype)
    setup, state = _setup_for(A, 3)
    state = _block_lanczos.extend(setup, state)
    assert setup.ncv % setup.b == 0
    assert int(state.basis.size) == setup.ncv and int(state.num_matvecs) == setup.ncv
    A64 = A.astype(np.float64)
    _check_block_relation(A64, state.basis, setup.b, tol)
    new = _block_lanczos.compress(setup, state)
    assert int(new.basis.size) == setup.keep
    _check_block_relation(A64, new.basis, setup.b, max(tol, 1e-10))
    again = _block_lanczos.extend(setup, new)
    assert int(again.basis.size) == setup.ncv
    _check_block_relation(A64, again.basis, setup.b, max(tol, 1e-10))


def test_block_relation_through_invariant_subspaces_and_exhausted_space():
    # n = 12 with three 4-fold eigenvalues, block 2, basis of 14 rows > n: the block Krylov space is
    # invariant after a few steps (fresh directions continue it), then R^n is exhausted (invalid rows)
    lam = np.repeat([1.0, 2.0, 4.0], 4)
    A = matrix_with_spectrum(lam, seed=3)
    setup, state = _setup_for(A, 5, b=2, ncv=12)
    # no in-pass stop (as after a verification): the estimates of the 6-dimensional invariant block
    # Krylov space are exact, yet it holds only 2 copies of each eigenvalue
    state = _block_lanczos.extend(setup, state._replace(checks=jnp.int32(1)))
    _check_block_relation(A, state.basis, setup.b, 1e-10)
    V = np.asarray(state.basis.V)[np.asarray(state.basis.valid)]
    assert V.shape[0] == 12  # the valid rows span R^12
    res = _run(A, 5, rtol=1e-10, block_size=2)
    assert res.status == Status.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.eigenvalues), [4, 4, 4, 4, 2], atol=1e-10)


@pytest.mark.parametrize("n, k", [(2, 1), (3, 2), (5, 4)])
def test_small_n_and_n_below_the_block(n, k):
    lam = np.arange(1.0, n + 1.0)
    A = matrix_with_spectrum(lam, seed=n)
    for which in ("LA", "SA", "BE"):
        res = _run(A, k, which, rtol=1e-10, block_size=min(n, 8) if n > 2 else None)
        assert res.status == Status.CONVERGED, (n, which, res.message)
        _check_result(res, A, which, k, 1e-9)


def test_n_equals_one_is_refused_clearly():
    with pytest.raises(ValueError, match="k larger than n"):
        eigsh(DenseOperator(jnp.ones((1, 1))), 1)
    with pytest.raises(ValueError, match="block_size must be <= n"):
        eigsh(DenseOperator(jnp.eye(3)), 1, block_size=4)


def test_zero_operator_no_nan():
    res = eigsh(DenseOperator(jnp.zeros((30, 30))), 3)
    assert res.status == Status.CONVERGED, res.message
    np.testing.assert_array_equal(np.asarray(res.eigenvalues), 0.0)
    assert np.all(np.isfinite(np.asarray(res.eigenvectors)))


# ---------------------------------------------------------------------------
# float32, jit, budgets, honesty
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_float32_documented_tolerance(which):
    # float32, rtol = 1e-5: eigenvalues to 1e-5 ||A||, residuals below 1e-5 max(|theta|, ||A||) scale
    lam = np.r_[np.full(2, 10.0), np.linspace(-3.0, 8.0, 98)]
    A = matrix_with_spectrum(lam, seed=0).astype(np.float32)
    res = _run(A, 3, which, rtol=1e-5)
    assert res.eigenvectors.dtype == jnp.float32
    assert res.status == Status.CONVERGED, res.message
    _check_result(res, A, which, 3, 1e-5)


def test_float32_rtol_below_precision_is_not_converged():
    lam = np.linspace(1.0, 10.0, 100)
    A = matrix_with_spectrum(lam, seed=0).astype(np.float32)
    res = _run(A, 3, rtol=1e-10, max_matvecs=600)
    assert res.status in (Status.INACCURATE, Status.MAX_ITERATIONS)


def test_laplacian_1d_converges_with_the_default_budget():
    n = 1000
    main, off = 2.0 * np.ones(n), -np.ones(n - 1)
    L = np.diag(main) + np.diag(off, 1) + np.diag(off, -1)
    res = _run(L, 5)
    assert res.status == Status.CONVERGED, res.message
    ref = 2 - 2 * np.cos(np.pi * np.arange(n, n - 5, -1) / (n + 1))
    np.testing.assert_allclose(np.asarray(res.eigenvalues), ref, rtol=1e-6)


def test_budget_is_respected_and_reported():
    lam = np.r_[np.full(3, 10.0), np.linspace(0.0, 9.99, 97)]
    A = matrix_with_spectrum(lam, seed=1)
    for budget in (14, 40, 80):
        res = _run(A, 3, rtol=1e-12, max_matvecs=budget)
        assert res.num_matvecs <= budget
        assert res.status != Status.CONVERGED or np.allclose(res.eigenvalues, 10.0, atol=1e-10)


def test_under_the_users_jit_with_traced_rtol():
    lam = np.r_[np.full(2, 5.0), np.linspace(0.0, 4.0, 58)]
    A = matrix_with_spectrum(lam, seed=0)
    eager = _run(A, 2, rtol=1e-9)

    @jax.jit
    def top(M, rtol):
        r = eigsh(DenseOperator(M), 2, rtol=rtol)
        return r.eigenvalues, r.status

    vals, status = top(jnp.asarray(A), 1e-9)
    assert int(status) == Status.CONVERGED
    np.testing.assert_allclose(np.asarray(vals), np.asarray(eager.eigenvalues), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vals), [5.0, 5.0], atol=1e-8)


def test_history_recorded_per_pass():
    lam = np.r_[np.full(2, 3.0), np.linspace(0.0, 2.9, 198)]
    A = matrix_with_spectrum(lam, seed=2)
    res = _run(A, 2, rtol=1e-10)
    assert res.status == Status.CONVERGED, res.message
    hist = np.asarray(res.ritz_history)
    done = np.all(np.isfinite(hist), axis=1)
    assert done[0] and done.sum() >= 2
    assert np.all(np.isnan(hist[~done]))

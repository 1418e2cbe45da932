"""Tests for curvlab._lanczos: the Lanczos process, its prefixes and shifts.

References are numpy.linalg.eigh on matrices of prescribed spectrum (tests/reference.py).
float32 tolerances are documented next to each check: orthogonality and the Lanczos relation
hold to ~1e-5 (a few hundred ulps at n ~ 100), eigenvalues to ~1e-4 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._lanczos import _lanczos_jit, _lanczos_loop, _row_blocks, lanczos
from curvlab._operators import DenseOperator, DiagonalOperator, FunctionOperator
from curvlab._status import SolverError, Status
from tests.reference import matrix_with_spectrum

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
    T = np.asarray(res.tridiagonal())
    scale = np.max(np.abs(lam))
    assert np.abs(Q @ Q.T - np.eye(m)).max() < 1e-12
    # A Q^T = Q^T T + beta_m q_{m+1} e_m^T (rows of Q are the Lanczos vectors)
    R = A @ Q.T - Q.T @ T
    R[:, -1] -= float(res.beta[m - 1]) * np.asarray(res.basis[m])
    assert np.abs(R).max() < 1e-12 * scale
    assert np.allclose(T, Q @ A @ Q.T, atol=1e-12 * scale)
    if name == "repeated":  # Krylov space of dimension = number of distinct eigenvalues
        assert res.status == Status.INVARIANT_SUBSPACE and m == 5
    else:
        assert res.status == Status.COMPLETED and m == k
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
    assert int(blocked.status) == Status.COMPLETED
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
    T = np.asarray(res.tridiagonal(), dtype=np.float64)
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
    T = np.asarray(res.tridiagonal())
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
    theta, Y = res.ritz_pairs()
    theta, Y = np.asarray(theta), np.asarray(Y)
    assert Y.shape == (80, 25)
    np.testing.assert_allclose(Y.T @ Y, np.eye(25), atol=1e-12)
    S = np.linalg.eigh(np.asarray(res.tridiagonal()))[1]
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
    assert res.status == Status.INVARIANT_SUBSPACE, res.message
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
    assert plain.status == Status.COMPLETED  # no breakdown although k > n
    Q = np.asarray(plain.basis[:k])
    assert np.abs(Q @ Q.T - np.eye(k)).max() > 0.5
    theta = np.asarray(plain.ritz_history[k - 1])
    assert np.sum(np.abs(theta - 10.0) < 1e-6) >= 2  # ghost copies of a simple eigenvalue

    full = lanczos(op, k, key=jax.random.key(0))
    assert full.status == Status.INVARIANT_SUBSPACE and full.num_steps == n
    theta = np.asarray(full.ritz_history[n - 1, :n])
    assert np.sum(np.abs(theta - 10.0) < 1e-6) == 1
    np.testing.assert_allclose(theta, np.sort(lam), atol=1e-12 * 10)


def test_n_equals_one():
    res = lanczos(DenseOperator(jnp.array([[3.0]])), 4)
    assert res.status == Status.INVARIANT_SUBSPACE and res.num_steps == 1
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
    assert res.status == Status.NONFINITE
    assert res.num_steps == 0
    assert "NaN or infinity" in res.message and not res.converged
    assert res.num_matvecs == 1  # the non-finite product is counted
    with pytest.raises(SolverError, match="lanczos: NONFINITE"):
        lanczos(calls, 5, throw=True)


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
    first = len(traces)
    lanczos(fop, 6, key=jax.random.key(1))
    # the second call traces fn only for the abstract output-shape check (jax.eval_shape), once
    assert len(traces) - first == 1


# ---------------------------------------------------------------------------
# derived results: prefix and shift
# ---------------------------------------------------------------------------


def _assert_same_run(a, b, scale, rtol=1e-12):
    assert a.num_steps == b.num_steps and a.status == b.status and a.num_matvecs == b.num_matvecs
    atol = rtol * scale
    np.testing.assert_allclose(np.asarray(a.alpha), np.asarray(b.alpha), rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(a.beta), np.asarray(b.beta), rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(a.basis), np.asarray(b.basis), rtol=0, atol=1e3 * rtol)
    np.testing.assert_allclose(np.asarray(a.matvec_norms), np.asarray(b.matvec_norms), rtol=0, atol=atol)
    np.testing.assert_allclose(float(a.anorm), float(b.anorm), rtol=0, atol=atol)
    np.testing.assert_allclose(
        np.asarray(a.ritz_history), np.asarray(b.ritz_history), rtol=0, atol=1e2 * atol, equal_nan=True
    )


@pytest.mark.parametrize("name", ["separated", "clustered", "indefinite"])
@pytest.mark.parametrize("k", [1, 7, 30])
def test_prefix_is_the_shorter_run(name, k):
    lam = spectrum(name, 60)
    op, _ = _op(lam, 2)
    long = lanczos(op, 30, key=jax.random.key(4))
    _assert_same_run(long.prefix(k), lanczos(op, k, key=jax.random.key(4)), np.abs(lam).max())


def test_prefix_of_an_invariant_subspace_run_and_refusals():
    op = DenseOperator(jnp.diag(jnp.array([1.0, 2.0, 2.0, 5.0])))  # repeated eigenvalue: 3 steps
    run = lanczos(op, 8)
    assert run.status == Status.INVARIANT_SUBSPACE and run.num_steps == 3
    _assert_same_run(run.prefix(3), lanczos(op, 3), 5.0)
    assert run.prefix(2).status == Status.COMPLETED
    with pytest.raises(ValueError, match="k = 4 exceeds the 3 steps"):
        run.prefix(4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        run.prefix(0)
    with pytest.raises(TypeError, match="k must be an integer"):
        run.prefix(2.0)


@pytest.mark.parametrize("damping", [0.5, -3.0, 1e3])
@pytest.mark.parametrize("name", ["separated", "indefinite", "repeated"])
def test_shifted_equals_a_run_on_the_damped_operator(damping, name):
    lam = spectrum(name, 50)
    op, A = _op(lam, 1)
    run = lanczos(op, 20, key=jax.random.key(3))
    ref = lanczos(DenseOperator(jnp.asarray(A + damping * np.eye(50))), 20, key=jax.random.key(3))
    scale = np.abs(lam).max() + abs(damping)
    _assert_same_run(run.shifted(damping), ref, scale, rtol=1e-11)
    _assert_same_run(
        run.shifted(damping), lanczos(op.damped(damping), 20, key=jax.random.key(3)), scale, 1e-11
    )
    # dense check of the shifted relation: T(A + dI) = Q (A + dI) Q^T
    sh = run.shifted(damping)
    Q = np.asarray(sh.basis[: sh.num_steps])
    np.testing.assert_allclose(
        np.asarray(sh.tridiagonal()), Q @ (A + damping * np.eye(50)) @ Q.T, atol=1e-11 * scale
    )


def test_shifted_invariant_subspace_run_and_n_equals_one():
    op = DenseOperator(jnp.diag(jnp.array([1.0, 2.0, 2.0, 5.0])))
    run = lanczos(op, 8)
    ref = lanczos(DenseOperator(jnp.diag(jnp.array([3.0, 4.0, 4.0, 7.0]))), 8)
    _assert_same_run(run.shifted(2.0), ref, 7.0)
    one = lanczos(DenseOperator(jnp.array([[3.0]])), 2)
    _assert_same_run(one.shifted(-1.0), lanczos(DenseOperator(jnp.array([[2.0]])), 2), 3.0)


def test_shifted_refusals():
    lam = spectrum("separated", 30)
    op, _ = _op(lam, 0)
    with pytest.raises(ValueError, match="not reorthogonalized"):
        lanczos(op, 10, reorthogonalize=False).shifted(1.0)
    nan_op = FunctionOperator(lambda v: v * jnp.nan, 8, jnp.float64)
    with pytest.raises(ValueError, match="non-finite"):
        lanczos(nan_op, 3).shifted(1.0)
    # a coarse breakdown threshold: a large shift raises max ||(A + dI) q|| enough that a fresh run
    # would stop at an earlier step
    coarse = lanczos(op, 3, breakdown_tol=0.05)
    assert coarse.status == Status.COMPLETED
    with pytest.raises(ValueError, match="another step"):
        coarse.shifted(1e3)
    with pytest.raises(ValueError, match="finite"):
        lanczos(op, 3).shifted(np.inf)
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda d: lanczos(op, 3).shifted(d).alpha)(1.0)


# ---------------------------------------------------------------------------
# bad input, jit, throw
# ---------------------------------------------------------------------------


def test_bad_operators_and_start_vectors_raise_clear_errors():
    A = jnp.eye(4)
    with pytest.raises(TypeError, match="complex"):  # refused by the operator or by lanczos
        lanczos(FunctionOperator(lambda v: v, 4, jnp.complex128), 3)
    with pytest.raises(TypeError, match="complex"):
        lanczos(jnp.eye(4, dtype=jnp.complex128), 3)
    with pytest.raises(TypeError, match="lanczos: v0 is complex"):
        lanczos(DenseOperator(A), 3, v0=jnp.ones(4, jnp.complex128))
    with pytest.raises(TypeError, match="lanczos: v0 has dtype int"):
        lanczos(DenseOperator(A), 3, v0=jnp.ones(4, jnp.int32))
    with pytest.raises(ValueError, match="size 0"):
        lanczos(jnp.zeros((0, 0)), 3)
    with pytest.raises(ValueError, match="size 0"):
        lanczos(DiagonalOperator(jnp.zeros(0)), 3)
    with pytest.raises(
        ValueError, match=r"must map a vector of shape \(4,\) to shape \(4,\), but it returned \(3,\)"
    ):
        lanczos(FunctionOperator(lambda v: v[:3], 4, jnp.float64), 3)
    with pytest.raises(TypeError, match="throw must be True or False"):
        lanczos(DenseOperator(A), 3, throw=1)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        lanczos(DenseOperator(A), 3, key=7)


def test_lanczos_under_the_users_jit_and_raw_keys():
    lam = spectrum("separated", 20)
    op, A = _op(lam, 0)
    eager = lanczos(op, 8)
    traced = jax.jit(lambda M: lanczos(DenseOperator(M), 8))(jnp.asarray(A))
    np.testing.assert_allclose(np.asarray(traced.alpha), np.asarray(eager.alpha), rtol=1e-12)
    assert int(traced.status) == Status.COMPLETED and int(traced.num_steps) == 8
    assert traced.converged
    # a raw uint32[2] key is wrapped: the same start vector as the typed key
    raw = lanczos(op, 8, key=jax.random.PRNGKey(5))
    typed = lanczos(op, 8, key=jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(raw.alpha), np.asarray(typed.alpha))
    with pytest.raises(ValueError, match="cannot be traced"):
        jax.jit(lambda M: lanczos(DenseOperator(M), 8, throw=True).alpha)(jnp.asarray(A))
    assert lanczos(op, 8, throw=True).status == Status.COMPLETED

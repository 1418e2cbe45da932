"""Tests for curvlab._cg against dense references on matrices of prescribed spectrum.

Tolerances: float64 checks are tight (solutions to ``10 * kappa * rtol``, identities to ~1e-10);
float32 checks use ``rtol = 1e-5`` and accept a relative solution error of ``1e-3`` for kappa = 100
(float32 CG stagnates near ``kappa * eps32 ~ 1e-5``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._cg import (
    CGResult,
    SteihaugResult,
    _cg_impl,
    cg,
    condition_bound,
    condition_estimate,
    default_maxiter,
    martens_schedule,
    steihaug_cg,
)
from curvlab._operators import DenseOperator, DiagonalOperator, FunctionOperator, LinearOperator
from curvlab._status import SolverError, Status
from tests.reference import matrix_with_spectrum


def spd_problem(n=60, kappa=100.0, seed=0, spectrum="geom", dtype=np.float64):
    lam = np.geomspace(1.0, kappa, n) if spectrum == "geom" else np.linspace(1.0, kappa, n)
    A = matrix_with_spectrum(lam, seed=seed)
    b = np.random.default_rng(seed + 100).standard_normal(n)
    return A.astype(dtype), b.astype(dtype), np.linalg.solve(A, b)


def quad(A, b, x):
    x = np.asarray(x, np.float64)
    return 0.5 * x @ A @ x - b @ x


# ---------------------------------------------------------------------------
# accuracy and history
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kappa", [10.0, 1e3])
@pytest.mark.parametrize("spectrum", ["geom", "lin"])
def test_solution_matches_numpy_solve_float64(seed, kappa, spectrum):
    A, b, xs = spd_problem(80, kappa, seed, spectrum)
    res = cg(DenseOperator(A), b, rtol=1e-10)
    assert res.status is Status.CONVERGED
    assert isinstance(res, CGResult)
    assert np.linalg.norm(res.x - xs) / np.linalg.norm(xs) <= 10 * kappa * 1e-10
    k = int(res.num_iterations)
    assert float(res.residual_norms[k]) <= 1e-10 * np.linalg.norm(b)
    assert float(res.residual_norms[k - 1]) > 1e-10 * np.linalg.norm(b)  # stopped at the first success
    assert np.all(np.isnan(np.asarray(res.residual_norms[k + 1 :])))
    assert np.all(np.isfinite(np.asarray(res.residual_norms[: k + 1])))


def test_solution_float32():
    A, b, xs = spd_problem(50, 100.0, 3)
    res = cg(jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32), rtol=1e-5)
    assert res.x.dtype == jnp.float32
    assert res.residual_norms.dtype == jnp.float32
    assert res.status is Status.CONVERGED
    assert np.linalg.norm(np.asarray(res.x, np.float64) - xs) / np.linalg.norm(xs) < 1e-3


def test_accepts_array_and_jax_scipy_agreement():
    A, b, _ = spd_problem(60, 300.0, 2)
    x0 = np.random.default_rng(5).standard_normal(60)
    res = cg(A, b, x0=x0, rtol=1e-9)
    ref, _ = jax.scipy.sparse.linalg.cg(
        lambda v: jnp.asarray(A) @ v, jnp.asarray(b), x0=jnp.asarray(x0), tol=1e-9
    )
    np.testing.assert_allclose(res.x, ref, rtol=0, atol=1e-7 * np.linalg.norm(ref))
    # same iterates: with a fixed number of iterations and no stopping, the two agree to rounding
    res5 = cg(A, b, x0=x0, rtol=0.0, maxiter=5)
    ref5, _ = jax.scipy.sparse.linalg.cg(
        lambda v: jnp.asarray(A) @ v, jnp.asarray(b), x0=jnp.asarray(x0), tol=0.0, maxiter=5
    )
    np.testing.assert_allclose(res5.x, ref5, rtol=1e-10, atol=1e-12)
    # preconditioned
    d = 1.0 / np.diag(A)
    resp = cg(A, b, preconditioner=d, rtol=0.0, maxiter=7)
    refp, _ = jax.scipy.sparse.linalg.cg(
        lambda v: jnp.asarray(A) @ v, jnp.asarray(b), M=lambda r: jnp.asarray(d) * r, tol=0.0, maxiter=7
    )
    np.testing.assert_allclose(resp.x, refp, rtol=1e-10, atol=1e-12)


def test_residual_history_matches_true_residuals():
    A, b, _ = spd_problem(40, 50.0, 4)
    x0 = np.random.default_rng(1).standard_normal(40)
    full = cg(A, b, x0=x0, rtol=1e-12)
    assert float(full.residual_norms[0]) == pytest.approx(np.linalg.norm(b - A @ x0), rel=1e-12)
    # running j steps reproduces the first j iterates of the full run (same deterministic arithmetic)
    for j in (2, 11):
        part = cg(A, b, x0=x0, rtol=0.0, maxiter=j)
        assert part.status is Status.MAX_ITERATIONS and int(part.num_iterations) == j
        true = np.linalg.norm(b - A @ np.asarray(part.x))
        assert float(full.residual_norms[j]) == pytest.approx(true, rel=1e-8)
        np.testing.assert_allclose(part.residual_norms[: j + 1], full.residual_norms[: j + 1], rtol=1e-12)
    k = int(full.num_iterations)
    assert float(full.residual_norms[k]) == pytest.approx(
        np.linalg.norm(b - A @ np.asarray(full.x)), abs=1e-11
    )


def test_quadratic_values_match_dense_and_decrease():
    A, b, xs = spd_problem(50, 200.0, 6)
    x0 = np.random.default_rng(2).standard_normal(50)
    res = cg(A, b, x0=x0, rtol=1e-10, save_iterates=True)
    k = int(res.num_iterations)
    q = np.asarray(res.quadratic_values)
    assert q[0] == pytest.approx(quad(A, b, x0), rel=1e-12)
    assert q[k] == pytest.approx(quad(A, b, res.x), rel=1e-10)
    assert q[k] == pytest.approx(quad(A, b, xs), rel=1e-10)
    assert np.all(np.diff(q[: k + 1]) < 1e-12 * abs(q[k]))
    assert np.all(np.isnan(q[k + 1 :]))


@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("kappa", [100.0, 1e4])
def test_anorm_error_decreases_monotonically(kappa, preconditioned):
    A, b, xs = spd_problem(100, kappa, 7)
    P = 1.0 / np.diag(A) if preconditioned else None
    res = cg(A, b, rtol=1e-10, x_true=xs, preconditioner=P)
    k = int(res.num_iterations)
    e = np.asarray(res.anorm_errors[: k + 1])
    dense = np.sqrt((np.asarray(res.x) - xs) @ A @ (np.asarray(res.x) - xs))
    assert e[0] == pytest.approx(np.sqrt(xs @ A @ xs), rel=1e-12)
    assert e[k] == pytest.approx(dense, rel=1e-6, abs=1e-13)
    assert np.all(np.diff(e) < 0)
    # without x_true: NaN (no extra matvec)
    assert np.all(np.isnan(np.asarray(cg(A, b, rtol=1e-10).anorm_errors)))


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1e3, 1e4])
@pytest.mark.parametrize("spectrum", ["geom", "lin"])
def test_iteration_counts_within_kappa_bound(kappa, spectrum):
    rtol = 1e-6
    A, b, xs = spd_problem(200, kappa, 8, spectrum)
    res = cg(A, b, rtol=rtol, x_true=xs, maxiter=2000)
    assert res.status is Status.CONVERGED
    # the theorem: ||e_k||_A / ||e_0||_A <= 2 ((sqrt(k)-1)/(sqrt(k)+1))^k
    e = np.asarray(res.anorm_errors)
    k = int(res.num_iterations)
    bound = np.asarray(condition_bound(kappa, np.arange(k + 1)))
    assert np.all(e[: k + 1] / e[0] <= bound * (1 + 1e-8))
    k_anorm = int(np.argmax(e / e[0] <= rtol))
    assert k_anorm <= math.ceil(math.sqrt(kappa) / 2 * math.log(2 / rtol)) + 2
    # residual: ||r_k|| / ||r_0|| <= sqrt(kappa) ||e_k||_A / ||e_0||_A
    assert k <= math.ceil(math.sqrt(kappa) / 2 * math.log(2 * math.sqrt(kappa) / rtol)) + 2


def test_condition_bound():
    k = np.arange(6)
    expected = 2 * ((np.sqrt(50.0) - 1) / (np.sqrt(50.0) + 1)) ** k
    np.testing.assert_allclose(condition_bound(50.0, k), expected, rtol=1e-12)
    np.testing.assert_allclose(condition_bound(np.array([1.0, 4.0]), 1), [0.0, 2.0 / 3.0], rtol=1e-12)
    np.testing.assert_allclose(condition_bound(condition_number=4.0, num_iterations=2), 2.0 / 9.0, rtol=1e-12)
    with pytest.raises(ValueError, match="condition_number must be >= 1"):
        condition_bound(0.5, 3)
    with pytest.raises(ValueError, match="condition_number must be >= 1"):
        condition_bound(np.nan, 3)
    with pytest.raises(ValueError, match="num_iterations must be >= 0"):
        condition_bound(2.0, -1)


# ---------------------------------------------------------------------------
# preconditioning and Lanczos
# ---------------------------------------------------------------------------


def test_jacobi_pcg_beats_cg_on_badly_scaled_problem():
    from curvlab.preconditioners import jacobi

    n = 100
    A0, b, _ = spd_problem(n, 10.0, 9)
    D = 10.0 ** np.random.default_rng(3).uniform(-3, 3, n)  # log-uniform over 6 decades
    A = D[:, None] * A0 * D[None, :]
    xs = np.linalg.solve(A, b)
    op = DenseOperator(A)
    plain = cg(op, b, rtol=1e-8, maxiter=1000)
    pcg = cg(op, b, rtol=1e-8, maxiter=1000, preconditioner=jacobi(op))
    assert pcg.status is Status.CONVERGED
    assert int(pcg.num_iterations) <= 60
    assert int(plain.num_iterations) > 5 * int(pcg.num_iterations)
    np.testing.assert_allclose(A @ np.asarray(pcg.x), b, atol=1e-7 * np.linalg.norm(b))
    assert np.linalg.norm(np.asarray(pcg.x) - xs) <= np.linalg.norm(np.asarray(plain.x) - xs)


def test_callable_preconditioner_equals_diagonal_operator():
    A, b, _ = spd_problem(40, 1e3, 10)
    d = jnp.asarray(1.0 / np.diag(A))

    def apply(r):
        return d * r

    r1 = cg(A, b, rtol=1e-10, preconditioner=apply)
    r2 = cg(A, b, rtol=1e-10, preconditioner=DiagonalOperator(d))
    np.testing.assert_allclose(r1.x, r2.x, rtol=1e-12)
    assert int(r1.num_iterations) == int(r2.num_iterations)


@pytest.mark.parametrize("spectrum", ["geom", "lin"])
def test_condition_estimate_from_lanczos_coefficients(spectrum):
    kappa = 1e3
    lam = np.geomspace(2.0, 2.0 * kappa, 100) if spectrum == "geom" else np.linspace(2.0, 2.0 * kappa, 100)
    A = matrix_with_spectrum(lam, seed=11)
    b = np.random.default_rng(0).standard_normal(100)
    res = cg(A, b, rtol=1e-10)
    est = condition_estimate(res)
    assert est.max_eigenvalue == pytest.approx(lam[-1], rel=1e-3)
    assert est.min_eigenvalue == pytest.approx(lam[0], rel=0.1)
    assert est.condition_number == pytest.approx(kappa, rel=0.1)
    assert est.condition_number <= kappa * (1 + 1e-8)  # Ritz values lie inside the spectrum


def test_lanczos_coefficients_are_ritz_values_of_krylov_space():
    # T_k from CG has the eigenvalues of the Rayleigh-Ritz projection on K_k(A, r0)
    A, b, _ = spd_problem(30, 20.0, 12)
    k = 6
    res = cg(A, b, rtol=0.0, maxiter=k)
    a = np.asarray(res.lanczos_alpha[:k])
    e = np.asarray(res.lanczos_beta[: k - 1])
    T = np.diag(a) + np.diag(e, 1) + np.diag(e, -1)
    K = np.stack([np.linalg.matrix_power(A, j) @ b for j in range(k)], axis=1)
    Q, _ = np.linalg.qr(K)
    np.testing.assert_allclose(np.linalg.eigvalsh(T), np.linalg.eigvalsh(Q.T @ A @ Q), rtol=1e-8)
    # T_1 = Rayleigh quotient of b
    assert a[0] == pytest.approx(b @ A @ b / (b @ b), rel=1e-12)
    assert np.all(np.isnan(np.asarray(res.lanczos_alpha[k:])))


def test_preconditioned_condition_estimate():
    A, b, _ = spd_problem(60, 50.0, 13)
    D = 10.0 ** np.random.default_rng(4).uniform(-2, 2, 60)
    A = D[:, None] * A * D[None, :]
    d = 1.0 / np.diag(A)
    res = cg(A, b, rtol=1e-11, preconditioner=d)
    w = np.linalg.eigvalsh(np.sqrt(d)[:, None] * A * np.sqrt(d)[None, :])
    est = condition_estimate(res)
    assert est.condition_number == pytest.approx(w[-1] / w[0], rel=0.1)


# ---------------------------------------------------------------------------
# statuses
# ---------------------------------------------------------------------------


def test_negative_curvature_on_indefinite_matrix():
    lam = np.concatenate([[-1.0, -0.5], np.linspace(1.0, 10.0, 38)])
    A = matrix_with_spectrum(lam, seed=14)
    b = np.random.default_rng(0).standard_normal(40)
    res = cg(A, b, rtol=1e-10)
    assert res.status is Status.NEGATIVE_CURVATURE
    assert "not positive definite" in res.message
    p = np.asarray(res.negative_curvature_direction)
    assert np.linalg.norm(p) > 0
    assert p @ A @ p <= 0
    assert float(res.curvature) == pytest.approx(p @ A @ p / (p @ p), rel=1e-8)
    assert np.all(np.isfinite(np.asarray(res.x)))
    k = int(res.num_iterations)
    # the returned x is the last accepted iterate: its q matches the history
    assert float(res.quadratic_values[k]) == pytest.approx(quad(A, b, res.x), rel=1e-8)
    with pytest.raises(SolverError, match="not positive definite") as err:
        cg(A, b, rtol=1e-10, throw=True)
    assert err.value.status is Status.NEGATIVE_CURVATURE


def test_negative_definite_stops_at_once():
    b = np.arange(1.0, 6.0)
    x0 = np.ones(5)
    res = cg(-2.0 * np.eye(5), b, x0=x0)
    assert res.status is Status.NEGATIVE_CURVATURE
    assert int(res.num_iterations) == 0
    np.testing.assert_array_equal(res.x, x0)
    r0 = b + 2.0 * x0
    np.testing.assert_allclose(res.negative_curvature_direction, r0)
    assert float(res.curvature) == pytest.approx(-2.0)


def test_positive_definite_has_zero_direction():
    A, b, _ = spd_problem(20, 10.0, 0)
    res = cg(A, b)
    np.testing.assert_array_equal(res.negative_curvature_direction, np.zeros(20))
    assert np.isnan(float(res.curvature))


def test_nonfinite_operator():
    A, b, _ = spd_problem(20, 10.0, 15)
    Aj = jnp.asarray(A)
    res = cg(FunctionOperator(lambda v: jnp.full_like(v, jnp.nan), 20), b)
    assert res.status is Status.NONFINITE
    assert "NaN" in res.message
    assert int(res.num_iterations) == 0
    np.testing.assert_array_equal(res.x, np.zeros(20))

    # NaN appears mid-run, once the search direction has become small
    thresh = 1e-3 * np.linalg.norm(b)

    def flaky(v):
        nv = jnp.linalg.norm(v)
        return jnp.where((nv < thresh) & (nv > 0), jnp.nan, Aj @ v)  # the first product is A @ 0

    res = cg(FunctionOperator(flaky, 20), b, rtol=1e-14, maxiter=200)
    assert res.status is Status.NONFINITE
    k = int(res.num_iterations)
    assert k > 0
    assert np.all(np.isfinite(np.asarray(res.x)))
    clean = cg(A, b, rtol=0.0, maxiter=k)
    np.testing.assert_allclose(res.x, clean.x, rtol=1e-12)
    assert np.all(np.isnan(np.asarray(res.residual_norms[k + 1 :])))


def test_nonfinite_preconditioner_and_breakdown():
    A, b, _ = spd_problem(20, 10.0, 16)
    res = cg(A, b, preconditioner=lambda r: r * jnp.inf)
    assert res.status is Status.NONFINITE and int(res.num_iterations) == 0
    res = cg(A, b, preconditioner=-np.ones(20))  # negative definite preconditioner
    assert res.status is Status.INDEFINITE_PRECONDITIONER
    assert "preconditioner" in res.message


def test_max_iterations_status_and_throw():
    A, b, _ = spd_problem(50, 1e4, 17)
    res = cg(A, b, maxiter=3)
    assert res.status is Status.MAX_ITERATIONS
    assert res.residual_norms.shape == (4,)
    assert "maxiter" in res.message and "3 iterations" in res.message
    assert not res.converged
    with pytest.raises(SolverError, match="cg: MAX_ITERATIONS"):
        cg(A, b, maxiter=3, throw=True)
    assert res.status == Status.MAX_ITERATIONS and isinstance(res.status, Status)


# ---------------------------------------------------------------------------
# Martens stop rule and saved iterates
# ---------------------------------------------------------------------------


def test_martens_stop_rule_stops_earlier():
    A, b, _ = spd_problem(200, 1e4, 18)
    eps = 5e-4
    resid = cg(A, b, rtol=1e-10, maxiter=1000)
    mart = cg(A, b, rtol=1e-10, maxiter=1000, stop_rule="martens", martens_eps=eps)
    assert mart.status is Status.RELATIVE_PROGRESS
    assert mart.converged
    km, kr = int(mart.num_iterations), int(resid.num_iterations)
    assert km < kr
    q = np.asarray(mart.quadratic_values)
    assert np.all(np.diff(q[: km + 1]) < 0)  # q still decreasing when it stopped

    def stop(i):
        gap = max(10, math.ceil(0.1 * i))
        return i > gap and q[i] < 0 and (q[i] - q[i - gap]) / q[i] < gap * eps

    assert stop(km)
    assert not any(stop(i) for i in range(1, km))
    # identical iterates up to the stop
    np.testing.assert_allclose(mart.residual_norms[: km + 1], resid.residual_norms[: km + 1], rtol=1e-12)


def test_saved_iterates_geometric_schedule():
    A, b, _ = spd_problem(60, 1e3, 19)
    x0 = np.random.default_rng(3).standard_normal(60)
    res = cg(A, b, x0=x0, maxiter=80, rtol=1e-10, stop_rule="martens", save_iterates=True)
    sched = np.asarray(res.saved_iterations)
    expected = sorted({math.ceil(1.3**j - 1e-12) for j in range(40) if math.ceil(1.3**j - 1e-12) <= 80})
    np.testing.assert_array_equal(sched, expected)
    np.testing.assert_array_equal(martens_schedule(80), expected)
    assert res.saved_iterates.shape == (len(expected), 60)
    k = int(res.num_iterations)
    q = np.asarray(res.quadratic_values)
    assert sched[-1] > k  # some rows are never reached
    for row, it in zip(np.asarray(res.saved_iterates), sched):
        if it <= k:
            assert quad(A, b, row) == pytest.approx(q[it], rel=1e-9)
        else:
            assert np.all(np.isnan(row))
    # a saved row equals a run stopped at that iteration
    i = int(np.searchsorted(sched, 20))
    np.testing.assert_allclose(
        res.saved_iterates[i], cg(A, b, x0=x0, maxiter=int(sched[i]), rtol=0.0).x, rtol=1e-10
    )
    assert cg(A, b).saved_iterates.shape == (0, 60)


# ---------------------------------------------------------------------------
# Steihaug
# ---------------------------------------------------------------------------


def test_steihaug_boundary_when_radius_small():
    A, b, xs = spd_problem(50, 100.0, 20)
    radius = 0.1 * np.linalg.norm(xs)
    res = steihaug_cg(A, b, radius, rtol=1e-10)
    assert res.status is Status.TRUST_REGION_BOUNDARY
    p = np.asarray(res.x)
    assert np.linalg.norm(p) == pytest.approx(radius, rel=1e-10)
    assert float(res.step_norm) == pytest.approx(radius, rel=1e-10)
    assert float(res.predicted_reduction) == pytest.approx(-quad(A, b, p), rel=1e-10)
    # at least the Cauchy decrease (Steihaug's iterates decrease m, and the first is the Cauchy point)
    g = -b
    tc = min(radius / np.linalg.norm(g), (g @ g) / (g @ A @ g))
    assert quad(A, b, p) <= quad(A, b, -tc * g) + 1e-12


def test_steihaug_interior_equals_solve():
    A, b, xs = spd_problem(50, 100.0, 21)
    res = steihaug_cg(A, b, 10 * np.linalg.norm(xs), rtol=1e-10)
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(res.x, xs, rtol=0, atol=1e-7 * np.linalg.norm(xs))
    assert float(res.predicted_reduction) == pytest.approx(-quad(A, b, xs), rel=1e-10)
    k = int(res.num_iterations)
    assert float(res.residual_norms[k]) <= 1e-10 * np.linalg.norm(b)
    assert float(res.residual_norms[0]) == pytest.approx(np.linalg.norm(b))


def test_steihaug_negative_curvature_goes_to_boundary():
    lam = np.concatenate([[-3.0], np.linspace(1.0, 5.0, 29)])
    A = matrix_with_spectrum(lam, seed=22)
    b = np.random.default_rng(1).standard_normal(30)
    radius = 1e3  # large: only negative curvature can stop it
    res = steihaug_cg(A, b, radius)
    assert res.status is Status.NEGATIVE_CURVATURE
    p = np.asarray(res.x)
    assert np.linalg.norm(p) == pytest.approx(radius, rel=1e-10)
    assert float(res.predicted_reduction) == pytest.approx(-quad(A, b, p), rel=1e-8)
    assert float(res.predicted_reduction) > 0
    # first direction already negative: goes along b
    res = steihaug_cg(-np.eye(4), np.array([1.0, 2.0, 2.0, 0.0]), 6.0)
    assert res.status is Status.NEGATIVE_CURVATURE
    np.testing.assert_allclose(res.x, [2.0, 4.0, 4.0, 0.0], rtol=1e-12)


def test_steihaug_preconditioned_norm():
    A, b, xs = spd_problem(40, 100.0, 23)
    d = 1.0 / np.diag(A) * np.random.default_rng(0).uniform(0.5, 2.0, 40)
    Minv = np.diag(1.0 / d)  # P^{-1}
    normM = lambda p: np.sqrt(p @ Minv @ p)  # noqa: E731
    radius = 0.2 * normM(xs)
    res = steihaug_cg(A, b, radius, preconditioner=d, rtol=1e-10)
    assert res.status is Status.TRUST_REGION_BOUNDARY
    assert normM(np.asarray(res.x)) == pytest.approx(radius, rel=1e-8)
    assert float(res.step_norm) == pytest.approx(radius, rel=1e-8)
    res = steihaug_cg(A, b, 10 * normM(xs), preconditioner=d, rtol=1e-10)
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(res.x, xs, atol=1e-7 * np.linalg.norm(xs))


def test_steihaug_float32_and_validation():
    A, b, xs = spd_problem(30, 50.0, 24)
    radius = 0.3 * np.linalg.norm(xs)
    res = steihaug_cg(jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32), radius)
    assert res.status is Status.TRUST_REGION_BOUNDARY
    assert float(jnp.linalg.norm(res.x)) == pytest.approx(radius, rel=1e-5)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="radius"):
            steihaug_cg(A, b, bad)
    with pytest.raises(ValueError, match="b must"):
        steihaug_cg(A, b[:-1], 1.0)


# ---------------------------------------------------------------------------
# edge cases, validation, compilation
# ---------------------------------------------------------------------------


def test_n_equals_one():
    res = cg(np.array([[4.0]]), np.array([2.0]))
    assert res.status is Status.CONVERGED
    assert float(res.x[0]) == pytest.approx(0.5)
    assert int(res.num_iterations) == 1
    assert default_maxiter(1) == 10


def test_zero_rhs_and_exact_start():
    A, b, xs = spd_problem(30, 10.0, 25)
    res = cg(A, np.zeros(30))
    assert res.status is Status.CONVERGED and int(res.num_iterations) == 0
    np.testing.assert_array_equal(res.x, np.zeros(30))
    res = cg(A, np.zeros(30), x0=np.ones(30))
    np.testing.assert_array_equal(res.x, np.zeros(30))
    assert int(res.num_iterations) == 0
    res = cg(A, b, x0=xs, rtol=1e-8)
    assert res.status is Status.CONVERGED and int(res.num_iterations) == 0
    np.testing.assert_array_equal(res.x, xs)
    res = cg(A, b, maxiter=0)
    assert res.status is Status.MAX_ITERATIONS and res.residual_norms.shape == (1,)


def test_input_validation():
    A, b, _ = spd_problem(10, 10.0, 26)
    with pytest.raises(ValueError, match="b must be a 1-D array of length n = 10"):
        cg(A, b[:, None])
    with pytest.raises(ValueError, match="b must"):
        cg(A, b[:5])
    with pytest.raises(ValueError, match="b contains non-finite"):
        cg(A, np.where(np.arange(10) == 3, np.nan, b))
    with pytest.raises(ValueError, match="rtol"):
        cg(A, b, rtol=-1e-3)
    with pytest.raises(ValueError, match="atol"):
        cg(A, b, atol=-1.0)
    with pytest.raises(ValueError, match="x0 must"):
        cg(A, b, x0=np.ones(3))
    with pytest.raises(ValueError, match="maxiter"):
        cg(A, b, maxiter=-1)
    with pytest.raises(TypeError, match="maxiter"):
        cg(A, b, maxiter=2.5)
    with pytest.raises(ValueError, match="stop_rule"):
        cg(A, b, stop_rule="bogus")
    with pytest.raises(ValueError, match="preconditioner"):
        cg(A, b, preconditioner=np.ones(3))
    with pytest.raises(
        ValueError, match=r"the operator's matvec must map a vector of shape \(10,\) to shape"
    ):
        cg(FunctionOperator(lambda v: v[:5], 10), b)
    with pytest.raises(ValueError, match=r"the operator's matvec must map a vector of shape \(10,\)"):
        cg(A, b, preconditioner=lambda r: r[:5])
    with pytest.raises(ValueError, match="the operator's matvec must map"):
        steihaug_cg(FunctionOperator(lambda v: jnp.concatenate([v, v]), 10), b, 1.0)


def test_no_recompilation_on_second_call():
    traces = []

    def mv(v):
        traces.append(1)
        return 3.0 * v

    op = FunctionOperator(mv, 25)
    cg(op, jnp.ones(25), rtol=1e-8)
    n_traces, cache = len(traces), _cg_impl._cache_size()
    cg(op, 2.0 * jnp.ones(25), rtol=1e-6, atol=1e-9)  # new data and tolerances: no retrace
    A1, b1, _ = spd_problem(25, 10.0, 1)
    A2, b2, _ = spd_problem(25, 100.0, 2)
    cg(DenseOperator(A1), b1)
    cache2 = _cg_impl._cache_size()
    cg(DenseOperator(A2), b2)
    assert len(traces) == n_traces
    assert cache2 == cache + 1
    assert _cg_impl._cache_size() == cache2
    cg(DenseOperator(A2), b2, x0=b1)  # a warm start is a new signature: one more compile, then none
    cg(DenseOperator(A1), b1, x0=b2)
    assert _cg_impl._cache_size() == cache2 + 1


@pytest.mark.parametrize("warm", [False, True])
def test_cold_start_spends_no_matvec_on_the_initial_residual(warm):
    calls = []

    def mv(v):
        jax.debug.callback(lambda: calls.append(1))
        return 3.0 * v

    b = jnp.arange(1.0, 11.0)
    res = cg(FunctionOperator(mv, 10), b, x0=jnp.ones(10) if warm else None, rtol=1e-12, maxiter=4)
    jax.effects_barrier()
    assert len(calls) == int(res.num_iterations) + int(warm)
    assert int(res.num_matvecs) == len(calls)
    np.testing.assert_allclose(res.x, b / 3.0, rtol=1e-10)


def test_cg_inside_jit_returns_the_status_code():
    A, b, xs = spd_problem(20, 10.0, 27)

    @jax.jit
    def solve(A, b):
        res = cg(DenseOperator(A), b, rtol=1e-10)
        assert not isinstance(res.status, Status)  # traced: the int32 code
        return res

    res = solve(jnp.asarray(A), jnp.asarray(b))
    np.testing.assert_allclose(res.x, xs, rtol=1e-7)
    assert Status(int(res.status)) is Status.CONVERGED
    assert bool(res.converged)
    assert res.message.startswith("converged")


# ---------------------------------------------------------------------------
# the shared status table, throw, matvec counts, tags, bad input
# ---------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class _TaggedDense(LinearOperator):
    """A dense operator carrying ``tags`` (as curvlab's operators do), built here so the test does not
    depend on which operators carry which tags."""

    def __init__(self, A, tags):
        self.A, self._tags = jnp.asarray(A), frozenset(tags)

    tags = property(lambda self: self._tags)
    size = property(lambda self: self.A.shape[0])
    shape = property(lambda self: self.A.shape)
    dtype = property(lambda self: self.A.dtype)

    def matvec(self, v):
        return self.A @ v

    def prepare(self):
        return self.matvec

    def tree_flatten(self):
        return (self.A,), self._tags

    @classmethod
    def tree_unflatten(cls, tags, children):
        return cls(children[0], tags)


def test_results_carry_the_shared_status_table():
    A, b, _ = spd_problem(20, 10.0, 30)
    res = cg(A, b, rtol=1e-10)
    assert type(res.status) is Status and res.status.name == "CONVERGED" and res.converged is True
    assert res.message == f"{Status.CONVERGED.message} (after {int(res.num_iterations)} iterations)"
    st = steihaug_cg(A, b, 1e-3)
    assert isinstance(st, SteihaugResult) and type(st.status) is Status
    assert st.status is Status.TRUST_REGION_BOUNDARY and st.converged is True
    assert st.message.startswith(Status.TRUST_REGION_BOUNDARY.message)
    assert not hasattr(res, "status_enum") and not hasattr(st, "status_enum")


def test_num_matvecs_counts_every_product():
    A, b, xs = spd_problem(30, 50.0, 31)
    res = cg(A, b, rtol=1e-10)
    assert int(res.num_matvecs) == int(res.num_iterations)
    res = cg(A, b, x0=np.ones(30), rtol=1e-10)
    assert int(res.num_matvecs) == int(res.num_iterations) + 1
    res = cg(A, b, rtol=1e-10, x_true=xs)  # one more per iterate, the first included
    assert int(res.num_matvecs) == 2 * int(res.num_iterations) + 1
    # the pass that finds negative curvature costs a product but is not an accepted step
    res = cg(-np.eye(4), np.ones(4))
    assert int(res.num_iterations) == 0 and int(res.num_matvecs) == 1
    st = steihaug_cg(A, b, 10 * np.linalg.norm(xs), rtol=1e-10)
    assert st.status is Status.CONVERGED and int(st.num_matvecs) == int(st.num_iterations)


def test_throw_through_the_shared_helper():
    A, b, _ = spd_problem(30, 1e4, 32)
    assert cg(A, b, rtol=1e-8, throw=True).status is Status.CONVERGED  # success: no raise
    with pytest.raises(SolverError) as err:
        cg(A, b, maxiter=2, throw=True)
    assert err.value.solver == "cg" and err.value.status is Status.MAX_ITERATIONS
    with pytest.raises(TypeError, match="throw must be True or False"):
        cg(A, b, throw="yes")
    # steihaug: a boundary step along negative curvature solves the subproblem, a budget cut does not
    lam = np.concatenate([[-3.0], np.linspace(1.0, 5.0, 19)])
    B = matrix_with_spectrum(lam, seed=33)
    g = np.random.default_rng(2).standard_normal(20)
    assert steihaug_cg(B, g, 1e3, throw=True).status is Status.NEGATIVE_CURVATURE
    with pytest.raises(SolverError, match="steihaug_cg: MAX_ITERATIONS"):
        steihaug_cg(A, b, 1e6, maxiter=2, throw=True)
    with pytest.raises(TypeError, match="throw"):
        steihaug_cg(A, b, 1.0, throw=1)


def test_throw_under_the_users_jit_is_a_clear_error():
    A, b, _ = spd_problem(10, 10.0, 34)
    with pytest.raises(ValueError, match=r"cg\(throw=True\) cannot be traced"):
        jax.jit(lambda b: cg(A, b, throw=True).x)(jnp.asarray(b))
    with pytest.raises(ValueError, match=r"steihaug_cg\(throw=True\) cannot be traced"):
        jax.jit(lambda b: steihaug_cg(A, b, 1.0, throw=True).x)(jnp.asarray(b))
    # with throw=False the traced result is fine, and converged is a traced boolean
    ok = jax.jit(lambda b: cg(A, b, rtol=1e-10).converged)(jnp.asarray(b))
    assert bool(ok)


def test_negative_curvature_message_names_the_psd_tag():
    lam = np.concatenate([[-1.0], np.linspace(1.0, 10.0, 19)])
    A = matrix_with_spectrum(lam, seed=35)
    b = np.random.default_rng(3).standard_normal(20)
    res = cg(_TaggedDense(A, {"symmetric"}), b, rtol=1e-10)
    assert res.status is Status.NEGATIVE_CURVATURE
    assert res.message.startswith(Status.NEGATIVE_CURVATURE.message)
    assert "not tagged positive semidefinite" in res.message
    assert "not tagged positive semidefinite" in cg(A, b, rtol=1e-10).message  # an untagged array
    # a PSD-tagged singular operator with b outside its range: a null-space direction, said so
    S = _TaggedDense(np.diag([1.0, 2.0, 0.0]), {"symmetric", "psd"})
    res = cg(S, np.array([1.0, 1.0, 1.0]), rtol=1e-12)
    assert res.status is Status.NEGATIVE_CURVATURE
    assert "tagged positive semidefinite" in res.message and "not tagged" not in res.message
    assert "null space" in res.message
    diag = DiagonalOperator(jnp.array([1.0, 2.0, 0.0]))  # curvlab's own tag: a nonnegative diagonal is PSD
    assert "psd" in diag.tags
    res = cg(diag, np.array([1.0, 1.0, 1.0]), rtol=1e-12)
    assert res.status is Status.NEGATIVE_CURVATURE and "is tagged positive semidefinite" in res.message
    # the tag only words the message: other statuses read as the table says
    ok = cg(_TaggedDense(np.eye(3), {"symmetric"}), np.ones(3))
    assert ok.message == f"{Status.CONVERGED.message} (after 1 iterations)"


def test_repeated_eigenvalues_converge_in_as_many_steps_as_distinct_values():
    lam = np.repeat([1.0, 5.0, 10.0], 20)
    A = matrix_with_spectrum(lam, seed=36)
    b = np.random.default_rng(4).standard_normal(60)
    res = cg(A, b, rtol=1e-10)
    assert res.status is Status.CONVERGED and int(res.num_iterations) == 3
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-9)


def test_singular_psd_operator_with_consistent_rhs_gives_the_minimum_norm_solution():
    lam = np.concatenate([[0.0, 0.0], np.linspace(1.0, 20.0, 28)])
    A = matrix_with_spectrum(lam, seed=37)
    b = A @ np.random.default_rng(5).standard_normal(30)  # in the range of A
    res = cg(A, b, rtol=1e-10)
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(res.x, np.linalg.pinv(A) @ b, atol=1e-8 * np.linalg.norm(res.x))


@pytest.mark.parametrize("where", ["b", "x0", "x_true"])
def test_complex_and_integer_vectors_are_refused(where):
    A, b, _ = spd_problem(6, 10.0, 38)
    kw = {"b": b}
    kw[where] = b + 1j * b
    with pytest.raises(TypeError, match=rf"{where} is complex"):
        cg(A, **kw)
    kw[where] = np.arange(6)
    with pytest.raises(TypeError, match=rf"{where} has dtype int.*floating-point"):
        cg(A, **kw)


def test_complex_operator_and_preconditioner_are_refused():
    A, b, _ = spd_problem(6, 10.0, 39)
    H = A + 1j * np.triu(np.ones((6, 6)), 1) - 1j * np.tril(np.ones((6, 6)), -1)  # Hermitian
    with pytest.raises(TypeError, match="op is complex"):
        cg(jnp.asarray(H), b)  # a matrix
    with pytest.raises(TypeError, match="op is complex"):
        cg(_TaggedDense(H, {"symmetric"}), b)  # an operator whose dtype is complex
    with pytest.raises(TypeError, match="op is complex"):
        steihaug_cg(H, b, 1.0)
    with pytest.raises(TypeError, match="preconditioner is complex"):
        cg(A, b, preconditioner=np.ones(6) + 1j)
    with pytest.raises(TypeError, match="complex"):  # a callable whose output is complex, found abstractly
        cg(A, b, preconditioner=lambda r: r * (1 + 1j))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("plain", (75, 75, Status.CONVERGED)),
        ("warm", (75, 76, Status.CONVERGED)),
        ("jacobi_x_true", (70, 141, Status.CONVERGED)),
        ("martens", (33, 33, Status.RELATIVE_PROGRESS)),
        ("martens_warm", (30, 31, Status.MAX_ITERATIONS)),
    ],
)
def test_iteration_and_matvec_counts_are_pinned(case, expected):
    """Counts recorded before CG was split into named phases (init / iteration / stopping tests /
    history): the same problem gives the same iterations, matvecs and status, and the solution."""
    A = matrix_with_spectrum(np.geomspace(1.0, 1e3, 40), seed=0)
    b = np.random.default_rng(1).standard_normal(40)
    x_star = np.linalg.solve(A, b)
    kwargs = {
        "plain": dict(rtol=1e-10),
        "warm": dict(x0=0.3 * b, rtol=1e-8),
        "jacobi_x_true": dict(preconditioner=1.0 / np.diag(A), rtol=1e-9, x_true=x_star),
        "martens": dict(rtol=0.0, stop_rule="martens", martens_eps=1e-3, save_iterates=True, maxiter=60),
        "martens_warm": dict(x0=0.1 * b, rtol=1e-12, stop_rule="martens", save_iterates=True, maxiter=30),
    }[case]
    res = cg(A, b, **kwargs)
    assert (int(res.num_iterations), int(res.num_matvecs), res.status) == expected
    if res.status is Status.CONVERGED:
        np.testing.assert_allclose(res.x, x_star, rtol=1e-5 * 1e3)

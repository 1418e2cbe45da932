"""Tests for curvlab._spectral: stochastic Lanczos quadrature, trace and diagonal estimators.

Statistical checks use fixed seeds and tolerances of several standard errors, so they are
deterministic; each also has a deterministic, exact counterpart (e.g. a diagonal operator,
where the quadrature weights are exactly 1/n). float32 tolerances: moments and traces to
~1e-5 relative of the deterministic part.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._curvature import hessian_operator
from curvlab._operators import DenseOperator, DiagonalOperator, LowRankOperator
from curvlab._spectral import _slq, _trace, diagonal, moments, spectral_density, trace
from curvlab._status import SolverError, Status
from tests.reference import dense_hessian, matrix_with_spectrum, random_orthogonal

N = 100


def _op(lam, seed=0, dtype=np.float64):
    A = matrix_with_spectrum(lam, seed, dtype=dtype)
    return DenseOperator(jnp.asarray(A)), A


def _integral(sd):
    return float(jnp.sum((sd.density[1:] + sd.density[:-1]) * jnp.diff(sd.grid)) / 2)


# ---------------------------------------------------------------------------
# spectral_density
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slq_moments_unbiased(probe, seed):
    lam = np.r_[np.linspace(-1.0, 2.0, N - 3), [4.0, 6.0, 9.0]]
    op, A = _op(lam, seed)
    sd = spectral_density(op, num_probes=30, num_steps=10, key=jax.random.key(seed), probe=probe)
    mo = moments(sd, (0, 1, 2, 3))
    truth = np.array([np.mean(lam**p) for p in range(4)])
    value, stderr = np.asarray(mo.value), np.asarray(mo.stderr)
    assert value[0] == pytest.approx(1.0, abs=1e-12)  # weights sum to one per probe
    assert np.all(stderr[1:] > 0)
    assert np.all(np.abs(value - truth) <= 4 * stderr + 1e-10), (value, truth, stderr)
    np.testing.assert_allclose(np.asarray(sd.weights).sum(axis=1), 1.0, atol=1e-12)


def test_slq_quadrature_is_exact_per_probe_on_a_diagonal_operator():
    # eigenvectors e_i, normalized Rademacher probe: the weight of lambda_i is exactly 1/n
    lam = np.linspace(0.5, 3.0, 40)
    sd = spectral_density(
        DiagonalOperator(jnp.asarray(lam)), num_probes=3, num_steps=60, key=jax.random.key(0)
    )
    assert np.all(np.asarray(sd.status) == Status.INVARIANT_SUBSPACE)
    assert np.all(np.asarray(sd.num_steps) == 40)  # num_steps capped at n
    assert sd.nodes.shape == (3, 40)
    for p in range(3):
        np.testing.assert_allclose(np.asarray(sd.nodes[p]), lam, atol=1e-12)
        np.testing.assert_allclose(np.asarray(sd.weights[p]), 1 / 40, atol=1e-12)
    mo = moments(sd, 3)
    assert float(mo.value) == pytest.approx(np.mean(lam**3), rel=1e-12)
    assert float(mo.stderr) < 1e-12


def test_density_integrates_to_one_and_matches_the_smoothed_truth():
    lam = np.r_[np.linspace(0.0, 1.0, N - 10), np.linspace(3.0, 3.5, 10)]
    op, _ = _op(lam, 5)
    sd = spectral_density(op, num_probes=20, num_steps=40, key=jax.random.key(1))
    assert _integral(sd) == pytest.approx(1.0, abs=1e-10)
    sigma = float(sd.sigma)
    lo, hi = np.nanmin(np.asarray(sd.nodes)), np.nanmax(np.asarray(sd.nodes))
    assert sigma == pytest.approx(0.01 * (hi - lo), rel=1e-12)  # 1% of the node spread
    assert -1e-12 <= lo < 1e-3 and 3.5 - 1e-3 < hi <= 3.5 + 1e-12  # extreme Ritz values inside the spectrum
    grid = np.asarray(sd.grid)
    np.testing.assert_allclose([grid[0], grid[-1]], [lo - 3 * sigma, hi + 3 * sigma], rtol=1e-12)
    assert grid.shape == (512,)
    truth = np.mean(np.exp(-0.5 * ((grid[:, None] - lam[None, :]) / sigma) ** 2), axis=1)
    truth /= sigma * np.sqrt(2 * np.pi)
    truth /= np.trapezoid(truth, grid)
    err = np.abs(np.asarray(sd.density) - truth)
    # statistical error: within 4 standard errors nearly everywhere, plus quadrature smoothing
    band = 4 * np.asarray(sd.density_stderr) + 0.05 * truth.max()
    assert np.mean(err <= band) > 0.95
    # the density is the mean of the per-probe densities, each integrating to one
    np.testing.assert_allclose(
        np.asarray(sd.per_probe_density).mean(axis=0), np.asarray(sd.density), atol=1e-12
    )
    per_probe_mass = np.trapezoid(np.asarray(sd.per_probe_density), grid, axis=1)
    np.testing.assert_allclose(per_probe_mass, 1.0, atol=1e-10)
    se = np.asarray(sd.per_probe_density).std(axis=0, ddof=1) / np.sqrt(20)
    np.testing.assert_allclose(np.asarray(sd.density_stderr), se, atol=1e-12)


def test_user_grid_and_sigma():
    lam = np.linspace(-2.0, 2.0, 60)
    op, _ = _op(lam, 1)
    grid = jnp.linspace(-1.0, 1.0, 101)  # covers part of the spectrum only
    sd = spectral_density(op, num_probes=4, num_steps=20, key=jax.random.key(0), grid=grid, sigma=0.2)
    np.testing.assert_array_equal(np.asarray(sd.grid), np.asarray(grid))
    assert float(sd.sigma) == pytest.approx(0.2)
    assert _integral(sd) == pytest.approx(1.0, abs=1e-10)
    assert np.all(np.asarray(sd.density) >= 0)


def test_early_breakdown_pads_nodes_with_nan_and_zero_weight():
    lam = np.repeat([1.0, 2.0, 5.0, 7.0], 10)  # Krylov dimension 4
    op, _ = _op(lam, 2)
    sd = spectral_density(op, num_probes=3, num_steps=15, key=jax.random.key(0))
    assert np.all(np.asarray(sd.num_steps) == 4)
    assert "invariant subspace" in sd.message
    nodes, weights = np.asarray(sd.nodes), np.asarray(sd.weights)
    np.testing.assert_allclose(nodes[:, :4], np.tile([1.0, 2.0, 5.0, 7.0], (3, 1)), atol=1e-10)
    assert np.all(np.isnan(nodes[:, 4:])) and np.all(weights[:, 4:] == 0)
    assert np.all(np.isfinite(np.asarray(sd.density)))
    assert _integral(sd) == pytest.approx(1.0, abs=1e-10)
    assert sd.num_matvecs == 12


def test_spectral_density_float32_documented_tolerance():
    lam = np.linspace(1.0, 3.0, N)
    op, _ = _op(lam, 0, dtype=np.float32)
    sd = spectral_density(op, num_probes=8, num_steps=20, key=jax.random.key(0))
    assert sd.density.dtype == jnp.float32
    assert _integral(sd) == pytest.approx(1.0, abs=1e-5)
    mo = moments(sd, (0, 1))
    assert float(mo.value[0]) == pytest.approx(1.0, abs=1e-5)  # float32: weights sum to 1 +- 1e-5
    assert abs(float(mo.value[1]) - 2.0) <= 4 * float(mo.stderr[1]) + 1e-5


def test_spectral_density_batched_probes_match_vmap():
    lam = np.linspace(0.0, 1.0, 50)
    op, _ = _op(lam, 3)
    a = spectral_density(op, num_probes=4, num_steps=10, key=jax.random.key(7))
    for chunk_size in (2, 1):  # 1: probes one at a time, unbatched loop over the rows in use
        b = spectral_density(op, num_probes=4, num_steps=10, key=jax.random.key(7), chunk_size=chunk_size)
        np.testing.assert_allclose(np.asarray(a.nodes), np.asarray(b.nodes), atol=1e-12)
        np.testing.assert_allclose(np.asarray(a.density), np.asarray(b.density), atol=1e-10)
        np.testing.assert_array_equal(np.asarray(a.num_steps), np.asarray(b.num_steps))


def test_spectral_density_large_operator_runs_probes_one_at_a_time_and_matches_batched():
    # n = 5000 > 4096: the default runs probes sequentially; same nodes, weights and density as all at once
    lam = jnp.linspace(-1.0, 2.0, 5000)
    op = DiagonalOperator(lam)
    kw = dict(num_probes=3, num_steps=40, key=jax.random.key(1))
    a = spectral_density(op, **kw)
    b = spectral_density(op, chunk_size=3, **kw)
    np.testing.assert_allclose(np.asarray(a.nodes), np.asarray(b.nodes), atol=1e-10)
    np.testing.assert_allclose(np.asarray(a.weights), np.asarray(b.weights), atol=1e-10)
    np.testing.assert_allclose(np.asarray(a.density), np.asarray(b.density), rtol=1e-8, atol=1e-10)
    # extreme nodes approach the ends of the spectrum (uniform spectrum, 40 steps: to ~3e-3), never past them
    nodes = np.asarray(a.nodes)
    assert 2.0 - 1e-2 < float(np.nanmax(nodes)) <= 2.0 + 1e-12
    assert -1.0 - 1e-12 <= float(np.nanmin(nodes)) < -1.0 + 1e-2


def test_spectral_density_invalid_arguments():
    op, _ = _op(np.linspace(0.0, 1.0, 10))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_probes"):
        spectral_density(op, num_probes=0, key=key)
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(op, key=key, sigma=-1.0)
    with pytest.raises(ValueError, match="grid"):
        spectral_density(op, key=key, grid=jnp.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="grid"):
        spectral_density(op, key=key, grid=jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="probe"):
        spectral_density(op, key=key, probe="uniform")
    with pytest.raises(TypeError, match="key"):
        spectral_density(op, key=None)
    with pytest.raises(ValueError, match="powers"):
        moments(spectral_density(op, num_probes=2, num_steps=3, key=key), -1)


def test_spectral_density_single_probe_has_nan_stderr():
    op, _ = _op(np.linspace(0.0, 1.0, 10))
    sd = spectral_density(op, num_probes=1, num_steps=5, key=jax.random.key(0))
    assert np.all(np.isnan(np.asarray(sd.density_stderr)))
    assert _integral(sd) == pytest.approx(1.0, abs=1e-10)


def test_spectral_density_no_recompilation():
    lam = np.linspace(0.0, 1.0, 30)
    op1, _ = _op(lam, 0)
    op2, _ = _op(2 * lam, 1)
    spectral_density(op1, num_probes=3, num_steps=8, key=jax.random.key(0))
    before = _slq._cache_size()
    sd = spectral_density(op2, num_probes=3, num_steps=8, key=jax.random.key(1))
    assert _slq._cache_size() == before
    assert float(moments(sd, 0).value) == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------


def _low_rank_dominated(n=N, seed=0):
    lam = np.r_[100.0 * 0.5 ** np.arange(8), 0.1 * np.ones(n - 8)]
    return _op(lam, seed)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_unbiased_with_honest_stderr(method):
    lam = np.r_[np.linspace(-1.0, 3.0, N - 5), [10.0, 12.0, 15.0, 20.0, 30.0]]
    op, A = _op(lam, 1)
    truth = np.trace(A)
    vals, errs = [], []
    for s in range(200):
        est = trace(op, num_probes=12, key=jax.random.key(s), method=method)
        assert est.num_matvecs == 12
        vals.append(float(est.value))
        errs.append(float(est.stderr))
    vals, errs = np.array(vals), np.array(errs)
    # unbiased: the mean over 200 seeds within 3 of its standard errors of the truth
    assert abs(vals.mean() - truth) <= 3 * vals.std(ddof=1) / np.sqrt(len(vals))
    # honest stderr: the typical reported stderr matches the actual spread
    rms = np.sqrt(np.mean(errs**2))
    assert 0.6 < rms / vals.std(ddof=1) < 1.6


def test_hutchpp_has_lower_variance_on_low_rank_dominated_matrix():
    op, A = _low_rank_dominated()
    truth = np.trace(A)
    spread = {}
    for method in ("hutchinson", "hutch++"):
        vals = np.array(
            [float(trace(op, num_probes=24, key=jax.random.key(s), method=method).value) for s in range(60)]
        )
        spread[method] = np.sqrt(np.mean((vals - truth) ** 2))
    assert spread["hutch++"] < 0.2 * spread["hutchinson"], spread


def test_trace_exact_cases():
    d = jnp.linspace(1.0, 2.0, 20)
    est = trace(DiagonalOperator(d), num_probes=6, key=jax.random.key(0), method="hutchinson")
    # Rademacher z: z^T D z = tr(D) exactly
    assert float(est.value) == pytest.approx(float(d.sum()), rel=1e-12)
    assert float(est.stderr) < 1e-12
    # rank-2 operator: Hutch++ sketch of 3 vectors captures it exactly
    U = jnp.asarray(random_orthogonal(30, 1)[:, :2])
    est = trace(LowRankOperator(U, jnp.array([5.0, -2.0])), num_probes=9, key=jax.random.key(1))
    assert float(est.value) == pytest.approx(3.0, abs=1e-10)
    assert float(est.stderr) < 1e-10


def test_trace_float32_and_batching():
    op, A = _op(np.linspace(1.0, 2.0, 50), 0, dtype=np.float32)
    # 30 probes: the Hutchinson part has 20 samples, enough for its stderr to be a fair yardstick
    a = trace(op, num_probes=30, key=jax.random.key(3))
    b = trace(op, num_probes=30, key=jax.random.key(3), chunk_size=7)
    assert a.value.dtype == jnp.float32
    assert float(a.value) == pytest.approx(float(b.value), rel=1e-5)  # float32 summation order
    assert abs(float(a.value) - np.trace(A.astype(np.float64))) <= 4 * float(a.stderr) + 1e-4


def test_trace_invalid_arguments_and_no_recompilation():
    op, _ = _op(np.linspace(0.0, 1.0, 10))
    with pytest.raises(ValueError, match="method"):
        trace(op, num_probes=5, key=jax.random.key(0), method="exact")
    with pytest.raises(ValueError, match="num_probes"):
        trace(op, num_probes=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_probes"):
        trace(op, num_probes=1, key=jax.random.key(0), method="hutchinson")
    with pytest.raises(ValueError, match="chunk_size"):
        trace(op, num_probes=5, key=jax.random.key(0), chunk_size=0)
    trace(op, num_probes=5, key=jax.random.key(0))
    before = _trace._cache_size()
    op2, _ = _op(np.linspace(2.0, 3.0, 10), 1)
    trace(op2, num_probes=5, key=jax.random.key(1))
    assert _trace._cache_size() == before


# ---------------------------------------------------------------------------
# diagonal
# ---------------------------------------------------------------------------


def test_diagonal_estimator_against_true_diagonal():
    op, A = _op(np.linspace(1.0, 5.0, 60), 2)
    est = diagonal(op, num_probes=200, key=jax.random.key(0))
    err = np.abs(np.asarray(est.value) - np.diag(A))
    stderr = np.asarray(est.stderr)
    assert est.value.shape == (60,) and stderr.shape == (60,)
    assert np.mean(err <= 3 * stderr) > 0.95
    # stderr matches the theory: Var = (sum_{l != i} A_il^2) / m
    theory = np.sqrt((np.sum(A**2, axis=1) - np.diag(A) ** 2) / 200)
    assert np.median(stderr / theory) == pytest.approx(1.0, abs=0.15)
    # more probes, smaller error
    est4 = diagonal(op, num_probes=800, key=jax.random.key(1))
    assert np.linalg.norm(np.asarray(est4.value) - np.diag(A)) < np.linalg.norm(err)


def test_diagonal_exact_for_diagonal_operator_and_float32():
    d = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32)
    est = diagonal(DiagonalOperator(d), num_probes=2, key=jax.random.key(0))
    assert est.value.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(est.value), np.asarray(d), atol=1e-7)
    with pytest.raises(ValueError, match="num_probes"):
        diagonal(DiagonalOperator(d), num_probes=1, key=jax.random.key(0))


# ---------------------------------------------------------------------------
# On a Hessian operator of a pytree function
# ---------------------------------------------------------------------------


def test_on_hessian_operator_of_a_pytree_function():
    def f(params, x):
        z = x @ params["w"] + params["b"][None, :]
        return jnp.sum(jnp.log1p(z**2)) + 0.5 * jnp.sum(params["w"] ** 2)

    params = {"w": jax.random.normal(jax.random.key(0), (5, 4)), "b": jnp.linspace(-0.5, 0.5, 4)}
    x = jax.random.normal(jax.random.key(1), (10, 5))
    H = dense_hessian(f, params, x)
    lam = np.linalg.eigvalsh(H)
    op = hessian_operator(f, params, x)
    n = op.size
    sd = spectral_density(op, num_probes=3, num_steps=n, key=jax.random.key(2))
    for p in range(3):  # n steps: every probe spans the whole space (or an invariant subspace of it)
        m = int(sd.num_steps[p])
        nodes = np.asarray(sd.nodes[p, :m])
        assert np.all(np.min(np.abs(nodes[:, None] - lam[None, :]), axis=1) < 1e-8 * np.abs(lam).max())
    tr = trace(op, num_probes=n, key=jax.random.key(3))  # Hutch++ with n // 3 sketch vectors
    assert abs(float(tr.value) - np.trace(H)) <= 4 * float(tr.stderr) + 1e-8
    dg = diagonal(op, num_probes=50, key=jax.random.key(4))
    assert np.mean(np.abs(np.asarray(dg.value) - np.diag(H)) <= 4 * np.asarray(dg.stderr) + 1e-12) > 0.9


def test_spectral_density_shifted_equals_a_run_on_the_damped_operator():
    lam = np.linspace(-2.0, 5.0, 40)
    A = matrix_with_spectrum(lam, 0)
    op = DenseOperator(jnp.asarray(A))
    kw = dict(num_probes=4, num_steps=12, key=jax.random.key(1))
    sd = spectral_density(op, **kw)
    assert sd.converged and np.all(np.asarray(sd.status) == Status.COMPLETED)
    for d in (0.5, -3.0):
        sh = sd.shifted(d)
        ref = spectral_density(DenseOperator(jnp.asarray(A + d * np.eye(40))), **kw)
        for field in ("grid", "density", "density_stderr", "nodes", "weights", "per_probe_density", "sigma"):
            np.testing.assert_allclose(
                np.asarray(getattr(sh, field)), np.asarray(getattr(ref, field)), rtol=1e-9, atol=1e-10
            )
        ref2 = spectral_density(op.damped(d), **kw)
        np.testing.assert_allclose(np.asarray(sh.density), np.asarray(ref2.density), rtol=1e-9, atol=1e-10)
    # a probe at an invariant subspace is not shifted (its fresh run may stop elsewhere)
    early = spectral_density(
        DiagonalOperator(jnp.array([1.0, 2.0, 3.0])), num_probes=2, num_steps=3, key=kw["key"]
    )
    with pytest.raises(ValueError, match="did not complete"):
        early.shifted(1.0)
    with pytest.raises(ValueError, match="invariant subspace earlier"):
        spectral_density(op, breakdown_tol=0.05, **{**kw, "num_steps": 3}).shifted(1e4)


def test_spectral_density_throw_statuses_and_bad_input():
    nan_op = DenseOperator(jnp.full((6, 6), jnp.nan))
    sd = spectral_density(nan_op, num_probes=2, num_steps=3, key=jax.random.key(0))
    assert not sd.converged and np.all(np.asarray(sd.status) == Status.NONFINITE)
    with pytest.raises(SolverError, match="spectral_density: NONFINITE"):
        spectral_density(nan_op, num_probes=2, num_steps=3, key=jax.random.key(0), throw=True)
    with pytest.raises(TypeError, match="key is required"):
        spectral_density(jnp.eye(4), key=None)
    with pytest.raises(TypeError, match="key is required"):
        trace(jnp.eye(4), num_probes=4, key=None)
    with pytest.raises(TypeError, match="complex"):
        diagonal(jnp.eye(4, dtype=jnp.complex128), num_probes=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="size 0"):
        trace(jnp.zeros((0, 0)), num_probes=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="chunk_size"):
        diagonal(jnp.eye(4), num_probes=4, key=jax.random.key(0), chunk_size=0)
    # a raw uint32 key is wrapped: the same probes as the typed key
    a = trace(jnp.diag(jnp.arange(5.0)), num_probes=4, key=jax.random.PRNGKey(3), method="hutchinson")
    b = trace(jnp.diag(jnp.arange(5.0)), num_probes=4, key=jax.random.key(3), method="hutchinson")
    assert float(a.value) == float(b.value)

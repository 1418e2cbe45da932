"""Tests for curvlab._eigsh: the thick-restart Lanczos eigensolver.

References are numpy.linalg.eigh on matrices of prescribed spectrum (tests/reference.py). Tests that
pin matvec counts or the phases of the single-vector path pass ``block_size=1``; the others run the
default block path (tests/test_block_eigsh.py tests it in depth).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._curvature import fisher_operator, hessian_operator
from curvlab._eigsh import (
    _WHICH,
    _block_jit,
    _check_arguments,
    _compress,
    _eigsh_jit,
    _extend,
    _initial_state,
    _make_setup,
    eigsh,
)
from curvlab._lanczos import lanczos
from curvlab._operators import DenseOperator, FunctionOperator
from curvlab._status import SolverError, Status
from tests.reference import dense_hessian, matrix_with_spectrum
from tests.test_lanczos import _op, spectrum


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


#: matvec counts of the solver before its split into phases (the split must not change them)
_MATVECS = {
    ("LA", "separated"): (28, 28),
    ("LA", "indefinite"): (112, 110),
    ("SA", "separated"): (162, 158),
    ("SA", "indefinite"): (104, 100),
    ("LM", "separated"): (28, 28),
    ("LM", "indefinite"): (92, 92),
    ("BE", "separated"): (102, 106),
    ("BE", "indefinite"): (92, 94),
}


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
@pytest.mark.parametrize("name", ["separated", "indefinite"])
@pytest.mark.parametrize("seed", [0, 1])
def test_eigsh_matches_eigh_float64(which, name, seed):
    lam = spectrum(name, 150)
    op, A = _op(lam, seed)
    k, tol = 4, 1e-9
    res = eigsh(op, k, which=which, rtol=tol, key=jax.random.key(seed), block_size=1)
    assert res.status == Status.CONVERGED, res.message
    assert np.all(np.asarray(res.pair_converged))
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
    assert res.num_matvecs == _MATVECS[which, name][seed]


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_eigsh_clustered_spectrum(which):
    # wanted set = one whole cluster of 5 eigenvalues spaced 1e-3 apart
    lam = np.r_[np.linspace(0.0, 1.0, 110), 5.0 + 1e-3 * np.arange(5), -5.0 - 1e-3 * np.arange(5)]
    op, A = _op(lam, 4)
    res = eigsh(op, 5, which=which, rtol=1e-9, key=jax.random.key(2), ncv=25)
    assert res.status == Status.CONVERGED, res.message
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
    res = eigsh(op, 4, which=which, rtol=1e-8)
    assert res.status == Status.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.eigenvalues), np.sort(lam)[::-1][:4], rtol=1e-8)


def test_eigsh_stops_inside_a_pass_when_the_estimates_converge():
    # top-2 of a spectrum with two far outliers converge in a few steps: with a large basis (ncv = 60)
    # eigsh stops inside the first pass (no restart) instead of running all 60 steps, and is exact
    lam = np.r_[np.linspace(0.0, 1.0, 148), 50.0, 100.0]
    op, A = _op(lam, 6)
    res = eigsh(op, 2, which="LA", rtol=1e-8, ncv=60, key=jax.random.key(1), block_size=1)
    assert res.status == Status.CONVERGED, res.message
    assert res.num_restarts == 0
    assert res.num_matvecs == 9
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
    res = eigsh(op, 5, which="LA", rtol=1e-10)
    assert res.status == Status.CONVERGED, res.message
    np.testing.assert_allclose(np.asarray(res.eigenvalues), [4, 4, 4, 4, 2], atol=1e-10)
    Y = np.asarray(res.eigenvectors)
    np.testing.assert_allclose(Y.T @ Y, np.eye(5), atol=1e-10)


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
def test_eigsh_tiny_n(which):
    lam = np.array([-3.0, 0.5, 1.0, 2.0])
    op, _ = _op(lam, 0)
    res = eigsh(op, 2, which=which, rtol=1e-10)
    assert res.status == Status.CONVERGED
    np.testing.assert_allclose(np.asarray(res.eigenvalues), _reference(lam, which, 2), atol=1e-12)


def test_eigsh_reports_non_convergence_honestly():
    lam = spectrum("kappa1e8", 150)
    op, A = _op(lam, 0)
    # k = 4, ncv = 20 keeps 12 vectors: 20 steps, then 8 per restart; a budget of 28 steps and the
    # final 4-matvec check = 1 restart
    res = eigsh(op, 4, which="SA", rtol=1e-10, max_matvecs=32, block_size=1)
    assert res.status == Status.MAX_ITERATIONS
    assert "not converged" in res.message
    assert not np.all(np.asarray(res.pair_converged))
    assert res.num_restarts == 1
    assert res.num_matvecs == 20 + 8 + 4
    Y, theta = np.asarray(res.eigenvectors), np.asarray(res.eigenvalues)
    true = np.linalg.norm(A @ Y - Y * theta, axis=0)
    np.testing.assert_allclose(np.asarray(res.residual_norms), true, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(res.pair_converged), true <= 1e-10 * np.abs(theta))
    # history: two Lanczos passes recorded, the rest NaN
    assert np.all(np.isfinite(np.asarray(res.ritz_history[:2])))
    assert np.all(np.isfinite(np.asarray(res.residual_history[:2])))
    assert np.all(np.isnan(np.asarray(res.ritz_history[2:])))


def test_eigsh_top1_small_gap_many_restarts_float64():
    # k = 1 (default ncv = 12, 6 kept vectors): a relative gap of 1e-3 at the top needs many thick
    # restarts, i.e. many steps with one Gram-Schmidt pass plus the conditional second one and many
    # arrow-row steps; the result must still match the dense reference with a true residual.
    lam = np.r_[np.linspace(-1.0, 1.0, 198), 1.001, 1.002]
    op, A = _op(lam, 5)
    res = eigsh(op, 1, which="LA", rtol=1e-10, key=jax.random.key(3), block_size=1)
    assert res.status == Status.CONVERGED, res.message
    assert (res.num_restarts, res.num_matvecs) == (28, 179)
    np.testing.assert_allclose(float(res.eigenvalues[0]), 1.002, rtol=1e-10)
    y = np.asarray(res.eigenvectors[:, 0])
    w, U = np.linalg.eigh(A)
    assert abs(abs(U[:, -1] @ y) - 1) < 1e-8
    assert np.linalg.norm(A @ y - float(res.eigenvalues[0]) * y) <= 1e-10 * 1.002


def test_eigsh_float32_documented_tolerance():
    lam = spectrum("separated", 150)
    op, _ = _op(lam, 1, dtype=np.float32)
    res = eigsh(op, 3, which="LA", rtol=1e-5)
    assert res.eigenvectors.dtype == jnp.float32
    assert res.status == Status.CONVERGED, res.message
    # float32: eigenvalues to 1e-5 relative
    np.testing.assert_allclose(np.asarray(res.eigenvalues), np.sort(lam)[::-1][:3], rtol=1e-5)


def test_eigsh_tol_below_float32_accuracy_is_reported_inaccurate():
    # float32 Ritz estimates reach ~0 but the true residuals floor at ~1e-7 |A|: after a few verified
    # restarts eigsh stops with INACCURATE instead of claiming convergence or spinning to max_restarts.
    lam = spectrum("separated", 150)
    op, A = _op(lam, 1, dtype=np.float32)
    res = eigsh(op, 3, which="LA", rtol=1e-9, max_matvecs=300, block_size=1)
    assert res.status == Status.INACCURATE, res.message
    assert "attainable" in res.message
    assert not np.any(np.asarray(res.pair_converged))
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
        eigsh(op, 2, rtol=0.0)
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
    for jitted, b in ((_eigsh_jit, 1), (_block_jit, None)):
        eigsh(op1, 2, rtol=1e-8, block_size=b)
        before = jitted._cache_size()
        r = eigsh(op2, 2, rtol=1e-8, block_size=b)
        assert jitted._cache_size() == before
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
        res = eigsh(op, 3, which=which, rtol=1e-10)
        assert res.status == Status.CONVERGED, res.message
        np.testing.assert_allclose(np.asarray(res.eigenvalues), ref, atol=1e-8 * np.abs(w).max())
    lres = lanczos(op, op.size + 3)
    assert lres.status == Status.INVARIANT_SUBSPACE
    m = lres.num_steps
    np.testing.assert_allclose(
        np.asarray(lres.ritz_history[m - 1, [0, m - 1]]), [w[0], w[-1]], atol=1e-9 * np.abs(w).max()
    )


def test_eigsh_atol_converges_on_singular_psd():
    """Smallest eigenvalues of a rank-deficient PSD matrix (a Gauss-Newton-like operator): the
    eigenvalue 0 cannot satisfy a relative test, an absolute one converges to the right value."""
    lam = np.concatenate([np.zeros(40), np.linspace(1.0, 10.0, 60)])
    A = matrix_with_spectrum(lam, seed=3)
    # rtol alone: a zero eigenvalue converges at the rounding floor min(rtol, 1000 eps) ||A||
    strict = eigsh(DenseOperator(A), k=2, which="SA", rtol=1e-8, ncv=12, max_matvecs=400, block_size=1)
    assert strict.status != Status.CONVERGED or np.all(
        np.asarray(strict.residual_norms) <= 1000 * 2.3e-16 * 10
    )
    res = eigsh(DenseOperator(A), k=2, which="SA", rtol=1e-8, atol=1e-8 * 10.0, ncv=12)
    assert bool(np.all(res.pair_converged)), res.message
    np.testing.assert_allclose(res.eigenvalues, [0.0, 0.0], atol=1e-7)
    assert np.all(np.asarray(res.residual_norms) <= 1e-7)
    with pytest.raises(ValueError, match="atol"):
        eigsh(DenseOperator(A), k=2, atol=-1.0)


def test_eigsh_status_properties_throw_and_budget():
    lam = spectrum("kappa1e8", 150)
    op, _ = _op(lam, 0)
    for budget in (10, 32, 57):
        res = eigsh(op, 4, which="SA", rtol=1e-10, max_matvecs=budget, block_size=1)
        assert res.num_matvecs <= budget and res.status == Status.MAX_ITERATIONS
        assert res.converged is False and "budget ran out" in res.message
    with pytest.raises(SolverError, match="eigsh: MAX_ITERATIONS"):
        eigsh(op, 4, which="SA", rtol=1e-10, max_matvecs=32, throw=True, block_size=1)
    with pytest.raises(ValueError, match=r"max_matvecs must be >= 2k \+ 2 = 10"):
        eigsh(op, 4, max_matvecs=9)
    good = eigsh(DenseOperator(jnp.diag(jnp.arange(1.0, 31.0))), 2, rtol=1e-8, throw=True)
    assert good.converged is True and good.status == Status.CONVERGED
    assert good.pair_converged.shape == (2,) and bool(np.all(good.pair_converged))


def test_eigsh_traced_rtol_under_the_users_jit():
    lam = spectrum("separated", 40)
    op, A = _op(lam, 0)
    eager = eigsh(op, 2, rtol=1e-8)

    @jax.jit
    def top(M, rtol):
        r = eigsh(DenseOperator(M), 2, rtol=rtol)
        return r.eigenvalues, r.status, r.converged

    vals, status, conv = top(jnp.asarray(A), 1e-8)
    np.testing.assert_allclose(np.asarray(vals), np.asarray(eager.eigenvalues), rtol=1e-12)
    assert int(status) == Status.CONVERGED and bool(conv)
    with pytest.raises(ValueError, match="cannot be traced"):
        jax.jit(lambda M: eigsh(DenseOperator(M), 2, throw=True).eigenvalues)(jnp.asarray(A))


def test_eigsh_bad_input_messages():
    with pytest.raises(TypeError, match="complex"):
        eigsh(jnp.eye(5, dtype=jnp.complex128), 2)
    with pytest.raises(TypeError, match="eigsh: v0 is complex"):
        eigsh(jnp.eye(5), 2, v0=jnp.ones(5, jnp.complex128))
    with pytest.raises(ValueError, match=r"the operator's matvec must map a vector of shape \(5,\)"):
        eigsh(FunctionOperator(lambda v: jnp.concatenate([v, v]), 5, jnp.float64), 2)
    with pytest.raises(ValueError, match="size 0"):
        eigsh(jnp.zeros((0, 0)), 1)
    with pytest.raises(ValueError, match="rtol"):
        eigsh(jnp.eye(5), 2, rtol=np.nan)


def test_eigsh_budget_after_a_failed_verification():
    # float32, rtol far below its accuracy (k = 3, ncv = 20): the estimates converge inside the first
    # pass at step 18, the 3-matvec verification fails (21 matvecs); the next pass may start only
    # while one step and a second verification fit (budget >= 25), then the run ends INACCURATE
    op, _ = _op(spectrum("separated", 150), 1, dtype=np.float32)
    used = {b: eigsh(op, 3, which="LA", rtol=1e-9, max_matvecs=b, block_size=1) for b in range(8, 31)}
    assert all(r.num_matvecs <= b for b, r in used.items())
    # (budget 20: the guard ends the pass at step 17, whose estimates already meet the test with the
    # float32 floor rtol * ||A||; the verification fails: INACCURATE after 17 + 3 matvecs)
    assert all(used[b].status == Status.MAX_ITERATIONS for b in range(8, 20))
    assert [used[b].num_matvecs for b in range(20, 31)] == [20, 21, 21, 21, 21, 25, 26, 26, 26, 26, 26]
    assert all(used[b].status == Status.INACCURATE for b in range(20, 31))


# ---------------------------------------------------------------------------
# phases: extend (Lanczos relation), compress (Ritz vectors of the projected matrix)
# ---------------------------------------------------------------------------


def _phase_state(A, k, which, rtol=1e-300, budget=10_000, ncv=None):
    """The loop's setup and initial state for a dense ``A`` (``rtol`` tiny: no in-pass stop)."""
    a = _check_arguments(DenseOperator(jnp.asarray(A)), k, which, rtol, 0.0, budget, ncv, None)
    which_id, budget = jnp.int32(_WHICH.index(which)), jnp.int32(budget)
    sizes = dict(k=a.k, ncv=a.ncv, keep=a.keep, max_passes=a.max_passes)
    setup = _make_setup(a.op, a.rtol, a.atol, a.breakdown_tol, which_id, budget, dtype=A.dtype, **sizes)
    v0 = jax.random.normal(jax.random.key(5), (A.shape[0],), A.dtype)
    return setup, _initial_state(setup, v0, jax.random.key(6))


def _check_lanczos_relation(A, basis, tol):
    """:math:`A V_{:s}^T = V_{:s+1}^T T_{:s+1,:s}`, orthonormal rows ``V[:s+1]`` (``V[s] = 0``: decoupled)."""
    s = int(basis.size)
    V, T = np.asarray(basis.V, np.float64), np.asarray(basis.T, np.float64)
    scale = np.linalg.norm(A, 2)
    np.testing.assert_allclose(A @ V[:s].T, V[: s + 1].T @ T[: s + 1, :s], atol=tol * scale)
    np.testing.assert_allclose(T[:s, :s], T[:s, :s].T, atol=0)
    rows = s + 1 if np.any(T[s, :s]) else s
    np.testing.assert_allclose(V[:rows] @ V[:rows].T, np.eye(rows), atol=tol)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("which", ["LA", "SA"])
def test_extend_and_compress_invariants(dtype, tol, which):
    A = matrix_with_spectrum(spectrum("indefinite", 80), 2, dtype=dtype)
    setup, state = _phase_state(A, 3, which)
    m, keep = setup.ncv, setup.keep
    state = _extend(setup, state)
    assert int(state.basis.size) == m and int(state.num_matvecs) == m
    _check_lanczos_relation(A.astype(np.float64), state.basis, tol)
    # compress: the kept rows are Ritz vectors y = V^T c of the projected matrix, T c = theta c,
    # for its ``keep`` most wanted Ritz values; the residual vector V[m] starts the next pass
    V, T = np.asarray(state.basis.V, np.float64), np.asarray(state.basis.T[:m, :m], np.float64)
    new = _compress(setup, state)
    assert (int(new.basis.size), int(new.basis.j0), int(new.num_restarts)) == (keep, keep, 1)
    Y, theta = np.asarray(new.basis.V[:keep], np.float64), np.diag(np.asarray(new.basis.T, np.float64))[:keep]
    C = V[:m] @ Y.T
    np.testing.assert_allclose(T @ C, C * theta, atol=tol * np.abs(theta).max())
    ritz = np.linalg.eigvalsh(T)
    wanted = ritz[::-1][:keep] if which == "LA" else ritz[:keep]
    np.testing.assert_allclose(np.sort(theta), np.sort(wanted), rtol=tol)
    np.testing.assert_array_equal(np.asarray(new.basis.V[keep]), np.asarray(state.basis.V[m]))
    _check_lanczos_relation(A.astype(np.float64), new.basis, tol)
    # extend after the restart: the thick-restart relation (arrow row at j0) still holds
    again = _extend(setup, new)
    assert int(again.basis.size) == m and int(again.num_matvecs) == 2 * m - keep
    _check_lanczos_relation(A.astype(np.float64), again.basis, tol)


def test_extend_through_invariant_subspaces():
    # repeated eigenvalues, ncv = n = 12: breakdowns after each eigenspace's first vector are
    # continued by fresh orthogonal directions (T decouples) until the basis spans the space
    lam = np.repeat([1.0, 2.0, 4.0], 4)
    A = matrix_with_spectrum(lam, 3)
    setup, state = _phase_state(A, 5, "LA")
    state = _extend(setup, state)
    assert int(state.basis.size) == 12 and bool(state.basis.broke)
    _check_lanczos_relation(A, state.basis, 1e-10)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(state.basis.T[:12, :12])), lam, atol=1e-10)


def test_extend_guard_leaves_room_for_the_verification():
    # a pass takes a step only while the step and the k-matvec verification fit in the budget
    A = matrix_with_spectrum(spectrum("separated", 40), 0)
    setup, state = _phase_state(A, 3, "LA", budget=30)
    for used, steps in ((26, 1), (27, 0), (30, 0), (20, 7)):
        out = _extend(setup, state._replace(num_matvecs=jnp.int32(used)))
        assert int(out.basis.size) == steps and int(out.num_matvecs) == used + steps


def test_eigsh_singular_softmax_fisher_never_nan():
    """Regression: a pass ending on an invariant subspace of an operator whose null-space products
    are ~1e-33 (the empirical Fisher of softmax regression: logit shifts common to all classes)
    left a zero row after the thick restart, a phantom Ritz pair (0, zero vector) that the
    refinement normalized into NaN: NONFINITE for 3 of 6 keys. Every key must now find the pairs."""
    X = jax.random.normal(jax.random.key(0), (64, 5), dtype=jnp.float64)
    y = jax.random.randint(jax.random.key(1), (64,), 0, 3)
    params = {"W": 0.1 * jax.random.normal(jax.random.key(3), (5, 3), dtype=jnp.float64), "b": jnp.zeros(3)}

    def per_example_loss(p, batch):
        logits = batch[0] @ p["W"] + p["b"][None, :]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], 1)[:, 0]

    F = fisher_operator(per_example_loss, params, (X, y))
    dense = np.asarray(F.to_dense())
    lam = np.linalg.eigvalsh(dense)
    for seed in range(6):
        r = eigsh(F, k=4, which="BE", key=jax.random.key(seed))
        assert r.status != Status.NONFINITE, (seed, r.message)
        theta, Y = np.asarray(r.eigenvalues), np.asarray(r.eigenvectors)
        assert np.all(np.isfinite(theta)) and np.all(np.isfinite(Y))
        # every returned pair is an eigenpair of the dense Fisher, and the top end is exact
        np.testing.assert_allclose(dense @ Y - Y * theta, 0.0, atol=1e-10)
        np.testing.assert_allclose(np.sort(theta)[-2:], lam[-2:], rtol=1e-10)
        assert np.sort(theta)[0] == pytest.approx(0.0, abs=1e-12)
    # (block_size=1, single-vector Lanczos, sees one copy per eigenvalue and can miss a copy of the
    # 5-fold zero eigenvalue; the default block path finds them: tests/test_block_eigsh.py)

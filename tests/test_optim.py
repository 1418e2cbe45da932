"""Tests of the optimizers: curvlab._optim_loop (the shared outer loop), curvlab._newton
(Newton-CG, trust-region Newton) and curvlab._hessian_free (Hessian-free, Martens 2010).

Float64 (conftest) against dense references (numpy.linalg.solve, scipy.optimize.minimize);
float32 runs with looser, documented tolerances.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from curvlab import problems
from curvlab._cg import cg
from curvlab._curvature import hessian_operator
from curvlab._hessian_free import HFConfig, _HiddenGramOperator, hessian_free, update_damping
from curvlab._newton import newton_cg, trust_region_newton
from curvlab._optim_loop import HISTORY_KEYS, IterationInfo, OptimizeResult
from curvlab._status import SolverError, Status
from tests.reference import matrix_with_spectrum

# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def _quadratic(n=8, cond=100.0, seed=0):
    A = matrix_with_spectrum(np.geomspace(1.0, cond, n), seed=seed)
    b = np.random.default_rng(seed + 1).standard_normal(n)
    x_star = np.linalg.solve(A, b)
    return jnp.asarray(A), jnp.asarray(b), x_star


def _hf(*args, **kwargs):
    """hessian_free with the HFConfig fields among ``kwargs`` gathered into ``config``."""
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in HFConfig._fields}
    return hessian_free(*args, config=HFConfig(**fields), **kwargs)


def _quad_loss(x, batch):
    A, b = batch
    return 0.5 * x @ (A @ x) - b @ x


@pytest.fixture(scope="module")
def logistic():
    return problems.logistic_regression(num_examples=128)


@pytest.fixture(scope="module")
def scipy_logistic_optimum(logistic):
    """Reference optimum by scipy's L-BFGS-B with tight tolerances (float64)."""
    from scipy.optimize import minimize

    flat0, unravel = ravel_pytree(logistic.x0)
    vg = jax.jit(jax.value_and_grad(lambda y: logistic.f(unravel(y))))

    def fun(y):
        v, g = vg(jnp.asarray(y))
        return float(v), np.asarray(g, dtype=np.float64)

    res = minimize(
        fun,
        np.asarray(flat0),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000},
    )
    return float(res.fun)


# ---------------------------------------------------------------------------
# Newton-CG and trust-region Newton
# ---------------------------------------------------------------------------


def test_newton_cg_quadratic_one_iteration():
    A, b, x_star = _quadratic()
    res = newton_cg(_quad_loss, jnp.zeros(8), (A, b), gtol=1e-8, forcing="constant", forcing_constant=1e-12)
    assert res.status == Status.CONVERGED
    assert res.num_iterations == 1
    np.testing.assert_allclose(res.x, x_star, rtol=1e-9, atol=1e-10)
    # CG on an 8-dim SPD system: 8 steps in exact arithmetic, a few more to reach 1e-12 in floating point
    assert res.history["cg_iterations"][1] <= 12
    assert res.num_hvps == res.history["cg_iterations"][1]  # cold-started CG: one HVP per iteration


def test_trust_region_quadratic():
    A, b, x_star = _quadratic()
    kw = dict(gtol=1e-10, radius0=100.0, max_radius=1e3, forcing="constant", forcing_constant=1e-12)
    res = trust_region_newton(_quad_loss, jnp.zeros(8), (A, b), **kw)
    assert res.status == Status.CONVERGED
    np.testing.assert_allclose(res.x, x_star, rtol=1e-8, atol=1e-9)
    assert res.num_iterations == 1  # interior Newton step, rho = 1
    assert res.history["rho"][1] == pytest.approx(1.0, rel=1e-8)
    # with a small radius the steps stay on the boundary until the minimizer is inside
    small = trust_region_newton(_quad_loss, jnp.zeros(8), (A, b), **{**kw, "radius0": 0.05})
    np.testing.assert_allclose(small.x, x_star, rtol=1e-8, atol=1e-9)
    assert small.history["cg_status"][1] == Status.TRUST_REGION_BOUNDARY
    assert small.history["step_norm"][1] == pytest.approx(0.05, rel=1e-10)


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("method", ["newton_cg", "trust_region"])
def test_rosenbrock(n, method):
    p = problems.rosenbrock(n)
    x0 = p.x0 if n == 2 else jnp.array([1.3, 0.7, 0.8, 1.9, 1.2])  # n = 5: scipy's tutorial start
    opt = newton_cg if method == "newton_cg" else trust_region_newton
    res = opt(p.f, x0, gtol=1e-9, maxiter=300)
    assert res.status == Status.CONVERGED, res.message
    assert float(jnp.max(jnp.abs(res.x - 1.0))) < 1e-6
    assert np.all(np.diff(res.history["loss"]) <= 1e-12)  # monotone (line search / accepted steps)


@pytest.mark.parametrize("method", ["newton_cg", "trust_region"])
def test_rosenbrock5_classic_start_reaches_a_local_minimum(method):
    """From (-1.2, 1, -1.2, 1, -1.2) the 5-D Rosenbrock function has a second local minimum near
    x_1 = -0.96 in reach; either minimum is a correct answer for a local method."""
    p = problems.rosenbrock(5)
    opt = newton_cg if method == "newton_cg" else trust_region_newton
    res = opt(p.f, p.x0, gtol=1e-9, maxiter=300)
    assert res.status == Status.CONVERGED, res.message
    assert float(jnp.linalg.norm(jax.grad(p.f)(res.x))) <= 1e-9
    assert np.all(np.linalg.eigvalsh(np.asarray(p.hessian_fn(res.x))) > 0)


def test_rosenbrock_scipy_tutorial_hvp_counts():
    """The scipy tutorial start: both methods reach ||x - 1||_inf < 1e-6, recorded counts consistent."""
    f = problems.rosenbrock(5).f
    x0 = jnp.array([1.3, 0.7, 0.8, 1.9, 1.2])
    for opt in (newton_cg, trust_region_newton):
        res = opt(f, x0, gtol=1e-8)
        assert float(jnp.max(jnp.abs(res.x - 1.0))) < 1e-6
        h = res.history
        assert res.num_hvps >= int(h["cg_iterations"].sum())  # cold-started CG: no residual matvec
        assert np.all(np.diff(h["num_hvps"]) >= 0)
        # HVP counts are deterministic; scipy 1.17 needs 58-67 on this problem (benchmarks/bench_optim.py)
        assert res.num_hvps <= 50, (opt.__name__, res.num_hvps)


def test_newton_cg_pytree_and_args():
    A, b, x_star = _quadratic(n=6)

    def f(params, A, b):
        x = jnp.concatenate([params["u"], params["v"]])
        return _quad_loss(x, (A, b))

    x0 = {"u": jnp.zeros(2), "v": jnp.zeros(4)}
    res = newton_cg(f, x0, A, b, gtol=1e-9)
    assert set(res.x) == {"u", "v"} and res.x["u"].shape == (2,)
    np.testing.assert_allclose(jnp.concatenate([res.x["u"], res.x["v"]]), x_star, rtol=1e-7, atol=1e-8)


def test_newton_cg_negative_curvature_at_start():
    """Himmelblau at (0, 0): the Hessian is negative definite, CG stops at its first step."""
    p = problems.himmelblau()
    res = newton_cg(p.f, p.x0, gtol=1e-9)
    assert res.history["cg_status"][1] == Status.NEGATIVE_CURVATURE
    assert res.status == Status.CONVERGED
    H = np.asarray(p.hessian_fn(res.x))
    assert np.all(np.linalg.eigvalsh(H) > 0)  # a minimum, not the maximum or a saddle
    assert float(p.f(res.x)) < 1e-12


@pytest.mark.parametrize("forcing", ["eisenstat_walker", "quadratic", "superlinear", "constant"])
def test_newton_cg_forcing_terms(forcing):
    p = problems.rosenbrock(2)
    res = newton_cg(p.f, jnp.array([1.3, 0.7]), gtol=1e-9, forcing=forcing, line_search="none")
    assert res.status == Status.CONVERGED
    assert float(jnp.max(jnp.abs(res.x - 1.0))) < 1e-7


def test_newton_cg_logistic_matches_scipy(logistic, scipy_logistic_optimum):
    res = newton_cg(logistic.f, logistic.x0, gtol=1e-7)
    assert res.status == Status.CONVERGED
    assert abs(res.fun - scipy_logistic_optimum) <= 1e-8 * max(1.0, abs(scipy_logistic_optimum))


# ---------------------------------------------------------------------------
# Hessian-free
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lam", "rho", "expected"),
    [
        (1.0, 0.1, 1.5),
        (1.0, -3.0, 1.5),
        (1.0, -math.inf, 1.5),
        (1.0, 0.25, 1.0),  # the thresholds themselves leave lambda alone
        (1.0, 0.5, 1.0),
        (1.0, 0.75, 1.0),
        (3.0, 0.9, 2.0),
        (3.0, 5.0, 2.0),
        (0.0, 0.1, 0.0),
    ],
)
def test_update_damping_cases(lam, rho, expected):
    assert float(update_damping(lam, rho)) == pytest.approx(expected, rel=1e-15)


def test_update_damping_vectorized_and_traceable():
    lam = jnp.array([2.0, 2.0, 2.0])
    rho = jnp.array([0.0, 0.5, 1.0])
    out = jax.jit(update_damping)(lam, rho)
    np.testing.assert_allclose(out, [3.0, 2.0, 4.0 / 3.0], rtol=1e-15)


def test_hf_one_step_solves_quadratic():
    A, b, x_star = _quadratic(n=8, cond=100.0)
    res = _hf(_quad_loss, jnp.zeros(8), (A, b), curvature="hessian", damping=0.0, maxiter=1, cg_maxiter=50)
    assert res.num_iterations == 1
    np.testing.assert_allclose(res.x, x_star, rtol=1e-7, atol=1e-8)
    assert res.history["step_length"][1] == 1.0


def test_hf_rho_on_quadratic():
    """On a quadratic the undamped model is exact: rho = 1, and lambda shrinks by 2/3 each step.
    With rho_model='damped', q(d) is less negative by lambda/2 ||d||^2, so rho > 1."""
    A, b, _ = _quadratic(n=8)
    res = _hf(
        _quad_loss, jnp.zeros(8), (A, b), curvature="hessian", damping=1.0, maxiter=4, line_search=False
    )
    np.testing.assert_allclose(res.history["rho"][1:], 1.0, rtol=1e-8)
    np.testing.assert_allclose(res.history["damping"][1:], (2 / 3) ** np.arange(4), rtol=1e-12)
    res_d = _hf(
        _quad_loss, jnp.zeros(8), (A, b), curvature="hessian", damping=1.0, maxiter=1, rho_model="damped"
    )
    assert res_d.history["rho"][1] > 1.0 + 1e-6


def test_hf_cg_backtracking_returns_best_iterate():
    """A quartic term makes late CG iterates (large steps) worse than early ones on f."""
    n = 12
    A = jnp.asarray(matrix_with_spectrum(np.geomspace(1e-2, 10.0, n), seed=3))
    b = jnp.asarray(np.random.default_rng(4).standard_normal(n))

    def loss(x, batch):
        A, b = batch
        return 0.5 * x @ (A @ x) - b @ x + 0.25 * jnp.sum(x**4)

    x0 = jnp.zeros(n)
    res = _hf(
        loss,
        x0,
        (A, b),
        curvature="hessian",
        damping=1e-3,
        maxiter=1,
        cg_maxiter=40,
        line_search=False,
        cg_decay=0.0,
    )
    # reference: the same CG run, candidates = saved iterates + last, argmin of f
    op = hessian_operator(loss, x0, (A, b)).damped(1e-3)
    g = jax.grad(loss)(x0, (A, b))
    ref = cg(
        op,
        -g,
        x0=jnp.zeros(n),
        rtol=1e-10,
        maxiter=40,
        stop_rule="martens",
        martens_eps=5e-4,
        save_iterates=True,
    )
    k = int(ref.num_iterations)
    its = [int(i) for i in ref.saved_iterations if i <= k] + [k]
    cands = [ref.saved_iterates[j] for j in range(len(its) - 1)] + [ref.x]
    vals = [float(loss(c, (A, b))) for c in cands]
    best = int(np.argmin(vals))
    assert res.history["backtrack_iteration"][1] == its[best]
    assert its[best] < k  # the test is meaningful: the last iterate is not the best
    assert vals[best] < vals[-1]
    np.testing.assert_allclose(res.x, cands[best], rtol=1e-10, atol=1e-12)


def _scaled_least_squares(N=128, n=24, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1.0, 1000.0, n)  # kappa(X^T X) ~ 1e6 from the column scales alone
    X = jnp.asarray(rng.standard_normal((N, n)) * scales)
    y = jnp.asarray(rng.standard_normal((N, 1)))

    def model_fn(w, X):
        return X @ w

    def output_loss_fn(out, y):
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=1))

    def loss(w, batch):
        return output_loss_fn(model_fn(w, batch[0]), batch[1])

    def per_example(w, batch):
        X, y = batch
        return 0.5 * jnp.sum((model_fn(w, X) - y) ** 2, axis=1)

    w0 = jnp.asarray(rng.standard_normal((n, 1)))
    return loss, model_fn, output_loss_fn, per_example, w0, (X, y)


def test_hf_preconditioner_reduces_cg_iterations():
    loss, model_fn, out_loss, pel, w0, batch = _scaled_least_squares()
    kw = dict(
        model_fn=model_fn,
        output_loss_fn=out_loss,
        per_example_loss_fn=pel,
        damping=0.0,
        maxiter=1,
        cg_maxiter=400,
        cg_rtol=1e-13,
        martens_eps=0.0,
    )
    plain = _hf(loss, w0, batch, **kw)
    pre = _hf(loss, w0, batch, preconditioner="martens", precond_alpha=1.0, **kw)
    it_plain, it_pre = plain.history["cg_iterations"][1], pre.history["cg_iterations"][1]
    assert it_pre < it_plain / 2, (it_pre, it_plain)
    # one undamped step reaches the least-squares solution (||r|| <= 1e-13 ||g||, ||g|| ~ 1e6 here)
    w_star = np.linalg.lstsq(np.asarray(batch[0]), np.asarray(batch[1]), rcond=None)[0]
    np.testing.assert_allclose(pre.x, w_star, rtol=1e-6, atol=1e-9)


def test_hf_ggn_has_no_negative_curvature_where_hessian_does():
    p = problems.mlp(hidden=(8,), num_examples=64)
    kw = dict(damping=1e-6, maxiter=3, cg_maxiter=60)
    hess = _hf(p, curvature="hessian", **kw)
    ggn = _hf(p, curvature="ggn", **kw)
    assert np.any(hess.history["cg_status"][1:] == Status.NEGATIVE_CURVATURE)
    assert not np.any(ggn.history["cg_status"][1:] == Status.NEGATIVE_CURVATURE)
    assert ggn.fun < ggn.history["loss"][0]


def test_hf_counts_the_cg_product_that_found_negative_curvature():
    """CG on A = diag(1, -1), b = (2, 1) from d0 = 0, counted by hand: r0 = b - A d0 (one product),
    step 1 accepted (A p0, p0 = b, p0ᵀAp0 = 3), step 2 refused (A p1, p1 = (20, 40)/9,
    p1ᵀAp1 = -1200/81): three curvature products for one CG iteration."""
    A, b = jnp.diag(jnp.array([1.0, -1.0])), jnp.array([2.0, 1.0])
    direct = cg(hessian_operator(_quad_loss, jnp.zeros(2), (A, b)), b, x0=jnp.zeros(2))
    assert direct.status is Status.NEGATIVE_CURVATURE
    assert (int(direct.num_iterations), int(direct.num_matvecs)) == (1, 3)
    kw = dict(curvature="hessian", damping=0.0, maxiter=1, line_search=False)
    res = _hf(_quad_loss, jnp.zeros(2), (A, b), **kw)
    h = res.history
    assert h["cg_status"][1] == Status.NEGATIVE_CURVATURE and h["cg_iterations"][1] == 1
    assert h["num_hvps"][0] == 0 and h["num_hvps"][1] == 3 and res.num_hvps == 3
    # the chosen direction is CG's accepted iterate x1 = (5/3) b, a step of the full length
    np.testing.assert_allclose(res.x, 5.0 / 3.0 * np.asarray(b), rtol=1e-12)


def test_hf_logistic_matches_scipy_and_problem_api(logistic, scipy_logistic_optimum):
    res = _hf(logistic, damping=1.0, maxiter=60, gtol=1e-7)
    # the Gauss-Newton matrix misses the L2 term (1e-3 I): damping covers it
    assert res.fun - scipy_logistic_optimum <= 1e-6 * max(1.0, abs(scipy_logistic_optimum))
    # explicit functions give the same run
    res2 = _hf(
        logistic.loss,
        logistic.x0,
        logistic.batch,
        model_fn=logistic.model_fn,
        output_loss_fn=logistic.output_loss_fn,
        damping=1.0,
        maxiter=3,
    )
    np.testing.assert_allclose(res2.history["loss"], res.history["loss"][:4], rtol=1e-12)


def test_hf_fisher_curvature_decreases_loss(logistic):
    res = _hf(logistic, curvature="fisher", damping=1.0, maxiter=5)
    assert res.fun < res.history["loss"][0]
    assert not np.any(res.history["cg_status"][1:] == Status.NEGATIVE_CURVATURE)


def test_history_fields_and_lengths(logistic):
    res = _hf(logistic, maxiter=4)
    assert isinstance(res, OptimizeResult)
    assert res.num_iterations == 4 and res.status == Status.MAX_ITERATIONS
    h = res.history
    assert set(HISTORY_KEYS) <= set(h)
    for key, arr in h.items():
        assert arr.shape == (5,), key
    assert np.all(np.diff(h["num_hvps"]) > 0) and h["num_hvps"][-1] == res.num_hvps
    assert res.num_hvps == int(h["cg_iterations"].sum()) + res.num_iterations
    assert np.all(np.diff(h["time"]) >= 0)
    assert np.all(h["cg_iterations"][1:] >= 1)
    assert np.all(np.isfinite(h["rho"][1:])) and math.isnan(h["rho"][0])
    # damping follows the LM rule from the recorded rho
    for k in range(1, 4):
        assert h["damping"][k + 1] == pytest.approx(float(update_damping(h["damping"][k], h["rho"][k])))
    # other optimizers share the keys
    nres = newton_cg(problems.rosenbrock(2).f, jnp.array([1.3, 0.7]), maxiter=3, gtol=0.0)
    tres = trust_region_newton(problems.rosenbrock(2).f, jnp.array([1.3, 0.7]), maxiter=3, gtol=0.0)
    for r in (nres, tres):
        assert set(HISTORY_KEYS) <= set(r.history)
        assert all(a.shape == (r.num_iterations + 1,) for a in r.history.values())
    assert "radius" in tres.history


@pytest.mark.parametrize("which", ["hf", "newton", "trust"])
def test_callback_can_stop(which, logistic):
    seen = []

    def cb(info):
        assert isinstance(info, IterationInfo)
        seen.append(info.iteration)
        return info.iteration == 3

    if which == "hf":
        res = _hf(logistic, maxiter=10, callback=cb)
    elif which == "newton":
        res = newton_cg(problems.rosenbrock(5).f, problems.rosenbrock(5).x0, maxiter=50, callback=cb)
    else:
        res = trust_region_newton(
            problems.rosenbrock(5).f, problems.rosenbrock(5).x0, maxiter=50, callback=cb
        )
    assert seen == [1, 2, 3]
    assert res.status == Status.CALLBACK and res.num_iterations == 3
    assert len(res.history["loss"]) == 4


def test_no_recompilation_per_iteration(logistic):
    traces = {"n": 0}

    def loss(params, batch):
        traces["n"] += 1  # runs only while JAX traces
        return logistic.loss(params, batch)

    _hf(loss, logistic.x0, logistic.batch, curvature="hessian", maxiter=2)
    first = traces["n"]
    _hf(loss, logistic.x0, logistic.batch, curvature="hessian", maxiter=6)
    assert traces["n"] == first  # same functions and shapes: nothing retraced, whatever maxiter

    count = {"n": 0}

    def f(x):
        count["n"] += 1
        return problems.rosenbrock(5).f(x)

    newton_cg(f, problems.rosenbrock(5).x0, maxiter=2, gtol=0.0)
    first = count["n"]
    newton_cg(f, problems.rosenbrock(5).x0, maxiter=12, gtol=0.0)
    assert count["n"] == first


def test_batching_modes():
    p = problems.logistic_regression(num_examples=192)
    X, y = p.batch
    batches = [(X[i : i + 64], y[i : i + 64]) for i in (0, 64, 128)]
    base = dict(damping=1.0, model_fn=p.model_fn, output_loss_fn=p.output_loss_fn, maxiter=6)
    sep = _hf(p.loss, p.x0, batches, batching="separate", **base)
    sub = _hf(p.loss, p.x0, batches, batching="subsample", curvature_batch_fraction=0.5, **base)
    same = _hf(p.loss, p.x0, batches, batching="same", **base)
    full = float(p.f(p.x0))
    for r in (sep, sub, same):
        assert r.num_iterations == 6
        assert float(p.f(r.x)) < full
    # an iterator is consumed: 3 batches -> 3 iterations, then DATA_EXHAUSTED
    it = _hf(p.loss, p.x0, iter(batches), **base)
    assert it.status == Status.DATA_EXHAUSTED and it.num_iterations == 3
    # "separate" from an iterator consumes two batches per iteration
    it2 = _hf(p.loss, p.x0, iter(batches * 2), batching="separate", **base)
    assert it2.num_iterations == 3
    # a separate curvature stream
    cur = _hf(p.loss, p.x0, batches[0], batching="separate", curvature_batches=batches[1:], **base)
    assert cur.num_iterations == 6


def _rnn_problem(T=6, N=16, H=4, seed=0):
    """A small tanh RNN predicting the running sum of its scalar input (sequence regression)."""
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((N, T, 1)) * 0.5)
    ys = jnp.cumsum(xs, axis=1) * 0.5
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "Wx": 0.5 * jax.random.normal(k[0], (1, H)),
        "Wh": 0.5 * jax.random.normal(k[1], (H, H)),
        "Wo": 0.5 * jax.random.normal(k[2], (H, 1)),
    }

    def hidden(params, inputs):
        def step(h, x):
            h = jnp.tanh(x @ params["Wx"] + h @ params["Wh"])
            return h, h

        _, hs = jax.lax.scan(step, jnp.zeros((inputs.shape[0], H)), jnp.swapaxes(inputs, 0, 1))
        return jnp.swapaxes(hs, 0, 1)  # (N, T, H)

    def model_fn(params, inputs):
        return hidden(params, inputs) @ params["Wo"]

    def output_loss_fn(out, targets):
        return 0.5 * jnp.mean(jnp.sum((out - targets) ** 2, axis=(1, 2)))

    def loss(params, batch):
        return output_loss_fn(model_fn(params, batch[0]), batch[1])

    def hidden_fn(params, batch):
        return hidden(params, batch[0]) / jnp.sqrt(batch[0].shape[0])

    return loss, model_fn, output_loss_fn, hidden_fn, params, (xs, ys)


def test_structural_damping_rnn():
    loss, model_fn, out_loss, hidden_fn, params, batch = _rnn_problem()
    kw = dict(model_fn=model_fn, output_loss_fn=out_loss, hidden_fn=hidden_fn, damping=1.0, line_search=False)
    res = _hf(loss, params, batch, structural_damping=0.3, maxiter=8, **kw)
    assert res.fun < 0.7 * res.history["loss"][0]

    def hidden_change(mu):
        r = _hf(loss, params, batch, structural_damping=mu, maxiter=1, **kw)
        return float(jnp.linalg.norm(hidden_fn(r.x, batch) - hidden_fn(params, batch)))

    # a heavier penalty on hidden-state changes gives a step that changes them less
    assert hidden_change(30.0) < 0.5 * hidden_change(1e-3)


def test_hidden_gram_operator_matches_dense_jacobian():
    _, _, _, hidden_fn, params, batch = _rnn_problem(T=3, N=4, H=3)
    flat, unravel = ravel_pytree(params)
    h = lambda y: hidden_fn(unravel(y), batch).reshape(-1)  # noqa: E731
    J = np.asarray(jax.jacfwd(h)(flat))
    op = _HiddenGramOperator(h, flat)
    v = jnp.asarray(np.random.default_rng(0).standard_normal(flat.size))
    np.testing.assert_allclose(op.matvec(v), J.T @ (J @ np.asarray(v)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.prepare()(v), J.T @ (J @ np.asarray(v)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.sq_norm(v), np.sum((J @ np.asarray(v)) ** 2), rtol=1e-10)


# ---------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------


def test_float32_runs():
    """float32: loss decreases and stays finite; the minimizer is matched to ~1e-3 (rounding at eps ~ 1e-7
    limits the gradient to ~1e-4 on Rosenbrock)."""
    p = problems.logistic_regression(num_examples=128, dtype=jnp.float32)
    res = _hf(p, maxiter=8)
    assert ravel_pytree(res.x)[0].dtype == jnp.float32
    assert np.all(np.isfinite(res.history["loss"]))
    assert res.fun < 0.5 * res.history["loss"][0]

    r = problems.rosenbrock(2, dtype=jnp.float32)
    for opt in (newton_cg, trust_region_newton):
        out = opt(r.f, r.x0, gtol=1e-4, maxiter=200)
        assert out.x.dtype == jnp.float32
        assert out.status in (Status.CONVERGED, Status.LINE_SEARCH_FAILED), out.message
        assert float(jnp.max(jnp.abs(out.x - 1.0))) < 1e-3


# ---------------------------------------------------------------------------
# configuration errors: raised before any work
# ---------------------------------------------------------------------------


@pytest.fixture
def counted():
    p = problems.logistic_regression(num_examples=32)
    calls = {"n": 0}

    def loss(params, batch):
        calls["n"] += 1
        return p.loss(params, batch)

    return loss, p, calls


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(damping=-1.0), "damping"),
        (dict(precond_alpha=0.0, preconditioner="martens"), "precond_alpha"),
        (dict(precond_alpha=1.5), "precond_alpha"),
        (dict(curvature="newton"), "curvature"),
        (dict(curvature="ggn", model_fn=None), "model_fn"),
        (dict(curvature="ggn", output_loss_fn=None), "output_loss_fn"),
        (dict(curvature="fisher", per_example_loss_fn=None), "per_example_loss_fn"),
        (dict(preconditioner="martens", per_example_loss_fn=None), "per_example_loss_fn"),
        (dict(preconditioner="jacobi"), "preconditioner"),
        (dict(batching="random"), "batching"),
        (dict(batching="separate"), "at least two batches"),
        (dict(batching="subsample", curvature_batch_fraction=0.0), "curvature_batch_fraction"),
        (dict(structural_damping=0.1), "hidden_fn"),
        (dict(structural_damping=-0.1), "structural_damping"),
        (dict(cg_decay=1.5), "cg_decay"),
        (dict(rho_model="exact"), "rho_model"),
        (dict(batches=[]), "empty"),
        (dict(batches=iter([])), "empty"),
        (dict(maxiter=-1), "maxiter"),
    ],
)
def test_hf_bad_config(counted, kwargs, match):
    loss, p, calls = counted
    kw = dict(
        model_fn=p.model_fn,
        output_loss_fn=p.output_loss_fn,
        per_example_loss_fn=p.per_example_loss_fn,
    )
    kw.update(kwargs)
    batches = kw.pop("batches", p.batch)
    with pytest.raises(ValueError, match=match):
        _hf(loss, p.x0, batches, **kw)
    assert calls["n"] == 0  # nothing was evaluated or traced


def test_hf_bad_types(counted):
    loss, p, calls = counted
    with pytest.raises(TypeError, match="callback"):
        _hf(loss, p.x0, p.batch, curvature="hessian", callback=3)
    with pytest.raises(TypeError, match="loss_fn"):
        _hf(3, p.x0, p.batch)
    with pytest.raises(ValueError, match="params"):
        _hf(loss, None, p.batch, curvature="hessian")
    with pytest.raises(ValueError, match="non-finite"):
        _hf(loss, jax.tree_util.tree_map(lambda a: a * jnp.nan, p.x0), p.batch, curvature="hessian")
    assert calls["n"] == 0


@pytest.mark.parametrize(
    ("opt", "kwargs", "match"),
    [
        (newton_cg, dict(line_search="wolfe"), "line_search"),
        (newton_cg, dict(forcing="fast"), "forcing"),
        (newton_cg, dict(gtol=-1.0), "gtol"),
        (newton_cg, dict(forcing_constant=1.0), "forcing_constant"),
        (newton_cg, dict(cg_maxiter=0), "cg_maxiter"),
        (trust_region_newton, dict(radius0=0.0), "radius0"),
        (trust_region_newton, dict(radius0=10.0, max_radius=1.0), "max_radius"),
        (trust_region_newton, dict(eta=0.5), "eta"),
    ],
)
def test_newton_bad_config(opt, kwargs, match):
    calls = {"n": 0}

    def f(x):
        calls["n"] += 1
        return jnp.sum(x**2)

    with pytest.raises(ValueError, match=match):
        opt(f, jnp.ones(3), **kwargs)
    assert calls["n"] == 0


def test_newton_rejects_integer_start():
    with pytest.raises(TypeError, match="x0"):
        newton_cg(lambda x: jnp.sum(x**2), jnp.arange(3))


def test_result_status_message_and_converged():
    assert "message" not in OptimizeResult._fields  # a property, derived from the status
    res = newton_cg(lambda x: jnp.sum(x**2), jnp.ones(2), maxiter=0)
    assert res.status is Status.MAX_ITERATIONS and res.num_iterations == 0
    assert res.message.startswith(Status.MAX_ITERATIONS.message) and "maxiter" in res.message
    assert res.converged is False
    ok = newton_cg(lambda x: jnp.sum(x**2), jnp.ones(2))
    assert ok.status is Status.CONVERGED and ok.converged is True


def test_fisher_diagonal_matches_dense_per_example_gradients():
    from curvlab.preconditioners import empirical_fisher_diagonal

    p = problems.mlp(hidden=(5,), num_examples=37)  # 37: not a multiple of the chunk size
    flat, unravel = ravel_pytree(p.x0)

    def pel(y, batch):
        return p.per_example_loss_fn(unravel(y), batch)

    G = np.asarray(jax.jacrev(pel)(flat, tuple(p.batch)))  # (N, n) per-example gradients
    out = empirical_fisher_diagonal(pel, flat, tuple(p.batch), chunk_size=8)
    np.testing.assert_allclose(out, np.mean(G**2, axis=0), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------
# the shared loop: status, throw, counts, jit, degenerate input
# ---------------------------------------------------------------------------


def test_update_damping_rejects_bad_input_before_work():
    with pytest.raises(ValueError, match="damping"):
        update_damping(-1.0, 0.5)
    with pytest.raises(ValueError, match="damping"):
        update_damping(math.inf, 0.5)
    with pytest.raises(ValueError, match="rho"):
        update_damping(1.0, math.nan)
    with pytest.raises(ValueError, match="rho"):
        update_damping(1.0, jnp.array([0.5, math.inf]))
    with pytest.raises(ValueError, match="lower"):
        update_damping(1.0, 0.5, lower=0.9, upper=0.1)
    with pytest.raises(ValueError, match="decrease"):
        update_damping(1.0, 0.5, decrease=0.0)
    with pytest.raises(TypeError, match="damping"):
        update_damping(1.0 + 1.0j, 0.5)
    # traced: NaN (no valid model decrease) counts as a bad step and raises the damping
    assert float(jax.jit(update_damping)(1.0, jnp.nan)) == pytest.approx(1.5, rel=1e-15)


def test_hf_nan_batch_returns_last_finite_params_with_nonfinite():
    p = problems.logistic_regression(num_examples=64)
    X, y = p.batch
    good = (X, y)
    bad = (X.at[3, 0].set(jnp.nan), y)
    ref = _hf(p.loss, p.x0, [good], model_fn=p.model_fn, output_loss_fn=p.output_loss_fn, maxiter=1)
    res = _hf(
        p.loss, p.x0, [good, bad, good], model_fn=p.model_fn, output_loss_fn=p.output_loss_fn, maxiter=5
    )
    assert res.status is Status.NONFINITE and res.num_iterations == 2
    leaves = jax.tree_util.tree_leaves(res.x)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    np.testing.assert_allclose(ravel_pytree(res.x)[0], ravel_pytree(ref.x)[0], rtol=0, atol=0)
    assert res.history["step_length"][2] == 0.0
    with pytest.raises(SolverError, match="NONFINITE"):
        _hf(
            p.loss,
            p.x0,
            [good, bad],
            model_fn=p.model_fn,
            output_loss_fn=p.output_loss_fn,
            maxiter=5,
            throw=True,
        )


def test_hf_nan_first_batch_returns_start():
    A, b, _ = _quadratic(n=4)
    res = _hf(_quad_loss, jnp.ones(4), (A, b * jnp.nan), curvature="hessian", maxiter=3)
    assert res.status is Status.NONFINITE and res.num_iterations == 0
    np.testing.assert_array_equal(res.x, jnp.ones(4))


@pytest.mark.parametrize("which", ["hf", "newton", "trust"])
def test_throw_raises_solver_error_on_failure(which):
    A, b, _ = _quadratic(n=6, cond=1e3)
    if which == "hf":
        run = lambda **kw: _hf(
            _quad_loss, jnp.zeros(6), (A, b), curvature="hessian", maxiter=1, cg_maxiter=2, **kw
        )  # noqa: E731
    else:
        opt = newton_cg if which == "newton" else trust_region_newton
        run = lambda **kw: opt(_quad_loss, jnp.zeros(6), (A, b), maxiter=1, cg_maxiter=2, **kw)  # noqa: E731
    assert run().status is Status.MAX_ITERATIONS
    with pytest.raises(SolverError, match="MAX_ITERATIONS"):
        run(throw=True)
    with pytest.raises(TypeError, match="throw"):
        run(throw="yes")


def test_newton_counts_function_and_gradient_evaluations():
    A, b, x_star = _quadratic(n=5)
    # the full Newton step is accepted at t = 1: one trial f(x + p), one f and gradient at the new point
    res = newton_cg(_quad_loss, jnp.zeros(5), (A, b), gtol=1e-9, maxiter=3)
    k = res.num_iterations
    assert res.num_grad_evals == k + 1
    assert res.num_fun_evals == 1 + 2 * k
    np.testing.assert_array_equal(res.history["num_grad_evals"], np.arange(1, k + 2))
    tr = trust_region_newton(_quad_loss, jnp.zeros(5), (A, b), gtol=1e-9, radius0=1e3, max_radius=1e4)
    assert tr.num_fun_evals == 1 + 2 * tr.num_iterations and tr.num_grad_evals == 1 + tr.num_iterations
    # HF without backtracking and line search: f and g on the batch, f(theta + d)
    hf = _hf(_quad_loss, jnp.zeros(5), (A, b), curvature="hessian", maxiter=3, cg_backtracking=False,
             line_search=False, gtol=0.0)  # fmt: skip
    assert hf.num_fun_evals == 1 + 2 * 3 and hf.num_grad_evals == 1 + 3
    # with backtracking: one f per saved candidate that CG reached, plus line-search trials
    hf2 = _hf(_quad_loss, jnp.zeros(5), (A, b), curvature="hessian", maxiter=1)
    assert hf2.num_fun_evals >= 3


def test_optimizers_under_user_jit_raise_one_clear_error():
    f = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    for opt in (newton_cg, trust_region_newton):
        with pytest.raises(ValueError, match="cannot run under jax.jit"):
            jax.jit(lambda x, opt=opt: opt(f, x).x)(jnp.zeros(3))
    A, b, _ = _quadratic(n=3)
    with pytest.raises(ValueError, match="cannot run under jax.jit"):
        jax.jit(lambda b: newton_cg(_quad_loss, jnp.zeros(3), (A, b)).x)(b)
    with pytest.raises(ValueError, match="cannot run under jax.jit"):
        jax.jit(lambda x: _hf(_quad_loss, x, (A, b), curvature="hessian").x)(jnp.zeros(3))
    with pytest.raises(ValueError, match="gtol is traced"):
        jax.jit(lambda t: newton_cg(f, jnp.zeros(3), gtol=t).x)(1e-6)
    with pytest.raises(ValueError, match="config is traced"):
        jax.jit(lambda d: _hf(_quad_loss, np.zeros(3), (A, b), curvature="hessian", damping=d).x)(1.0)


def test_complex_and_integer_starts_rejected():
    for opt in (newton_cg, trust_region_newton):
        with pytest.raises(TypeError, match="complex"):
            opt(lambda x: jnp.sum(jnp.abs(x) ** 2), jnp.ones(2, jnp.complex128))
        with pytest.raises(TypeError, match="floating-point"):
            opt(lambda x: jnp.sum(x**2), jnp.arange(3))
    A, b, _ = _quadratic(n=3)
    with pytest.raises(TypeError, match="complex"):
        _hf(_quad_loss, jnp.ones(3, jnp.complex128), (A, b), curvature="hessian")


def test_one_dimensional_problem():
    f = lambda x: jnp.sum((x - 3.0) ** 2 + 0.1 * x**4)  # noqa: E731
    # f'(x) = 2 (x - 3) + 0.4 x^3 = 0 has the real root x* (solved by numpy)
    roots = np.roots([0.4, 0.0, 2.0, -6.0])
    x_star = float(roots[np.abs(roots.imag) < 1e-12].real[0])
    for opt in (newton_cg, trust_region_newton):
        res = opt(f, jnp.zeros(1), gtol=1e-12)
        assert res.status is Status.CONVERGED
        np.testing.assert_allclose(res.x, [x_star], rtol=1e-12)
    A = jnp.array([[2.0]])
    res = _hf(_quad_loss, jnp.zeros(1), (A, jnp.array([4.0])), curvature="hessian", damping=0.0, maxiter=1)
    np.testing.assert_allclose(res.x, [2.0], rtol=1e-12)


def test_singular_quadratic_newton_takes_a_minimizer():
    """A PSD Hessian with a null space: CG from 0 stays in the range, giving the minimum-norm minimizer."""
    A = jnp.asarray(matrix_with_spectrum(np.array([0.0, 0.0, 1.0, 2.0, 5.0]), seed=7))
    xs = jnp.asarray(np.random.default_rng(8).standard_normal(5))
    b = A @ xs  # consistent: b in range(A)
    res = newton_cg(_quad_loss, jnp.zeros(5), (A, b), gtol=1e-10)
    assert res.status is Status.CONVERGED
    np.testing.assert_allclose(res.x, np.linalg.pinv(np.asarray(A)) @ np.asarray(b), rtol=1e-8, atol=1e-9)


def test_hfconfig_validation_names_the_field():
    A, b, _ = _quadratic(n=3)
    for cfg, field in (
        (HFConfig(cg_decay=1.5), "HFConfig.cg_decay"),
        (HFConfig(damping=-1.0), "HFConfig.damping"),
        (HFConfig(maxiter=-2), "HFConfig.maxiter"),
        (HFConfig(curvature="exact"), "HFConfig.curvature"),
        (HFConfig(precond_alpha=0.0), "HFConfig.precond_alpha"),
        (HFConfig(gtol=math.nan), "HFConfig.gtol"),
    ):
        with pytest.raises(ValueError, match=field):
            cfg.validate()
        with pytest.raises(ValueError, match=field):
            hessian_free(_quad_loss, jnp.zeros(3), (A, b), config=cfg)
    with pytest.raises(TypeError, match="HFConfig.line_search"):
        HFConfig(line_search=1).validate()
    with pytest.raises(TypeError, match="config"):
        hessian_free(_quad_loss, jnp.zeros(3), (A, b), config={"damping": 1.0})
    assert HFConfig().validate() == HFConfig()


@pytest.mark.parametrize(
    ("opt", "expected"),
    [(newton_cg, (30, 91, 91)), (trust_region_newton, (35, 111, 71))],
)
def test_newton_counts_on_rosenbrock5_are_pinned(opt, expected):
    """Iterations, HVPs and function evaluations recorded before the steps were split into named
    phases (direction, line search / ratio, radius update): the refactor changed no iterate.
    Newton-CG's HVPs went from 87 to 91 when the CG products that found negative curvature (four
    passes here) started to count; the iterates did not change."""
    prob = problems.rosenbrock(5)
    res = opt(prob.f, prob.x0, gtol=1e-8)
    assert res.status is Status.CONVERGED
    assert (res.num_iterations, res.num_hvps, res.num_fun_evals) == expected
    assert res.num_grad_evals == res.num_iterations + 1


def test_hf_counts_on_mlp_are_pinned():
    """A short HF run on the digits MLP, counts recorded before hessian_free and its step were split
    into named phases (CG solve, backtracking, rho, damping update, line search)."""
    prob = problems.mlp(hidden=(16,), num_examples=256)
    res = _hf(prob, maxiter=6, cg_maxiter=50)
    assert res.status is Status.MAX_ITERATIONS and res.num_iterations == 6
    assert (res.num_hvps, res.num_fun_evals, res.num_grad_evals) == (82, 61, 7)
    np.testing.assert_array_equal(res.history["cg_iterations"], [0, 13, 12, 12, 13, 13, 13])
    # hvps: each warm-started CG spends one matvec on its initial residual
    np.testing.assert_array_equal(np.diff(res.history["num_hvps"]), res.history["cg_iterations"][1:] + 1)
    assert res.fun == pytest.approx(0.46639120292275554, rel=1e-9)


def test_newton_counts_the_cg_product_that_found_negative_curvature():
    """f = ½xᵀAx - bᵀx, A = diag(1, -1): the first CG pass from 0 spends A p0 (accepted) and A p1
    (refused: p1ᵀAp1 < 0); the history counts both, as CG's own ``num_matvecs`` does."""
    A, b = jnp.diag(jnp.array([1.0, -1.0])), jnp.array([2.0, 1.0])
    res = newton_cg(_quad_loss, jnp.zeros(2), (A, b), maxiter=1)
    h = res.history
    assert h["cg_status"][1] == Status.NEGATIVE_CURVATURE
    direct = cg(hessian_operator(_quad_loss, jnp.zeros(2), (A, b)), b, maxiter=10)
    assert int(direct.num_iterations) < int(direct.num_matvecs)
    assert h["num_hvps"][1] >= int(direct.num_matvecs)
    assert h["num_hvps"][1] - h["num_hvps"][0] == res.num_hvps

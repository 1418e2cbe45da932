"""Tests for curvlab._hvp: every mode against dense jax.hessian references, FD error orders, checks.

Tolerances
----------
float64: products agree with the dense reference to ``rtol = 1e-10`` with an
absolute floor of ``1e-10 * ||H||_2 * ||v||`` (entries of ``Hv`` that cancel to
near zero cannot be held to a relative bound).

float32: products of the float32 problem agree with the float64 dense reference
to ``1e-4 * ||H||_2 * ||v||`` in the 2-norm (float32 unit roundoff is 6e-8; the
sums over examples and layers lose a few digits, and the float32 data are the
float64 data rounded).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from curvlab import problems
from curvlab._curvature import ggn_operator
from curvlab._hvp import (
    FD_SCHEMES,
    HVP_MODES,
    directional_curvature,
    fd_default_eps,
    fd_hvp,
    gnvp,
    hvp,
    hvp_fn,
)
from tests.reference import dense_ggn, dense_hessian, matrix_with_spectrum

RTOL64 = 1e-10
TOL32 = 1e-4

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def zoo(dtype=None):
    """Every problem of the zoo at a small size."""
    return {
        "quadratic": problems.quadratic(eigenvalues=[-2.0, 0.5, 1.0, 3.0, 10.0], dtype=dtype),
        "rosenbrock": problems.rosenbrock(5, dtype=dtype),
        "seed": problems.seed_example(dtype=dtype),
        "himmelblau": problems.himmelblau(dtype=dtype),
        "logistic": problems.logistic_regression(num_examples=32, dtype=dtype),
        "mlp": problems.mlp(hidden=(5,), num_examples=16, dtype=dtype),
        "autoencoder": problems.autoencoder(widths=(64, 4, 2, 4, 64), num_examples=8, dtype=dtype),
    }


ZOO_NAMES = ["quadratic", "rosenbrock", "seed", "himmelblau", "logistic", "mlp", "autoencoder"]
#: problems with a closed-form ``hessian_fn``
CLOSED_FORM = ["quadratic", "rosenbrock", "seed", "himmelblau"]

_ZOO_CACHE = {}


def get_problem(name, dtype=None):
    key = str(dtype)
    if key not in _ZOO_CACHE:
        _ZOO_CACHE[key] = zoo(dtype)
    return _ZOO_CACHE[key][name]


_DENSE_CACHE = {}


def dense_at(name):
    """``(x, H)``: a test point of the float64 problem and its dense ``jax.hessian`` (cached)."""
    if name not in _DENSE_CACHE:
        p = get_problem(name)
        x = point_near(p)
        _DENSE_CACHE[name] = (x, dense_hessian(p.f, x))
    return _DENSE_CACHE[name]


def test_zoo_lists_are_complete():
    get_problem(ZOO_NAMES[0])
    problems_ = _ZOO_CACHE[str(None)]
    assert sorted(ZOO_NAMES) == sorted(problems_)
    assert len({p.name for p in problems_.values()}) == len(ZOO_NAMES)
    assert sorted(CLOSED_FORM) == sorted(n for n, p in problems_.items() if p.hessian_fn is not None)


def point_near(p, seed=0, scale=0.3):
    """x0 plus a random perturbation (so the point is not special)."""
    flat, unravel = ravel_pytree(p.x0)
    rng = np.random.default_rng(seed)
    return unravel(flat + scale * jnp.asarray(rng.standard_normal(flat.shape), flat.dtype))


def random_like(x, seed):
    flat, unravel = ravel_pytree(x)
    rng = np.random.default_rng(seed)
    return unravel(jnp.asarray(rng.standard_normal(flat.shape), flat.dtype))


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def assert_product_close(hv, H, v, rtol=RTOL64):
    hv, v = flat(hv), flat(v)
    ref = H @ v
    scale = np.linalg.norm(H, 2) * np.linalg.norm(v)
    np.testing.assert_allclose(hv, ref, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------
# float64 against dense references, every problem x every mode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", HVP_MODES)
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_hvp_matches_dense_hessian(name, mode):
    p = get_problem(name)
    x, H = dense_at(name)
    for seed in range(2):
        v = random_like(x, seed + 10)
        assert_product_close(hvp(p.f, x, v, mode=mode), H, v)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_hvp_matches_closed_form_hessian(name):
    p = get_problem(name)
    for x in (p.x0, point_near(p, seed=3)):
        H = np.asarray(p.hessian_fn(x))
        for mode in HVP_MODES:
            v = random_like(x, 4)
            assert_product_close(hvp(p.f, x, v, mode=mode), H, v)


@pytest.mark.parametrize("mode", HVP_MODES)
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_hvp_float32(name, mode):
    """float32 products within TOL32 * ||H|| ||v|| of the float64 reference (see module docstring)."""
    p32 = get_problem(name, jnp.float32)
    x64, H = dense_at(name)
    x32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), x64)
    v64 = random_like(x64, 5)
    v32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), v64)
    hv = hvp(p32.f, x32, v32, mode=mode)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(hv))
    err = np.linalg.norm(flat(hv).astype(np.float64) - H @ flat(v64))
    assert err <= TOL32 * np.linalg.norm(H, 2) * np.linalg.norm(flat(v64))


# ---------------------------------------------------------------------------
# pytrees, extra arguments, hvp_fn
# ---------------------------------------------------------------------------


def nested_f(p, scale=1.0):
    a, (b, c) = p["a"], p["bc"]
    return scale * (
        jnp.sum(jnp.sin(a) * jnp.cos(b[0]))
        + jnp.sum(b[1] ** 3) * jnp.sum(c["d"])
        + jnp.exp(jnp.sum(a) / 10.0)
    )


def nested_point():
    return {
        "a": jnp.array([0.3, -1.2, 0.7]),
        "bc": ([jnp.array([0.1, 0.2, -0.4]), jnp.array([[1.0, 2.0], [-0.5, 0.4]])], {"d": jnp.array(0.8)}),
    }


@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_nested_pytree(mode):
    x = nested_point()
    v = random_like(x, 1)
    out = hvp(nested_f, x, v, mode=mode)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(x)
    leaves = zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(x))
    assert all(a.shape == b.shape for a, b in leaves)
    assert_product_close(out, dense_hessian(nested_f, x), v)


def quad_with_args(x, A, b, c):
    return 0.5 * x @ A @ x - b @ x + c * jnp.sum(x**4)


@pytest.mark.parametrize("mode", HVP_MODES)
def test_extra_args_passthrough(mode):
    A = jnp.asarray(matrix_with_spectrum([1.0, 2.0, 5.0, -3.0]))
    b, c = jnp.arange(4.0), 0.25
    x, v = jnp.array([0.5, -1.0, 2.0, 0.1]), jnp.array([1.0, 0.5, -0.3, 2.0])
    H = dense_hessian(quad_with_args, x, A, b, c)
    np.testing.assert_allclose(H, np.asarray(A) + np.diag(12 * c * np.asarray(x) ** 2), rtol=1e-12)
    assert_product_close(hvp(quad_with_args, x, v, A, b, c, mode=mode), H, v)
    for linearize in (False, True):
        prod = hvp_fn(quad_with_args, x, A, b, c, mode=mode, linearize=linearize)
        assert_product_close(prod(v), H, v)
    # args really reach f: another A gives another Hessian
    H2 = dense_hessian(quad_with_args, x, 2 * A, b, c)
    assert_product_close(hvp(quad_with_args, x, v, 2 * A, b, c, mode=mode), H2, v)
    assert not np.allclose(H2 @ np.asarray(v), H @ np.asarray(v))


@pytest.mark.parametrize("linearize", [False, True])
@pytest.mark.parametrize("name", ["mlp", "rosenbrock"])
def test_hvp_fn_matches_dense(name, linearize):
    p = get_problem(name)
    x, H = dense_at(name)
    prod = hvp_fn(p.f, x, linearize=linearize)
    for seed in range(3):
        v = random_like(x, seed)
        assert_product_close(prod(v), H, v)


def test_hvp_fn_checks_direction():
    prod = hvp_fn(nested_f, nested_point(), linearize=True)
    bad = nested_point()
    bad["a"] = jnp.ones(4)
    with pytest.raises(ValueError, match=r"shape mismatch at leaf \['a'\]"):
        prod(bad)


# ---------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", HVP_MODES)
def test_symmetry(mode):
    p = get_problem("mlp")
    x = point_near(p)
    u, v = random_like(x, 1), random_like(x, 2)
    uHv = float(flat(u) @ flat(hvp(p.f, x, v, mode=mode)))
    vHu = float(flat(v) @ flat(hvp(p.f, x, u, mode=mode)))
    assert abs(uHv - vHu) <= 1e-10 * max(abs(uHv), 1e-3)


def test_modes_agree():
    p = get_problem("autoencoder")
    x, v = point_near(p), random_like(p.x0, 7)
    ref = flat(hvp(p.f, x, v, mode="fwd_rev"))
    for mode in HVP_MODES[1:]:
        np.testing.assert_allclose(flat(hvp(p.f, x, v, mode=mode)), ref, rtol=1e-10, atol=1e-12)


def test_directional_curvature_at_eigenvectors():
    lam = np.array([-2.0, 0.5, 1.0, 3.0, 10.0])
    p = problems.quadratic(eigenvalues=lam)
    w, Q = np.linalg.eigh(np.asarray(p.matrix))
    np.testing.assert_allclose(w, lam, rtol=1e-12, atol=1e-12)
    x = jnp.ones(5)
    for i in range(5):
        for mode in HVP_MODES:
            c = directional_curvature(p.f, x, jnp.asarray(3.0 * Q[:, i]), mode=mode)
            np.testing.assert_allclose(float(c), lam[i], rtol=1e-10)


def test_directional_curvature_mlp_eigenvector_and_rayleigh_quotient():
    p = get_problem("mlp")
    x, H = dense_at("mlp")
    w, Q = np.linalg.eigh(H)
    unravel = ravel_pytree(x)[1]
    for i in (0, len(w) - 1):  # most negative and most positive curvature
        c = directional_curvature(p.f, x, unravel(jnp.asarray(Q[:, i])))
        np.testing.assert_allclose(float(c), w[i], rtol=1e-9, atol=1e-10 * np.abs(w).max())
    v = random_like(x, 3)
    fv = flat(v)
    np.testing.assert_allclose(float(directional_curvature(p.f, x, v)), fv @ H @ fv / (fv @ fv), rtol=1e-10)


def test_directional_curvature_zero_direction():
    with pytest.raises(ValueError, match="v must be non-zero"):
        directional_curvature(lambda x: jnp.sum(x**2), jnp.ones(3), jnp.zeros(3))


@pytest.mark.parametrize("name", ["mlp", "autoencoder", "logistic"])
def test_gnvp_matches_dense(name):
    p = get_problem(name)
    x = point_near(p)
    G = dense_ggn(p.model_fn, p.output_loss_fn, x, p.batch)
    v = random_like(x, 2)
    out = gnvp(p.model_fn, p.output_loss_fn, x, p.batch, v)
    assert_product_close(out, G, v)
    assert np.linalg.eigvalsh(G).min() >= -1e-10 * np.linalg.norm(G, 2)


def test_gnvp_is_the_ggn_operator_kernel():
    p = get_problem("mlp")
    x, v = point_near(p), random_like(p.x0, 3)
    op = ggn_operator(p.model_fn, p.output_loss_fn, x, p.batch)
    np.testing.assert_allclose(
        flat(gnvp(p.model_fn, p.output_loss_fn, x, p.batch, v)), op @ flat(v), rtol=1e-12, atol=1e-15
    )


def test_gnvp_equals_hvp_for_linear_model():
    """Softmax regression without penalty: the model is linear, so GGN = Hessian."""
    p = problems.logistic_regression(num_examples=32, l2=0.0)
    x, v = point_near(p), random_like(p.x0, 1)
    out = gnvp(p.model_fn, p.output_loss_fn, x, p.batch, v)
    np.testing.assert_allclose(flat(out), flat(hvp(p.f, x, v)), rtol=1e-10, atol=1e-14)


def test_gnvp_bad_arguments():
    sq = lambda z, t: jnp.sum((z - t) ** 2)  # noqa: E731
    lin = lambda w, x: x @ w  # noqa: E731
    X, y = jnp.ones((2, 3)), jnp.zeros(2)
    with pytest.raises(ValueError, match="scalar"):
        gnvp(lin, lambda z, t: z**2, jnp.ones(3), (X, y), jnp.ones(3))
    with pytest.raises(ValueError, match=r"batch must be a pair \(inputs, targets\)"):
        gnvp(lin, sq, jnp.ones(3), X, jnp.ones(3))
    with pytest.raises(TypeError, match="floating-point leaves"):
        gnvp(lin, sq, jnp.arange(3), (X, y), jnp.ones(3))
    with pytest.raises(TypeError, match="v is complex"):
        gnvp(lin, sq, jnp.ones(3), (X, y), jnp.ones(3, jnp.complex128))


# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------


def smooth_f(x):
    return jnp.sum(jnp.exp(0.5 * x)) + jnp.sum(jnp.sin(x[:-1] * x[1:])) + 0.1 * jnp.sum(x**4)


def _fd_errors(scheme, eps_grid, dtype=jnp.float64):
    x = jnp.asarray([0.3, -0.7, 1.1, 0.4, -0.2], dtype)
    v = jnp.asarray([1.0, -0.5, 0.25, 0.8, -1.2], dtype)
    exact = np.asarray(hvp(smooth_f, x.astype(jnp.float64), v.astype(jnp.float64)))
    errs = [
        np.linalg.norm(np.asarray(fd_hvp(smooth_f, x, v, eps=h, scheme=scheme), np.float64) - exact)
        / np.linalg.norm(exact)
        for h in eps_grid
    ]
    return x, v, exact, np.array(errs)


@pytest.mark.parametrize(
    ("scheme", "order", "grid"), [("forward", 1, (1e-6, 1e-3)), ("central", 2, (1e-4, 1e-2))]
)
def test_fd_error_order(scheme, order, grid):
    """Truncation-dominated range in float64: error ~ eps**order (log-log slope within 0.2)."""
    eps = np.geomspace(*grid, 7)
    _, _, _, errs = _fd_errors(scheme, eps)
    slope = np.polyfit(np.log(eps), np.log(errs), 1)[0]
    assert abs(slope - order) <= 0.2, (scheme, slope, errs)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("scheme", FD_SCHEMES)
def test_fd_default_eps_near_optimum(scheme, dtype):
    """The default step's error is within 10x of the best error over a sweep of steps."""
    eps = np.geomspace(1e-12 if dtype == jnp.float64 else 1e-7, 1e-1, 41)
    x, v, exact, errs = _fd_errors(scheme, eps, dtype)
    default = np.asarray(fd_hvp(smooth_f, x, v, scheme=scheme), np.float64)
    err_default = np.linalg.norm(default - exact) / np.linalg.norm(exact)
    assert err_default <= 10 * errs.min(), (err_default, errs.min(), eps[errs.argmin()])
    # and the sweep really has a minimum inside: both ends are much worse
    assert errs[0] > 100 * errs.min() and errs[-1] > 100 * errs.min()


def test_fd_default_eps_values():
    mach64, mach32 = np.finfo(np.float64).eps, np.finfo(np.float32).eps
    x, v = jnp.full(4, 0.25), jnp.array([1.0, 0.0, 0.0, 0.0])
    assert fd_default_eps(x, v, "central") == pytest.approx(mach64 ** (1 / 3))
    assert fd_default_eps(x, v, "forward") == pytest.approx(mach64**0.5)
    x32, v32 = x.astype(jnp.float32), v.astype(jnp.float32)
    assert fd_default_eps(x32, v32, "central") == pytest.approx(mach32 ** (1 / 3))
    assert fd_default_eps(x32, v32, "forward") == pytest.approx(mach32**0.5)
    # scaled by max(1, ||x||) / ||v||: ||x|| = 4, ||v|| = 2
    assert fd_default_eps(jnp.full(4, 2.0), 2 * v, "central") == pytest.approx(mach64 ** (1 / 3) * 4 / 2)
    # pytrees: norms over all leaves
    xt = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    vt = {"a": jnp.array([0.5]), "b": jnp.array([0.0])}
    assert fd_default_eps(xt, vt, "forward") == pytest.approx(mach64**0.5 * 5 / 0.5)
    assert fd_default_eps(x, jnp.zeros(4)) == pytest.approx(mach64 ** (1 / 3))
    with pytest.raises(ValueError, match="scheme"):
        fd_default_eps(x, v, "backward")


@pytest.mark.parametrize("scheme", FD_SCHEMES)
def test_fd_default_step_is_fd_default_eps_and_works_under_jit(scheme):
    x = jnp.asarray([0.3, -0.7, 1.1, 0.4, -0.2]) * 5
    v = jnp.asarray([1.0, -0.5, 0.25, 0.8, -1.2]) / 7
    explicit = fd_hvp(smooth_f, x, v, eps=fd_default_eps(x, v, scheme), scheme=scheme)
    np.testing.assert_allclose(fd_hvp(smooth_f, x, v, scheme=scheme), explicit, rtol=1e-12)
    jitted = jax.jit(lambda y, w: fd_hvp(smooth_f, y, w, scheme=scheme))(x, v)
    np.testing.assert_allclose(jitted, explicit, rtol=1e-12)
    # a traced step (vmap over a grid of steps) gives the same as the loop
    grid = jnp.array([1e-4, 1e-3, 1e-2])
    swept = jax.vmap(lambda h: fd_hvp(smooth_f, x, v, eps=h, scheme=scheme))(grid)
    for h, row in zip(grid, swept):
        np.testing.assert_allclose(row, fd_hvp(smooth_f, x, v, eps=float(h), scheme=scheme), rtol=1e-12)


def test_fd_hvp_pytree_and_args():
    x = nested_point()
    v = random_like(x, 4)
    H = dense_hessian(nested_f, x, 2.0)
    out = fd_hvp(nested_f, x, v, 2.0)
    ref = H @ flat(v)
    assert np.linalg.norm(flat(out) - ref) <= 1e-8 * np.linalg.norm(ref)


def test_fd_hvp_bad_arguments():
    f, x = (lambda y: jnp.sum(y**3)), jnp.ones(3)
    with pytest.raises(ValueError, match="scheme"):
        fd_hvp(f, x, x, scheme="upwind")
    for bad in (0.0, -1e-3, np.inf, np.nan):
        with pytest.raises(ValueError, match="eps"):
            fd_hvp(f, x, x, eps=bad)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_wrong_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        hvp(smooth_f, jnp.ones(5), jnp.ones(5), mode="fwd_fwd")
    with pytest.raises(ValueError, match="mode must be one of"):
        hvp_fn(smooth_f, jnp.ones(5), mode="reverse")


def test_nonscalar_f():
    msg = r"f must return a scalar \(shape \(\)\), got output of shape \(3,\)"
    with pytest.raises(ValueError, match=msg):
        hvp(lambda x: x**2, jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="scalar"):
        hvp_fn(lambda x: x**2, jnp.ones(3))
    with pytest.raises(ValueError, match="scalar"):
        fd_hvp(lambda x: x**2, jnp.ones(3), jnp.ones(3))


def test_integer_output_is_type_error():
    with pytest.raises(TypeError, match="floating"):
        hvp(lambda x: jnp.sum(x).astype(jnp.int32), jnp.ones(3), jnp.ones(3))


def test_structure_mismatch_names_leaf_path():
    x = nested_point()
    v = nested_point()
    v["bc"][1]["e"] = jnp.array(1.0)  # extra key in the inner dict
    with pytest.raises(ValueError, match=r"same pytree structure.*\['bc'\]\[1\]\['e'\]"):
        hvp(nested_f, x, v)
    v = nested_point()
    del v["bc"][0][1]
    with pytest.raises(ValueError, match=r"same pytree structure.*\['bc'\]\[0\]\[1\]"):
        hvp(nested_f, x, v)


def test_structure_mismatch_same_paths_different_containers():
    x = [jnp.ones(2), jnp.ones(2)]
    with pytest.raises(ValueError, match="containers differ"):
        hvp(lambda p: jnp.sum(p[0] * p[1]), x, tuple(x))


def test_shape_mismatch():
    x = nested_point()
    v = nested_point()
    v["bc"][0][1] = jnp.ones((2, 3))
    msg = r"shape mismatch at leaf \['bc'\]\[0\]\[1\]: x has \(2, 2\), v has \(2, 3\)"
    with pytest.raises(ValueError, match=msg):
        hvp(nested_f, x, v)


@pytest.mark.parametrize(
    "bad, match",
    [(jnp.arange(3), "floating-point leaves"), (jnp.ones(3, jnp.complex64), "is complex")],
    ids=["integer", "complex"],
)
def test_integer_and_complex_input_rejected(bad, match):
    """Integer or complex x / v: one clear TypeError from every entry point, before tracing."""
    f = lambda x: jnp.sum(x**2)  # noqa: E731
    good = jnp.ones(3)
    for call in (
        lambda: hvp(f, bad, good),
        lambda: hvp(f, good, bad),
        lambda: hvp_fn(f, bad),
        lambda: hvp_fn(f, good)(bad),
        lambda: hvp_fn(f, good, linearize=False)(bad),
        lambda: fd_hvp(f, bad, good),
        lambda: fd_hvp(f, good, bad),
        lambda: fd_default_eps(bad, good),
        lambda: fd_default_eps(good, bad),
        lambda: directional_curvature(f, good, bad),
    ):
        with pytest.raises(TypeError, match=match):
            call()


def test_hvp_fn_linearizes_by_default():
    f, count = _counting_f()
    x, v = jnp.arange(4.0), jnp.ones(4)
    H = dense_hessian(f, x)
    prod = hvp_fn(f, x)
    first = count["n"]
    out1, out2 = prod(v), prod(2.0 * v)
    assert count["n"] == first  # f was traced once, by the linearization, never again
    np.testing.assert_allclose(out1, H @ np.ones(4), rtol=1e-10)
    np.testing.assert_allclose(out2, H @ (2.0 * np.ones(4)), rtol=1e-10)


def test_dtype_mismatch_is_type_error():
    with pytest.raises(TypeError, match=r"dtype mismatch at leaf <root>: x has float64, v has float32"):
        hvp(smooth_f, jnp.ones(5), jnp.ones(5, jnp.float32))
    with pytest.raises(TypeError, match=r"dtype mismatch at leaf \['a'\]"):
        hvp(nested_f, nested_point(), {**nested_point(), "a": jnp.ones(3, jnp.float32)})


# ---------------------------------------------------------------------------
# compilation, jit, vmap
# ---------------------------------------------------------------------------


def _counting_f():
    count = {"n": 0}

    def f(x, scale=1.0):
        count["n"] += 1  # runs only when JAX traces f
        return scale * jnp.sum(jnp.sin(x) * x**2)

    return f, count


@pytest.mark.parametrize("mode", HVP_MODES)
def test_no_retrace_on_second_call(mode):
    f, count = _counting_f()
    x, v = jnp.arange(4.0), jnp.ones(4)
    hvp(f, x, v, mode=mode)
    first = count["n"]
    assert first >= 1
    out = hvp(f, x + 1.0, 2.0 * v, mode=mode)
    assert count["n"] == first
    np.testing.assert_allclose(out, dense_hessian(f, x + 1.0) @ (2.0 * np.ones(4)), rtol=1e-10)


def test_no_retrace_hvp_fn_fd_gnvp():
    f, count = _counting_f()
    x, v = jnp.arange(4.0), jnp.ones(4)
    for linearize in (False, True):
        prod = hvp_fn(f, x, linearize=linearize)
        prod(v)
        first = count["n"]
        prod(3.0 * v)
        assert count["n"] == first, linearize
    hvp_fn(f, x, linearize=True)
    first = count["n"]
    hvp_fn(f, x + 0.5, linearize=True)(v)  # a new point, same shapes: compiled code reused
    assert count["n"] == first
    fd_hvp(f, x, v, eps=1e-3)
    fd_hvp(f, x, v)
    first = count["n"]
    fd_hvp(f, x + 1.0, v, eps=2e-3)  # eps is traced, not static
    fd_hvp(f, x, v)
    assert count["n"] == first
    model = lambda y, inputs: jnp.tanh(y) * inputs
    loss = lambda z, targets: f(z - targets)
    gnvp(model, loss, x, (v, v), v)
    first = count["n"]
    gnvp(model, loss, x - 1.0, (v, 2 * v), 2 * v)
    assert count["n"] == first


@pytest.mark.parametrize("mode", HVP_MODES)
def test_jit_and_vmap_over_directions(mode):
    p = get_problem("mlp")
    x = point_near(p)
    flat_x, unravel = ravel_pytree(x)
    V = jnp.asarray(np.random.default_rng(0).standard_normal((4, flat_x.size)))
    batched = jax.vmap(lambda w: ravel_pytree(hvp(p.f, x, unravel(w), mode=mode))[0])(V)
    loop = np.stack([flat(hvp(p.f, x, unravel(w), mode=mode)) for w in V])
    np.testing.assert_allclose(batched, loop, rtol=1e-10, atol=1e-14)
    jitted = jax.jit(lambda y, w: hvp(p.f, y, w, mode=mode))(x, unravel(V[0]))
    np.testing.assert_allclose(flat(jitted), loop[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loop, V @ dense_at("mlp")[1], rtol=1e-10, atol=1e-10)


def test_vmap_hvp_fn_and_directional_curvature_under_jit():
    f = smooth_f
    x = jnp.asarray([0.3, -0.7, 1.1, 0.4, -0.2])
    H = dense_hessian(f, x)
    V = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5)))
    for linearize in (False, True):
        prod = hvp_fn(f, x, linearize=linearize)
        np.testing.assert_allclose(jax.vmap(prod)(V), V @ H, rtol=1e-10, atol=1e-12)
    curv = jax.jit(lambda w: directional_curvature(f, x, w))(V[0])
    v0 = np.asarray(V[0])
    np.testing.assert_allclose(float(curv), v0 @ H @ v0 / (v0 @ v0), rtol=1e-10)

"""Tests for curvlab._curvature: the curvature-operator base over (params, data groups, weights).

Every operator is checked in float64 against a dense reference of tests.reference
(``jax.hessian``, the dense GGN, the dense empirical Fisher :math:`\\frac1N G^\\top G`) to
``1e-10`` relative to the operator norm; float32 operators to ``1e-4 * ||A||_2``.
One batch and a dataset of several batches are the same base class: a dataset of one
batch must give the single-batch operator, and a dataset of several batches the
:math:`n_b/N`-weighted average.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from curvlab import problems
from curvlab._curvature import (
    FisherOperator,
    GGNOperator,
    HessianOperator,
    curvature_operator,
    dataset_operator,
    fisher_operator,
    ggn_operator,
    hessian_operator,
)
from curvlab._data import prepare_data, single_batch
from curvlab._hessian_free import HFConfig, hessian_free
from curvlab._hvp import HVP_MODES
from tests.reference import (
    compare_operator,
    dense_dataset_curvature,
    dense_fisher,
    dense_ggn,
    dense_hessian,
)

# ---------------------------------------------------------------------------
# curvature operators
# ---------------------------------------------------------------------------

_MLP = {}


def mlp_problem(dtype=None):
    key = str(dtype)
    if key not in _MLP:
        _MLP[key] = problems.mlp(hidden=(4,), num_examples=12, dtype=dtype)
    return _MLP[key]


def point(p, seed=0):
    flat, unravel = ravel_pytree(p.x0)
    rng = np.random.default_rng(seed)
    return unravel(flat + 0.3 * jnp.asarray(rng.standard_normal(flat.shape), flat.dtype))


_REF = {}


def references():
    """Dense Hessian, GGN and Fisher of the small MLP at a test point (cached)."""
    if not _REF:
        p = mlp_problem()
        x = point(p)
        _REF.update(
            x=x,
            H=dense_hessian(p.f, x),
            G=dense_ggn(p.model_fn, p.output_loss_fn, x, p.batch),
            F=dense_fisher(p.per_example_loss_fn, x, p.batch),
        )
    return _REF


def assert_close_to(M, ref, rtol=1e-10):
    np.testing.assert_allclose(np.asarray(M), ref, rtol=rtol, atol=rtol * np.linalg.norm(ref, 2))


@pytest.mark.parametrize("linearize", [True, False])
@pytest.mark.parametrize("mode", HVP_MODES)
def test_hessian_operator_dense(mode, linearize):
    p, ref = mlp_problem(), references()
    op = hessian_operator(p.f, ref["x"], mode=mode, linearize=linearize)
    assert op.dtype == jnp.float64 and op.tags == {"symmetric"}
    compare_operator(op, ref["H"], rtol=1e-10)
    v = jnp.asarray(np.random.default_rng(2).standard_normal(op.size))
    np.testing.assert_allclose(op.prepare()(v), op.matvec(v), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        jax.jit(lambda o, w: o.prepare()(w))(op, v), op.matvec(v), rtol=1e-10, atol=1e-14
    )


def test_hessian_operator_args_and_loss_form():
    p, ref = mlp_problem(), references()
    op = hessian_operator(p.loss, ref["x"], p.batch)
    assert_close_to(op.to_dense(), ref["H"])
    np.testing.assert_allclose(float(op.value()), float(p.f(ref["x"])), rtol=1e-14)
    g = ravel_pytree(jax.grad(p.f)(ref["x"]))[0]
    np.testing.assert_allclose(op.gradient(), g, rtol=1e-12)


def test_ggn_operator_dense_and_psd():
    p, ref = mlp_problem(), references()
    op = ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], p.batch)
    assert op.tags == {"symmetric", "psd"}
    compare_operator(op, ref["G"], rtol=1e-10)  # psd tag checked against eigvalsh
    v = jnp.asarray(np.random.default_rng(3).standard_normal(op.size))
    np.testing.assert_allclose(op.prepare()(v), op.matvec(v), rtol=1e-10, atol=1e-14)


def test_fisher_operator_dense_and_psd():
    p, ref = mlp_problem(), references()
    op = fisher_operator(p.per_example_loss_fn, ref["x"], p.batch)
    assert op.tags == {"symmetric", "psd"}
    compare_operator(op, ref["F"], rtol=1e-10)
    v = jnp.asarray(np.random.default_rng(4).standard_normal(op.size))
    np.testing.assert_allclose(op.prepare()(v), op.matvec(v), rtol=1e-10, atol=1e-14)
    F = ref["F"]
    # rank at most N: one rank-one term per example
    assert np.linalg.matrix_rank(F, tol=1e-10 * np.linalg.norm(F, 2)) <= 12


def test_mlp_hessian_indefinite_ggn_not():
    ref = references()
    w = np.linalg.eigvalsh(ref["H"])
    assert w.min() < -1e-6 * w.max() < 0, "the MLP Hessian should have negative curvature"
    assert np.linalg.eigvalsh(ref["G"]).min() >= -1e-10 * np.linalg.norm(ref["G"], 2)


def test_ggn_equals_hessian_for_linear_model():
    p = problems.logistic_regression(num_examples=24, l2=0.0)
    x = point(p)
    H = hessian_operator(p.f, x).to_dense()
    G = ggn_operator(p.model_fn, p.output_loss_fn, x, p.batch).to_dense()
    assert_close_to(G, np.asarray(H))


def test_curvature_operators_float32():
    """float32 operators within 1e-4 * ||A|| of the float64 references (module docstring)."""
    p32, ref = mlp_problem(jnp.float32), references()
    x32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), ref["x"])
    ops = {
        "H": hessian_operator(p32.f, x32),
        "G": ggn_operator(p32.model_fn, p32.output_loss_fn, x32, p32.batch),
        "F": fisher_operator(p32.per_example_loss_fn, x32, p32.batch),
    }
    for k, op in ops.items():
        assert op.dtype == jnp.float32
        M = np.asarray(op.to_dense(), np.float64)
        assert np.linalg.norm(M - ref[k], 2) <= 1e-4 * np.linalg.norm(ref[k], 2), k


def test_ravel_unravel_round_trip():
    p, ref = mlp_problem(), references()
    op = hessian_operator(p.f, ref["x"])
    tree = jax.tree_util.tree_map(lambda a: a + 1.0, ref["x"])
    flat = op.ravel(tree)
    assert flat.shape == (op.size,)
    back = op.unravel(flat)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(op.ravel(op.unravel(flat)), flat)
    # the flat product is the pytree HVP, raveled
    from curvlab._hvp import hvp

    np.testing.assert_allclose(op @ flat, op.ravel(hvp(p.f, ref["x"], tree)), rtol=1e-10, atol=1e-14)
    for other in (
        ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], p.batch),
        fisher_operator(p.per_example_loss_fn, ref["x"], p.batch),
    ):
        np.testing.assert_array_equal(other.ravel(other.unravel(flat)), flat)


def test_ravel_errors_name_the_leaf():
    p, ref = mlp_problem(), references()
    op = hessian_operator(p.f, ref["x"])
    bad = jax.tree_util.tree_map(lambda a: a, ref["x"])
    bad[1]["W"] = jnp.ones((3, 3))
    with pytest.raises(ValueError, match=r"shape mismatch at leaf \[1\]\['W'\]"):
        op.ravel(bad)
    with pytest.raises(ValueError, match=r"same pytree structure"):
        op.ravel(ref["x"][:1])
    with pytest.raises(ValueError, match=rf"unravel expects shape \({op.size},\)"):
        op.unravel(jnp.ones(op.size + 1))


def test_curvature_operator_errors():
    p, ref = mlp_problem(), references()
    with pytest.raises(ValueError, match="mode must be one of"):
        hessian_operator(p.f, ref["x"], mode="fwd")
    with pytest.raises(ValueError, match="scalar"):
        hessian_operator(lambda x: x[0]["W"], ref["x"])
    with pytest.raises(ValueError, match=r"batch must be a pair"):
        ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], p.batch[0])
    with pytest.raises(ValueError, match="scalar"):
        ggn_operator(p.model_fn, lambda z, t: z, ref["x"], p.batch)
    with pytest.raises(ValueError, match="1-D vector of per-example losses"):
        fisher_operator(p.loss, ref["x"], p.batch)
    with pytest.raises(NotImplementedError):
        hessian_operator(p.f, ref["x"]).diagonal()


def test_hessian_operator_jit_traces_once_and_damped():
    p, ref = mlp_problem(), references()
    count = {"n": 0}

    def f(x, inputs, labels):
        count["n"] += 1
        return p.loss(x, (inputs, labels))

    @jax.jit
    def power_step(op, v):
        mv = op.prepare()
        w = mv(v)
        return w / jnp.linalg.norm(w)

    v = jnp.ones(ref["H"].shape[0])
    op1 = hessian_operator(f, ref["x"], *p.batch)
    op2 = hessian_operator(f, point(p, seed=5), *p.batch)
    power_step(op1, v)
    first = count["n"]
    out = power_step(op2, v)
    assert count["n"] == first
    H2 = dense_hessian(p.f, point(p, seed=5))
    w = H2 @ np.ones(len(v))
    np.testing.assert_allclose(out, w / np.linalg.norm(w), rtol=1e-9, atol=1e-12)
    damped = op1.damped(0.5)
    assert_close_to(damped.to_dense(), ref["H"] + 0.5 * np.eye(len(v)))


# ---------------------------------------------------------------------------
# registered dataclasses with real __init__s
# ---------------------------------------------------------------------------


def test_curvature_operator_classes_are_constructible():
    p, ref = mlp_problem(), references()
    H = HessianOperator(p.loss, ref["x"], p.batch)
    G = GGNOperator(p.model_fn, p.output_loss_fn, ref["x"], p.batch)
    F = FisherOperator(p.per_example_loss_fn, ref["x"], p.batch)
    assert_close_to(H.to_dense(), ref["H"])
    assert_close_to(G.to_dense(), ref["G"])
    assert_close_to(F.to_dense(), ref["F"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        H.x = None


@pytest.mark.parametrize("kind", ["ggn", "dataset_hessian"])
def test_curvature_operators_into_jit_reuse_compiled_code(kind):
    """A new point (same shapes) passed into the user's jitted function reuses its compiled code."""
    p, ref = mlp_problem(), references()
    build = {
        "ggn": lambda x: ggn_operator(p.model_fn, p.output_loss_fn, x, p.batch),
        "dataset_hessian": lambda x: dataset_operator(p.loss, x, p.batch, batch_size=5),
    }[kind]
    dense = {
        "ggn": lambda x: dense_ggn(p.model_fn, p.output_loss_fn, x, p.batch),
        "dataset_hessian": lambda x: dense_hessian(p.loss, x, p.batch),
    }[kind]
    traces = {"n": 0}

    @jax.jit
    def apply(op, v):
        traces["n"] += 1
        return op @ v

    v = jnp.ones(ref["G"].shape[0])
    for x in (ref["x"], point(p, seed=7)):
        np.testing.assert_allclose(apply(build(x), v), dense(x) @ np.ones(len(v)), rtol=1e-9, atol=1e-12)
    assert traces["n"] == 1


def test_matmat_uses_prepared_product():
    p, ref = mlp_problem(), references()
    op = ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], p.batch)
    V = jnp.asarray(np.random.default_rng(8).standard_normal((op.size, 4)))
    assert_close_to(op.matmat(V), ref["G"] @ np.asarray(V))
    with pytest.raises(ValueError, match=r"matmat .* needs an array of shape \(\d+, k\)"):
        op.matmat(V[:, 0])


# ---------------------------------------------------------------------------
# one kernel per product: the dataset average uses the same GGN / Fisher / Hessian products
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher"])
def test_dataset_operator_matches_dense_average_and_single_batch_operator(curvature):
    p, ref = mlp_problem(), references()
    X, y = p.batch
    fns = dict(
        model_fn=p.model_fn, output_loss_fn=p.output_loss_fn, per_example_loss_fn=p.per_example_loss_fn
    )
    op = dataset_operator(p.loss, ref["x"], (X, y), curvature=curvature, batch_size=5, **fns)  # 5 + 5 + 2
    batches = [(X[:5], y[:5]), (X[5:10], y[5:10]), (X[10:], y[10:])]
    dense = dense_dataset_curvature(curvature, p.loss, ref["x"], batches, **fns)
    compare_operator(op, dense, rtol=1e-10)
    assert op.tags == ({"symmetric"} if curvature == "hessian" else {"symmetric", "psd"})
    whole = dataset_operator(p.loss, ref["x"], (X, y), curvature=curvature, **fns)  # one batch
    single = {
        "hessian": hessian_operator(p.loss, ref["x"], (X, y)),
        "ggn": ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], (X, y)),
        "fisher": fisher_operator(p.per_example_loss_fn, ref["x"], (X, y)),
    }[curvature]
    v = jnp.asarray(np.random.default_rng(9).standard_normal(op.size))
    np.testing.assert_allclose(
        whole @ v, single @ v, rtol=1e-12, atol=1e-14 * float(jnp.linalg.norm(single @ v))
    )


# ---------------------------------------------------------------------------
# the base owns the dataset loop: loss, gradient, counts, jit
# ---------------------------------------------------------------------------

FNS = ("model_fn", "output_loss_fn", "per_example_loss_fn")


def _fns(p):
    return {name: getattr(p, name) for name in FNS}


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher"])
def test_dataset_value_and_gradient_are_the_full_batch_ones(curvature):
    p, ref = mlp_problem(), references()
    op = dataset_operator(p.loss, ref["x"], p.batch, curvature=curvature, batch_size=5, **_fns(p))
    assert (op.num_examples, op.num_batches) == (12, 3)
    loss, g = op.value_and_gradient()
    np.testing.assert_allclose(float(loss), float(p.loss(ref["x"], p.batch)), rtol=1e-13)
    np.testing.assert_allclose(
        g, ravel_pytree(jax.grad(p.loss)(ref["x"], p.batch))[0], rtol=1e-11, atol=1e-14
    )


def test_single_batch_default_losses_of_ggn_and_fisher():
    p, ref = mlp_problem(), references()
    G = ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], p.batch)
    F = fisher_operator(p.per_example_loss_fn, ref["x"], p.batch)
    want = float(p.output_loss_fn(p.model_fn(ref["x"], p.batch[0]), p.batch[1]))
    np.testing.assert_allclose(float(G.value()), want, rtol=1e-13)
    np.testing.assert_allclose(float(F.value()), float(jnp.mean(p.per_example_loss_fn(ref["x"], p.batch))))
    assert (G.num_examples, G.num_batches) == (12, 1)


def _softmax_regression(num_examples=64, dim=5, classes=3):
    X = jax.random.normal(jax.random.key(0), (num_examples, dim))
    y = jax.random.randint(jax.random.key(1), (num_examples,), 0, classes)
    params = {"W": 0.1 * jax.random.normal(jax.random.key(2), (dim, classes)), "b": jnp.zeros(classes)}

    def per_example(p, batch):
        x, t = batch
        logp = jax.nn.log_softmax(x @ p["W"] + p["b"][None, :])
        return -jnp.take_along_axis(logp, t[:, None], axis=1)[:, 0]

    return params, (X, y), per_example


@pytest.mark.parametrize("batch_size", [None, 16, 20])
def test_dataset_empirical_fisher_is_one_over_n_sum_of_outer_products(batch_size):
    # the softmax regression of the issue: the same user function gives the same operator everywhere
    params, data, pel = _softmax_regression()
    dense = dense_fisher(pel, params, data)  # (1/N) sum_i g_i g_i^T
    loss = lambda p, b: jnp.mean(pel(p, b))
    op = dataset_operator(
        loss, params, data, curvature="fisher", per_example_loss_fn=pel, batch_size=batch_size
    )
    compare_operator(op, dense, rtol=1e-10)
    compare_operator(fisher_operator(pel, params, data), dense, rtol=1e-10)
    # the default per-example losses (loss_fn on each example) are the same losses
    default = dataset_operator(loss, params, data, curvature="fisher", batch_size=batch_size)
    np.testing.assert_allclose(default.to_dense(), dense, rtol=1e-10, atol=1e-14)


def test_dataset_operator_float32():
    p32, ref = mlp_problem(jnp.float32), references()
    x32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), ref["x"])
    op = dataset_operator(p32.loss, x32, p32.batch, batch_size=5)
    assert op.dtype == jnp.float32 and op.data.weights[0].dtype == jnp.float32
    M = np.asarray(op.to_dense(), np.float64)
    assert np.linalg.norm(M - ref["H"], 2) <= 1e-4 * np.linalg.norm(ref["H"], 2)


def test_one_parameter_and_one_example():
    X, y = jnp.array([[2.0]]), jnp.array([1.0])
    loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    for curvature in ("hessian", "fisher"):
        op = dataset_operator(loss, jnp.array([0.5]), (X, y), curvature=curvature, batch_size=1)
        want = 8.0 if curvature == "hessian" else (2 * (2 * 0.5 - 1) * 2) ** 2
        np.testing.assert_allclose(op.to_dense(), [[want]], rtol=1e-14)


def test_curvature_operator_over_one_batch_is_the_single_batch_operator():
    p, ref = mlp_problem(), references()
    for kind, single in (
        ("hessian", hessian_operator(p.loss, ref["x"], p.batch)),
        ("ggn", ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], p.batch)),
        ("fisher", fisher_operator(p.per_example_loss_fn, ref["x"], p.batch)),
    ):
        op = curvature_operator(kind, ref["x"], single_batch(p.batch), loss_fn=p.loss, **_fns(p))
        assert type(op) is type(single) and not op.data.stacked
        np.testing.assert_allclose(op.to_dense(), single.to_dense(), rtol=1e-14, atol=1e-15)


def test_single_batch_fields_and_errors():
    p, ref = mlp_problem(), references()
    H = hessian_operator(p.loss, ref["x"], p.batch)
    assert H.args[0] is p.batch
    op = dataset_operator(p.loss, ref["x"], p.batch, batch_size=5)
    with pytest.raises(AttributeError, match="no single args"):
        op.args
    data = prepare_data(p.batch, 5, jnp.float64)
    with pytest.raises(ValueError, match="either \\*args or data="):
        HessianOperator(p.loss, ref["x"], p.batch, data=data)
    with pytest.raises(TypeError, match="data must be a curvlab._data.Batches"):
        FisherOperator(p.per_example_loss_fn, ref["x"], data=[p.batch])
    with pytest.raises(ValueError, match="curvature must be one of"):
        curvature_operator("newton", ref["x"], data)


def test_hessian_free_uses_the_dataset_averaged_curvature():
    prob = problems.logistic_regression(num_examples=48)
    data = prepare_data(prob.batch, 20, jnp.float64)  # 20 + 20 + 8
    cfg = HFConfig(maxiter=3, batching="separate")
    a = hessian_free(prob, config=cfg, curvature_batches=data)
    b = hessian_free(prob, config=cfg, curvature_batches=prob.batch)  # one batch of all: the same B
    np.testing.assert_allclose(ravel_pytree(a.x)[0], ravel_pytree(b.x)[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(a.history["cg_iterations"], b.history["cg_iterations"])
    assert a.fun < a.history["loss"][0]


def test_repeated_dataset_operators_reuse_compiled_code():
    # a new dataset_operator of the same functions and shapes (GGN without loss_fn included) is the
    # same pytree structure: diagnose called twice does not recompile its solvers
    p, ref = mlp_problem(), references()
    traces = {"n": 0}

    @jax.jit
    def apply(op, v):
        traces["n"] += 1
        return op @ v

    v = jnp.ones(ref["G"].shape[0])
    for _ in range(2):
        apply(dataset_operator(None, ref["x"], p.batch, curvature="ggn", batch_size=5, **_fns(p)), v)
        apply(dataset_operator(p.loss, ref["x"], p.batch, batch_size=5), v)
    assert traces["n"] == 2

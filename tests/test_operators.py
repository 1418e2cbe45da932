"""Tests for curvlab._operators: every operator against an explicit dense construction.

Tolerances: float64 operators agree with their dense construction to ``rtol = 1e-12``
(structured operators: a few roundings) or ``1e-10`` relative to the operator norm
(curvature operators: sums over examples). float32 curvature operators agree with
the float64 dense reference to ``1e-4 * ||A||_2`` (float32 roundoff is 6e-8; sums
over examples and layers lose a few digits).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from curvlab import problems
from curvlab._hvp import HVP_MODES
from curvlab._operators import (
    DENSE_SIZE_LIMIT,
    BlockDiagonalOperator,
    CongruenceOperator,
    DenseOperator,
    DiagonalOperator,
    FisherOperator,
    FunctionOperator,
    GGNOperator,
    HessianOperator,
    IdentityOperator,
    KroneckerOperator,
    LinearOperator,
    LowRankOperator,
    ScaledOperator,
    SumOperator,
    as_operator,
    fisher_operator,
    ggn_operator,
    hessian_operator,
)
from tests.reference import (
    compare_operator,
    dense_fisher,
    dense_ggn,
    dense_hessian,
    matrix_with_spectrum,
    random_orthogonal,
)

# ---------------------------------------------------------------------------
# structured operators and their explicit dense matrices
# ---------------------------------------------------------------------------

A3 = matrix_with_spectrum([-1.0, 2.0, 5.0], seed=1)
A4 = matrix_with_spectrum([0.5, 1.0, 3.0, 7.0], seed=2)
D4 = np.array([1.0, -2.0, 0.5, 4.0])
U = random_orthogonal(5, seed=3)[:, :2]
S = np.array([3.0, -0.5])


def _fn_matvec(v):
    return jnp.asarray(A4) @ v


def cases():
    """(name, operator, explicit dense matrix)."""
    block = np.zeros((7, 7))
    block[:3, :3], block[3:, 3:] = A3, np.diag(D4)
    return [
        ("dense", DenseOperator(A4), A4),
        ("diagonal", DiagonalOperator(D4), np.diag(D4)),
        ("identity", IdentityOperator(4), np.eye(4)),
        ("lowrank", LowRankOperator(U, S), U @ np.diag(S) @ U.T),
        ("blockdiag", BlockDiagonalOperator([DenseOperator(A3), DiagonalOperator(D4)]), block),
        ("blockdiag_arrays", BlockDiagonalOperator([A3, np.diag(D4)]), block),
        ("kronecker", KroneckerOperator(A3, A4), np.kron(A3, A4)),
        (
            "kronecker_mixed",
            KroneckerOperator(DiagonalOperator(D4), DenseOperator(A3)),
            np.kron(np.diag(D4), A3),
        ),
        ("sum", DenseOperator(A4) + DiagonalOperator(D4), A4 + np.diag(D4)),
        (
            "sum3",
            SumOperator([DenseOperator(A4), IdentityOperator(4), DiagonalOperator(D4)]),
            A4 + np.eye(4) + np.diag(D4),
        ),
        ("scaled", 2.5 * DenseOperator(A4), 2.5 * A4),
        ("rscaled", DiagonalOperator(D4) * -3.0, -3.0 * np.diag(D4)),
        ("neg", -DenseOperator(A4), -A4),
        ("sub", DenseOperator(A4) - DiagonalOperator(D4), A4 - np.diag(D4)),
        ("damped", DenseOperator(A4).damped(0.7), A4 + 0.7 * np.eye(4)),
        ("damped_kron", KroneckerOperator(A3, A4).damped(0.1), np.kron(A3, A4) + 0.1 * np.eye(12)),
        ("function", FunctionOperator(_fn_matvec, 4), A4),
        ("scaled_function", ScaledOperator(2.0, FunctionOperator(_fn_matvec, 4)), 2.0 * A4),
        ("congruence", CongruenceOperator(A4, D4), np.diag(D4) @ A4 @ np.diag(D4)),
        ("n1_dense", DenseOperator([[3.0]]), np.array([[3.0]])),
        ("n1_identity", IdentityOperator(1), np.eye(1)),
        (
            "repeated",
            DenseOperator(matrix_with_spectrum([2.0, 2.0, 2.0, 5.0])),
            matrix_with_spectrum([2.0, 2.0, 2.0, 5.0]),
        ),
        (
            "singular",
            DenseOperator(matrix_with_spectrum([0.0, 0.0, 1.0, 3.0])),
            matrix_with_spectrum([0.0, 0.0, 1.0, 3.0]),
        ),
    ]


CASE_NAMES = [c[0] for c in cases()]
NO_DIAGONAL = {"function", "scaled_function"}


def get_case(name):
    return next(c for c in cases() if c[0] == name)[1:]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_operator_matches_explicit(name):
    op, M = get_case(name)
    assert isinstance(op, LinearOperator)
    assert op.shape == M.shape and op.size == M.shape[0]
    compare_operator(op, M, rtol=1e-12)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_call_prepare_and_numpy_input(name):
    op, M = get_case(name)
    v = np.random.default_rng(0).standard_normal(M.shape[0])
    np.testing.assert_allclose(np.asarray(op(jnp.asarray(v))), M @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(op.prepare()(jnp.asarray(v))), M @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(op @ v), M @ v, rtol=1e-12, atol=1e-12)  # numpy input


@pytest.mark.parametrize("name", CASE_NAMES)
def test_diagonal(name):
    op, M = get_case(name)
    if name in NO_DIAGONAL:
        with pytest.raises(NotImplementedError, match="curvlab.diagonal"):
            op.diagonal()
    else:
        np.testing.assert_allclose(np.asarray(op.diagonal()), np.diag(M), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_to_scipy(name):
    op, M = get_case(name)
    sp = op.to_scipy()
    assert sp.shape == M.shape
    rng = np.random.default_rng(1)
    v, V = rng.standard_normal(M.shape[0]), rng.standard_normal((M.shape[0], 2))
    np.testing.assert_allclose(sp @ v, M @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sp.matmat(V), M @ V, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sp.rmatvec(v), M.T @ v, rtol=1e-12, atol=1e-12)


def test_to_scipy_eigsh_finds_the_spectrum():
    from scipy.sparse.linalg import eigsh

    lam = np.linspace(1.0, 30.0, 30)
    op = DenseOperator(matrix_with_spectrum(lam, seed=4))
    w = eigsh(op.to_scipy(), k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(w), lam[-3:], rtol=1e-10)


def test_dtypes_preserved_float32():
    op = DenseOperator(A4.astype(np.float32))
    for composed in (op.damped(0.5), 2.0 * op, op + DiagonalOperator(D4.astype(np.float32)), -op):
        assert composed.dtype == jnp.float32
        assert composed.to_dense().dtype == jnp.float32
        assert (composed @ jnp.ones(4, jnp.float32)).dtype == jnp.float32
    np.testing.assert_allclose(op.damped(0.5).to_dense(), A4 + 0.5 * np.eye(4), rtol=1e-6)
    assert DenseOperator(np.eye(3, dtype=np.int32)).dtype == jnp.result_type(float)


def test_to_dense_size_limit():
    with pytest.raises(ValueError, match=r"to_dense\(\) refuses n = 10 > max_size = 5"):
        IdentityOperator(10).to_dense(max_size=5)
    with pytest.raises(
        ValueError, match=rf"refuses n = {DENSE_SIZE_LIMIT + 1} > max_size = {DENSE_SIZE_LIMIT}"
    ):
        DiagonalOperator(jnp.ones(DENSE_SIZE_LIMIT + 1)).to_dense()
    with pytest.raises(ValueError, match="work with matvecs instead or pass a larger max_size"):
        KroneckerOperator(IdentityOperator(100), IdentityOperator(100)).to_dense()
    np.testing.assert_array_equal(IdentityOperator(10).to_dense(max_size=10), np.eye(10))


def test_matmul_wrong_shape():
    op = DenseOperator(A4)
    with pytest.raises(
        ValueError, match=r"operator of shape \(4, 4\) cannot multiply an array of shape \(3,\)"
    ):
        op @ jnp.ones(3)
    with pytest.raises(ValueError, match=r"expected \(4,\) or \(4, k\)"):
        op @ jnp.ones((4, 2, 2))
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        KroneckerOperator(A3, A4) @ jnp.ones((5, 2))


def test_construction_errors():
    with pytest.raises(ValueError, match="square"):
        DenseOperator(np.ones((3, 4)))
    with pytest.raises(ValueError, match="1-D"):
        DiagonalOperator(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"s must have shape \(2,\)"):
        LowRankOperator(U, np.ones(3))
    with pytest.raises(ValueError, match="at least one block"):
        BlockDiagonalOperator([])
    with pytest.raises(ValueError, match="cannot add operators"):
        DenseOperator(A3) + DenseOperator(A4)
    with pytest.raises(ValueError, match="cannot add operators"):
        SumOperator([DenseOperator(A3), DenseOperator(A4)])
    with pytest.raises(ValueError, match="scalar"):
        DenseOperator(A4) * np.ones(4)
    with pytest.raises(TypeError, match="callable"):
        FunctionOperator(A4, 4)
    with pytest.raises(TypeError, match="expected a LinearOperator or a square matrix"):
        as_operator("A")
    op = DenseOperator(A4)
    assert as_operator(op) is op
    np.testing.assert_array_equal(as_operator(A4).to_dense(), A4)
    assert "DenseOperator(shape=(4, 4), dtype=float64)" == repr(op)


# ---------------------------------------------------------------------------
# operators are pytrees: jit without retracing
# ---------------------------------------------------------------------------


def test_operators_in_jit_trace_once():
    count = {"n": 0}

    @jax.jit
    def apply(op, v):
        count["n"] += 1
        return op @ v

    v = jnp.ones(4)
    a, b = DenseOperator(A4), DenseOperator(2.0 * A4 + 1.0)
    np.testing.assert_allclose(apply(a, v), A4 @ np.ones(4), rtol=1e-12)
    np.testing.assert_allclose(apply(b, v), (2.0 * A4 + 1.0) @ np.ones(4), rtol=1e-12)
    assert count["n"] == 1
    apply(a.damped(0.1), v)
    apply(b.damped(0.9), v)  # damping is a leaf, not static
    assert count["n"] == 2
    np.testing.assert_allclose(
        apply(b.damped(0.9), v), (2.0 * A4 + 1.0 + 0.9 * np.eye(4)) @ np.ones(4), rtol=1e-12
    )


def test_operator_pytree_roundtrip():
    op = KroneckerOperator(DenseOperator(A3), DiagonalOperator(D4)).damped(0.3)
    leaves, treedef = jax.tree_util.tree_flatten(op)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_allclose(rebuilt.to_dense(), op.to_dense(), rtol=1e-14)
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, DenseOperator(A4))
    np.testing.assert_allclose(doubled.to_dense(), 2 * A4, rtol=1e-14)


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
# tags: what solvers may assume
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, tags",
    [
        (DenseOperator(A4), {"symmetric"}),
        (DiagonalOperator(np.abs(D4)), {"symmetric", "psd"}),
        (DiagonalOperator(D4), {"symmetric"}),
        (IdentityOperator(3), {"symmetric", "psd"}),
        (LowRankOperator(U, np.abs(S)), {"symmetric", "psd"}),
        (LowRankOperator(U, S), {"symmetric"}),
        (IdentityOperator(4) + DiagonalOperator(np.abs(D4)), {"symmetric", "psd"}),
        (IdentityOperator(4) + DenseOperator(A4), {"symmetric"}),
        (2.0 * IdentityOperator(4), {"symmetric", "psd"}),
        (-2.0 * IdentityOperator(4), {"symmetric"}),
        (IdentityOperator(4) - IdentityOperator(4), {"symmetric"}),
        (DenseOperator(A4).damped(1.0), {"symmetric"}),
        (DiagonalOperator(np.abs(D4)).damped(0.5), {"symmetric", "psd"}),
        (DiagonalOperator(np.abs(D4)).damped(-0.5), {"symmetric"}),
        (KroneckerOperator(IdentityOperator(2), DiagonalOperator(np.abs(D4))), {"symmetric", "psd"}),
        (BlockDiagonalOperator([IdentityOperator(2), DenseOperator(A3)]), {"symmetric"}),
        (CongruenceOperator(IdentityOperator(4), D4), {"symmetric", "psd"}),
        (CongruenceOperator(DenseOperator(A4), D4), {"symmetric"}),
        (FunctionOperator(_fn_matvec, 4), {"symmetric"}),
        (FunctionOperator(_fn_matvec, 4, tags={"psd"}), {"symmetric", "psd"}),
    ],
)
def test_tags(op, tags):
    assert op.tags == frozenset(tags)


def test_psd_tag_survives_jit_and_is_dropped_for_traced_values():
    op = DiagonalOperator(np.abs(D4)).damped(0.5)
    leaves, treedef = jax.tree_util.tree_flatten(op)
    assert jax.tree_util.tree_unflatten(treedef, leaves).tags == {"symmetric", "psd"}

    @jax.jit
    def tags_inside(op, d):
        assert op.tags == {"symmetric", "psd"}  # static: known while tracing
        assert DiagonalOperator(d).tags == {"symmetric"}  # a traced diagonal: sign unknown
        return op @ d

    np.testing.assert_allclose(tags_inside(op, jnp.ones(4)), np.abs(D4) + 0.5, rtol=1e-14)


def test_damped_psd_operator_all_eigenvalues_above_damping():
    op = DiagonalOperator(np.array([0.0, 1.0, 3.0])).damped(0.25)
    assert "psd" in op.tags
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(op.to_dense())), [0.25, 1.25, 3.25], rtol=1e-14)


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


def test_curvature_operators_into_jit_reuse_compiled_code():
    p, ref = mlp_problem(), references()
    traces = {"n": 0}

    @jax.jit
    def apply(op, v):
        traces["n"] += 1
        return op @ v

    v = jnp.ones(ref["G"].shape[0])
    for x in (ref["x"], point(p, seed=7)):
        out = apply(ggn_operator(p.model_fn, p.output_loss_fn, x, p.batch), v)
        np.testing.assert_allclose(
            out, dense_ggn(p.model_fn, p.output_loss_fn, x, p.batch) @ np.ones(len(v)), rtol=1e-9, atol=1e-12
        )
    assert traces["n"] == 1


def test_matmat_uses_prepared_product():
    p, ref = mlp_problem(), references()
    op = ggn_operator(p.model_fn, p.output_loss_fn, ref["x"], p.batch)
    V = jnp.asarray(np.random.default_rng(8).standard_normal((op.size, 4)))
    assert_close_to(op.matmat(V), ref["G"] @ np.asarray(V))
    with pytest.raises(ValueError, match=r"matmat .* needs an array of shape \(\d+, k\)"):
        op.matmat(V[:, 0])


# ---------------------------------------------------------------------------
# bad input: rejected at construction with a message naming the argument
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: IdentityOperator(-3), ValueError, "n must be >= 1, got -3"),
        (lambda: IdentityOperator(0), ValueError, "n must be >= 1"),
        (lambda: IdentityOperator(2.7), TypeError, "n must be an integer"),
        (lambda: IdentityOperator(3, jnp.complex64), TypeError, "dtype must be a real floating dtype"),
        (lambda: FunctionOperator(_fn_matvec, 2.7), TypeError, "n must be an integer"),
        (lambda: FunctionOperator(_fn_matvec, -1), ValueError, "n must be >= 1"),
        (
            lambda: FunctionOperator(lambda v: v[:2], 4),
            ValueError,
            r"must map a vector of shape \(4,\) to shape \(4,\)",
        ),
        (lambda: FunctionOperator(_fn_matvec, 4, tags={"hermitian"}), ValueError, "tags must be a subset"),
        (lambda: DenseOperator(np.eye(2) * 1j), TypeError, "matrix is complex"),
        (lambda: DiagonalOperator(np.ones(3, np.complex64)), TypeError, "diag is complex"),
        (lambda: LowRankOperator(U.astype(np.complex128), S), TypeError, "U is complex"),
        (lambda: LowRankOperator(U, S * 1j), TypeError, "s is complex"),
        (lambda: ScaledOperator(1j, DenseOperator(A4)), TypeError, "scale is complex"),
        (lambda: 2j * DenseOperator(A4), TypeError, "scale is complex"),
        (lambda: CongruenceOperator(A4, np.ones(3)), ValueError, r"scale must have shape \(4,\)"),
        (
            lambda: hessian_operator(lambda x: jnp.sum(x**2), jnp.arange(3)),
            TypeError,
            "floating-point leaves",
        ),
        (
            lambda: hessian_operator(lambda x: jnp.sum(jnp.abs(x) ** 2), jnp.ones(3, jnp.complex64)),
            TypeError,
            "x is complex",
        ),
    ],
)
def test_bad_input_rejected(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_integer_dense_input_is_cast_to_float():
    op = DiagonalOperator(np.array([1, 2, 3]))
    assert jnp.issubdtype(op.dtype, jnp.floating) and op.tags == {"symmetric", "psd"}
    np.testing.assert_array_equal(op.to_dense(), np.diag([1.0, 2.0, 3.0]))


# ---------------------------------------------------------------------------
# one kernel per product: the dataset average uses the same GGN / Fisher / Hessian products
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher"])
def test_dataset_operator_matches_dense_average_and_single_batch_operator(curvature):
    from curvlab._diagnostics import dataset_operator
    from tests.reference import dense_dataset_curvature

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

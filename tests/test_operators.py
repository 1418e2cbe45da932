"""Tests for curvlab._operators: every operator against an explicit dense construction.

Tolerances: float64 operators agree with their dense construction to ``rtol = 1e-12``
(structured operators: a few roundings) or ``1e-10`` relative to the operator norm
(curvature operators: sums over examples). float32 curvature operators agree with
the float64 dense reference to ``1e-4 * ||A||_2`` (float32 roundoff is 6e-8; sums
over examples and layers lose a few digits).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._curvature import hessian_operator
from curvlab._operators import (
    DENSE_SIZE_LIMIT,
    BlockDiagonalOperator,
    CongruenceOperator,
    DenseOperator,
    DiagonalOperator,
    FunctionOperator,
    IdentityOperator,
    KroneckerOperator,
    LinearOperator,
    LowRankOperator,
    ScaledOperator,
    SumOperator,
    as_operator,
)
from tests.reference import (
    compare_operator,
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

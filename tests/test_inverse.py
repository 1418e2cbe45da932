"""inverse (CG and closed forms) against numpy.linalg.solve; submatrix; Frobenius and spectral norms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import curvlab
from curvlab._inverse import CGInverseOperator
from curvlab._operators import (
    BlockDiagonalOperator,
    DenseOperator,
    DiagonalOperator,
    FunctionOperator,
    IdentityOperator,
    KroneckerOperator,
    LinearOperator,
    LowRankOperator,
    _set,
    pytree_operator,
)
from tests.reference import compare_operator, matrix_with_spectrum

RNG = np.random.default_rng(0)
A4 = matrix_with_spectrum([5.0, 2.0, 2.0, 0.5], seed=1)  # a repeated eigenvalue
B3 = matrix_with_spectrum([3.0, 1.0, 0.25], seed=2)
U = RNG.normal(size=(12, 3))


def _cases():
    diag = np.array([1.0, 3.0, 3.0, 0.2])
    block = np.zeros((7, 7))
    block[:4, :4], block[4:, 4:] = np.diag(diag), B3
    return {
        "diagonal": (DiagonalOperator(diag), np.diag(diag)),
        "identity": (IdentityOperator(5), np.eye(5)),
        "dense": (DenseOperator(A4), A4),
        "kronecker": (KroneckerOperator(A4, B3), np.kron(A4, B3)),
        "block": (BlockDiagonalOperator([DiagonalOperator(diag), DenseOperator(B3)]), block),
        "scaled_damped": (
            2.0 * KroneckerOperator(A4, B3).damped(0.3),
            2 * np.kron(A4, B3) + 0.6 * np.eye(12),
        ),
        "n1": (DenseOperator([[4.0]]), np.array([[4.0]])),
    }


@pytest.mark.parametrize("name", list(_cases()))
@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_exact_inverse_matches_solve(name, damping):
    op, dense = _cases()[name]
    ref = np.linalg.inv(dense + damping * np.eye(dense.shape[0]))
    inv = curvlab.inverse(op, method="exact", damping=damping)
    compare_operator(inv, ref, rtol=1e-12)
    b = RNG.normal(size=dense.shape[0])
    np.testing.assert_allclose(inv @ b, np.linalg.solve(dense + damping * np.eye(len(b)), b), rtol=1e-10)


@pytest.mark.parametrize("name", ["dense", "kronecker", "block"])
def test_cg_inverse_matches_solve_and_jits(name):
    op, dense = _cases()[name]
    inv = curvlab.inverse(op, damping=0.1)
    assert isinstance(inv, CGInverseOperator) and inv.tags == {"symmetric"} | (op.tags & {"psd"})
    b = RNG.normal(size=dense.shape[0])
    ref = np.linalg.solve(dense + 0.1 * np.eye(len(b)), b)
    np.testing.assert_allclose(inv @ b, ref, rtol=1e-8)
    np.testing.assert_allclose(jax.jit(lambda op, b: op @ b)(inv, b), ref, rtol=1e-8)
    res = inv.solve(b)
    assert res.status == curvlab.Status.CONVERGED and res.converged


def test_low_rank_woodbury():
    s = np.array([2.0, 0.5, 0.0])  # singular U diag(s) U^T, rank 2
    dense = U @ np.diag(s) @ U.T
    inv = curvlab.inverse(LowRankOperator(U, s), method="exact", damping=0.3)
    assert inv.tags == {"symmetric", "psd"}
    compare_operator(inv, np.linalg.inv(dense + 0.3 * np.eye(12)), rtol=1e-10)
    with pytest.raises(ValueError, match="needs damping > 0"):
        curvlab.inverse(LowRankOperator(U, s), method="exact")


def test_exact_inverse_hook_is_used():
    @pytree_operator
    class Twice(LinearOperator):
        d: jax.Array

        def __init__(self, d):
            _set(self, d=jnp.asarray(d))

        size = property(lambda self: self.d.shape[0])
        dtype = property(lambda self: self.d.dtype)

        def matvec(self, v):
            return self.d * v

        def damped(self, damping):
            return Twice(self.d + damping)

        def _exact_inverse(self):
            return DiagonalOperator(1.0 / self.d)

    inv = curvlab.inverse(Twice(jnp.array([1.0, 4.0])), method="exact", damping=1.0)
    np.testing.assert_allclose(inv @ jnp.ones(2), [0.5, 0.2], rtol=1e-15)


def test_failures_are_never_silent():
    # singular in closed form: raise on concrete data
    with pytest.raises(ValueError, match="singular"):
        curvlab.inverse(DiagonalOperator(jnp.array([1.0, 0.0])), method="exact")
    with pytest.raises(ValueError, match="singular"):
        curvlab.inverse(DenseOperator(matrix_with_spectrum([1.0, 0.0, 2.0])), method="exact")
    # CG on an indefinite operator, or out of iterations: NaN, with the status in .solve
    indefinite = curvlab.inverse(DiagonalOperator(jnp.array([1.0, -1.0, 2.0])))
    assert np.all(np.isnan(indefinite @ jnp.ones(3)))
    assert indefinite.solve(jnp.ones(3)).status == curvlab.Status.NEGATIVE_CURVATURE
    short = curvlab.inverse(DenseOperator(A4), maxiter=1)
    assert np.all(np.isnan(short @ jnp.ones(4)))
    assert short.solve(jnp.ones(4)).status == curvlab.Status.MAX_ITERATIONS
    # no closed form, bad arguments
    fn = FunctionOperator(lambda v: 2 * v, 3, jnp.float64)
    with pytest.raises(TypeError, match="no closed form for FunctionOperator"):
        curvlab.inverse(fn, method="exact")
    with pytest.raises(ValueError, match="method"):
        curvlab.inverse(fn, method="lu")
    with pytest.raises(ValueError, match="damping"):
        curvlab.inverse(fn, damping=-1.0)


def test_float32_inverse():
    inv = curvlab.inverse(DenseOperator(A4.astype(np.float32)), method="exact", damping=0.1)
    b = np.ones(4, np.float32)
    out = inv @ b
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.linalg.solve(A4 + 0.1 * np.eye(4), b), rtol=1e-5)  # float32 rounding
    cg32 = curvlab.inverse(DenseOperator(A4.astype(np.float32)), rtol=1e-5)
    np.testing.assert_allclose(cg32 @ b, np.linalg.solve(A4, b), rtol=1e-4)


def test_submatrix():
    op, dense = _cases()["kronecker"]
    rows, cols = [0, 5, 5, 11], [3, 1]
    np.testing.assert_allclose(curvlab.submatrix(op, rows, cols), dense[np.ix_(rows, cols)], rtol=1e-13)
    row = curvlab.submatrix(op, [2], list(range(12)))  # symmetric: one matvec
    np.testing.assert_allclose(row, dense[[2]], rtol=1e-13)
    assert curvlab.submatrix(op, [], [1]).shape == (0, 1)
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        curvlab.submatrix(op, [12], [0])
    with pytest.raises(TypeError, match="integer"):
        curvlab.submatrix(op, [0.5], [0])


def test_frobenius_norm():
    op, dense = _cases()["kronecker"]
    exact = np.linalg.norm(dense)
    est = curvlab.frobenius_norm(op, num_probes=400, key=jax.random.key(0))
    assert est.num_matvecs == 400 and est.stderr > 0
    assert abs(float(est.value) - exact) <= 5 * float(est.stderr)  # 5 standard errors
    np.testing.assert_allclose(curvlab.frobenius_norm(op, method="exact").value, exact, rtol=1e-13)
    D2 = DiagonalOperator(jnp.array([3.0, -4.0]))
    diag = curvlab.frobenius_norm(D2, num_probes=2, key=jax.random.key(1))
    assert float(diag.value) == 5.0 and float(diag.stderr) == 0.0  # |Dz|^2 is the same for every sign
    with pytest.raises(TypeError, match="key is required"):
        curvlab.frobenius_norm(op, num_probes=4)


def test_spectral_norm():
    dense = matrix_with_spectrum(np.linspace(-6.0, 2.0, 30), seed=3)  # the dominant eigenvalue is negative
    res = curvlab.spectral_norm(DenseOperator(dense))
    assert res.converged and res.status == curvlab.Status.CONVERGED
    np.testing.assert_allclose(res.value, 6.0, rtol=1e-8)
    np.testing.assert_allclose(res.eigenvalue, -6.0, rtol=1e-8)
    assert float(res.error_bound) <= 1e-6 * 6.0
    np.testing.assert_allclose(res.value, np.linalg.norm(dense, 2), rtol=1e-8)
    one = curvlab.spectral_norm(DenseOperator([[-3.0]]))
    assert float(one.value) == 3.0 and one.num_matvecs == 1
    with pytest.raises(ValueError, match="symmetric"):
        curvlab.spectral_norm(FunctionOperator(lambda v: v, 3, jnp.float64, tags=()))

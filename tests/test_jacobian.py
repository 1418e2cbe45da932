"""Jacobian operators J, J^T against jax.jacfwd; the NTK and the Gauss-Newton built on them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import curvlab
from curvlab._jacobian import JacobianOperator
from curvlab._operators import DenseOperator, DiagonalOperator
from tests.reference import compare_operator, dense_ggn


def _model(p, x):  # pytree params, pytree outputs
    h = jnp.tanh(x @ p["w"] + p["b"][None, :])
    return {"logits": h @ p["v"], "hidden": h}


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    w, v = jax.random.normal(k1, (3, 4)), jax.random.normal(k2, (4, 2))
    return {"w": w, "b": jnp.linspace(-1, 1, 4), "v": v}


def _dense_jacobian(model, params, x):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jacfwd(lambda p: ravel_pytree(model(unravel(p), x))[0])(flat))


def test_products_match_jacfwd():
    params, X = _params(), jax.random.normal(jax.random.key(1), (5, 3))
    J = curvlab.jacobian_operator(_model, params, X)
    D = _dense_jacobian(_model, params, X)
    m, n = D.shape
    assert J.shape == (m, n) == (5 * 2 + 5 * 4, 12 + 4 + 8) and J.T.shape == (n, m)
    rng = np.random.default_rng(0)
    v, u, V, U = rng.normal(size=n), rng.normal(size=m), rng.normal(size=(n, 3)), rng.normal(size=(m, 2))
    np.testing.assert_allclose(J @ v, D @ v, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(J.T @ u, D.T @ u, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(J @ V, D @ V, rtol=1e-12, atol=1e-13)  # one linearization
    np.testing.assert_allclose(J.T @ U, D.T @ U, rtol=1e-12, atol=1e-13)  # its linear transpose
    np.testing.assert_allclose(J.to_dense(), D, rtol=1e-13)
    np.testing.assert_allclose(J.T.to_dense(), D.T, rtol=1e-13)
    assert J.T.T.shape == J.shape and isinstance(J.T, JacobianOperator)
    # adjoint identity u^T (J v) = (J^T u)^T v
    np.testing.assert_allclose(u @ (J @ v), (J.T @ u) @ v, rtol=1e-12)


def test_ntk_and_gauss_newton():
    params, X = _params(), jax.random.normal(jax.random.key(1), (4, 3))
    logits = lambda p, x: _model(p, x)["logits"]
    J = curvlab.jacobian_operator(logits, params, X)
    D = _dense_jacobian(logits, params, X)
    ntk = J.ntk()
    assert ntk.tags == {"symmetric", "psd"}
    compare_operator(ntk, D @ D.T, rtol=1e-12)
    # GGN = J^T H J with H the output-loss Hessian (softmax cross-entropy, 4 rows x 2 classes)
    y = jnp.array([0, 1, 1, 0])
    z = logits(params, X)
    hl = curvlab.softmax_cross_entropy.output_hessian(z, y)
    H = np.asarray(jax.vmap(lambda e: hl(e.reshape(z.shape)).ravel())(jnp.eye(z.size)))
    gn = J.gauss_newton(DenseOperator(H))
    assert gn.tags == {"symmetric"}  # a DenseOperator H is only known symmetric
    assert J.gauss_newton(DiagonalOperator(jnp.ones(z.size))).tags == {"symmetric", "psd"}
    compare_operator(gn, dense_ggn(logits, curvlab.softmax_cross_entropy, params, (X, y)), rtol=1e-12)
    assert J.T.ntk().shape == ntk.shape  # from the transpose too


def test_under_jit_and_no_recompile():
    params, X = _params(), jax.random.normal(jax.random.key(1), (5, 3))
    traces = []

    @jax.jit
    def both(J, v, u):
        traces.append(1)
        return J @ v, J.T @ u

    D = _dense_jacobian(_model, params, X)
    v, u = jnp.ones(D.shape[1]), jnp.ones(D.shape[0])
    for scale in (1.0, 2.0):
        p = jax.tree_util.tree_map(lambda a: scale * a, params)
        Jv, Jtu = both(curvlab.jacobian_operator(_model, p, X), v, u)
        Ds = _dense_jacobian(_model, p, X)
        np.testing.assert_allclose(Jv, Ds @ v, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(Jtu, Ds.T @ u, rtol=1e-12, atol=1e-13)
    assert len(traces) == 1


def test_degenerate_one_parameter_one_output_and_float32():
    J = curvlab.jacobian_operator(lambda w, x: jnp.sin(w * x), jnp.array(0.5), jnp.array(2.0))
    assert J.shape == (1, 1)
    np.testing.assert_allclose(J.to_dense(), [[2.0 * np.cos(1.0)]], rtol=1e-14)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), _params())
    X = jax.random.normal(jax.random.key(1), (5, 3), jnp.float32)
    J32 = curvlab.jacobian_operator(_model, params, X)
    assert J32.dtype == jnp.float32 and (J32 @ jnp.ones(J32.shape[1], jnp.float32)).dtype == jnp.float32
    D = _dense_jacobian(_model, _params(), X.astype(jnp.float64))
    np.testing.assert_allclose(J32.to_dense(), D, atol=1e-5 * np.abs(D).max())  # float32 rounding


def test_equinox_module():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (5, 3))
    J = curvlab.jacobian_operator(lambda m, x: jax.vmap(m)(x), mlp, X)
    arrays, static = eqx.partition(mlp, eqx.is_inexact_array)
    D = _dense_jacobian(lambda p, x: jax.vmap(eqx.combine(p, static))(x), arrays, X)
    np.testing.assert_allclose(J.to_dense(), D, rtol=1e-12, atol=1e-14)


def test_errors():
    params, X = _params(), jnp.ones((5, 3))
    J = curvlab.jacobian_operator(_model, params, X)
    with pytest.raises(ValueError, match=r"cannot multiply an array of shape \(3,\)"):
        J @ jnp.ones(3)
    with pytest.raises(ValueError, match="needs shape"):
        J.matmat(jnp.ones((3, 2)))
    with pytest.raises(TypeError, match="must be callable"):
        curvlab.jacobian_operator(None, params, X)
    with pytest.raises(ValueError, match="H has size"):
        J.gauss_newton(DenseOperator(jnp.eye(3)))
    with pytest.raises(ValueError, match="refuses"):
        J.to_dense(max_size=4)

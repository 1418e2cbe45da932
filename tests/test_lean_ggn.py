"""Memory-lean GGN: the closed-form output Hessians equal autodiff's, and the lean GGN the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import curvlab
from tests.reference import compare_operator, dense_ggn


def _model(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]


def _params(d=3, h=5, c=4):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w1": jax.random.normal(k1, (d, h)), "w2": jax.random.normal(k2, (h, c))}


def _plain_ce(z, y):
    return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[..., None], -1)[..., 0])


def _plain_ce_probs(z, t):
    return jnp.mean(-jnp.sum(t * jax.nn.log_softmax(z, -1), -1))


def _autodiff_hessian(loss, z, t):
    return np.asarray(jax.hessian(lambda w: loss(w.reshape(z.shape), t))(z.ravel()))


def _closed_form_hessian(loss, z, t):
    hl = loss.output_hessian(z, t)
    return np.asarray(jax.vmap(lambda e: hl(e.reshape(z.shape)).ravel())(jnp.eye(z.size)))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_output_hessians_match_autodiff(reduction):
    z = jax.random.normal(jax.random.key(1), (2, 3, 4))  # rows: 2 x 3 tokens, 4 classes
    labels = jnp.array([[0, 3, 1], [2, 2, 0]])
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(2), z.shape), -1) * 0.5  # rows sum to 1/2
    ce, mse = curvlab.SoftmaxCrossEntropy(reduction), curvlab.MeanSquaredError(reduction)
    for loss, t in ((ce, labels), (ce, probs), (mse, probs)):
        np.testing.assert_allclose(
            _closed_form_hessian(loss, z, t), _autodiff_hessian(loss, z, t), rtol=1e-12, atol=1e-14
        )
    # the loss values follow the documented conventions
    np.testing.assert_allclose(curvlab.softmax_cross_entropy(z, labels), _plain_ce(z, labels), rtol=1e-14)
    np.testing.assert_allclose(curvlab.mean_squared_error(z, probs), jnp.mean((z - probs) ** 2), rtol=1e-14)
    np.testing.assert_allclose(curvlab.SoftmaxCrossEntropy("sum")(z, labels), 6 * _plain_ce(z, labels))


def test_lean_ggn_equals_plain_ggn():
    params = _params()
    X = jax.random.normal(jax.random.key(3), (6, 3))
    y = jnp.arange(6) % 4
    lean = curvlab.ggn_operator(_model, curvlab.softmax_cross_entropy, params, (X, y))
    G_plain = dense_ggn(_model, _plain_ce, params, (X, y))
    compare_operator(lean, G_plain, rtol=1e-12)  # matvec (not linearized) and to_dense (linearized)
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    flat = lambda loss: jax.flatten_util.ravel_pytree(curvlab.gnvp(_model, loss, params, (X, y), v))[0]
    np.testing.assert_allclose(flat(curvlab.softmax_cross_entropy), flat(_plain_ce), rtol=1e-12)
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(4), (6, 4)), -1)
    lean_p = curvlab.ggn_operator(_model, curvlab.softmax_cross_entropy, params, (X, probs))
    compare_operator(lean_p, dense_ggn(_model, _plain_ce_probs, params, (X, probs)), rtol=1e-12)


def test_lean_dataset_ggn_and_gradient():
    params = _params()
    X = jax.random.normal(jax.random.key(3), (5, 3))
    y = jnp.arange(5) % 4
    kw = dict(curvature="ggn", batch_size=2, model_fn=_model)
    lean = curvlab.dataset_operator(None, params, (X, y), output_loss_fn=curvlab.softmax_cross_entropy, **kw)
    plain = curvlab.dataset_operator(None, params, (X, y), output_loss_fn=_plain_ce, **kw)
    np.testing.assert_allclose(lean.to_dense(), plain.to_dense(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lean.gradient(), plain.gradient(), rtol=1e-12)


def test_lean_ggn_nnx_sequence_model_and_jit():
    """Flax NNX model on token sequences (rows = tokens), under the user's jax.jit."""
    nnx = pytest.importorskip("flax.nnx")

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(7, 3, param_dtype=jnp.float64, rngs=rngs)
            self.head = nnx.Linear(3, 7, param_dtype=jnp.float64, rngs=rngs)

        def __call__(self, tokens):
            return self.head(jnp.tanh(self.embed(tokens)))

    model = Tiny(nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(5), (2, 5), 0, 7)
    kw = dict(curvature="ggn", model_fn=lambda m, x: m(x))
    data = (tokens[:, :-1], tokens[:, 1:])
    lean = curvlab.dataset_operator(None, model, data, output_loss_fn=curvlab.softmax_cross_entropy, **kw)
    plain = curvlab.dataset_operator(None, model, data, output_loss_fn=_plain_ce, **kw)
    v = jnp.linspace(-1.0, 1.0, lean.size)
    apply = jax.jit(lambda op, v: op @ v)
    np.testing.assert_allclose(apply(lean, v), plain @ v, rtol=1e-12, atol=1e-14)


def test_lean_ggn_float32():
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), _params())
    X = jax.random.normal(jax.random.key(3), (6, 3), jnp.float32)
    y = jnp.arange(6) % 4
    lean = curvlab.ggn_operator(_model, curvlab.softmax_cross_entropy, params, (X, y)).to_dense()
    plain = curvlab.ggn_operator(_model, _plain_ce, params, (X, y)).to_dense()
    assert lean.dtype == jnp.float32
    np.testing.assert_allclose(lean, plain, atol=1e-6 * float(jnp.abs(plain).max()))  # float32 rounding

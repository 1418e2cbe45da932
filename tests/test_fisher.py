"""Monte-Carlo Fisher: unbiased for the GGN (statistical test), fixed matrix per key, scaling, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import curvlab
from curvlab._data import prepare_data
from curvlab._fisher import MCFisherOperator
from tests.reference import compare_operator, dense_ggn


def _model(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"] + p["b"][None, :]


def _params(d=3, h=4, c=3, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "w1": jax.random.normal(k1, (d, h)) * 0.7,
        "w2": jax.random.normal(k2, (h, c)) * 0.7,
        "b": jnp.array([0.3, -0.2, 0.1])[:c],
    }


def _batch(n=5, d=3, c=3, seed=1):
    X = jax.random.normal(jax.random.key(seed), (n, d))
    return X, jnp.arange(n) % c


def _mc_dense(loss, params, batch, num_samples, keys):
    fn = lambda k: curvlab.mc_fisher_operator(
        _model, loss, params, batch, num_samples=num_samples, key=k
    ).to_dense()
    return np.asarray(jax.jit(jax.vmap(fn))(keys))


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_mean_over_samples_is_the_ggn(loss):
    """Each entry of the MC mean lies within 5 standard errors of the GGN entry.

    The K per-key matrices are i.i.d. with mean G, so (mean - G) / stderr is ~N(0, 1) per entry;
    with ~200 entries a 5-sigma false alarm has probability ~1e-4. Entries with zero variance
    (exactly determined) are compared to rounding.
    """
    params, (X, y) = _params(), _batch()
    if loss == "ce":
        out_loss, targets = curvlab.softmax_cross_entropy, y
    else:
        out_loss, targets = curvlab.mean_squared_error, jax.random.normal(jax.random.key(5), (5, 3))
    G = dense_ggn(_model, out_loss, params, (X, targets))
    keys = jax.random.split(jax.random.key(7), 2000)
    F = _mc_dense(out_loss, params, (X, targets), 1, keys)
    mean, stderr = F.mean(0), F.std(0, ddof=1) / np.sqrt(F.shape[0])
    assert np.all(np.abs(mean - G) <= 5 * stderr + 1e-12 * np.abs(G).max())
    assert np.abs(mean - G).max() < 0.1 * np.abs(G).max()  # and the test has power


def test_fixed_matrix_per_key_symmetric_psd_and_linearized():
    params, batch = _params(), _batch()
    op = curvlab.mc_fisher_operator(
        _model, curvlab.softmax_cross_entropy, params, batch, num_samples=3, key=jax.random.key(0)
    )
    assert isinstance(op, MCFisherOperator) and op.tags == {"symmetric", "psd"}
    D = np.asarray(op.to_dense())  # prepared (linearized) product
    compare_operator(op, D, rtol=1e-12)  # matvec (not linearized) path agrees
    np.testing.assert_allclose(D, D.T, atol=1e-14)
    assert np.linalg.eigvalsh(D).min() > -1e-12
    same = curvlab.mc_fisher_operator(
        _model, curvlab.softmax_cross_entropy, params, batch, num_samples=3, key=jax.random.key(0)
    )
    np.testing.assert_array_equal(np.asarray(same.to_dense()), D)
    other = curvlab.mc_fisher_operator(
        _model, curvlab.softmax_cross_entropy, params, batch, num_samples=3, key=jax.random.key(1)
    )
    assert np.abs(np.asarray(other.to_dense()) - D).max() > 1e-6
    # rank: at most S * M = 15 directions (here n = 27)
    assert np.sum(np.linalg.eigvalsh(D) > 1e-10) <= 15


def test_num_samples_average_and_sum_reduction():
    """S samples in one operator; ``reduction="sum"`` is M times ``"mean"`` (same key, same labels)."""
    params, batch = _params(), _batch()
    key = jax.random.key(3)
    mean_op = curvlab.mc_fisher_operator(
        _model, curvlab.softmax_cross_entropy, params, batch, num_samples=4, key=key
    )
    sum_op = curvlab.mc_fisher_operator(
        _model, curvlab.SoftmaxCrossEntropy("sum"), params, batch, num_samples=4, key=key
    )
    np.testing.assert_allclose(sum_op.to_dense(), 5 * mean_op.to_dense(), rtol=1e-12, atol=1e-15)
    mse = curvlab.mc_fisher_operator(
        _model, curvlab.MeanSquaredError("sum"), params, (batch[0], jnp.zeros((5, 3))), num_samples=2, key=key
    )
    mse_mean = curvlab.mc_fisher_operator(
        _model, curvlab.mean_squared_error, params, (batch[0], jnp.zeros((5, 3))), num_samples=2, key=key
    )
    np.testing.assert_allclose(mse.to_dense(), 15 * mse_mean.to_dense(), rtol=1e-12, atol=1e-15)


def test_dataset_mc_fisher_mean_is_dataset_ggn():
    """Over a dataset of 3 batches (2 + 2 + 1 examples): per-batch keys, weights n_b / N."""
    params = _params()
    X, y = _batch(n=5)
    data = prepare_data((X, y), 2, jnp.float64)

    def dense(k):
        return MCFisherOperator(
            _model, curvlab.softmax_cross_entropy, params, num_samples=1, key=k, data=data
        ).to_dense()

    F = np.asarray(jax.jit(jax.vmap(dense))(jax.random.split(jax.random.key(2), 2000)))
    ggn = curvlab.dataset_operator(
        None,
        params,
        (X, y),
        curvature="ggn",
        batch_size=2,
        model_fn=_model,
        output_loss_fn=curvlab.softmax_cross_entropy,
    )
    G = np.asarray(ggn.to_dense())
    mean, stderr = F.mean(0), F.std(0, ddof=1) / np.sqrt(F.shape[0])
    assert np.all(np.abs(mean - G) <= 5 * stderr + 1e-12 * np.abs(G).max())
    op = MCFisherOperator(_model, curvlab.softmax_cross_entropy, params, key=jax.random.key(0), data=data)
    val, g = op.value_and_gradient()
    np.testing.assert_allclose(val, ggn.value(), rtol=1e-12)
    np.testing.assert_allclose(g, ggn.gradient(), rtol=1e-12)


def test_under_jit_no_recompile_for_a_new_key():
    params, batch = _params(), _batch()
    traces = []

    @jax.jit
    def apply(op, v):
        traces.append(1)
        return op @ v

    v = jnp.ones(27)
    ops = [
        curvlab.mc_fisher_operator(_model, curvlab.softmax_cross_entropy, params, batch, key=k)
        for k in jax.random.split(jax.random.key(0), 2)
    ]
    for op in ops:
        np.testing.assert_allclose(apply(op, v), op.matvec(v), rtol=1e-12)
    assert len(traces) == 1


def test_float32_close_to_float64():
    params, batch = _params(), _batch()
    f64 = curvlab.mc_fisher_operator(
        _model, curvlab.softmax_cross_entropy, params, batch, num_samples=2, key=jax.random.key(0)
    )
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    f32 = curvlab.mc_fisher_operator(
        _model,
        curvlab.softmax_cross_entropy,
        p32,
        (batch[0].astype(jnp.float32), batch[1]),
        num_samples=2,
        key=jax.random.key(0),
    )
    D32 = f32.to_dense()
    assert D32.dtype == jnp.float32
    # same labels: the noise is drawn in float32 for both dtypes (a draw could only differ at a tie)
    np.testing.assert_allclose(D32, f64.to_dense(), atol=1e-5 * float(jnp.abs(f64.to_dense()).max()))


def test_equinox_module():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(3, 3, 4, 1, key=jax.random.key(0))
    X, y = _batch()
    op = curvlab.mc_fisher_operator(
        lambda m, x: jax.vmap(m)(x), curvlab.softmax_cross_entropy, mlp, (X, y), key=jax.random.key(0)
    )
    assert op.shape == (3 * 4 + 4 + 4 * 3 + 3,) * 2
    assert np.linalg.eigvalsh(np.asarray(op.to_dense())).min() > -1e-12


def test_errors_name_the_problem():
    params, batch = _params(), _batch()
    plain = lambda z, t: jnp.mean(jax.nn.logsumexp(z, -1) - z[jnp.arange(5), t])
    with pytest.raises(TypeError, match="softmax_cross_entropy"):
        curvlab.mc_fisher_operator(_model, plain, params, batch, key=jax.random.key(0))
    with pytest.raises(TypeError, match="key is required"):
        curvlab.mc_fisher_operator(_model, curvlab.softmax_cross_entropy, params, batch, key=None)
    with pytest.raises(ValueError, match="num_samples"):
        curvlab.mc_fisher_operator(
            _model, curvlab.softmax_cross_entropy, params, batch, num_samples=0, key=jax.random.key(0)
        )
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="integer labels of shape"):
        curvlab.mc_fisher_operator(
            _model, curvlab.softmax_cross_entropy, params, (batch[0], jnp.zeros(4, int)), key=key
        )
    with pytest.raises(ValueError, match="reduction"):
        curvlab.SoftmaxCrossEntropy("max")

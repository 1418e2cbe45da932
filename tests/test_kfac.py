"""Tests of curvlab._kfac: K-FAC / EK-FAC operators with layers found by tracing the model.

float64 against dense references: factors against their definitions, identities where K-FAC is
exact (one example through one bias-free linear layer, dense or conv with a 1x1 output), EK-FAC's
trace identity (its block traces are the exact GGN's), the eigenbasis against ``eigh`` of the
factors, closed-form inverse / logdet / trace / diagonal against numpy; plain pytrees, Flax NNX
and Equinox models.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab import ekfac_operator, kfac_operator
from curvlab._kfac import find_layers
from tests.reference import dense_ggn

KEYS = jax.random.split(jax.random.key(0), 8)


def mse(z, t):
    return 0.5 * jnp.mean(jnp.sum((z - t) ** 2, axis=1))


def ce(z, t):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), t[:, None], axis=1))


def mlp(p, x):
    h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"][None, :])
    return h @ p["l2"]["w"] + p["l2"]["b"][None, :]


def mlp_problem(n=6):
    x = jax.random.normal(KEYS[0], (n, 3))
    labels = jnp.arange(n) % 3
    p = {
        "l1": {"w": jax.random.normal(KEYS[1], (3, 4)), "b": 0.1 * jnp.ones(4)},
        "l2": {"w": jax.random.normal(KEYS[2], (4, 3)), "b": jnp.zeros(3)},
    }
    return p, (x, labels)


@pytest.fixture(scope="module")
def mlp_ops():
    p, batch = mlp_problem()
    K = kfac_operator(mlp, ce, p, batch)
    E = ekfac_operator(mlp, ce, p, batch)
    return p, batch, K, E, dense_ggn(mlp, ce, p, batch)


# ---------------------------------------------------------------------------
# layer detection
# ---------------------------------------------------------------------------


def test_find_layers_plain_bias_and_leftovers():
    p, (x, _) = mlp_problem()
    _, layers, leftover = find_layers(mlp, p, x)
    assert [(s.kind, s.name) for s in layers] == [("dense", "['l1']['w']"), ("dense", "['l2']['w']")]
    assert [s.bias for s in layers] == [0, 2] and leftover == ()  # leaves: l1.b, l1.w, l2.b, l2.w

    # a weight used twice (tied) and a scale vector: not claimed, left to the diagonal fallback
    def tied(q, x):
        return (jnp.tanh(x @ q["w"]) * q["s"][None, :]) @ q["w"].T

    q = {"w": jnp.ones((3, 3)), "s": jnp.ones(3)}
    _, layers, leftover = find_layers(tied, q, x)
    assert layers == () and leftover == (0, 1)


def test_find_layers_nnx_and_equinox():
    import equinox as eqx
    from flax import nnx

    x = jnp.ones((4, 3))
    lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    graphdef, state = nnx.split(lin)
    _, layers, leftover = find_layers(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert len(layers) == 1 and layers[0].bias >= 0 and leftover == ()
    conv = eqx.nn.Conv2d(2, 3, 3, key=KEYS[3], dtype=jnp.float64)
    arrays, static = eqx.partition(conv, eqx.is_inexact_array)
    _, layers, leftover = find_layers(
        lambda a, x: jax.vmap(eqx.combine(a, static))(x), arrays, jnp.ones((2, 2, 5, 5))
    )
    assert [s.kind for s in layers] == ["conv"] and layers[0].bias >= 0 and leftover == ()


# ---------------------------------------------------------------------------
# identities and definitions
# ---------------------------------------------------------------------------


def test_one_example_linear_layer_is_exact():
    """K-FAC of a bias-free linear layer on one example is the GGN (A = a a^T, G = H_z); EK-FAC too."""
    x = jax.random.normal(KEYS[0], (1, 3))
    y = jax.random.normal(KEYS[1], (1, 2))
    cases = (
        (kfac_operator, lambda p, x: x @ p["w"], jnp.ones((3, 2))),  # x @ W, W (in, out)
        (ekfac_operator, lambda p, x: (p["w"] @ x.T).T, jnp.ones((2, 3))),  # W @ x, W (out, in)
    )
    for build, model, w in cases:
        p = {"w": w}
        op = build(model, mse, p, (x, y))
        np.testing.assert_allclose(np.asarray(op.to_dense()), dense_ggn(model, mse, p, (x, y)), atol=1e-12)


def test_factors_against_definitions(mlp_ops):
    p, (x, labels), K, _, _ = mlp_ops
    n = x.shape[0]
    h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"][None, :])
    z = mlp(p, x)
    Hn = np.stack(
        [np.asarray(jax.hessian(lambda zz: ce(zz[None], labels[i : i + 1]))(z[i])) / n for i in range(n)]
    )
    (A1, G1), (A2, G2) = K.factors
    np.testing.assert_allclose(A1, x.T @ x / n, atol=1e-12)
    np.testing.assert_allclose(A2, h.T @ h / n, atol=1e-12)
    np.testing.assert_allclose(G2, Hn.sum(0), atol=1e-12)  # last layer: sum of the output Hessians of L
    # first layer: sum_n J_n^T H_n J_n, J_n = d z_n / d (pre-activation of layer 1)
    J = [np.asarray(p["l2"]["w"]).T * (1 - np.asarray(h[i]) ** 2)[None, :] for i in range(n)]
    np.testing.assert_allclose(G1, sum(J[i].T @ Hn[i] @ J[i] for i in range(n)), atol=1e-12)


def test_ekfac_trace_identity_and_eigenbasis(mlp_ops):
    p, batch, K, E, G = mlp_ops
    # EK-FAC's diagonal in each block's eigenbasis is the GGN's: block traces, hence the trace, agree
    np.testing.assert_allclose(float(E.trace()), np.trace(G), rtol=1e-12)
    assert abs(float(K.trace()) - np.trace(G)) > 1e-3  # K-FAC does not have that property here
    for (A, Gf), (UA, UG, Sw, _), spec in zip(K.factors, E.eig, E.layers):
        la, lg = np.linalg.eigvalsh(A), np.linalg.eigvalsh(Gf)
        np.testing.assert_allclose(np.diag(UA.T @ A @ UA), la, atol=1e-12)
        np.testing.assert_allclose(np.diag(UG.T @ Gf @ UG), lg, atol=1e-12)
        # U_G[:, o] (x) U_A[:, i] (in W's (in, out) layout) is an eigenvector of E with eigenvalue S[o, i]
        o, i = Sw.shape[0] - 1, Sw.shape[1] - 1
        v = [jnp.zeros_like(a) for a in jax.tree_util.tree_leaves(p)]
        v[spec.weight] = jnp.outer(UA[:, i], UG[:, o])
        vt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(p), v)
        flat = E.ravel(vt)
        np.testing.assert_allclose(E @ flat, Sw[o, i] * flat, atol=1e-12)
    # K-FAC's scalings are the products of the factor eigenvalues
    (A, Gf), (_, _, Sw, _) = K.factors[1], K.eig[1]
    lam = np.outer(np.maximum(np.linalg.eigvalsh(Gf), 0), np.maximum(np.linalg.eigvalsh(A), 0))
    np.testing.assert_allclose(Sw, lam, atol=1e-12)


def test_closed_forms_against_numpy(mlp_ops):
    _, _, K, E, _ = mlp_ops
    b = np.asarray(jax.random.normal(KEYS[4], (K.size,)))
    for op in (K, E):
        D = np.asarray(op.to_dense())
        np.testing.assert_allclose(D, D.T, atol=1e-14)
        lam = np.linalg.eigvalsh(D)
        np.testing.assert_allclose(np.sort(np.asarray(op.eigenvalues())), lam, atol=1e-12)
        np.testing.assert_allclose(op.diagonal(), np.diag(D), atol=1e-12)
        np.testing.assert_allclose(float(op.trace()), np.trace(D), rtol=1e-12)
        Dd = D + 0.1 * np.eye(op.size)
        inv = op.inverse(0.1)
        np.testing.assert_allclose(inv @ b, np.linalg.solve(Dd, b), rtol=1e-10)
        np.testing.assert_allclose(float(op.damped(0.1).logdet()), np.linalg.slogdet(Dd)[1], rtol=1e-12)
        np.testing.assert_allclose(float(inv.logdet()), -np.linalg.slogdet(Dd)[1], rtol=1e-12)
        np.testing.assert_allclose(inv._exact_inverse() @ b, Dd @ b, rtol=1e-12)
        assert {"symmetric", "psd"} <= op.tags and {"symmetric", "psd"} <= inv.tags
    # singular without damping (6 examples, 4 hidden units + bias: A of layer 2 is full rank, but
    # the softmax output Hessian is singular): the closed-form inverse refuses
    with pytest.raises(ValueError, match="singular"):
        K.inverse()


def test_under_jit(mlp_ops):
    _, _, K, _, _ = mlp_ops
    v = jnp.arange(K.size, dtype=jnp.float64)
    f = jax.jit(lambda op, v: (op @ v, op.inverse(0.5) @ v, op.logdet()))
    mv, iv, _ = f(K, v)
    np.testing.assert_allclose(mv, K @ v, rtol=1e-12)
    np.testing.assert_allclose(K.damped(0.5) @ iv, v, rtol=1e-10, atol=1e-12)


def test_empirical_and_mc(mlp_ops):
    p, (x, labels), exact, _, _ = mlp_ops
    n = x.shape[0]
    E = kfac_operator(mlp, ce, p, (x, labels), fisher_type="empirical")
    z = mlp(p, x)
    g = np.asarray(jax.nn.softmax(z) - jax.nn.one_hot(labels, 3))  # per-example output gradients
    np.testing.assert_allclose(E.factors[1][1], g.T @ g / n, atol=1e-12)
    # MC: sampled labels average to the exact output Fisher (= GGN output Hessian for softmax CE)
    M = 20000
    mc = kfac_operator(mlp, ce, p, (x, labels), fisher_type="mc", key=KEYS[5], num_samples=M)
    for (_, Gm), (_, Ge) in zip(mc.factors, exact.factors):
        # each entry is a mean of M bounded terms: a few percent of the scale at M = 2e4
        np.testing.assert_allclose(Gm, Ge, atol=0.03 * np.abs(Ge).max())
    with pytest.raises(ValueError, match="key"):
        kfac_operator(mlp, ce, p, (x, labels), fisher_type="mc")
    # gaussian likelihood for squared error: sampled labels average to sum_n H_n = I (last layer)
    y = jax.random.normal(KEYS[6], (n, 3))
    g_mc = kfac_operator(mlp, mse, p, (x, y), fisher_type="mc", key=KEYS[7], num_samples=M)
    np.testing.assert_allclose(g_mc.factors[1][1], np.eye(3), atol=0.03)


def test_leftover_diagonal_is_exact_ggn_diagonal():
    def scaled(q, x):
        return (jnp.tanh(x @ q["w"]) * q["s"][None, :]) @ q["w2"]

    q = {"w": jax.random.normal(KEYS[1], (3, 4)), "s": jnp.linspace(0.5, 1.5, 4), "w2": jnp.ones((4, 2))}
    x = jax.random.normal(KEYS[0], (5, 3))
    y = jax.random.normal(KEYS[2], (5, 2))
    K = kfac_operator(scaled, mse, q, (x, y))
    assert K.leftover == (0,)  # leaves: s, w, w2
    G = dense_ggn(scaled, mse, q, (x, y))
    np.testing.assert_allclose(np.asarray(K.to_dense())[:4, :4], np.diag(np.diag(G)[:4]), atol=1e-12)


def test_conv_factors_and_exactness():
    # a conv whose 3x3 kernel covers the 3x3 input: one output position; one example: exact
    def conv(p, x):
        out = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "VALID")  # NCHW, OIHW
        return out.reshape(x.shape[0], -1)

    p = {"k": jax.random.normal(KEYS[1], (2, 3, 3, 3))}
    x = jax.random.normal(KEYS[0], (1, 3, 3, 3))
    y = jnp.zeros((1, 2))
    np.testing.assert_allclose(
        kfac_operator(conv, mse, p, (x, y)).to_dense(), dense_ggn(conv, mse, p, (x, y)), atol=1e-12
    )
    # 5x5 input, SAME padding, 2 examples: A is the mean patch outer product, G = positions x I
    x = jax.random.normal(KEYS[2], (2, 3, 5, 5))

    def conv_same(p, x):
        return jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME").reshape(x.shape[0], -1)

    y = jnp.zeros((2, 2 * 25))
    K = ekfac_operator(conv_same, mse, p, (x, y))  # its factors are K-FAC's
    xp = np.pad(np.asarray(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = np.array(
        [xp[n, :, i : i + 3, j : j + 3].ravel() for n in range(2) for i in range(5) for j in range(5)]
    )
    ((A, G),) = K.factors
    np.testing.assert_allclose(A, rows.T @ rows / rows.shape[0], atol=1e-12)
    np.testing.assert_allclose(G, 25 * np.eye(2), atol=1e-12)  # H_n = I / N per example, 25 positions x 2 / 2
    # EK-FAC's block trace is the exact one
    np.testing.assert_allclose(
        float(ekfac_operator(conv_same, mse, p, (x, y)).trace()),
        np.trace(dense_ggn(conv_same, mse, p, (x, y))),
        rtol=1e-10,
    )


def test_ekfac_conv_scalings_are_per_example_second_moments():
    """Weight sharing: the scalings are the exact block's diagonal in the Kronecker eigenbasis."""

    def cnn(p, x):
        h = jax.lax.conv_general_dilated(x, p["c"]["w"], (1, 1), "SAME") + p["c"]["b"][None, :, None, None]
        return jnp.tanh(h).reshape(x.shape[0], -1) @ p["d"]["w"]

    p = {
        "c": {"w": jax.random.normal(KEYS[3], (2, 2, 3, 3)) / 3, "b": 0.1 * jnp.ones(2)},
        "d": {"w": jax.random.normal(KEYS[4], (2 * 16, 3)) / 4},
    }
    x = jax.random.normal(KEYS[5], (3, 2, 4, 4))
    labels = jnp.array([0, 2, 1])
    E = ekfac_operator(cnn, ce, p, (x, labels))
    G = dense_ggn(cnn, ce, p, (x, labels))
    np.testing.assert_allclose(float(E.trace()), np.trace(G), rtol=1e-10)
    # the conv weight block: diag of (U_G x U_A)^T G_block (U_G x U_A), G_block in (out, in) layout
    sizes = [np.size(a) for a in jax.tree_util.tree_leaves(p)]  # c/b, c/w, d/w
    start = sizes[0]
    block = G[start : start + sizes[1], start : start + sizes[1]]  # (O, I, kh, kw) row-major = (O, I k)
    UA, UG, Sw, Sb = E.eig[0]
    Q = np.kron(np.asarray(UG), np.asarray(UA))
    np.testing.assert_allclose(np.asarray(Sw).ravel(), np.diag(Q.T @ block @ Q), rtol=1e-9, atol=1e-12)
    bias_block = G[: sizes[0], : sizes[0]]
    np.testing.assert_allclose(np.asarray(Sb), np.diag(UG.T @ bias_block @ UG), rtol=1e-9, atol=1e-12)


def test_nnx_and_equinox_modules():
    import equinox as eqx
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 4, rngs=rngs, param_dtype=jnp.float64)
            self.b = nnx.Linear(4, 3, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    _, (x, labels) = mlp_problem()
    net = Net(nnx.Rngs(0))
    E = ekfac_operator(lambda m, x: m(x), ce, net, (x, labels))
    graphdef, state = nnx.split(net, nnx.Param)
    G = dense_ggn(lambda s, x: nnx.merge(graphdef, s)(x), ce, state, (x, labels))
    assert len(E.layers) == 2 and E.leftover == ()
    np.testing.assert_allclose(float(E.trace()), np.trace(G), rtol=1e-12)

    mlp_e = eqx.nn.MLP(3, 2, 4, 1, key=KEYS[3], dtype=jnp.float64)
    y = jax.random.normal(KEYS[4], (6, 2))
    E = ekfac_operator(lambda m, x: jax.vmap(m)(x), mse, mlp_e, (x, y))
    arrays, static = eqx.partition(mlp_e, eqx.is_inexact_array)
    G = dense_ggn(lambda a, x: jax.vmap(eqx.combine(a, static))(x), mse, arrays, (x, y))
    assert len(E.layers) == 2 and E.leftover == ()
    np.testing.assert_allclose(float(E.trace()), np.trace(G), rtol=1e-12)


def test_argument_errors(mlp_ops):
    p, (x, labels), K, _, _ = mlp_ops
    with pytest.raises(ValueError, match="fisher_type"):
        kfac_operator(mlp, ce, p, (x, labels), fisher_type="true")
    with pytest.raises(ValueError, match="reduction"):
        kfac_operator(mlp, lambda z, t: ce(z, t) * z.shape[0], p, (x, labels))  # a sum, called a mean
    S = kfac_operator(mlp, lambda z, t: ce(z, t) * z.shape[0], p, (x, labels), reduction="sum")
    np.testing.assert_allclose(S.factors[1][1], x.shape[0] * K.factors[1][1], rtol=1e-12)
    with pytest.raises(ValueError, match="pair"):
        kfac_operator(mlp, ce, p, x)
    with pytest.raises(ValueError, match="damping"):
        kfac_operator(mlp, ce, p, (x, labels), damping=-1.0)


def test_float32(mlp_ops):
    p, (x, labels), K64, _, _ = mlp_ops
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p)
    K32 = kfac_operator(mlp, ce, p32, (x.astype(jnp.float32), labels))
    assert K32.dtype == jnp.float32
    v = jnp.ones(K32.size)
    # float32 rounding of factors and eigendecompositions: ~1e-5 relative
    np.testing.assert_allclose(K32 @ v.astype(jnp.float32), K64 @ v, rtol=1e-4, atol=1e-5)

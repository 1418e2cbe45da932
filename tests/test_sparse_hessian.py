"""Sparse Hessians: detected patterns, star colouring and recovery against jax.hessian (float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import curvlab
from curvlab._sparse_hessian import hessian_sparsity, star_coloring


def chain(x):
    return jnp.sum((x[1:] - x[:-1]) ** 2 * (1.0 + x[1:] ** 2)) + jnp.sum(jnp.cos(x))


def pde_energy(x, m=5):
    """5-point Laplacian energy on an m x m grid (zero boundary) plus a quartic and an exponential."""
    u = x.reshape(m, m)
    up = jnp.pad(u, 1)
    lap = 4 * u - up[:-2, 1:-1] - up[2:, 1:-1] - up[1:-1, :-2] - up[1:-1, 2:]
    return 0.5 * jnp.sum(u * lap) + 0.25 * jnp.sum(u**4) + jnp.sum(jnp.exp(0.1 * u))


def graph_energy(x, edges, weights):
    return jnp.sum(weights * (x[edges[:, 0]] - x[edges[:, 1]]) ** 4) + jnp.sum(jnp.sin(x) ** 2)


def arrowhead(x):
    return x[0] ** 2 * jnp.sum(x[1:] ** 2) + jnp.sum(x**3)


EDGES = jnp.array([[0, 5], [3, 9], [5, 11], [2, 3], [7, 1], [11, 0]])
WEIGHTS = jnp.array([1.0, 2.0, 3.0, 0.5, 1.5, 0.7])


def dense_reference(f, x, *args):
    return np.asarray(jax.jit(jax.hessian(f))(x, *args))


def nonzero_pattern(H):
    return {tuple(ij) for ij in np.argwhere(H != 0)}


def assert_star_coloring(pattern, colors):
    """Distance-1 colouring and no path on four vertices with only two colours (brute force)."""
    n = colors.size
    adj = [set() for _ in range(n)]
    for i, j in pattern:
        if i != j:
            adj[i].add(j)
    for i in range(n):
        assert all(colors[i] != colors[j] for j in adj[i])
    for a in range(n):
        for b in adj[a]:
            for c in adj[b] - {a}:
                for d in adj[c] - {a, b}:
                    assert len({colors[a], colors[b], colors[c], colors[d]}) >= 3, (a, b, c, d)


@pytest.mark.parametrize(
    ("f", "n", "args", "max_colors"),
    [
        (chain, 30, (), 3),
        (pde_energy, 25, (), 6),
        (graph_energy, 12, (EDGES, WEIGHTS), 4),
        (arrowhead, 15, (), 2),
    ],
    ids=["chain", "pde", "graph", "arrowhead"],
)
def test_recovered_hessian_equals_dense(f, n, args, max_colors):
    x = jax.random.normal(jax.random.key(1), (n,))
    op = curvlab.sparse_hessian_operator(f, x, *args)
    H = dense_reference(f, x, *args)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    # the detected pattern is exactly the structure (no accidental zeros at a random point)
    assert {tuple(ij) for ij in op.pattern} == nonzero_pattern(H)
    assert op.num_hvps == len(np.unique(op.colors)) == op.colors.max() + 1 <= max_colors
    assert op.conservative_primitives == frozenset()
    assert_star_coloring(op.pattern, op.colors)
    v = jax.random.normal(jax.random.key(2), (n,))
    np.testing.assert_allclose(np.asarray(op @ v), H @ np.asarray(v), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(op.diagonal()), np.diag(H), rtol=1e-12, atol=1e-12)
    assert "symmetric" in op.tags and op.shape == (n, n)


def test_arrowhead_takes_two_hvps_where_distance2_would_take_n():
    op = curvlab.sparse_hessian_operator(arrowhead, jnp.linspace(0.5, 1.5, 40))
    assert op.num_hvps == 2
    assert op.nnz == 40 + 2 * 39


def test_banded_colours_do_not_grow_with_n():
    counts = []
    for n in (8, 200, 3000):
        pattern, _ = hessian_sparsity(chain, jnp.zeros(n))
        counts.append(star_coloring(pattern, n).max() + 1)
    assert counts == [3, 3, 3]
    op = curvlab.sparse_hessian_operator(chain, jnp.linspace(-1.0, 1.0, 3000))
    assert op.num_hvps == 3 and op.nnz == 3 * 3000 - 2


def test_n_equals_one():
    f = lambda x: jnp.sum(x**4) + jnp.sin(x[0])
    x = jnp.array([0.7])
    op = curvlab.sparse_hessian_operator(f, x)
    assert op.num_hvps == 1 and op.pattern.tolist() == [[0, 0]]
    np.testing.assert_allclose(np.asarray(op.to_dense()), dense_reference(f, x), rtol=1e-12)


def test_linear_function_has_empty_pattern():
    op = curvlab.sparse_hessian_operator(lambda x: jnp.sum(3.0 * x), jnp.ones(4))
    assert op.num_hvps == 0 and op.nnz == 0
    np.testing.assert_array_equal(np.asarray(op @ jnp.ones(4)), np.zeros(4))


def test_wrong_explicit_pattern_is_detected():
    x = jax.random.normal(jax.random.key(3), (10,))
    diagonal_only = np.stack([np.arange(10), np.arange(10)], axis=1)
    with pytest.raises(ValueError, match="misses nonzeros"):
        curvlab.sparse_hessian_operator(chain, x, pattern=diagonal_only)
    # an explicit right pattern (as a dense mask) works, a superset too
    H = dense_reference(chain, x)
    op = curvlab.sparse_hessian_operator(chain, x, pattern=H != 0)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(curvlab.sparse_hessian_operator(chain, x, pattern=op.matrix).to_dense()), H, rtol=1e-12
    )  # a BCOO as the pattern
    band = np.abs(np.subtract.outer(np.arange(10), np.arange(10))) <= 2
    op = curvlab.sparse_hessian_operator(chain, x, pattern=band)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)


def test_explicit_pattern_errors():
    x = jnp.ones(4)
    with pytest.raises(ValueError, match="pattern indices"):
        curvlab.sparse_hessian_operator(chain, x, pattern=np.array([[0, 4]]))
    with pytest.raises(ValueError, match="pattern must be"):
        curvlab.sparse_hessian_operator(chain, x, pattern=np.ones((3, 3)))
    with pytest.raises(ValueError, match="scalar"):
        curvlab.sparse_hessian_operator(lambda x: x**2, x)
    with pytest.raises(ValueError, match="chunk_size"):
        curvlab.sparse_hessian_operator(chain, x, chunk_size=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_sparse_quadratic_with_explicit_pattern(seed):
    rng = np.random.default_rng(seed)
    n = 20
    mask = rng.random((n, n)) < 0.15
    mask = mask | mask.T | np.eye(n, dtype=bool)
    A = np.where(mask, rng.normal(size=(n, n)), 0.0)
    A = jnp.asarray(A + A.T)
    f = lambda x: 0.5 * x @ (A @ x) + jnp.sum(x**4)
    x = jnp.asarray(rng.normal(size=n))
    for op in (curvlab.sparse_hessian_operator(f, x, pattern=mask), curvlab.sparse_hessian_operator(f, x)):
        np.testing.assert_allclose(np.asarray(op.to_dense()), dense_reference(f, x), rtol=1e-12, atol=1e-12)
        assert_star_coloring(op.pattern, op.colors)
    # detection reads the zeros of the closed-over constant matrix
    assert {tuple(ij) for ij in op.pattern} == {tuple(ij) for ij in np.argwhere(np.asarray(A) != 0)}


def scan_chain(x):
    """The chain energy with its links summed by ``lax.scan`` over (x[k], x[k+1]) pairs."""

    def link(acc, pair):
        a, b = pair
        return acc + (b - a) ** 2 * (1.0 + b**2), a * b

    total, ys = jax.lax.scan(link, 0.0, (x[:-1], x[1:]))
    return total + jnp.sum(jnp.cos(x)) + 0.1 * jnp.sum(ys**2)


def fori_chain(x):
    """The chain energy by ``fori_loop`` (a scan with a counter) indexing ``x`` by the counter."""

    def body(i, acc):
        a, b = x[i], x[i + 1]
        return acc + (b - a) ** 2 * (1.0 + b**2)

    return jax.lax.fori_loop(0, x.shape[0] - 1, body, 0.0) + jnp.sum(jnp.cos(x))


def recurrent(x):
    """h_k = tanh(h_{k-1} + x_k): every x_k couples to every later one (a dense Hessian, exactly)."""
    h, _ = jax.lax.scan(lambda h, xk: (jnp.tanh(h + xk), None), 0.0, x)
    return h


@pytest.mark.parametrize("f", [scan_chain, fori_chain, recurrent])
def test_loops_are_unrolled_exactly(f):
    n = 12
    x = jax.random.normal(jax.random.key(6), (n,))
    op = curvlab.sparse_hessian_operator(f, x)
    H = dense_reference(f, x)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    assert op.conservative_primitives == frozenset()
    assert {tuple(ij) for ij in op.pattern} == nonzero_pattern(H)
    if f is not recurrent:
        assert op.num_hvps <= 4  # banded: a few colours, not n
    else:
        assert op.num_hvps == n


def test_scan_chain_colours_do_not_grow_with_n():
    pattern, conservative = hessian_sparsity(scan_chain, jnp.zeros(300))
    assert not conservative and pattern.shape[0] == 3 * 300 - 2
    assert star_coloring(pattern, 300).max() + 1 == 3


def test_long_scan_falls_back_to_a_correct_fixed_point(monkeypatch):
    import curvlab._sparse_hessian as sh

    monkeypatch.setattr(sh, "MAX_UNROLLED_EQNS", 5)
    x = jax.random.normal(jax.random.key(7), (8,))
    op = curvlab.sparse_hessian_operator(scan_chain, x)
    H = dense_reference(scan_chain, x)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    assert any("scan" in name for name in op.conservative_primitives)
    assert {tuple(ij) for ij in op.pattern} >= nonzero_pattern(H)


def test_while_loops_in_the_gradient():
    """A while loop on a non-differentiated path: unrolled when its trip count folds, else a fixed point."""

    def counted(x):  # weights from a counted while loop over x (held fixed by stop_gradient)
        w = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, 0.5 * c[1] + 1.0), (0, x))[1]
        return chain(x) + jnp.sum(jax.lax.stop_gradient(w) * x**2)

    def data_dependent(x):  # iterate until a value of x is reached
        w = jax.lax.while_loop(lambda c: c[0] < x[0] + 3.0, lambda c: (c[0] + 1.0, c[1] * 0.9), (0.0, x))[1]
        return chain(x) + jnp.sum(jax.lax.stop_gradient(w) * x**2)

    x = jnp.linspace(-0.5, 0.7, 9)
    for f in (counted, data_dependent):
        op = curvlab.sparse_hessian_operator(f, x)
        H = dense_reference(f, x)
        np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
        assert {tuple(ij) for ij in op.pattern} >= nonzero_pattern(H)
    assert "while (trip count not constant)" in op.conservative_primitives


STENCIL = jnp.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def conv_pde(x, m=5):
    """The 5-point Laplacian energy written as a convolution with a 3 x 3 stencil (corners zero)."""
    u = x.reshape(1, 1, m, m)
    lap = jax.lax.conv_general_dilated(u, STENCIL[None, None], (1, 1), "SAME")
    return 0.5 * jnp.sum(u * lap) + 0.25 * jnp.sum(u**4)


def test_convolution_stencil_energy_is_exact():
    x = jax.random.normal(jax.random.key(8), (25,))
    op = curvlab.sparse_hessian_operator(conv_pde, x)
    H = dense_reference(conv_pde, x)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    assert op.conservative_primitives == frozenset()
    # the stencil's zero corners are read: 5-point structure, as the pad-and-slice version
    assert {tuple(ij) for ij in op.pattern} == nonzero_pattern(H)
    assert {tuple(ij) for ij in op.pattern} == {tuple(ij) for ij in hessian_sparsity(pde_energy, x)[0]}


CONVS = (  # (input shape, kernel shape, conv_general_dilated arguments): strides, dilations, groups
    (
        (2, 4, 7),
        (4, 2, 3),
        dict(window_strides=(2,), padding=((1, 2),), rhs_dilation=(2,), feature_group_count=2),
    ),
    ((2, 2, 7), (2, 2, 3), dict(window_strides=(1,), padding=((2, 0),), lhs_dilation=(2,))),
    ((4, 2, 7), (4, 2, 3), dict(window_strides=(1,), padding=((0, -1),), batch_group_count=2)),
)


def test_convolutions_of_two_variables_are_exact():
    """Inputs and kernels all in x: window couplings input-input, input-kernel, kernel-kernel."""

    def f(p):
        total = 0.0
        for (inp, ker), (_, _, conv) in zip(p, CONVS):
            total = (
                total + jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(inp, ker, **conv))) + jnp.sum(ker**2)
            )
        return total

    keys = jax.random.split(jax.random.key(9), 2 * len(CONVS))
    p = [
        (jax.random.normal(keys[2 * i], si), jax.random.normal(keys[2 * i + 1], sk))
        for i, (si, sk, _) in enumerate(CONVS)
    ]
    op = curvlab.sparse_hessian_operator(f, p)
    flat, unravel = ravel_pytree(p)
    H = dense_reference(lambda z: f(unravel(z)), flat)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    assert op.conservative_primitives == frozenset()
    assert {tuple(ij) for ij in op.pattern} == nonzero_pattern(H)


def test_pytree_point_and_at_new_point():
    def f(p):
        return chain(p["a"]) + jnp.sum(p["a"][:3] * p["b"] ** 2)

    p = {"a": jnp.linspace(-1.0, 1.0, 7), "b": jnp.array([0.3, -0.2, 0.5])}
    op = curvlab.sparse_hessian_operator(f, p)
    flat, unravel = ravel_pytree(p)
    H = dense_reference(lambda z: f(unravel(z)), flat)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    assert op.conservative_primitives == frozenset()  # the split of the flat vector is mapped exactly
    assert {tuple(ij) for ij in op.pattern} == nonzero_pattern(H)
    p2 = jax.tree_util.tree_map(lambda a: 2.0 * a + 0.1, p)
    op2 = op.at(p2)
    flat2, _ = ravel_pytree(p2)
    np.testing.assert_allclose(
        np.asarray(op2.to_dense()), dense_reference(lambda z: f(unravel(z)), flat2), rtol=1e-12, atol=1e-12
    )
    assert op2.pattern is op.pattern


def pde4(x):
    return pde_energy(x, 4)


def test_under_jit_and_chunked():
    x = jax.random.normal(jax.random.key(4), (16,))
    H = dense_reference(pde4, x)

    @jax.jit
    def build(x):
        op = curvlab.sparse_hessian_operator(pde4, x)
        return op.to_dense(), op.probe_error

    dense, err = build(x)
    np.testing.assert_allclose(np.asarray(dense), H, rtol=1e-12, atol=1e-12)
    assert float(err) < 1e-12
    op = curvlab.sparse_hessian_operator(pde4, x, chunk_size=2)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-12, atol=1e-12)
    # the operator is a pytree: passable into jitted solvers
    v = jnp.ones(16)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda o, v: o @ v)(op, v)), H @ np.asarray(v), rtol=1e-12)


def test_float32_tolerance():
    x = jax.random.normal(jax.random.key(5), (25,), jnp.float32)
    op = curvlab.sparse_hessian_operator(pde_energy, x)
    assert op.dtype == jnp.float32
    H = dense_reference(pde_energy, x)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-5, atol=1e-5)


def test_star_coloring_on_small_graphs():
    for pattern, n, expect in [
        (np.array([[0, 1], [1, 0]]), 2, 2),  # one edge
        (np.array([[i, j] for i, j in itertools.permutations(range(4), 2)]), 4, 4),  # complete K4
        (np.zeros((0, 2), int), 3, 1),  # diagonal only
    ]:
        colors = star_coloring(pattern, n)
        assert colors.max() + 1 == expect
        assert_star_coloring(pattern, colors)

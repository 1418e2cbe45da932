"""Tests for curvlab.problems: closed forms against jax.hessian, known spectra and minimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from curvlab import problems
from tests.reference import dense_hessian


def random_point(n, seed, scale=1.5):
    return jnp.asarray(np.random.default_rng(seed).uniform(-scale, scale, n))


@pytest.mark.parametrize(
    "make",
    [
        lambda: problems.rosenbrock(2),
        lambda: problems.rosenbrock(6),
        problems.seed_example,
        problems.himmelblau,
    ],
)
def test_closed_form_hessians(make):
    p = make()
    for x in (p.x0, random_point(p.dim, 0), random_point(p.dim, 1)):
        np.testing.assert_allclose(np.asarray(p.hessian_fn(x)), dense_hessian(p.f, x), rtol=1e-12, atol=1e-12)


def test_quadratic_spectrum_and_minimizer():
    lam = [4.0, -1.0, 0.25, 9.0]
    p = problems.quadratic(eigenvalues=lam)
    np.testing.assert_allclose(p.eigenvalues, np.sort(lam))
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(p.matrix)), np.sort(lam), rtol=1e-12, atol=1e-12)
    x = random_point(4, 2)
    np.testing.assert_allclose(dense_hessian(p.f, x), p.matrix, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.hessian_fn(x), p.matrix)
    np.testing.assert_allclose(jax.grad(p.f)(p.minimizer), np.zeros(4), atol=1e-12)
    np.testing.assert_allclose(float(jnp.linalg.norm(p.b)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p.f(x), 0.5 * x @ p.matrix @ x - p.b @ x, rtol=1e-12)
    assert p.dim == 4 and p.name == "quadratic"


def test_quadratic_condition_number():
    p = problems.quadratic(condition_number=1e3, n=20)
    w = np.linalg.eigvalsh(np.asarray(p.matrix))
    np.testing.assert_allclose(w[-1] / w[0], 1e3, rtol=1e-9)
    np.testing.assert_allclose(w, np.geomspace(1, 1e3, 20), rtol=1e-9)
    assert "1e+03" in p.latex
    # a different key gives a different matrix with the same spectrum
    q = problems.quadratic(condition_number=1e3, n=20, key=jax.random.PRNGKey(7))
    assert not np.allclose(p.matrix, q.matrix)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(q.matrix)), w, rtol=1e-9)
    assert problems.quadratic(eigenvalues=[0.0, 1.0]).minimizer is None


def test_quadratic_errors():
    with pytest.raises(ValueError, match="exactly one"):
        problems.quadratic()
    with pytest.raises(ValueError, match="exactly one"):
        problems.quadratic([1.0], condition_number=10)
    with pytest.raises(ValueError, match="condition_number"):
        problems.quadratic(condition_number=0.5)
    with pytest.raises(ValueError, match="finite"):
        problems.quadratic(eigenvalues=[1.0, np.nan])
    with pytest.raises(ValueError, match="n must be"):
        problems.quadratic(condition_number=10, n=0)


def test_minimizers_are_stationary_with_positive_definite_hessian():
    for p in (problems.rosenbrock(5), problems.himmelblau()):
        np.testing.assert_allclose(jax.grad(p.f)(p.minimizer), 0.0, atol=1e-12)
        assert float(p.f(p.minimizer)) == pytest.approx(0.0, abs=1e-12)
        assert np.linalg.eigvalsh(np.asarray(p.hessian_fn(p.minimizer))).min() > 0


def test_rosenbrock_start_and_errors():
    np.testing.assert_allclose(problems.rosenbrock(4).x0, [-1.2, 1.0, -1.2, 1.0])
    with pytest.raises(ValueError, match="n >= 2"):
        problems.rosenbrock(1)


def test_seed_example_values():
    p = problems.seed_example()
    np.testing.assert_allclose(p.f(jnp.array([2.0, 0.5])), 4 * 0.5 + np.sin(0.5), rtol=1e-14)
    np.testing.assert_allclose(p.hessian_fn(jnp.array([1.0, 0.0])), [[0.0, 2.0], [2.0, 0.0]])
    assert p.dim == 2


def test_two_d_problems():
    assert set(problems.TWO_D_PROBLEMS) == {"seed", "rosenbrock", "himmelblau"}
    for name, make in problems.TWO_D_PROBLEMS.items():
        p = make()
        assert p.dim == 2 and p.name == name and len(p.bounds) == 4 and p.latex
        xmin, xmax, ymin, ymax = p.bounds
        assert xmin < xmax and ymin < ymax


def test_load_digits():
    X, y = problems.load_digits(10)
    assert X.shape == (10, 64) and y.shape == (10,)
    assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0
    assert set(np.asarray(problems.load_digits()[1]).tolist()) == set(range(10))
    assert problems.load_digits(5, dtype=jnp.float32)[0].dtype == jnp.float32
    for bad in (0, 5000):
        with pytest.raises(ValueError, match="num_examples"):
            problems.load_digits(bad)


def _neural():
    return [
        problems.logistic_regression(num_examples=20, l2=0.01),
        problems.mlp(hidden=(6, 5), num_examples=20, l2=0.02),
        problems.autoencoder(widths=(64, 5, 3, 5, 64), num_examples=10),
    ]


def test_neural_problem_consistency():
    for p in _neural():
        x = p.x0
        inputs, targets = p.batch
        f = float(p.f(x))
        np.testing.assert_allclose(float(p.loss(x, p.batch)), f, rtol=1e-14)
        np.testing.assert_allclose(float(jnp.mean(p.per_example_loss_fn(x, p.batch))), f, rtol=1e-12)
        penalty = f - float(p.output_loss_fn(p.model_fn(x, inputs), targets))
        assert penalty >= 0.0
        assert p.per_example_loss_fn(x, p.batch).shape == (inputs.shape[0],)
        assert p.dim == ravel_pytree(x)[0].size and p.latex


def test_logistic_regression_is_convex_and_l2_shifts_the_spectrum():
    p0 = problems.logistic_regression(num_examples=20, l2=0.0)
    p1 = problems.logistic_regression(num_examples=20, l2=0.5)
    x = p0.x0
    H0, H1 = dense_hessian(p0.f, x), dense_hessian(p1.f, x)
    w0 = np.linalg.eigvalsh(H0)
    assert w0.min() >= -1e-12 * w0.max()
    np.testing.assert_allclose(np.linalg.eigvalsh(H1), w0 + 0.5, rtol=1e-10, atol=1e-10)


def test_mlp_shapes_and_dtype():
    p = problems.mlp(hidden=(7, 3), num_examples=9, dtype=jnp.float32)
    assert [layer["W"].shape for layer in p.x0] == [(64, 7), (7, 3), (3, 10)]
    assert p.dim == 64 * 7 + 7 + 7 * 3 + 3 + 3 * 10 + 10
    assert p.f(p.x0).dtype == jnp.float32
    assert p.model_fn(p.x0, p.batch[0]).shape == (9, 10)
    # initial loss near log(10) (small random logits)
    assert abs(float(p.f(p.x0)) - np.log(10)) < 1.0


def test_autoencoder_errors_and_shape():
    with pytest.raises(ValueError, match="start and end with 64"):
        problems.autoencoder(widths=(32, 4, 64))
    p = problems.autoencoder(widths=(64, 4, 64), num_examples=5)
    assert p.model_fn(p.x0, p.batch[0]).shape == (5, 64)
    np.testing.assert_array_equal(p.batch[0], p.batch[1])


# ---------------------------------------------------------------------------
# spectra and matrices of prescribed spectrum
# ---------------------------------------------------------------------------


def test_strakos_formula_and_errors():
    lam = problems.strakos(50, 1e3, rho=0.9)
    i = np.arange(1, 51)
    np.testing.assert_allclose(lam, 1 + (i - 1) / 49 * (1e3 - 1) * 0.9 ** (50 - i), rtol=1e-15)
    assert lam[0] == 1.0 and lam[-1] == 1e3 and np.all(np.diff(lam) > 0)
    np.testing.assert_allclose(problems.strakos(4, 1.0), np.ones(4))  # condition number 1: all ones
    for bad, error, match in (
        (dict(n=1, condition_number=10.0), ValueError, "n must be >= 2"),
        (dict(n=2.5, condition_number=10.0), TypeError, "n must be an integer"),
        (dict(n=5, condition_number=0.5), ValueError, "condition_number must be a finite number >= 1"),
        (dict(n=5, condition_number=np.inf), ValueError, "condition_number"),
        (dict(n=5, condition_number=10.0, rho=0.0), ValueError, "rho must be in"),
    ):
        with pytest.raises(error, match=match):
            problems.strakos(**bad)


@pytest.mark.parametrize(
    "lam",
    [[2.0], [-1.0, 0.0, 0.0, 3.0], [1.0, 1.0, 1.0, 1.0 + 1e-9, 5.0], list(problems.strakos(30, 1e4))],
    ids=["n1", "singular_repeated", "nearly_repeated", "strakos"],
)
def test_matrix_with_spectrum_has_exactly_that_spectrum(lam):
    A = np.asarray(problems.matrix_with_spectrum(lam, key=jax.random.key(3), dtype=jnp.float64))
    assert A.dtype == np.float64 and A.shape == (len(lam), len(lam))
    np.testing.assert_array_equal(A, A.T)
    np.testing.assert_allclose(
        np.linalg.eigvalsh(A), np.sort(lam), rtol=0, atol=1e-13 * max(1.0, max(map(abs, lam)))
    )


def test_matrix_with_spectrum_key_dtype_and_errors():
    lam = [1.0, 2.0, 3.0]
    a = problems.matrix_with_spectrum(lam, key=jax.random.key(1))
    b = problems.matrix_with_spectrum(lam, key=jax.random.PRNGKey(1))  # raw key: wrapped, same stream
    c = problems.matrix_with_spectrum(lam, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    A32 = problems.matrix_with_spectrum(lam, dtype=jnp.float32)
    assert A32.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(A32, np.float64)), lam, rtol=1e-6)
    with pytest.raises(TypeError, match="eigenvalues must be real"):
        problems.matrix_with_spectrum([1.0 + 1j, 2.0])
    with pytest.raises(ValueError, match="non-empty 1-D array of finite numbers"):
        problems.matrix_with_spectrum([])
    with pytest.raises(ValueError, match="finite"):
        problems.matrix_with_spectrum([1.0, np.nan])
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        problems.matrix_with_spectrum(lam, key=3)


def test_quadratic_uses_matrix_with_spectrum():
    q = problems.quadratic(eigenvalues=[3.0, 1.0, 2.0], key=jax.random.key(5))
    kq, _ = jax.random.split(jax.random.key(5))
    np.testing.assert_allclose(q.matrix, problems.matrix_with_spectrum([1.0, 2.0, 3.0], key=kq), rtol=1e-15)

"""Problem zoo: named test functions whose curvature is known.

Every constructor returns a :class:`Problem` holding the scalar function ``f``,
a starting point ``x0``, a name and a LaTeX label for the widgets, and
whatever reference the problem has in closed form (a dense Hessian function,
the spectrum, the minimizer). Neural problems also carry the full loss
``loss(params, batch)``, ``model_fn(params, inputs)``, ``output_loss_fn(outputs,
targets)`` and ``batch`` so that the Gauss-Newton operator applies, and
``per_example_loss_fn(params, batch) -> (N,)`` for the empirical Fisher.

Spectra and matrices for Krylov tests: :func:`strakos` (the Strakoš spectrum) and
:func:`matrix_with_spectrum` (a dense symmetric matrix with a prescribed spectrum).

Examples
--------
>>> p = seed_example()
>>> p.name, p.dim
('seed', 2)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._validation import as_key

PyTree = Any

__all__ = [
    "Problem",
    "strakos",
    "matrix_with_spectrum",
    "quadratic",
    "rosenbrock",
    "seed_example",
    "himmelblau",
    "load_digits",
    "logistic_regression",
    "mlp",
    "autoencoder",
    "TWO_D_PROBLEMS",
]


@dataclasses.dataclass(frozen=True)
class Problem:
    """A differentiable test problem.

    Attributes
    ----------
    name : str
        Short identifier.
    f : callable
        Scalar objective ``f(x)`` (for neural problems, the full-batch loss).
    x0 : pytree
        Starting point.
    latex : str
        LaTeX label for figures.
    hessian_fn : callable, optional
        Closed-form dense Hessian ``x -> (n, n)``.
    matrix, b : array, optional
        For quadratics :math:`\\tfrac12 x^\\top A x - b^\\top x`.
    eigenvalues : array, optional
        Known Hessian spectrum (ascending), where it does not depend on ``x``.
    minimizer : pytree, optional
        A known minimizer.
    model_fn, output_loss_fn : callable, optional
        ``model_fn(params, inputs) -> outputs``, ``output_loss_fn(outputs, targets) -> scalar``
        (the arguments of :func:`curvlab.ggn_operator`).
    per_example_loss_fn : callable, optional
        ``per_example_loss_fn(params, batch) -> (N,)`` per-example losses (empirical Fisher).
    loss : callable, optional
        The full loss ``loss(params, batch) -> scalar`` with ``batch = (inputs, targets)``
        (a ``loss_fn`` in curvlab's signatures); ``f(x) = loss(x, batch)``.
    batch : tuple, optional
        ``(inputs, targets)`` the full-batch ``f`` uses.
    bounds : tuple, optional
        ``(xmin, xmax, ymin, ymax)`` plotting window for 2-D problems.
    """

    name: str
    f: Callable
    x0: PyTree
    latex: str
    hessian_fn: Callable | None = None
    matrix: jax.Array | None = None
    b: jax.Array | None = None
    eigenvalues: jax.Array | None = None
    minimizer: PyTree | None = None
    model_fn: Callable | None = None
    output_loss_fn: Callable | None = None
    per_example_loss_fn: Callable | None = None
    loss: Callable | None = None
    batch: tuple | None = None
    bounds: tuple | None = None

    @property
    def dim(self) -> int:
        """Number of scalar parameters."""
        return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(self.x0)))


def _dtype(dtype):
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)


# ---------------------------------------------------------------------------
# Classic functions
# ---------------------------------------------------------------------------


def strakos(n: int, condition_number: float, rho: float = 0.9) -> np.ndarray:
    """Strakoš spectrum on :math:`[1, \\kappa]` (ascending, float64).

    :math:`\\lambda_i = 1 + \\frac{i-1}{n-1}(\\kappa-1)\\rho^{n-i}`, :math:`i = 1, \\dots, n`,
    with :math:`\\kappa` the ``condition_number`` and :math:`0 < \\rho \\le 1`.

    The top eigenvalues are well separated and the bottom ones cluster near 1:
    the classic test where Lanczos without reorthogonalization produces ghost
    copies of the converged top eigenvalues (Strakoš 1991). Use it as
    ``quadratic(eigenvalues=strakos(n, condition_number))``.

    Examples
    --------
    >>> [round(float(v), 3) for v in strakos(3, 10.0, 0.5)]
    [1.0, 3.25, 10.0]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    if n < 2:
        raise ValueError(f"n must be >= 2 (the spectrum runs from 1 to condition_number), got {n}")
    condition_number, rho = float(condition_number), float(rho)
    if not (np.isfinite(condition_number) and condition_number >= 1):
        raise ValueError(f"condition_number must be a finite number >= 1, got {condition_number}")
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    i = np.arange(1, int(n) + 1)
    return 1.0 + (i - 1) / (n - 1) * (condition_number - 1.0) * rho ** (n - i)


def _symmetric_with_spectrum(lam: np.ndarray, key) -> np.ndarray:
    """``Q diag(lam) Q^T`` in float64 with ``Q`` Haar-random from ``key`` (QR with sign fix)."""
    n = lam.size
    g = np.asarray(
        jax.random.normal(key, (n, n), dtype=jnp.float64 if jax.config.x64_enabled else jnp.float32)
    )
    q, r = np.linalg.qr(g.astype(np.float64))
    q = q * np.sign(np.diag(r))
    A = (q * lam) @ q.T
    return (A + A.T) / 2


def matrix_with_spectrum(eigenvalues, *, key: jax.Array | None = None, dtype=None) -> jax.Array:
    """Dense symmetric :math:`A = Q \\operatorname{diag}(\\lambda) Q^\\top` with exactly the given spectrum.

    :math:`Q` is a Haar-random orthogonal matrix drawn from ``key`` (a typed key;
    default ``jax.random.key(0)``); the product is formed in float64 and symmetrized,
    then cast to ``dtype``, so :math:`A` is exactly symmetric and its eigenvalues are
    ``eigenvalues`` up to rounding (repeated values stay repeated).

    Examples
    --------
    >>> import numpy as np
    >>> A = matrix_with_spectrum([3.0, 1.0, 1.0])
    >>> np.round(np.linalg.eigvalsh(np.asarray(A)), 5).tolist()
    [1.0, 1.0, 3.0]
    """
    lam = np.asarray(eigenvalues)
    if np.iscomplexobj(lam):
        raise TypeError("eigenvalues must be real: a real symmetric matrix has a real spectrum")
    lam = lam.astype(np.float64)
    if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)):
        raise ValueError(
            f"eigenvalues must be a non-empty 1-D array of finite numbers, got shape {lam.shape}"
        )
    return jnp.asarray(_symmetric_with_spectrum(lam, as_key("key", key, required=False)), _dtype(dtype))


def quadratic(
    eigenvalues=None,
    *,
    condition_number: float | None = None,
    n: int = 100,
    key: jax.Array | None = None,
    dtype=None,
) -> Problem:
    """Quadratic :math:`f(x) = \\tfrac12 x^\\top A x - b^\\top x` with a known spectrum.

    :math:`A = Q \\operatorname{diag}(\\lambda) Q^\\top` with a random orthogonal
    :math:`Q`. Give either the ``eigenvalues`` or a ``condition_number``
    :math:`\\kappa` (eigenvalues log-spaced on :math:`[1, \\kappa]`).
    ``b`` is a random unit vector; the minimizer is :math:`A^{-1} b` (when
    :math:`A` is nonsingular).
    """
    dtype = _dtype(dtype)
    if (eigenvalues is None) == (condition_number is None):
        raise ValueError("give exactly one of eigenvalues= or condition_number=")
    if eigenvalues is None:
        if not np.isfinite(condition_number) or condition_number < 1:
            raise ValueError(f"condition_number must be a finite number >= 1, got {condition_number}")
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        lam = np.geomspace(1.0, float(condition_number), int(n))
    else:
        lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        if lam.size == 0 or not np.all(np.isfinite(lam)):
            raise ValueError("eigenvalues must be a non-empty array of finite numbers")
    n = lam.size
    kq, kb = jax.random.split(as_key("key", key, required=False))
    A = _symmetric_with_spectrum(lam, kq)
    b = np.asarray(jax.random.normal(kb, (n,)), dtype=np.float64)
    b = b / np.linalg.norm(b)
    A_j, b_j = jnp.asarray(A, dtype), jnp.asarray(b, dtype)

    def f(x):
        return 0.5 * jnp.vdot(x, A_j @ x) - jnp.vdot(b_j, x)

    minimizer = jnp.asarray(np.linalg.solve(A, b), dtype) if np.all(lam != 0) else None
    label = (
        f"\\tfrac12 x^\\top A x - b^\\top x,\\ \\kappa = {lam[-1] / lam[0]:.3g}"
        if lam[0] > 0
        else "\\tfrac12 x^\\top A x - b^\\top x"
    )
    return Problem(
        name="quadratic",
        f=f,
        x0=jnp.zeros(n, dtype),
        latex=label,
        hessian_fn=lambda x: A_j,
        matrix=A_j,
        b=b_j,
        eigenvalues=jnp.asarray(lam, dtype),
        minimizer=minimizer,
    )


def rosenbrock(n: int = 2, *, dtype=None) -> Problem:
    """Rosenbrock :math:`\\sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`, minimum at 1.

    Starts at the classic :math:`(-1.2, 1, -1.2, 1, \\dots)`.
    """
    if int(n) < 2:
        raise ValueError(f"rosenbrock needs n >= 2, got {n}")
    dtype = _dtype(dtype)
    n = int(n)

    def f(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    def hessian_fn(x):
        x = jnp.asarray(x)
        d = jnp.zeros(n, x.dtype)
        d = d.at[:-1].add(1200.0 * x[:-1] ** 2 - 400.0 * x[1:] + 2.0)
        d = d.at[1:].add(200.0)
        off = -400.0 * x[:-1]
        return jnp.diag(d) + jnp.diag(off, 1) + jnp.diag(off, -1)

    x0 = jnp.asarray(np.resize([-1.2, 1.0], n), dtype)
    return Problem(
        name="rosenbrock",
        f=f,
        x0=x0,
        latex="\\sum_i 100(x_{i+1}-x_i^2)^2 + (1-x_i)^2",
        hessian_fn=hessian_fn,
        minimizer=jnp.ones(n, dtype),
        bounds=(-2.0, 2.0, -1.0, 3.0),
    )


def seed_example(*, dtype=None) -> Problem:
    """The seed example :math:`f(x, y) = x^2 y + \\sin y`.

    Hessian :math:`\\begin{pmatrix} 2y & 2x \\\\ 2x & -\\sin y \\end{pmatrix}`.
    """
    dtype = _dtype(dtype)

    def f(xy):
        return xy[0] ** 2 * xy[1] + jnp.sin(xy[1])

    def hessian_fn(xy):
        x, y = xy[0], xy[1]
        return jnp.array([[2 * y, 2 * x], [2 * x, -jnp.sin(y)]])

    return Problem(
        name="seed",
        f=f,
        x0=jnp.asarray([1.0, 0.5], dtype),
        latex="x^2 y + \\sin y",
        hessian_fn=hessian_fn,
        bounds=(-2.0, 2.0, -2.0, 2.0),
    )


def himmelblau(*, dtype=None) -> Problem:
    """Himmelblau :math:`(x^2 + y - 11)^2 + (x + y^2 - 7)^2`: four minima, a maximum, saddles."""
    dtype = _dtype(dtype)

    def f(xy):
        x, y = xy[0], xy[1]
        return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2

    def hessian_fn(xy):
        x, y = xy[0], xy[1]
        return jnp.array([[12 * x**2 + 4 * y - 42, 4 * x + 4 * y], [4 * x + 4 * y, 12 * y**2 + 4 * x - 26]])

    return Problem(
        name="himmelblau",
        f=f,
        x0=jnp.asarray([0.0, 0.0], dtype),
        latex="(x^2+y-11)^2 + (x+y^2-7)^2",
        hessian_fn=hessian_fn,
        minimizer=jnp.asarray([3.0, 2.0], dtype),
        bounds=(-5.0, 5.0, -5.0, 5.0),
    )


#: 2-D problems by name, for the curvature explorer.
TWO_D_PROBLEMS = {"seed": seed_example, "rosenbrock": rosenbrock, "himmelblau": himmelblau}


# ---------------------------------------------------------------------------
# Data and neural problems
# ---------------------------------------------------------------------------


@functools.cache
def _digits_numpy():
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits problems need scikit-learn (it ships the data): pip install scikit-learn"
        ) from err
    d = _load()
    return (d.data / 16.0).astype(np.float64), d.target.astype(np.int32)


def load_digits(num_examples: int | None = None, *, dtype=None) -> tuple[jax.Array, jax.Array]:
    """scikit-learn's 8x8 digits (1797 images, pixels scaled to [0, 1]).

    Returns ``(inputs (N, 64), labels (N,))``; the first ``num_examples`` rows
    if given (the data are already shuffled by class).
    """
    X, y = _digits_numpy()
    if num_examples is not None:
        if not 1 <= int(num_examples) <= X.shape[0]:
            raise ValueError(f"num_examples must be in [1, {X.shape[0]}], got {num_examples}")
        X, y = X[: int(num_examples)], y[: int(num_examples)]
    return jnp.asarray(X, _dtype(dtype)), jnp.asarray(y)


def _softmax_xent(logits, labels):
    """Per-example softmax cross-entropy."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _classification_problem(name, latex, params, apply, X, y, l2):
    def output_loss_fn(logits, labels):
        return jnp.mean(_softmax_xent(logits, labels))

    def reg(p):
        return 0.5 * l2 * sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(p))

    def loss(p, batch):
        inputs, labels = batch
        return output_loss_fn(apply(p, inputs), labels) + reg(p)

    def per_example_loss_fn(p, batch):
        inputs, labels = batch
        return _softmax_xent(apply(p, inputs), labels) + reg(p)

    batch = (X, y)
    return Problem(
        name=name,
        f=lambda p: loss(p, batch),
        x0=params,
        latex=latex,
        model_fn=apply,
        output_loss_fn=output_loss_fn,
        per_example_loss_fn=per_example_loss_fn,
        loss=loss,
        batch=batch,
    )


def logistic_regression(num_examples: int = 512, *, l2: float = 1e-3, key=None, dtype=None) -> Problem:
    """Multinomial logistic regression on digits with an L2 penalty.

    The penalty is :math:`\\tfrac{\\ell_2}{2}\\lVert w\\rVert^2` over all parameters.

    Convex: the Hessian is positive semidefinite (definite for ``l2 > 0``).
    ``output_loss_fn`` is the cross-entropy alone, so the GGN excludes the penalty.
    """
    dtype = _dtype(dtype)
    X, y = load_digits(num_examples, dtype=dtype)
    key = as_key("key", key, required=False)
    params = {"W": 0.01 * jax.random.normal(key, (64, 10), dtype), "b": jnp.zeros(10, dtype)}

    def apply(p, inputs):
        return _affine(inputs, p["W"], p["b"])

    return _classification_problem(
        "logistic", "\\text{softmax regression on digits}", params, apply, X, y, l2
    )


def _init_layers(key, sizes, dtype, scale=None):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        s = float(1.0 / np.sqrt(m)) if scale is None else float(scale)
        params.append({"W": s * jax.random.normal(k, (m, n), dtype), "b": jnp.zeros(n, dtype)})
    return params


def _affine(h, W, b):
    """``h W + b`` with the bias broadcast explicitly (no implicit rank promotion)."""
    z = h @ W
    return z + jnp.broadcast_to(b, z.shape)


def _mlp_apply(params, inputs, activation=jnp.tanh):
    h = inputs
    for layer in params[:-1]:
        h = activation(_affine(h, layer["W"], layer["b"]))
    return _affine(h, params[-1]["W"], params[-1]["b"])


def mlp(
    hidden: tuple[int, ...] = (32,), num_examples: int = 512, *, l2: float = 0.0, key=None, dtype=None
) -> Problem:
    """Small tanh MLP classifier on digits: 64 → hidden → 10, softmax cross-entropy.

    Non-convex: its Hessian is indefinite away from a minimum, while the GGN
    and the empirical Fisher are positive semidefinite.
    """
    dtype = _dtype(dtype)
    X, y = load_digits(num_examples, dtype=dtype)
    key = as_key("key", key, required=False)
    sizes = (64, *tuple(int(h) for h in hidden), 10)
    params = _init_layers(key, sizes, dtype)
    label = "\\text{MLP } " + "\\to".join(str(s) for s in sizes) + "\\text{ on digits}"
    return _classification_problem("mlp", label, params, _mlp_apply, X, y, l2)


def autoencoder(
    widths: tuple[int, ...] = (64, 32, 16, 6, 16, 32, 64),
    num_examples: int = 512,
    *,
    key=None,
    dtype=None,
) -> Problem:
    """Deep narrow autoencoder on digits: the pathological-curvature case of Martens (2010).

    tanh hidden layers, logistic outputs, binary cross-entropy against the
    pixels (in [0, 1]) summed over pixels and averaged over examples.
    ``model_fn`` returns logits, so the GGN uses the matching loss.
    """
    dtype = _dtype(dtype)
    if widths[0] != 64 or widths[-1] != 64:
        raise ValueError("autoencoder widths must start and end with 64 (the digits' pixels)")
    X, _ = load_digits(num_examples, dtype=dtype)
    key = as_key("key", key, required=False)
    params = _init_layers(key, tuple(widths), dtype)

    def per_example(logits, targets):
        return jnp.sum(jnp.logaddexp(0.0, logits) - targets * logits, axis=-1)

    def output_loss_fn(logits, targets):
        return jnp.mean(per_example(logits, targets))

    def loss(p, batch):
        inputs, targets = batch
        return output_loss_fn(_mlp_apply(p, inputs), targets)

    def per_example_loss_fn(p, batch):
        inputs, targets = batch
        return per_example(_mlp_apply(p, inputs), targets)

    batch = (X, X)
    return Problem(
        name="autoencoder",
        f=lambda p: loss(p, batch),
        x0=params,
        latex="\\text{autoencoder } " + "\\text{-}".join(str(w) for w in widths),
        model_fn=_mlp_apply,
        output_loss_fn=output_loss_fn,
        per_example_loss_fn=per_example_loss_fn,
        loss=loss,
        batch=batch,
    )

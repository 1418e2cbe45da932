"""Curvature linear operators on flat vectors.

A :class:`LinearOperator` represents a symmetric matrix :math:`A \\in
\\mathbb{R}^{n \\times n}` through its action ``v -> A v`` on 1-D arrays of
length ``n``. Operators are JAX pytrees: their arrays are leaves and their
functions are static, so an operator can be an argument of a jitted function,
and a new operator of the same kind and shapes reuses the compiled code.

Curvature operators (:func:`hessian_operator`, :func:`ggn_operator`,
:func:`fisher_operator`) act on the flattened parameters (``ravel_pytree``
order) and provide ``ravel(tree)`` / ``unravel(flat)`` to move between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from curvlab._hvp import HVP_MODES, _hvp_kernel
from curvlab._validation import check_like, check_scalar_output

PyTree = Any

#: Largest ``n`` for which :meth:`LinearOperator.to_dense` builds a matrix by default.
DENSE_SIZE_LIMIT = 8192

__all__ = [
    "DENSE_SIZE_LIMIT",
    "LinearOperator",
    "DenseOperator",
    "DiagonalOperator",
    "IdentityOperator",
    "LowRankOperator",
    "BlockDiagonalOperator",
    "KroneckerOperator",
    "SumOperator",
    "ScaledOperator",
    "FunctionOperator",
    "HessianOperator",
    "GGNOperator",
    "FisherOperator",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
    "as_operator",
]


def _register(cls):
    """Register an operator class as a pytree from its ``_children``/``_static`` names."""

    def flatten(op):
        return tuple(getattr(op, k) for k in cls._children), tuple(getattr(op, k) for k in cls._static)

    def unflatten(aux, children):
        op = object.__new__(cls)
        for k, val in zip(cls._children, children):
            object.__setattr__(op, k, val)
        for k, val in zip(cls._static, aux):
            object.__setattr__(op, k, val)
        return op

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls


class LinearOperator:
    """Abstract symmetric linear operator on flat vectors.

    Subclasses implement :meth:`matvec` and the properties ``size`` (``n``)
    and ``dtype``. Everything else (``@``, ``+``, ``*``, :meth:`damped`,
    :meth:`to_dense`, :meth:`to_scipy`) is provided.
    """

    _children: tuple[str, ...] = ()
    _static: tuple[str, ...] = ()

    # -- to implement -------------------------------------------------
    def matvec(self, v: jax.Array) -> jax.Array:
        raise NotImplementedError

    @property
    def size(self) -> int:
        raise NotImplementedError

    @property
    def dtype(self):
        raise NotImplementedError

    # -- provided -----------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def prepare(self) -> Callable[[jax.Array], jax.Array]:
        """Return ``v -> A v`` after doing once any work shared by all products.

        Iterative solvers call this once inside their jitted loop; curvature
        operators built with ``linearize=True`` linearize the gradient here.
        """
        return self.matvec

    def diagonal(self) -> jax.Array:
        """Exact diagonal, where it is cheap; otherwise raises ``NotImplementedError``.

        Use :func:`curvlab.diagonal` for a stochastic estimate.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no cheap exact diagonal; estimate it with curvlab.diagonal(op, ...)"
        )

    def _check_vector(self, v):
        if v.ndim not in (1, 2) or v.shape[0] != self.size:
            raise ValueError(
                f"operator of shape {self.shape} cannot multiply an array of shape {tuple(v.shape)}; "
                f"expected ({self.size},) or ({self.size}, k)"
            )

    def __matmul__(self, v):
        v = jnp.asarray(v)
        self._check_vector(v)
        if v.ndim == 1:
            return self.matvec(v)
        return jax.vmap(self.prepare(), in_axes=1, out_axes=1)(v)

    def __call__(self, v):
        return self @ v

    def __add__(self, other):
        if isinstance(other, LinearOperator):
            if other.size != self.size:
                raise ValueError(f"cannot add operators of shapes {self.shape} and {other.shape}")
            return SumOperator((self, other))
        return NotImplemented

    __radd__ = __add__

    def __mul__(self, c):
        if isinstance(c, LinearOperator):
            return NotImplemented
        if np.ndim(c) != 0:
            raise ValueError("operators can only be scaled by a scalar")
        return ScaledOperator(jnp.asarray(c, dtype=self.dtype), self)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other)

    def damped(self, lam) -> LinearOperator:
        """Tikhonov damping: :math:`A + \\lambda I`."""
        return self + ScaledOperator(
            jnp.asarray(lam, dtype=self.dtype), IdentityOperator(self.size, self.dtype)
        )

    def to_dense(self, max_size: int = DENSE_SIZE_LIMIT) -> jax.Array:
        """Dense ``(n, n)`` matrix, built column by column from matvecs.

        A debugging and test reference: refuses ``n > max_size``.
        """
        if self.size > max_size:
            raise ValueError(
                f"to_dense() refuses n = {self.size} > max_size = {max_size} "
                f"({self.size**2 * jnp.dtype(self.dtype).itemsize / 2**30:.2f} GiB); "
                "work with matvecs instead or pass a larger max_size"
            )
        return _to_dense(self)

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` calling the jitted matvec."""
        from scipy.sparse.linalg import LinearOperator as ScipyOperator

        mv = jax.jit(lambda op, v: op.matvec(v))
        dtype = np.dtype(self.dtype)

        def matvec(v):
            return np.asarray(mv(self, jnp.asarray(np.ravel(v), dtype=dtype)))

        return ScipyOperator(self.shape, matvec=matvec, rmatvec=matvec, dtype=dtype)

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={jnp.dtype(self.dtype).name})"


@jax.jit
def _to_dense(op):
    eye = jnp.eye(op.size, dtype=op.dtype)
    return jax.vmap(op.prepare(), in_axes=1, out_axes=1)(eye)


def _as_float_array(name, a):
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    return a


# ---------------------------------------------------------------------------
# Structured operators
# ---------------------------------------------------------------------------


@_register
class DenseOperator(LinearOperator):
    """A dense symmetric matrix :math:`A` (not checked for symmetry)."""

    _children = ("matrix",)

    def __init__(self, matrix):
        matrix = _as_float_array("matrix", matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"DenseOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix

    size = property(lambda self: self.matrix.shape[0])
    dtype = property(lambda self: self.matrix.dtype)

    def matvec(self, v):
        return self.matrix @ v

    def diagonal(self):
        return jnp.diag(self.matrix)

    def to_dense(self, max_size=DENSE_SIZE_LIMIT):
        return self.matrix


@_register
class DiagonalOperator(LinearOperator):
    """:math:`\\operatorname{diag}(d)`."""

    _children = ("diag",)

    def __init__(self, diag):
        diag = _as_float_array("diag", diag)
        if diag.ndim != 1:
            raise ValueError(f"DiagonalOperator needs a 1-D diagonal, got shape {tuple(diag.shape)}")
        self.diag = diag

    size = property(lambda self: self.diag.shape[0])
    dtype = property(lambda self: self.diag.dtype)

    def matvec(self, v):
        return self.diag * v

    def diagonal(self):
        return self.diag


@_register
class IdentityOperator(LinearOperator):
    """The identity :math:`I_n`."""

    _static = ("n", "_dtype")

    def __init__(self, n: int, dtype=None):
        self.n = int(n)
        self._dtype = jnp.dtype(dtype or jnp.result_type(float))

    size = property(lambda self: self.n)
    dtype = property(lambda self: self._dtype)

    def matvec(self, v):
        return v

    def diagonal(self):
        return jnp.ones(self.n, self._dtype)


@_register
class LowRankOperator(LinearOperator):
    """:math:`U \\operatorname{diag}(s) U^\\top` with ``U`` of shape ``(n, r)``."""

    _children = ("U", "s")

    def __init__(self, U, s):
        U = _as_float_array("U", U)
        s = jnp.asarray(s, dtype=U.dtype)
        if U.ndim != 2:
            raise ValueError(f"LowRankOperator needs U of shape (n, r), got {tuple(U.shape)}")
        if s.shape != (U.shape[1],):
            raise ValueError(
                f"s must have shape ({U.shape[1]},) to match U {tuple(U.shape)}, got {tuple(s.shape)}"
            )
        self.U, self.s = U, s

    size = property(lambda self: self.U.shape[0])
    dtype = property(lambda self: self.U.dtype)

    def matvec(self, v):
        return self.U @ (self.s * (self.U.T @ v))

    def diagonal(self):
        return jnp.sum(self.U**2 * self.s[None, :], axis=1)


@_register
class BlockDiagonalOperator(LinearOperator):
    """Block-diagonal :math:`\\operatorname{blkdiag}(A_1, \\dots, A_m)`."""

    _children = ("blocks",)

    def __init__(self, blocks: Sequence[LinearOperator]):
        blocks = tuple(as_operator(b) for b in blocks)
        if not blocks:
            raise ValueError("BlockDiagonalOperator needs at least one block")
        self.blocks = blocks

    size = property(lambda self: sum(b.size for b in self.blocks))
    dtype = property(lambda self: jnp.result_type(*[b.dtype for b in self.blocks]))

    def _split(self, v):
        return jnp.split(v, np.cumsum([b.size for b in self.blocks])[:-1])

    def matvec(self, v):
        return jnp.concatenate([b.matvec(p) for b, p in zip(self.blocks, self._split(v))])

    def prepare(self):
        fns = [b.prepare() for b in self.blocks]
        return lambda v: jnp.concatenate([fn(p) for fn, p in zip(fns, self._split(v))])

    def diagonal(self):
        return jnp.concatenate([b.diagonal() for b in self.blocks])


@_register
class KroneckerOperator(LinearOperator):
    """:math:`A \\otimes B` without forming it.

    With ``x`` reshaped row-major to ``X`` of shape ``(m, p)``,
    :math:`(A \\otimes B)\\,\\mathrm{vec}(X) = \\mathrm{vec}(A X B^\\top)`.
    """

    _children = ("A", "B")

    def __init__(self, A, B):
        self.A, self.B = as_operator(A), as_operator(B)

    size = property(lambda self: self.A.size * self.B.size)
    dtype = property(lambda self: jnp.result_type(self.A.dtype, self.B.dtype))

    def _apply(self, fa, fb, v):
        X = v.reshape(self.A.size, self.B.size)
        Y = jax.vmap(fb)(X)  # rows: X B^T (B symmetric)
        return jax.vmap(fa, in_axes=1, out_axes=1)(Y).reshape(-1)

    def matvec(self, v):
        return self._apply(self.A.matvec, self.B.matvec, v)

    def prepare(self):
        fa, fb = self.A.prepare(), self.B.prepare()
        return lambda v: self._apply(fa, fb, v)

    def diagonal(self):
        return jnp.outer(self.A.diagonal(), self.B.diagonal()).reshape(-1)


@_register
class SumOperator(LinearOperator):
    """:math:`A_1 + \\dots + A_m`."""

    _children = ("terms",)

    def __init__(self, terms: Sequence[LinearOperator]):
        flat = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumOperator) else (t,))
        if not flat:
            raise ValueError("SumOperator needs at least one term")
        if any(t.size != flat[0].size for t in flat):
            raise ValueError(f"cannot add operators of shapes {[t.shape for t in flat]}")
        self.terms = tuple(flat)

    size = property(lambda self: self.terms[0].size)
    dtype = property(lambda self: jnp.result_type(*[t.dtype for t in self.terms]))

    def matvec(self, v):
        out = self.terms[0].matvec(v)
        for t in self.terms[1:]:
            out = out + t.matvec(v)
        return out

    def prepare(self):
        fns = [t.prepare() for t in self.terms]

        def mv(v):
            out = fns[0](v)
            for fn in fns[1:]:
                out = out + fn(v)
            return out

        return mv

    def diagonal(self):
        out = self.terms[0].diagonal()
        for t in self.terms[1:]:
            out = out + t.diagonal()
        return out


@_register
class ScaledOperator(LinearOperator):
    """:math:`c\\,A` for a scalar ``c``."""

    _children = ("scale", "op")

    def __init__(self, scale, op: LinearOperator):
        self.scale, self.op = jnp.asarray(scale), op

    size = property(lambda self: self.op.size)
    dtype = property(lambda self: self.op.dtype)

    def matvec(self, v):
        return self.scale * self.op.matvec(v)

    def prepare(self):
        fn = self.op.prepare()
        return lambda v: self.scale * fn(v)

    def diagonal(self):
        return self.scale * self.op.diagonal()


@_register
class FunctionOperator(LinearOperator):
    """Wrap a symmetric matvec ``fn(v)`` on vectors of length ``n``.

    ``fn`` is static: pass the same function object to reuse compiled code.
    """

    _static = ("fn", "n", "_dtype")

    def __init__(self, fn: Callable[[jax.Array], jax.Array], n: int, dtype=None):
        if not callable(fn):
            raise TypeError("fn must be callable v -> A v")
        self.fn, self.n = fn, int(n)
        self._dtype = jnp.dtype(dtype or jnp.result_type(float))

    size = property(lambda self: self.n)
    dtype = property(lambda self: self._dtype)

    def matvec(self, v):
        return self.fn(v)


def as_operator(a) -> LinearOperator:
    """Return ``a`` if it is an operator, else wrap a square array in :class:`DenseOperator`."""
    if isinstance(a, LinearOperator):
        return a
    if hasattr(a, "shape") or isinstance(a, (list, tuple)):
        return DenseOperator(a)
    raise TypeError(f"expected a LinearOperator or a square matrix, got {type(a).__name__}")


# ---------------------------------------------------------------------------
# Curvature operators on parameter pytrees
# ---------------------------------------------------------------------------


class _ParameterOperator(LinearOperator):
    """Operator over the flattened leaves of a parameter pytree ``x``."""

    @property
    def size(self):
        return sum(math.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(self.x))

    @property
    def dtype(self):
        return jnp.result_type(*jax.tree_util.tree_leaves(self.x))

    def ravel(self, tree: PyTree) -> jax.Array:
        """Flatten a pytree shaped like the parameters into a 1-D vector."""
        check_like(self.x, tree, "params", "tree")
        return ravel_pytree(tree)[0]

    def unravel(self, flat: jax.Array) -> PyTree:
        """Inverse of :meth:`ravel`."""
        flat = jnp.asarray(flat)
        if flat.shape != (self.size,):
            raise ValueError(f"unravel expects shape ({self.size},), got {tuple(flat.shape)}")
        return ravel_pytree(self.x)[1](flat)

    def _tree_matvec(self, v_tree):
        raise NotImplementedError

    def matvec(self, v):
        unravel = ravel_pytree(self.x)[1]
        return ravel_pytree(self._tree_matvec(unravel(v)))[0]


@_register
class HessianOperator(_ParameterOperator):
    """:math:`\\nabla^2 f(x)` for ``f(x, *args)``; see :func:`hessian_operator`."""

    _children = ("x", "args")
    _static = ("f", "mode", "linearize")

    def _tree_matvec(self, v_tree):
        return _hvp_kernel(self.f, self.mode, self.args)(self.x, v_tree)

    def prepare(self):
        if not self.linearize:
            return self.matvec
        flat_x, unravel = ravel_pytree(self.x)
        _, lin = jax.linearize(lambda y: ravel_pytree(jax.grad(self.f)(unravel(y), *self.args))[0], flat_x)
        return lin

    def gradient(self) -> jax.Array:
        """Flat gradient :math:`\\nabla f(x)` at the operator's point."""
        return ravel_pytree(jax.grad(self.f)(self.x, *self.args))[0]

    def value(self) -> jax.Array:
        return self.f(self.x, *self.args)


def hessian_operator(
    f: Callable, x: PyTree, *args, mode: str = "fwd_rev", linearize: bool = True
) -> HessianOperator:
    """Hessian :math:`\\nabla^2_x f(x, *args)` as an operator on flat vectors.

    Parameters
    ----------
    f : callable
        Scalar function ``f(x, *args)``.
    x : pytree
        The point (e.g. model parameters).
    *args
        Passed through to ``f`` (e.g. a batch); leaves of the operator pytree.
    mode : {"fwd_rev", "rev_fwd", "rev_rev"}
    linearize : bool
        If true, solvers linearize the gradient once (:meth:`prepare`) and every
        product replays only the tangent computation.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> H = hessian_operator(lambda x: jnp.sum(x**2), jnp.ones(3))
    >>> (H @ jnp.array([1.0, 0.0, 0.0])).tolist()
    [2.0, 0.0, 0.0]
    """
    if mode not in HVP_MODES:
        raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")
    check_scalar_output(f, x, *args)
    op = object.__new__(HessianOperator)
    op.x, op.args, op.f, op.mode, op.linearize = x, tuple(args), f, mode, bool(linearize)
    return op


@_register
class GGNOperator(_ParameterOperator):
    """Generalized Gauss-Newton :math:`J^\\top H_L J`; see :func:`ggn_operator`."""

    _children = ("x", "batch")
    _static = ("model_fn", "loss_fn")

    def _split(self):
        inputs, targets = self.batch
        return (lambda p: self.model_fn(p, inputs)), (lambda z: self.loss_fn(z, targets))

    def _tree_matvec(self, v_tree):
        model, loss = self._split()
        z, jv = jax.jvp(model, (self.x,), (v_tree,))
        hjv = jax.jvp(jax.grad(loss), (z,), (jv,))[1]
        return jax.vjp(model, self.x)[1](hjv)[0]

    def prepare(self):
        model, loss = self._split()
        flat_x, unravel = ravel_pytree(self.x)
        flat_model = lambda y: model(unravel(y))  # noqa: E731
        z, jvp_lin = jax.linearize(flat_model, flat_x)
        _, vjp_fn = jax.vjp(flat_model, flat_x)
        _, hl = jax.linearize(jax.grad(loss), z)
        return lambda v: vjp_fn(hl(jvp_lin(v)))[0]


def ggn_operator(model_fn: Callable, loss_fn: Callable, x: PyTree, batch: tuple) -> GGNOperator:
    """Generalized Gauss-Newton operator :math:`J^\\top H_L J`.

    ``model_fn(params, inputs) -> outputs`` and ``loss_fn(outputs, targets) ->
    scalar`` with ``batch = (inputs, targets)``. :math:`J` is the Jacobian of
    the outputs with respect to the parameters and :math:`H_L` the Hessian of
    the loss with respect to the outputs. Positive semidefinite for losses
    convex in the outputs (squared error, softmax cross-entropy).
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    out = jax.eval_shape(model_fn, x, batch[0])
    check_scalar_output(loss_fn, out, batch[1])
    op = object.__new__(GGNOperator)
    op.x, op.batch, op.model_fn, op.loss_fn = x, tuple(batch), model_fn, loss_fn
    return op


@_register
class FisherOperator(_ParameterOperator):
    """Empirical Fisher :math:`\\frac1N \\sum_i g_i g_i^\\top`; see :func:`fisher_operator`."""

    _children = ("x", "args")
    _static = ("per_example_loss_fn",)

    def _losses(self, p):
        return self.per_example_loss_fn(p, *self.args)

    def _tree_matvec(self, v_tree):
        losses, gv = jax.jvp(self._losses, (self.x,), (v_tree,))
        return jax.tree_util.tree_map(lambda a: a / losses.shape[0], jax.vjp(self._losses, self.x)[1](gv)[0])

    def prepare(self):
        flat_x, unravel = ravel_pytree(self.x)
        losses_flat = lambda y: self._losses(unravel(y))  # noqa: E731
        losses, jvp_lin = jax.linearize(losses_flat, flat_x)
        _, vjp_fn = jax.vjp(losses_flat, flat_x)
        n = losses.shape[0]
        return lambda v: vjp_fn(jvp_lin(v))[0] / n


def fisher_operator(per_example_loss_fn: Callable, x: PyTree, *args) -> FisherOperator:
    """Empirical Fisher :math:`F = \\frac1N G^\\top G` without forming ``G``.

    ``per_example_loss_fn(params, *args)`` returns the vector of the ``N``
    per-example losses; row :math:`i` of :math:`G` is :math:`\\nabla \\ell_i`.
    :math:`F v = \\frac1N G^\\top (G v)` is one JVP and one VJP of the loss
    vector. Always positive semidefinite.
    """
    out = jax.eval_shape(per_example_loss_fn, x, *args)
    if getattr(out, "ndim", None) != 1:
        raise ValueError(
            "per_example_loss_fn must return a 1-D vector of per-example losses, "
            f"got shape {getattr(out, 'shape', type(out).__name__)}"
        )
    op = object.__new__(FisherOperator)
    op.x, op.args, op.per_example_loss_fn = x, tuple(args), per_example_loss_fn
    return op

"""The output-parameter Jacobian as a rectangular operator, its transpose, the NTK and the Gauss-Newton.

:math:`J = \\partial\\, \\mathrm{vec}(z) / \\partial \\theta \\in \\mathbb R^{m \\times n}` of
``z = model_fn(params, inputs)`` (``m`` flat outputs, ``n`` flat parameters) is applied by
forward mode (:math:`Jv`, one JVP) and its transpose by reverse mode (:math:`J^\\top u`,
one VJP); it is never formed. A :class:`JacobianOperator` is not a
:class:`~curvlab.LinearOperator` (those are square and carry symmetry tags): it has a
``shape`` ``(m, n)``, ``@``, ``matmat``, ``.T`` and ``to_dense``, and two square,
tagged products built on it:

* :meth:`JacobianOperator.ntk` -- the empirical neural tangent kernel :math:`J J^\\top`
  (``m x m``, PSD);
* :meth:`JacobianOperator.gauss_newton` -- :math:`J^\\top H J` for an output-space
  operator :math:`H` (``n x n``; symmetric, PSD when :math:`H` is), e.g. the GGN with
  :math:`H` the output loss's Hessian.

``prepare()`` (used by ``matmat`` and, through the square products, by every solver)
linearizes the model once; the transpose is the linear transpose of that
linearization, so one forward pass serves both directions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from curvlab._curvature import _unwrap_module
from curvlab._operators import (
    _SYM,
    _SYM_PSD,
    DENSE_SIZE_LIMIT,
    PSD,
    LinearOperator,
    _set,
    as_operator,
    pytree_operator,
    static_field,
)
from curvlab._validation import check_real_floating

PyTree = Any

__all__ = ["JacobianOperator", "NTKOperator", "GaussNewtonOperator", "jacobian_operator"]


def _linearized(model_fn, params, inputs):
    """``(v -> J v, u -> J^T u)`` on flat vectors, from one linearization of the model."""
    flat_p, unravel_p = ravel_pytree(params)

    def flat_model(p):
        return ravel_pytree(model_fn(unravel_p(p), inputs))[0]

    _, fwd = jax.linearize(flat_model, flat_p)
    bwd = jax.linear_transpose(fwd, flat_p)
    return fwd, lambda u: bwd(u)[0]


@pytree_operator
class JacobianOperator:
    """:math:`J` (``transposed=False``, shape ``(m, n)``) or :math:`J^\\top` (shape ``(n, m)``);
    see :func:`jacobian_operator`."""

    params: PyTree
    inputs: PyTree
    model_fn: Callable = static_field()
    num_outputs: int = static_field()
    transposed: bool = static_field()

    def __init__(self, model_fn, params, inputs, *, transposed=False):
        if not callable(model_fn):
            raise TypeError(f"model_fn must be callable, got {type(model_fn).__name__}")
        check_real_floating("params", params)
        out = jax.eval_shape(model_fn, params, inputs)
        leaves = jax.tree_util.tree_leaves(out)
        if not leaves or any(not jnp.issubdtype(a.dtype, jnp.floating) for a in leaves):
            raise TypeError(f"model_fn(params, inputs) must return floating arrays, got {out}")
        m = sum(math.prod(a.shape) for a in leaves)
        _set(self, params=params, inputs=inputs, model_fn=model_fn, num_outputs=m)
        _set(self, transposed=bool(transposed))

    @property
    def num_params(self) -> int:
        return sum(math.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(self.params))

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.num_outputs, self.num_params
        return (n, m) if self.transposed else (m, n)

    @property
    def dtype(self):
        return jnp.result_type(*jax.tree_util.tree_leaves(self.params))

    @property
    def T(self) -> JacobianOperator:
        """The transpose (:math:`J^\\top` of :math:`J` and back); no work is done."""
        op = object.__new__(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(op, f.name, getattr(self, f.name))
        object.__setattr__(op, "transposed", not self.transposed)
        return op

    def _jvp(self, v):
        flat_p, unravel_p = ravel_pytree(self.params)
        out = jax.jvp(lambda p: self.model_fn(unravel_p(p), self.inputs), (flat_p,), (v,))[1]
        return ravel_pytree(out)[0]

    def _vjp(self, u):
        flat_p, unravel_p = ravel_pytree(self.params)
        z, vjp_fn = jax.vjp(lambda p: self.model_fn(unravel_p(p), self.inputs), flat_p)
        flat_z, unravel_z = ravel_pytree(z)
        return vjp_fn(unravel_z(u.astype(flat_z.dtype)))[0]

    def matvec(self, v: jax.Array) -> jax.Array:
        """:math:`J v` (one JVP) or, transposed, :math:`J^\\top u` (one VJP)."""
        return self._vjp(v) if self.transposed else self._jvp(v)

    def prepare(self) -> Callable[[jax.Array], jax.Array]:
        """The product after linearizing the model once (forward mode transposed for :math:`J^\\top`)."""
        fwd, bwd = _linearized(self.model_fn, self.params, self.inputs)
        return bwd if self.transposed else fwd

    def matmat(self, V: jax.Array) -> jax.Array:
        """:math:`J V` (or :math:`J^\\top V`) for ``V`` of shape ``(shape[1], k)``: one linearization."""
        V = jnp.asarray(V)
        if V.ndim != 2 or V.shape[0] != self.shape[1]:
            raise ValueError(
                f"matmat of an operator of shape {self.shape} needs shape ({self.shape[1]}, k), "
                f"got {tuple(V.shape)}"
            )
        return jax.vmap(self.prepare(), in_axes=1, out_axes=1)(V)

    def __matmul__(self, v):
        v = jnp.asarray(v)
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(
                f"operator of shape {self.shape} cannot multiply an array of shape {tuple(v.shape)}; "
                f"expected ({self.shape[1]},) or ({self.shape[1]}, k)"
            )
        return self.matvec(v) if v.ndim == 1 else self.matmat(v)

    def __call__(self, v):
        return self @ v

    def to_dense(self, max_size: int = DENSE_SIZE_LIMIT) -> jax.Array:
        """The dense Jacobian (``jax.jacfwd`` or ``jax.jacrev``, the smaller side); a test reference."""
        m, n = self.num_outputs, self.num_params
        if max(m, n) > max_size:
            raise ValueError(
                f"to_dense() refuses a {m} x {n} Jacobian (a side > max_size = {max_size}); "
                "work with products instead or pass a larger max_size"
            )
        return _dense_jacobian(self)

    def ntk(self) -> NTKOperator:
        """The empirical neural tangent kernel :math:`J J^\\top` (``m x m``, PSD)."""
        return NTKOperator(self if not self.transposed else self.T)

    def gauss_newton(self, output_operator) -> GaussNewtonOperator:
        """:math:`J^\\top H J` (``n x n``) for an output-space operator :math:`H` (``m x m``)."""
        return GaussNewtonOperator(self if not self.transposed else self.T, output_operator)

    def __repr__(self):
        name = "JacobianOperator.T" if self.transposed else "JacobianOperator"
        return f"{name}(shape={self.shape}, dtype={jnp.dtype(self.dtype).name})"


@jax.jit
def _dense_jacobian(J):
    flat_p, unravel_p = ravel_pytree(J.params)
    f = lambda p: ravel_pytree(J.model_fn(unravel_p(p), J.inputs))[0]
    jac = jax.jacfwd(f) if J.num_params <= J.num_outputs else jax.jacrev(f)
    D = jac(flat_p)
    return D.T if J.transposed else D


@pytree_operator
class NTKOperator(LinearOperator):
    """:math:`J J^\\top` on flat outputs; PSD. ``prepare`` linearizes the model once."""

    J: JacobianOperator

    def __init__(self, J: JacobianOperator):
        _set(self, J=J)

    size = property(lambda self: self.J.num_outputs)
    dtype = property(lambda self: self.J.dtype)
    tags = property(lambda self: _SYM_PSD)

    def matvec(self, v):
        return self.J._jvp(self.J._vjp(v))

    def prepare(self):
        fwd, bwd = _linearized(self.J.model_fn, self.J.params, self.J.inputs)
        return lambda v: fwd(bwd(v))


@pytree_operator
class GaussNewtonOperator(LinearOperator):
    """:math:`J^\\top H J` on flat parameters; symmetric, PSD when :math:`H` is tagged PSD."""

    J: JacobianOperator
    H: LinearOperator

    def __init__(self, J: JacobianOperator, H):
        H = as_operator(H)
        if H.size != J.num_outputs:
            raise ValueError(f"H has size {H.size}, the Jacobian has {J.num_outputs} outputs")
        _set(self, J=J, H=H)

    size = property(lambda self: self.J.num_params)
    dtype = property(lambda self: jnp.result_type(self.J.dtype, self.H.dtype))
    tags = property(lambda self: _SYM_PSD if PSD in self.H.tags else _SYM)

    def matvec(self, v):
        return self.J._vjp(self.H.matvec(self.J._jvp(v)))

    def prepare(self):
        fwd, bwd = _linearized(self.J.model_fn, self.J.params, self.J.inputs)
        h = self.H.prepare()
        return lambda v: bwd(h(fwd(v)))


def jacobian_operator(model_fn: Callable, params: PyTree, inputs: PyTree) -> JacobianOperator:
    """The Jacobian :math:`J = \\partial\\,\\mathrm{vec}(z)/\\partial\\theta` of ``model_fn(params, inputs)``.

    An operator of shape ``(m, n)`` from flat parameters to flat outputs (outputs raveled
    like ``jax.flatten_util.ravel_pytree``), with ``.T`` (:math:`J^\\top`, a VJP),
    ``@`` / ``matmat`` (one linearization for all columns), ``to_dense()``, ``.ntk()``
    (:math:`J J^\\top`) and ``.gauss_newton(H)`` (:math:`J^\\top H J`). A pytree: pass it
    into ``jax.jit``. ``params`` may be a Flax NNX / Equinox module (``model_fn`` then receives
    the module; :math:`J` is taken in its parameter arrays).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> J = jacobian_operator(lambda w, x: x @ w, jnp.zeros(2), X)
    >>> J.shape, J.T.shape, (J @ jnp.array([1.0, 0.0])).tolist(), (J.T @ jnp.ones(3)).tolist()
    ((3, 2), (2, 3), [1.0, 3.0, 5.0], [9.0, 12.0])
    """
    params, _, model_fn, _ = _unwrap_module(params, None, model_fn, None)
    return JacobianOperator(model_fn, params, inputs)

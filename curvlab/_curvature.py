"""Curvature operators over (parameters, data groups, weights): one base owns the dataset loop.

A :class:`CurvatureOperator` holds the parameters ``x`` and a dataset
:class:`~curvlab._data.Batches` (groups of stacked batches with weights
:math:`w_b = n_b / N`) and represents

.. math::

    A = \\sum_b w_b A_b, \\qquad N = \\sum_b n_b,

where :math:`A_b` is the curvature of batch :math:`b`. A subclass writes only its
per-batch product (:meth:`CurvatureOperator.batch_product`, a kernel of
:mod:`curvlab._hvp`) and its per-batch loss; the base loops over the batches with
``lax.scan`` (memory: one batch's product, whatever the dataset size) and gives the
dataset loss and gradient. One batch (``hessian_operator(f, x, batch)``) is the case
of a single unstacked group of weight one: no loop, and :meth:`prepare` linearizes it
once for all products.

The three curvatures (the same user functions give the same operator everywhere:
:func:`hessian_operator`, :func:`ggn_operator`, :func:`fisher_operator`,
:func:`dataset_operator`, :func:`curvlab.diagnose`, :func:`curvlab.hessian_free`):

* Hessian :math:`A_b = \\nabla^2 L_b` of the batch loss ``loss_fn(params, batch)``;
* generalized Gauss-Newton :math:`A_b = J_b^\\top H_\\ell J_b` of
  ``output_loss_fn(model_fn(params, inputs), targets)``;
* empirical Fisher :math:`A_b = \\frac1{n_b} G_b^\\top G_b`, rows of :math:`G_b` the
  per-example gradients :math:`\\nabla \\ell_i` of ``per_example_loss_fn(params, batch)
  -> (n_b,)``; over the dataset :math:`\\sum_b \\frac{n_b}{N} \\frac1{n_b} G_b^\\top G_b
  = \\frac1N \\sum_{i=1}^N \\nabla\\ell_i \\nabla\\ell_i^\\top` (1/N of the sum of the
  per-example gradient outer products, whatever the batching).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from curvlab._data import Batches, is_array, leading_size, prepare_data, single_batch
from curvlab._hvp import HVP_MODES, _fisher_product, _ggn_product, _hessian_product
from curvlab._operators import _SYM_PSD, LinearOperator, _set, pytree_operator, static_field
from curvlab._validation import check_like, check_real_floating, check_scalar_output
from curvlab.sharding import replicate, resolve_mesh, shard_batch_axis

PyTree = Any

#: Curvatures of :func:`dataset_operator`.
CURVATURES = ("hessian", "ggn", "fisher")

__all__ = [
    "CURVATURES",
    "ParameterOperator",
    "CurvatureOperator",
    "HessianOperator",
    "GGNOperator",
    "FisherOperator",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
    "dataset_operator",
    "curvature_operator",
]


class ParameterOperator(LinearOperator):
    """Operator over the flattened leaves of a parameter pytree ``x`` (a field of the subclass).

    A subclass writes only :meth:`tree_product`: ``linearize -> (v_tree -> A v_tree)``.
    """

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

    def tree_product(self, linearize: bool) -> Callable[[PyTree], PyTree]:
        """``v_tree -> A v_tree``; with ``linearize`` the shared work is done once, now."""
        raise NotImplementedError

    def _flat(self, product):
        unravel = ravel_pytree(self.x)[1]
        return lambda v: ravel_pytree(product(unravel(v)))[0]

    def matvec(self, v):
        return self._flat(self.tree_product(False))(v)

    def prepare(self):
        return self._flat(self.tree_product(True))


class CurvatureOperator(ParameterOperator):
    """Dataset average :math:`\\sum_b w_b A_b` of a per-batch curvature (see the module docs).

    A subclass is a :func:`~curvlab._operators.pytree_operator` with fields ``x``
    (parameters) and ``data`` (:class:`~curvlab._data.Batches`) and writes only
    :meth:`batch_product` and :meth:`batch_loss`.
    """

    def batch_product(self, batch, linearize: bool) -> Callable[[PyTree], PyTree]:
        """``v_tree -> A_b v_tree`` on one batch (traceable)."""
        raise NotImplementedError

    def batch_loss(self, x: PyTree, batch) -> jax.Array:
        """The loss :math:`L_b(x)` of one batch whose gradient :meth:`value_and_gradient` averages."""
        raise NotImplementedError

    num_examples = property(lambda self: self.data.num_examples)
    num_batches = property(lambda self: self.data.num_batches)

    def dataset_sum(self, fn: Callable[[Any], PyTree], init: PyTree) -> PyTree:
        """:math:`\\text{init} + \\sum_b w_b\\, \\text{fn}(\\text{batch}_b)`, one ``lax.scan`` per group."""
        if not self.data.stacked:
            return jax.tree_util.tree_map(jnp.add, init, fn(self.data.groups[0]))
        acc = init
        for group, w in zip(self.data.groups, self.data.weights, strict=True):

            def body(acc, item):
                batch, wb = item
                return jax.tree_util.tree_map(lambda a, b: a + wb * b, acc, fn(batch)), None

            acc, _ = jax.lax.scan(body, acc, (group, w))
        return acc

    def tree_product(self, linearize):
        if not self.data.stacked:  # one batch, weight one: its own (linearizable) product
            return self.batch_product(self.data.groups[0], linearize)
        unravel = ravel_pytree(self.x)[1]
        zero = jnp.zeros((self.size,), self.dtype)

        def product(v_tree):
            flat = lambda batch: ravel_pytree(self.batch_product(batch, False)(v_tree))[0]
            return unravel(self.dataset_sum(flat, zero))

        return product

    def value_and_gradient(self) -> tuple[jax.Array, jax.Array]:
        """Dataset loss :math:`\\sum_b w_b L_b` and flat gradient :math:`\\sum_b w_b \\nabla L_b`."""

        def one(batch):
            val, g = jax.value_and_grad(self.batch_loss)(self.x, batch)
            return ravel_pytree(g)[0], val

        zero = (jnp.zeros((self.size,), self.dtype), jnp.zeros((), self.dtype))
        g, val = self.dataset_sum(one, zero)
        return val, g

    def gradient(self) -> jax.Array:
        """Flat gradient :math:`\\nabla L(x)` of the (dataset) loss at the operator's point."""
        return self.value_and_gradient()[1]

    def value(self) -> jax.Array:
        """The (dataset) loss :math:`L(x)` at the operator's point."""
        return self.value_and_gradient()[0]


def _check_batch_pair(batch) -> tuple:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    return tuple(batch)


def _one_or_dataset(batch, data, what):
    """The :class:`Batches` of a constructor given one batch or (from dataset_operator) ``data``."""
    if data is None:
        return single_batch(batch)
    if batch is not None and not (isinstance(batch, tuple) and len(batch) == 0):
        raise ValueError(f"pass either {what} or data=, not both")
    if not isinstance(data, Batches):
        raise TypeError(f"data must be a curvlab._data.Batches, got {type(data).__name__}")
    return data


@pytree_operator
class HessianOperator(CurvatureOperator):
    """Hessian :math:`\\nabla^2_x f(x, *args)` on flat vectors; symmetric.

    Parameters
    ----------
    f : callable
        Scalar function ``f(x, *args)``.
    x : pytree
        The point (e.g. model parameters), real floating leaves.
    *args
        Passed through to ``f`` (e.g. a batch); leaves of the operator pytree.
    mode : {"fwd_rev", "rev_fwd", "rev_rev"}
        How :meth:`matvec` composes forward and reverse mode.
    linearize : bool
        If true, :meth:`prepare` (used by every solver and :meth:`matmat`) linearizes
        the gradient once and each product replays only the tangent computation
        (one batch only; a dataset average recomputes each batch's product).
    data : Batches, optional
        Instead of ``*args``: a dataset whose groups hold argument tuples (see
        :func:`dataset_operator`).
    """

    x: PyTree
    data: Batches
    f: Callable = static_field()
    mode: str = static_field()
    linearize: bool = static_field()

    def __init__(self, f: Callable, x: PyTree, *args, mode="fwd_rev", linearize=True, data=None):
        if mode not in HVP_MODES:
            raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")
        check_real_floating("x", x)
        data = _one_or_dataset(tuple(args), data, "*args")
        check_scalar_output(f, x, *data.first())
        _set(self, x=x, data=data, f=f, mode=mode, linearize=bool(linearize))

    @property
    def args(self) -> tuple:
        """The extra arguments of ``f`` (one batch)."""
        if self.data.stacked:
            raise AttributeError("a dataset Hessian has no single args; see .data")
        return self.data.groups[0]

    def batch_product(self, batch, linearize):
        return _hessian_product(self.f, self.x, batch, mode=self.mode, linearize=linearize and self.linearize)

    def batch_loss(self, x, batch):
        return self.f(x, *batch)


def hessian_operator(
    f: Callable, x: PyTree, *args, mode: str = "fwd_rev", linearize: bool = True
) -> HessianOperator:
    """Hessian :math:`\\nabla^2_x f(x, *args)` as an operator on flat vectors (:class:`HessianOperator`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> H = hessian_operator(lambda x: jnp.sum(x**2), jnp.ones(3))
    >>> (H @ jnp.array([1.0, 0.0, 0.0])).tolist()
    [2.0, 0.0, 0.0]
    """
    return HessianOperator(f, x, *args, mode=mode, linearize=linearize)


@pytree_operator
class GGNOperator(CurvatureOperator):
    """Generalized Gauss-Newton :math:`J^\\top H_L J`; see :func:`ggn_operator`. Tagged PSD.

    ``loss_fn`` (optional, static) is the batch loss whose gradient
    :meth:`value_and_gradient` reports (default ``output_loss_fn(model_fn(x, inputs), targets)``).
    """

    x: PyTree
    data: Batches
    model_fn: Callable = static_field()
    output_loss_fn: Callable = static_field()
    loss_fn: Callable | None = static_field()

    def __init__(self, model_fn, output_loss_fn, params, batch=None, *, data=None, loss_fn=None):
        check_real_floating("params", params)
        data = _one_or_dataset(None if batch is None else _check_batch_pair(batch), data, "batch")
        first = _check_batch_pair(data.first())
        out = jax.eval_shape(model_fn, params, first[0])
        check_scalar_output(output_loss_fn, out, first[1])
        _set(self, x=params, data=data, model_fn=model_fn, output_loss_fn=output_loss_fn, loss_fn=loss_fn)

    tags = property(lambda self: _SYM_PSD)

    @property
    def batch(self) -> tuple:
        """The one batch ``(inputs, targets)``."""
        if self.data.stacked:
            raise AttributeError("a dataset GGN has no single batch; see .data")
        return self.data.groups[0]

    def batch_product(self, batch, linearize):
        return _ggn_product(self.model_fn, self.output_loss_fn, self.x, tuple(batch), linearize=linearize)

    def batch_loss(self, x, batch):
        if self.loss_fn is not None:
            return self.loss_fn(x, batch)
        return self.output_loss_fn(self.model_fn(x, batch[0]), batch[1])


def ggn_operator(model_fn: Callable, output_loss_fn: Callable, params: PyTree, batch: tuple) -> GGNOperator:
    """Generalized Gauss-Newton operator :math:`G = J^\\top H_L J`.

    ``model_fn(params, inputs) -> outputs`` and ``output_loss_fn(outputs, targets) ->
    scalar`` with ``batch = (inputs, targets)``; :math:`J = \\partial\\,\\mathrm{outputs} /
    \\partial\\,\\mathrm{params}` and :math:`H_L = \\nabla^2_{\\mathrm{outputs}}
    \\ell`. Tagged PSD (it is, for output losses convex in the outputs: squared error,
    softmax cross-entropy).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.array([[1.0, 2.0], [3.0, 4.0]]); y = jnp.zeros(2)
    >>> G = ggn_operator(lambda w, x: x @ w, lambda z, t: 0.5 * jnp.sum((z - t) ** 2), jnp.zeros(2), (X, y))
    >>> bool(jnp.allclose(G.to_dense(), X.T @ X)), sorted(G.tags)
    (True, ['psd', 'symmetric'])
    """
    return GGNOperator(model_fn, output_loss_fn, params, batch)


@pytree_operator
class FisherOperator(CurvatureOperator):
    """Empirical Fisher :math:`\\frac1N \\sum_i g_i g_i^\\top` over per-example gradients :math:`g_i`.

    Tagged PSD. ``loss_fn`` (optional, static) is the batch loss whose gradient
    :meth:`value_and_gradient` reports (default: the mean of the per-example losses).
    """

    x: PyTree
    data: Batches
    per_example_loss_fn: Callable = static_field()
    loss_fn: Callable | None = static_field()

    def __init__(self, per_example_loss_fn, params, batch=None, *, data=None, loss_fn=None):
        check_real_floating("params", params)
        data = _one_or_dataset(batch, data, "batch")
        out = jax.eval_shape(per_example_loss_fn, params, data.first())
        if getattr(out, "ndim", None) != 1:
            raise ValueError(
                "per_example_loss_fn(params, batch) must return a 1-D vector of per-example losses, "
                f"got shape {getattr(out, 'shape', type(out).__name__)}"
            )
        _set(self, x=params, data=data, per_example_loss_fn=per_example_loss_fn, loss_fn=loss_fn)

    tags = property(lambda self: _SYM_PSD)

    @property
    def batch(self):
        """The one batch."""
        if self.data.stacked:
            raise AttributeError("a dataset Fisher has no single batch; see .data")
        return self.data.groups[0]

    def batch_product(self, batch, linearize):
        return _fisher_product(self.per_example_loss_fn, self.x, batch, linearize=linearize)

    def batch_loss(self, x, batch):
        if self.loss_fn is not None:
            return self.loss_fn(x, batch)
        return jnp.mean(self.per_example_loss_fn(x, batch))


def fisher_operator(per_example_loss_fn: Callable, params: PyTree, batch: PyTree) -> FisherOperator:
    """Empirical Fisher :math:`F = \\frac1N G^\\top G = \\frac1N \\sum_i \\nabla\\ell_i \\nabla\\ell_i^\\top`.

    ``per_example_loss_fn(params, batch)`` returns the vector of the ``N``
    per-example losses; row :math:`i` of :math:`G` is :math:`\\nabla \\ell_i`, so
    :math:`F` is 1/N of the sum of the per-example gradient outer products (the
    scaling of the mean loss). :math:`F v = \\frac1N G^\\top (G v)` is one JVP and one
    VJP of the loss vector, ``G`` is never formed. Always positive semidefinite
    (tagged PSD).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> F = fisher_operator(lambda w, b: b @ w, jnp.zeros(2), X)
    >>> F.to_dense().tolist()
    [[0.5, 0.0], [0.0, 2.0]]
    """
    return FisherOperator(per_example_loss_fn, params, batch)


# ---------------------------------------------------------------------------
# the dataset operator: user functions and data checked once, then the base
# ---------------------------------------------------------------------------


def _unwrap_module(params, loss_fn, model_fn, per_example_loss_fn):
    """Split an NNX / Equinox module into (array params, rebuild); wrap the user functions."""
    rebuild = None
    nnx = sys.modules.get("flax.nnx")
    eqx = sys.modules.get("equinox")
    if nnx is not None and isinstance(params, nnx.Module):
        graphdef, arrays, rest = nnx.split(params, nnx.Param, ...)
        rebuild = lambda p: nnx.merge(graphdef, p, rest)
    elif eqx is not None and isinstance(params, eqx.Module):
        arrays, static = eqx.partition(params, eqx.is_inexact_array)
        rebuild = lambda p: eqx.combine(p, static)
    if rebuild is None:
        return params, loss_fn, model_fn, per_example_loss_fn

    def wrap(fn):
        return None if fn is None else (lambda p, *a: fn(rebuild(p), *a))

    return arrays, wrap(loss_fn), wrap(model_fn), wrap(per_example_loss_fn)


def _check_params(params):
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params has no array leaves")
    for path, a in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not is_array(a) or not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            raise TypeError(
                f"params leaf {jax.tree_util.keystr(path) or '<root>'} is {type(a).__name__} "
                f"({getattr(a, 'dtype', '')}); params must hold only floating arrays. For an Equinox model "
                "pass the module itself or eqx.partition(model, eqx.is_inexact_array)[0]"
            )


def _describe(tree) -> str:
    try:
        return str(jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), tree))
    except Exception:  # pragma: no cover - best effort
        return type(tree).__name__


def _check_functions(kind, fns, params, batch):
    """Abstract evaluation of the user functions on the first batch, with errors that name them."""
    loss_fn, model_fn, output_loss_fn, per_example_loss_fn = fns

    def run(name, f, *args):
        try:
            return jax.eval_shape(f, *args)
        except Exception as err:
            raise ValueError(
                f"{name} failed on the first batch: {type(err).__name__}: {err}\n"
                f"Check that params and data match: params shapes {_describe(params)}, "
                f"batch shapes {_describe(batch)}"
            ) from err

    out = run("loss_fn(params, batch)", loss_fn, params, batch)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        raise ValueError(
            "loss_fn(params, batch) must return a scalar (shape ()), got "
            f"{getattr(out, 'shape', type(out).__name__)}; average the per-example losses over the batch "
            "(e.g. .mean())"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a floating scalar, got dtype {out.dtype}")
    if kind == "ggn":
        z = run("model_fn(params, inputs)", model_fn, params, batch[0])
        o = run("output_loss_fn(outputs, targets)", output_loss_fn, z, batch[1])
        if getattr(o, "shape", None) != ():
            raise ValueError(f"output_loss_fn(outputs, targets) must return a scalar, got shape {o.shape}")
    if kind == "fisher":
        o = run("per_example_loss_fn(params, batch)", per_example_loss_fn, params, batch)
        n = leading_size(batch, "the first batch")
        if getattr(o, "shape", None) != (n,):
            raise ValueError(
                f"per_example_loss_fn(params, batch) must return the ({n},) per-example losses of the "
                f"batch, got shape {getattr(o, 'shape', None)}"
            )


def _default_per_example(loss_fn):
    """Per-example losses from a batch loss: ``loss_fn`` on each example as a batch of one."""

    def per_example(p, batch):
        one = lambda ex: loss_fn(p, jax.tree_util.tree_map(lambda a: a[None], ex))
        return jax.vmap(one)(batch)

    return per_example


def _resolve_functions(curvature, loss_fn, model_fn, output_loss_fn, per_example_loss_fn):
    """Check the user functions for ``curvature``; fill ``loss_fn`` (GGN) and the per-example losses."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if curvature == "ggn":
        missing = [n for n, f in (("model_fn", model_fn), ("output_loss_fn", output_loss_fn)) if f is None]
        if missing:
            raise ValueError(f"curvature='ggn' needs {' and '.join(missing)}")
        if loss_fn is None:
            mf, of = model_fn, output_loss_fn
            loss_fn = lambda p, b: of(mf(p, b[0]), b[1])
    if loss_fn is None or not callable(loss_fn):
        raise TypeError("loss_fn must be a callable loss_fn(params, batch) -> scalar")
    for name, f in (
        ("model_fn", model_fn),
        ("output_loss_fn", output_loss_fn),
        ("per_example_loss_fn", per_example_loss_fn),
    ):
        if f is not None and not callable(f):
            raise TypeError(f"{name} must be callable, got {type(f).__name__}")
    if curvature == "fisher" and per_example_loss_fn is None:
        per_example_loss_fn = _default_per_example(loss_fn)
    return loss_fn, model_fn, output_loss_fn, per_example_loss_fn


def dataset_operator(
    loss_fn: Callable | None,
    params: PyTree,
    data,
    *,
    curvature: str = "hessian",
    batch_size: int | None = None,
    model_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    per_example_loss_fn: Callable | None = None,
    checkpoint: bool = False,
    mesh=None,
    data_axis: str = "data",
) -> CurvatureOperator:
    """The dataset-averaged curvature operator :math:`\\sum_b (n_b/N) A_b` (used by :func:`curvlab.diagnose`).

    Parameters
    ----------
    loss_fn : callable or None
        ``loss_fn(params, batch) -> scalar``, the *mean* loss over the batch (``None``
        for ``"ggn"``: ``output_loss_fn(model_fn(params, inputs), targets)``).
    params : pytree or module
        Floating arrays; or a Flax NNX / Equinox module (split into its parameters and
        the rest; the functions then receive the rebuilt module).
    data : pytree of arrays, list of batches, function returning batches, or re-iterable
        See :mod:`curvlab._data`.
    curvature : {"hessian", "ggn", "fisher"}
        :math:`A_b`: ``"hessian"`` :math:`\\nabla^2 L_b`; ``"ggn"``
        :math:`J_b^\\top H_{\\ell} J_b` (batches ``(inputs, targets)``); ``"fisher"``
        :math:`\\frac1{n_b} G_b^\\top G_b`, rows :math:`\\nabla \\ell_i` of
        ``per_example_loss_fn(params, batch) -> (n_b,)`` (default: ``loss_fn`` on
        every example as a batch of one), so that the average is
        :math:`\\frac1N \\sum_i \\nabla\\ell_i \\nabla\\ell_i^\\top`.
    batch_size : int, optional
        For array ``data``: examples per batch (the remainder forms a smaller batch).
    checkpoint : bool
        Wrap the functions in ``jax.checkpoint`` (less memory per product, more compute).
    mesh, data_axis
        Data-parallel over a mesh axis (see :mod:`curvlab.sharding`).

    Returns
    -------
    HessianOperator, GGNOperator or FisherOperator
        Over ``data``; ``value_and_gradient()`` gives the dataset loss and gradient of ``loss_fn``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.arange(6.0).reshape(3, 2); y = jnp.ones(3)
    >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> op = dataset_operator(loss, jnp.zeros(2), (X, y), batch_size=2)
    >>> bool(jnp.allclose(op.to_dense(), 2 * X.T @ X / 3)), op.num_batches
    (True, 2)
    """
    params, loss_fn, model_fn, per_example_loss_fn = _unwrap_module(
        params, loss_fn, model_fn, per_example_loss_fn
    )
    composed = loss_fn is None  # GGN: then the operator's default loss, no per-call lambda to recompile
    fns = _resolve_functions(curvature, loss_fn, model_fn, output_loss_fn, per_example_loss_fn)
    _check_params(params)
    loss_fn, model_fn, output_loss_fn, per_example_loss_fn = fns
    if checkpoint:
        wrap = lambda f: None if f is None else jax.checkpoint(f)
        loss_fn, model_fn, per_example_loss_fn = wrap(loss_fn), wrap(model_fn), wrap(per_example_loss_fn)
        fns = (loss_fn, model_fn, output_loss_fn, per_example_loss_fn)
    batches = prepare_data(data, batch_size, jnp.result_type(*jax.tree_util.tree_leaves(params)))
    first = batches.first()
    if curvature == "ggn" and not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise ValueError("curvature='ggn' needs batches that are pairs (inputs, targets)")
    _check_functions(curvature, fns, params, first)
    groups, weights = batches
    mesh = resolve_mesh(mesh, data_axis)
    if mesh is not None:
        groups = tuple(shard_batch_axis(g, mesh, data_axis, batch_axis=1) for g in groups)
        weights, params = replicate(weights, mesh), replicate(params, mesh)
    return curvature_operator(
        curvature,
        params,
        Batches(tuple(groups), tuple(weights)),
        loss_fn=None if composed and curvature == "ggn" else loss_fn,
        model_fn=model_fn,
        output_loss_fn=output_loss_fn,
        per_example_loss_fn=per_example_loss_fn,
    )


def curvature_operator(
    curvature: str,
    params: PyTree,
    data: Batches,
    *,
    loss_fn: Callable | None = None,
    model_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    per_example_loss_fn: Callable | None = None,
) -> CurvatureOperator:
    """The ``curvature`` operator of already checked functions over :class:`~curvlab._data.Batches`.

    ``data`` is one batch (:func:`~curvlab._data.single_batch`) or a dataset
    (:func:`~curvlab._data.prepare_data`); :func:`dataset_operator` and
    :func:`curvlab.hessian_free` build their operators here. ``loss_fn`` is the batch
    loss of ``value_and_gradient`` (required for the Hessian).
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if curvature == "hessian":  # f(x, *args): each batch is the argument tuple (batch,)
        args = data._replace(groups=tuple((g,) for g in data.groups))
        return HessianOperator(loss_fn, params, data=args)
    if curvature == "ggn":
        pairs = data._replace(groups=tuple(_check_batch_pair(g) for g in data.groups))
        return GGNOperator(model_fn, output_loss_fn, params, data=pairs, loss_fn=loss_fn)
    return FisherOperator(per_example_loss_fn, params, data=data, loss_fn=loss_fn)

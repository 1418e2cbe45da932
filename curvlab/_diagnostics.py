"""Curvature diagnostics for a user's own model and dataset.

:func:`diagnose` builds the **dataset-averaged** curvature operator

.. math::

    A = \\sum_b \\frac{n_b}{N} A_b, \\qquad N = \\sum_b n_b,

where :math:`A_b` is the Hessian, generalized Gauss-Newton matrix or empirical
Fisher of the batch-mean loss on batch :math:`b` (of :math:`n_b` examples), and
runs the Krylov solvers of :mod:`curvlab._lanczos` and :mod:`curvlab._spectral`
on it: top and bottom eigenvalues (Lanczos), the trace (Hutch++), the spectral
density (stochastic Lanczos quadrature), the curvature along the gradient,
and the same per parameter block (layer). Every product :math:`A v` loops over
the batches with ``lax.scan`` inside the solver's jitted loop, so the memory
of a product is that of one batch's HVP, whatever the size of the dataset.

Data
----
``data`` is either

* a pytree of arrays sharing their leading (example) axis, e.g. ``(X, Y)``,
  cut into batches of ``batch_size`` (the last, smaller batch is kept as its
  own batch with weight :math:`n_b/N`; ``batch_size=None`` means one batch); or
* a *re-iterable* of batches: a list, a callable returning a fresh iterator
  (a generator function or ``lambda: loader``), or an object whose
  ``__iter__`` restarts (a NumPy / torch data loader). The batches are read
  once, converted to arrays and stacked on the device by shape, so that the
  operator stays jittable. A one-shot iterator (a generator object) is
  refused: the solvers need many passes over the data.

Models
------
``params`` is any pytree of arrays: plain dicts, Flax linen variables, the
``state`` of ``graphdef, state = nnx.split(model)``, the array part of
``eqx.partition(model, eqx.is_inexact_array)``. A Flax NNX or Equinox *module*
may also be passed as ``params`` directly: it is split internally into its
parameters (NNX ``nnx.Param`` variables / Equinox inexact arrays) and the
rest, and ``loss_fn`` (and ``model_fn``) then receive the module itself,
rebuilt around the parameters being differentiated.

Multi-device
------------
Pass ``mesh=`` (a :class:`jax.sharding.Mesh` with a ``"data"`` axis, or
``"auto"``): batches are sharded along the batch axis, parameters and Lanczos
vectors replicated, and XLA inserts the all-reduce of the batch mean. See
:mod:`curvlab.sharding` for multi-host use (``jax.distributed.initialize``).

The report (:class:`CurvatureReport`) is data: ``to_dict`` (JSON-safe) and
``summary()`` (text) live here; its figure and HTML page come from
:func:`curvlab.viz.report_figure` and :func:`curvlab.viz.report_html`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from curvlab._hvp import _fisher_product, _ggn_product, _hessian_product
from curvlab._operators import LinearOperator, ParameterOperator, pytree_operator, static_field
from curvlab._validation import check_positive_int
from curvlab.sharding import replicate, resolve_mesh, shard_batch_axis

PyTree = Any

CURVATURES = ("hessian", "ggn", "fisher")

__all__ = [
    "CURVATURES",
    "BlockReport",
    "CurvatureReport",
    "DatasetCurvatureOperator",
    "BlockOperator",
    "dataset_operator",
    "diagnose",
    "summary_table",
]


# ---------------------------------------------------------------------------
# Data: arrays or re-iterables -> groups of stacked equal-shape batches
# ---------------------------------------------------------------------------


class _Data(NamedTuple):
    groups: tuple  # each: a batch pytree whose leaves are stacked (num_batches, batch, ...)
    weights: tuple  # each: (num_batches,) array of n_b / N
    num_examples: int
    num_batches: int
    first_batch: PyTree  # unstacked, for checks


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _is_array_tree(data) -> bool:
    """Array data (cut into batches by ``batch_size``): an array, or a tuple / dict of arrays."""
    if _is_array(data):
        return True
    if isinstance(data, tuple):
        children = list(data)
    elif isinstance(data, dict):
        children = list(data.values())
    else:
        return False
    return bool(children) and all(_is_array(c) for c in children)


def _leading(batch) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves or np.ndim(leaves[0]) == 0:
        raise ValueError("every batch must hold arrays with a leading example axis")
    return int(np.shape(leaves[0])[0])


def _array_batches(data, batch_size):
    leaves = jax.tree_util.tree_leaves(data)
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else None for a in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [tuple(np.shape(a)) for a in leaves]
        raise ValueError(
            f"data arrays must share their leading (example) dimension; got shapes {shapes}. "
            "Pass a list of batches instead for data of other layouts"
        )
    n = sizes.pop()
    if n == 0:
        raise ValueError("data holds no examples")
    if batch_size is None:
        batch_size = n
    batch_size = check_positive_int("batch_size", batch_size)
    batch_size = min(batch_size, n)
    nb, r = divmod(n, batch_size)
    groups, counts = [], []
    full = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a)[: nb * batch_size].reshape(nb, batch_size, *np.shape(a)[1:]), data
    )
    groups.append(full)
    counts.append(np.full(nb, batch_size))
    if r:
        groups.append(jax.tree_util.tree_map(lambda a: jnp.asarray(a)[nb * batch_size :][None], data))
        counts.append(np.array([r]))
    return groups, counts, n, nb + (1 if r else 0)


def _iter_batches(data) -> Iterator:
    if isinstance(data, types.GeneratorType) or (
        isinstance(data, Iterator) and iter(data) is data  # one-shot iterator
    ):
        raise TypeError(
            "data is a one-shot iterator (e.g. a generator object), but the solvers need many passes "
            "over the data. Pass a list of batches, a function returning a fresh iterator "
            "(e.g. `lambda: make_batches()` or the generator function itself), or a re-iterable loader"
        )
    if callable(data) and not hasattr(data, "__iter__"):
        it = data()
        if not hasattr(it, "__iter__"):
            raise TypeError(f"data() must return an iterable of batches, got {type(it).__name__}")
        return iter(it)
    if hasattr(data, "__iter__"):
        return iter(data)
    raise TypeError(
        "data must be a pytree of arrays (with batch_size), a list of batches, a function returning an "
        f"iterator of batches, or a re-iterable loader; got {type(data).__name__}"
    )


def _iterable_batches(data, batch_size):
    if batch_size is not None:
        raise ValueError(
            "batch_size applies to array data only; data given as batches (a list, loader or function) "
            "is used batch by batch as it comes"
        )
    signature_to_group: dict = {}
    stacks: list[list] = []
    counts: list[list] = []
    treedef0 = None
    n = nb = 0
    for i, batch in enumerate(_iter_batches(data)):
        batch = jax.tree_util.tree_map(jnp.asarray, batch)
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        if treedef0 is None:
            treedef0 = treedef
        elif treedef != treedef0:
            raise ValueError(
                f"batch {i} has structure {treedef}, but batch 0 has {treedef0}; all batches must share "
                "one pytree structure"
            )
        size = _leading(batch)
        sig = tuple((a.shape, a.dtype) for a in leaves)
        if sig not in signature_to_group:
            signature_to_group[sig] = len(stacks)
            stacks.append([])
            counts.append([])
        g = signature_to_group[sig]
        stacks[g].append(batch)
        counts[g].append(size)
        n += size
        nb += 1
    if nb == 0:
        raise ValueError("data yielded no batches")
    groups = [jax.tree_util.tree_map(lambda *a: jnp.stack(a), *s) for s in stacks]
    return groups, [np.asarray(c) for c in counts], n, nb


def _prepare_data(data, batch_size, dtype) -> _Data:
    if _is_array_tree(data):
        groups, counts, n, nb = _array_batches(data, batch_size)
    else:
        groups, counts, n, nb = _iterable_batches(data, batch_size)
    weights = tuple(jnp.asarray(c / n, dtype=dtype) for c in counts)
    first = jax.tree_util.tree_map(lambda a: a[0], groups[0])
    return _Data(tuple(groups), weights, n, nb, first)


# ---------------------------------------------------------------------------
# Pass counting (progress bar and num_hvps), through a debug callback
# ---------------------------------------------------------------------------


class _Tracker:
    def __init__(self):
        self.passes = 0
        self.bar = None

    def tick(self, *_):
        self.passes += 1
        if self.bar is not None:
            self.bar.update(1)


_TRACKER = _Tracker()


def _on_pass(x):
    _TRACKER.tick()


# ---------------------------------------------------------------------------
# Dataset operator
# ---------------------------------------------------------------------------


def _batch_product(kind, fns, x, batch, v):
    """One batch's curvature product (pytree ``v`` -> pytree), traceable."""
    loss_fn, model_fn, output_loss_fn, per_example_loss_fn = fns
    if kind == "hessian":
        return _hessian_product(loss_fn, x, (batch,))(v)
    if kind == "ggn":
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("curvature='ggn' needs batches that are pairs (inputs, targets)")
        return _ggn_product(model_fn, output_loss_fn, x, batch)(v)
    # empirical Fisher of this batch: (1/n_b) G_b^T G_b v
    return _fisher_product(per_example_loss_fn, x, batch)(v)


@pytree_operator
class DatasetCurvatureOperator(ParameterOperator):
    """Dataset average :math:`\\sum_b (n_b/N) A_b` of per-batch curvature; see :func:`dataset_operator`.

    Leaves: the parameters ``x``, the stacked batch groups and their weights.
    Static: the curvature kind and the user's functions. A product scans over
    the batches of every group, so it is jittable and its memory is that of
    one batch.
    """

    x: PyTree
    groups: tuple
    weights: tuple
    kind: str = static_field()
    fns: tuple = static_field()
    count: bool = static_field(default=False)
    num_examples: int = static_field(default=0)
    num_batches: int = static_field(default=0)

    tags = property(
        lambda self: frozenset({"symmetric", "psd"} if self.kind in ("ggn", "fisher") else {"symmetric"})
    )

    def tree_product(self, linearize):
        unravel = ravel_pytree(self.x)[1]
        return lambda v_tree: unravel(self._flat_matvec(v_tree))

    def _flat_matvec(self, v_tree):
        acc = jnp.zeros((self.size,), self.dtype)
        for group, w in zip(self.groups, self.weights, strict=True):

            def body(acc, item):
                batch, wb = item
                out = _batch_product(self.kind, self.fns, self.x, batch, v_tree)
                return acc + wb * ravel_pytree(out)[0], None

            acc, _ = jax.lax.scan(body, acc, (group, w))
        return acc

    def matvec(self, v):
        v_tree = ravel_pytree(self.x)[1](v)
        out = self._flat_matvec(v_tree)
        if self.count:
            jax.debug.callback(_on_pass, v[0])
        return out

    def prepare(self):
        return self.matvec

    def gradient_and_loss(self):
        """Dataset-average loss and flat gradient :math:`\\sum_b (n_b/N) \\nabla L_b`."""
        loss_fn = self.fns[0]
        acc = (jnp.zeros((self.size,), self.dtype), jnp.zeros((), self.dtype))
        for group, w in zip(self.groups, self.weights, strict=True):

            def body(acc, item):
                batch, wb = item
                val, g = jax.value_and_grad(loss_fn)(self.x, batch)
                return (acc[0] + wb * ravel_pytree(g)[0], acc[1] + wb * val), None

            acc, _ = jax.lax.scan(body, acc, (group, w))
        return acc[1], acc[0]


@pytree_operator
class BlockOperator(LinearOperator):
    """Diagonal block :math:`A_{[s:e],[s:e]}` of an operator: ``v`` is zero outside the block.

    A principal submatrix: it keeps the operator's tags.
    """

    op: LinearOperator
    start: int = static_field()
    stop: int = static_field()

    def __init__(self, op: LinearOperator, start: int, stop: int):
        if not 0 <= start < stop <= op.size:
            raise ValueError(f"block [{start}, {stop}) is not inside [0, {op.size})")
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "start", int(start))
        object.__setattr__(self, "stop", int(stop))

    size = property(lambda self: self.stop - self.start)
    dtype = property(lambda self: self.op.dtype)
    tags = property(lambda self: self.op.tags)

    def _embed(self, fn, vb):
        v = jnp.zeros((self.op.size,), vb.dtype).at[self.start : self.stop].set(vb)
        return fn(v)[self.start : self.stop]

    def matvec(self, v):
        return self._embed(self.op.matvec, v)

    def prepare(self):
        fn = self.op.prepare()
        return lambda v: self._embed(fn, v)


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
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params has no array leaves")
    for path, a in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not _is_array(a) or not jnp.issubdtype(jnp.result_type(a), jnp.floating):
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
        n = _leading(batch)
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
) -> DatasetCurvatureOperator:
    """The dataset-averaged curvature operator :math:`\\sum_b (n_b/N) A_b` used by :func:`diagnose`.

    Parameters are those of :func:`diagnose`. ``curvature`` selects
    :math:`A_b`: ``"hessian"`` :math:`\\nabla^2 L_b`, ``"ggn"``
    :math:`J_b^\\top H_{\\ell} J_b` (needs ``model_fn(params, inputs)`` and
    ``output_loss_fn(outputs, targets)``, batches ``(inputs, targets)``), or
    ``"fisher"`` :math:`\\frac1{n_b} G_b^\\top G_b` with rows
    :math:`\\nabla \\ell_i` (``per_example_loss_fn(params, batch) -> (n_b,)``;
    by default ``loss_fn`` applied to every example as a batch of one).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.arange(6.0).reshape(3, 2); y = jnp.ones(3)
    >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> op = dataset_operator(loss, jnp.zeros(2), (X, y), batch_size=2)
    >>> bool(jnp.allclose(op.to_dense(), 2 * X.T @ X / 3))
    True
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    params, loss_fn, model_fn, per_example_loss_fn = _unwrap_module(
        params, loss_fn, model_fn, per_example_loss_fn
    )
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
    _check_params(params)
    if curvature == "fisher" and per_example_loss_fn is None:
        per_example_loss_fn = _default_per_example(loss_fn)
    if checkpoint:
        wrap = lambda f: None if f is None else jax.checkpoint(f)
        loss_fn, model_fn, per_example_loss_fn = wrap(loss_fn), wrap(model_fn), wrap(per_example_loss_fn)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    prepared = _prepare_data(data, batch_size, dtype)
    fns = (loss_fn, model_fn, output_loss_fn, per_example_loss_fn)
    if curvature == "ggn" and not (
        isinstance(prepared.first_batch, (tuple, list)) and len(prepared.first_batch) == 2
    ):
        raise ValueError("curvature='ggn' needs batches that are pairs (inputs, targets)")
    _check_functions(curvature, fns, params, prepared.first_batch)
    groups, weights = prepared.groups, prepared.weights
    mesh = resolve_mesh(mesh, data_axis)
    if mesh is not None:
        groups = tuple(shard_batch_axis(g, mesh, data_axis, batch_axis=1) for g in groups)
        weights = replicate(weights, mesh)
        params = replicate(params, mesh)
    return DatasetCurvatureOperator(
        x=params,
        groups=tuple(groups),
        weights=tuple(weights),
        kind=curvature,
        fns=fns,
        num_examples=prepared.num_examples,
        num_batches=prepared.num_batches,
    )


def _with_count(op: DatasetCurvatureOperator) -> DatasetCurvatureOperator:
    return dataclasses.replace(op, count=True)


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


def _blocks(params, depth=None) -> list[tuple[str, int, int]]:
    """Contiguous ``(name, start, stop)`` ranges of the flat parameters, one per block.

    Blocks group the leaves by the first ``depth`` entries of their pytree path.
    With ``depth=None`` the smallest depth giving more than one block is used
    (so an Equinox ``MLP`` splits into ``.layers[0]``, ``.layers[1]``, ...).
    """
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    sizes = [math.prod(np.shape(a)) for _, a in paths]
    max_depth = max(len(p) for p, _ in paths)

    def group(d):
        out: list[list] = []
        for (path, _), size in zip(paths, sizes, strict=True):
            name = jax.tree_util.keystr(path[:d]) or "<root>"
            if out and out[-1][0] == name:
                out[-1][1] += size
            else:
                out.append([name, size])
        return out

    if depth is None:
        groups = group(max_depth)
        for d in range(1, max_depth + 1):
            g = group(d)
            if len(g) > 1:
                groups = g
                break
    else:
        groups = group(check_positive_int("block_depth", depth))
    res, start = [], 0
    for name, size in groups:
        clean = name.replace(".value", "") if name.endswith(".value") else name
        res.append((clean, start, start + size))
        start += size
    return res


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


class BlockReport(NamedTuple):
    """Curvature of one parameter block (the diagonal block of the operator).

    Attributes
    ----------
    name : str
        Pytree path of the block (e.g. ``['layer1']``).
    size : int
        Number of parameters in the block.
    top_eigenvalue : float
        Largest eigenvalue of the diagonal block :math:`A_{bb}`.
    top_residual : float
        Its residual norm :math:`\\|A_{bb} u - \\lambda u\\|`.
    trace, trace_stderr : float
        Hutch++ estimate of :math:`\\operatorname{tr} A_{bb}` and its standard error.
    """

    name: str
    size: int
    top_eigenvalue: float
    top_residual: float
    trace: float
    trace_stderr: float


def _f(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _fl(a):
    return [_f(v) for v in np.asarray(a, dtype=np.float64).ravel()]


class CurvatureReport(NamedTuple):
    """Curvature of a model's loss over a dataset; see :func:`diagnose`.

    Attributes
    ----------
    curvature : str
        ``"hessian"``, ``"ggn"`` or ``"fisher"``.
    top_eigenvalues, top_residuals : ndarray
        The ``k`` largest eigenvalues (descending) and their residual norms.
    bottom_eigenvalues, bottom_residuals : ndarray
        The ``k`` smallest eigenvalues (ascending) and their residual norms.
    trace, trace_stderr : float
        Hutch++ estimate of :math:`\\operatorname{tr} A` and its standard error.
    density_grid, density, density_stderr : ndarray
        SLQ spectral density on a grid (integrates to one) and its standard
        error across probes (the band is ``density ± 2 stderr``).
    negative_mass : float
        Fraction of spectral mass below zero, :math:`\\frac1m\\sum_j\\sum_i w_{ij}[\\theta_{ij}<0]`
        from the SLQ nodes :math:`\\theta` and weights :math:`w`.
    condition_number : float
        :math:`(\\lambda_{\\max}+\\delta)/(\\lambda_{\\min}+\\delta)` of the damped
        operator, ``nan`` when :math:`\\lambda_{\\min}+\\delta \\le 0`.
    damping : float
        :math:`\\delta`.
    gradient_curvature : float
        :math:`g^\\top A g / g^\\top g` along the dataset gradient ``g``.
    gradient_norm, loss : float
        :math:`\\|g\\|` and the dataset-average loss.
    blocks : tuple of BlockReport
        Per-block top eigenvalue and trace (empty if ``per_block=False``).
    num_params, num_examples, num_batches : int
    num_operator_products : int
        Products :math:`A v` (each one pass over the dataset).
    num_hvps : int
        Per-batch curvature products (``num_operator_products * num_batches``).
    wall_time : float
        Seconds.
    messages : dict
        Status messages of the solvers.
    """

    curvature: str
    top_eigenvalues: np.ndarray
    top_residuals: np.ndarray
    bottom_eigenvalues: np.ndarray
    bottom_residuals: np.ndarray
    trace: float
    trace_stderr: float
    density_grid: np.ndarray
    density: np.ndarray
    density_stderr: np.ndarray
    negative_mass: float
    condition_number: float
    damping: float
    gradient_curvature: float
    gradient_norm: float
    loss: float
    blocks: tuple
    num_params: int
    num_examples: int
    num_batches: int
    num_operator_products: int
    num_hvps: int
    wall_time: float
    messages: dict

    # -- serialization ------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe dictionary (plain floats and lists; ``nan``/``inf`` become ``None``)."""
        return {
            "curvature": self.curvature,
            "top_eigenvalues": _fl(self.top_eigenvalues),
            "top_residuals": _fl(self.top_residuals),
            "bottom_eigenvalues": _fl(self.bottom_eigenvalues),
            "bottom_residuals": _fl(self.bottom_residuals),
            "trace": _f(self.trace),
            "trace_stderr": _f(self.trace_stderr),
            "density": {
                "grid": _fl(self.density_grid),
                "density": _fl(self.density),
                "stderr": _fl(self.density_stderr),
            },
            "negative_mass": _f(self.negative_mass),
            "condition_number": _f(self.condition_number),
            "damping": _f(self.damping),
            "gradient_curvature": _f(self.gradient_curvature),
            "gradient_norm": _f(self.gradient_norm),
            "loss": _f(self.loss),
            "blocks": [
                {
                    "name": b.name,
                    "size": int(b.size),
                    "top_eigenvalue": _f(b.top_eigenvalue),
                    "top_residual": _f(b.top_residual),
                    "trace": _f(b.trace),
                    "trace_stderr": _f(b.trace_stderr),
                }
                for b in self.blocks
            ],
            "num_params": int(self.num_params),
            "num_examples": int(self.num_examples),
            "num_batches": int(self.num_batches),
            "num_operator_products": int(self.num_operator_products),
            "num_hvps": int(self.num_hvps),
            "wall_time": _f(self.wall_time),
            "messages": {str(k): str(v) for k, v in self.messages.items()},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A plain-text table of the main numbers (what ``curvlab diagnose`` prints)."""
        return summary_table(self)


def summary_table(report: CurvatureReport) -> str:
    """A plain-text table of a report's main numbers."""

    def g(x):
        x = float(x)
        return f"{x:.6g}" if math.isfinite(x) else "n/a"

    rows = [
        ("curvature", report.curvature),
        ("parameters", f"{report.num_params:,}"),
        ("examples / batches", f"{report.num_examples:,} / {report.num_batches}"),
        ("loss", g(report.loss)),
        ("gradient norm", g(report.gradient_norm)),
        ("top eigenvalues", ", ".join(g(v) for v in report.top_eigenvalues)),
        ("  residuals", ", ".join(f"{float(v):.1e}" for v in report.top_residuals)),
        ("bottom eigenvalues", ", ".join(g(v) for v in report.bottom_eigenvalues)),
        ("  residuals", ", ".join(f"{float(v):.1e}" for v in report.bottom_residuals)),
        ("trace", f"{g(report.trace)} ± {g(report.trace_stderr)}"),
        ("negative spectral mass", g(report.negative_mass)),
        (f"condition (damping {g(report.damping)})", g(report.condition_number)),
        ("curvature along gradient", g(report.gradient_curvature)),
        ("operator products / HVPs", f"{report.num_operator_products} / {report.num_hvps}"),
        ("wall time", f"{report.wall_time:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {val}" for name, val in rows]
    if report.blocks:
        nw = max(max(len(b.name) for b in report.blocks), 5)
        lines.append("")
        lines.append(f"{'block':<{nw}}  {'size':>10}  {'λmax':>12}  {'trace':>12}  {'± stderr':>10}")
        for b in report.blocks:
            lines.append(
                f"{b.name:<{nw}}  {b.size:>10,}  {g(b.top_eigenvalue):>12}  {g(b.trace):>12}  "
                f"{g(b.trace_stderr):>10}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# diagnose
# ---------------------------------------------------------------------------


@pytree_operator
class _MaskedOperator(LinearOperator):
    """:math:`P A P - c (I - P)` with :math:`P = \\operatorname{diag}(\\text{mask})`.

    Its eigenvalues are those of the diagonal block :math:`A_{bb}` and
    :math:`-c` (on the complement). With the mask a leaf (not static), every
    block of the same model reuses one compiled solver.
    """

    op: LinearOperator
    mask: jax.Array
    shift: jax.Array

    size = property(lambda self: self.op.size)
    dtype = property(lambda self: self.op.dtype)

    def matvec(self, v):
        return self.mask * self.op.matvec(self.mask * v) - self.shift * (1 - self.mask) * v

    def prepare(self):
        fn = self.op.prepare()
        return lambda v: self.mask * fn(self.mask * v) - self.shift * (1 - self.mask) * v


@jax.jit
def _gradient_stats(op):
    """Dataset loss, gradient ``g`` and :math:`g^\\top A g / g^\\top g` (NaN for ``g = 0``)."""
    loss, g = op.gradient_and_loss()
    gg = jnp.vdot(g, g)
    gAg = jnp.vdot(g, op.matvec(g))
    return loss, g, jnp.where(gg > 0, gAg / jnp.where(gg > 0, gg, 1), jnp.nan)


def _negative_mass(sd) -> float:
    nodes = np.asarray(sd.nodes, dtype=np.float64)
    weights = np.asarray(sd.weights, dtype=np.float64)
    total = weights.sum()
    return float((weights * (nodes < 0)).sum() / total) if total > 0 else float("nan")


def _progress_bar(progress, desc):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=" pass", leave=False)


def diagnose(
    loss_fn: Callable | None,
    params: PyTree,
    data,
    *,
    k: int = 5,
    curvature: str = "hessian",
    batch_size: int | None = None,
    model_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    per_example_loss_fn: Callable | None = None,
    num_probes: int = 10,
    num_steps: int = 60,
    trace_probes: int | None = None,
    rtol: float = 1e-6,
    max_matvecs: int | None = None,
    key: jax.Array | None = None,
    damping: float = 0.0,
    per_block: bool = True,
    block_depth: int | None = None,
    block_max_matvecs: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    checkpoint: bool = False,
    mesh=None,
    data_axis: str = "data",
) -> CurvatureReport:
    """Curvature report of ``loss_fn`` at ``params`` over a dataset.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch) -> scalar``, the *mean* loss over the batch.
        May be ``None`` for ``curvature="ggn"`` (then
        ``output_loss_fn(model_fn(params, inputs), targets)``).
    params : pytree or module
        Floating-point arrays only; or a Flax NNX / Equinox module (see module docs).
    data : pytree of arrays, list of batches, function returning batches, or re-iterable loader
        See the module docstring. The operator is the batch-size-weighted
        average of per-batch curvature.
    k : int
        Number of top and of bottom eigenvalues.
    curvature : {"hessian", "ggn", "fisher"}
    batch_size : int, optional
        For array ``data``: batch size (the remainder forms a smaller batch).
    model_fn, output_loss_fn : callable, optional
        For ``"ggn"``: ``model_fn(params, inputs)``, ``output_loss_fn(outputs, targets)``.
    per_example_loss_fn : callable, optional
        For ``"fisher"``: ``(params, batch) -> (n_b,)``; default: ``loss_fn`` on each example.
    num_probes, num_steps : int
        Stochastic Lanczos quadrature probes and Lanczos steps per probe.
    trace_probes : int, optional
        Hutch++ matvec budget for traces (default ``num_probes``).
    rtol, max_matvecs : float, int
        Passed to :func:`curvlab.eigsh` (``max_matvecs`` bounds every matvec of the eigensolve).
    key : jax.random key, optional
        Randomness of all estimators (default ``jax.random.key(0)``).
    damping : float
        :math:`\\delta` for the condition estimate.
    per_block : bool
        Also report each parameter block's top eigenvalue and trace.
    block_depth : int, optional
        Path depth that defines blocks (default: the first depth with >1 block).
    block_max_matvecs : int, optional
        ``max_matvecs`` of the per-block eigensolves (default ``max_matvecs``).
    chunk_size : int, optional
        Probes of the trace and density estimators run ``chunk_size`` at a
        time (``lax.map``); each probe in flight holds one batch's HVP memory.
        Default: all at once (``vmap``) below 100,000 parameters, else one at a time.
    progress : bool, optional
        tqdm progress bar counting dataset passes (default: when stderr is a terminal).
    checkpoint : bool
        Wrap the loss in ``jax.checkpoint``: less memory per HVP, more compute.
    mesh : jax.sharding.Mesh or "auto", optional
        Data-parallel over the mesh axis ``data_axis`` (see :mod:`curvlab.sharding`).

    Returns
    -------
    CurvatureReport

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.key(0), (32, 3)); y = X @ jnp.ones(3)
    >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> r = diagnose(loss, jnp.zeros(3), (X, y), batch_size=8, k=1, num_probes=3,
    ...              num_steps=3, per_block=False, progress=False)
    >>> bool(jnp.allclose(r.top_eigenvalues[0], jnp.linalg.eigvalsh(X.T @ X / 32)[-1]))
    True
    """
    from curvlab._eigsh import eigsh
    from curvlab._spectral import spectral_density, trace

    k = check_positive_int("k", k)
    num_probes = check_positive_int("num_probes", num_probes)
    num_steps = check_positive_int("num_steps", num_steps)
    trace_probes = (
        max(num_probes, 4) if trace_probes is None else check_positive_int("trace_probes", trace_probes, 4)
    )
    if max_matvecs is not None:
        max_matvecs = check_positive_int("max_matvecs", max_matvecs)
    if block_max_matvecs is None:
        block_max_matvecs = max_matvecs
    if not (isinstance(damping, (int, float, np.floating)) and math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    t0 = time.perf_counter()
    base = dataset_operator(
        loss_fn,
        params,
        data,
        curvature=curvature,
        batch_size=batch_size,
        model_fn=model_fn,
        output_loss_fn=output_loss_fn,
        per_example_loss_fn=per_example_loss_fn,
        checkpoint=checkpoint,
        mesh=mesh,
        data_axis=data_axis,
    )
    num_examples, num_batches = base.num_examples, base.num_batches
    n = base.size
    if k >= n:
        raise ValueError(f"k = {k} must be smaller than the number of parameters ({n})")
    op = _with_count(base)
    if chunk_size is None:
        chunk_size = None if n < 100_000 else 1
    else:
        chunk_size = check_positive_int("chunk_size", chunk_size)
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, 6)
    messages = {}
    _TRACKER.passes = 0
    _TRACKER.bar = _progress_bar(progress, f"curvlab.diagnose ({curvature}, {n:,} params)")
    try:

        def phase(name):
            if _TRACKER.bar is not None:
                _TRACKER.bar.set_postfix_str(name)

        phase("gradient")
        loss, grad, grad_curv = _gradient_stats(op)
        loss, grad_curv = float(loss), float(grad_curv)
        grad_norm = float(jnp.linalg.norm(grad))
        phase("extreme eigenvalues")
        # both ends in one thick-restart run (one compilation, shared Krylov space)
        if 2 * k < n:
            ends = eigsh(op, k=2 * k, which="BE", rtol=rtol, max_matvecs=max_matvecs, key=keys[0])
            messages["eigsh"] = ends.message
            evals, resid = np.asarray(ends.eigenvalues), np.asarray(ends.residual_norms)
        else:  # tiny problem: all eigenvalues from n matvecs
            dense = np.asarray(op.to_dense(), dtype=np.float64)
            lam, vec = np.linalg.eigh((dense + dense.T) / 2)
            idx = np.r_[np.arange(k), np.arange(n - k, n)]
            evals = lam[idx]
            resid = np.linalg.norm(dense @ vec[:, idx] - vec[:, idx] * evals, axis=0)
            messages["eigsh"] = f"exact: dense eigendecomposition (n = {n} <= 2k = {2 * k})"
        bottom, bottom_res = evals[:k], resid[:k]
        top, top_res = evals[k:][::-1], resid[k:][::-1]
        phase("trace")
        tr = trace(op, num_probes=trace_probes, key=keys[2], chunk_size=chunk_size)
        phase("spectral density")
        sd = spectral_density(
            op, num_probes=num_probes, num_steps=min(num_steps, n), key=keys[3], chunk_size=chunk_size
        )
        messages["density"] = sd.message
        blocks = []
        if per_block:
            ranges = _blocks(base.x, block_depth)
            if len(ranges) > 1:
                bkeys = jax.random.split(keys[4], 2 * len(ranges))
                # complement pushed below the spectrum: the top eigenvalue is the block's own
                shift = jnp.asarray(2 * max(abs(top[0]), abs(bottom[0])) + 1, base.dtype)
                zero = jnp.zeros((), base.dtype)
                for i, (name, s, e) in enumerate(ranges):
                    phase(f"block {name}")
                    mask = jnp.zeros((n,), base.dtype).at[s:e].set(1)
                    if e - s > 1:
                        be = eigsh(
                            _MaskedOperator(op, mask, shift),
                            k=1,
                            which="LA",
                            rtol=rtol,
                            max_matvecs=block_max_matvecs,
                            key=bkeys[2 * i],
                        )
                        lam, res, msg = float(be.eigenvalues[0]), float(be.residual_norms[0]), be.message
                    else:  # one parameter: A_bb = e_s^T A e_s
                        lam = float(_MaskedOperator(op, mask, zero).matvec(mask)[s])
                        res, msg = 0.0, "exact (one parameter)"
                    bt = trace(
                        _MaskedOperator(op, mask, zero),
                        num_probes=trace_probes,
                        key=bkeys[2 * i + 1],
                        chunk_size=chunk_size,
                    )
                    messages[f"block {name}"] = msg
                    blocks.append(BlockReport(name, e - s, lam, res, float(bt.value), float(bt.stderr)))
        jax.effects_barrier()
    finally:
        if _TRACKER.bar is not None:
            _TRACKER.bar.close()
        _TRACKER.bar = None
    passes = _TRACKER.passes
    lmax, lmin = float(top[0]), float(bottom[0])
    cond = (lmax + damping) / (lmin + damping) if lmin + damping > 0 else float("nan")
    return CurvatureReport(
        curvature=curvature,
        top_eigenvalues=np.ascontiguousarray(top),
        top_residuals=np.ascontiguousarray(top_res),
        bottom_eigenvalues=bottom,
        bottom_residuals=bottom_res,
        trace=float(tr.value),
        trace_stderr=float(tr.stderr),
        density_grid=np.asarray(sd.grid),
        density=np.asarray(sd.density),
        density_stderr=np.asarray(getattr(sd, "density_stderr", np.zeros_like(np.asarray(sd.density)))),
        negative_mass=_negative_mass(sd),
        condition_number=cond,
        damping=float(damping),
        gradient_curvature=grad_curv,
        gradient_norm=grad_norm,
        loss=float(loss),
        blocks=tuple(blocks),
        num_params=n,
        num_examples=num_examples,
        num_batches=num_batches,
        num_operator_products=passes,
        num_hvps=passes * num_batches,
        wall_time=time.perf_counter() - t0,
        messages=messages,
    )

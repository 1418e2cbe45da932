"""Batch handling, written once: datasets for dataset-averaged operators, streams for optimizers.

A **dataset** (:func:`prepare_data`) is read once into :class:`Batches`: groups of
equal-shape batches stacked along a new leading axis, with the weights
:math:`w_b = n_b / N` (:math:`n_b` examples in batch :math:`b`, :math:`N = \\sum_b n_b`),
so that a dataset average :math:`\\sum_b w_b A_b` is a ``lax.scan`` per group and the
operator holding it stays jittable. ``data`` is either

* a pytree of arrays sharing their leading (example) axis, e.g. ``(X, Y)``, cut into
  batches of ``batch_size`` (a last, smaller batch is kept as its own batch with
  weight :math:`n_b/N`; ``batch_size=None`` means one batch); or
* a *re-iterable* of batches: a list, a callable returning a fresh iterator (a
  generator function, ``lambda: loader``), or an object whose ``__iter__`` restarts
  (a NumPy / torch loader). The batches are read once, converted to arrays and
  stacked by shape. A one-shot iterator (a generator object) is refused: the solvers
  need many passes over the data.

A **stream** (:func:`batch_stream`) is what an optimizer consumes, one batch per
iteration: a single batch repeated, a sequence cycled, or an iterator consumed.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._validation import check_positive_int

PyTree = Any

__all__ = ["Batches", "single_batch", "prepare_data", "batch_stream", "leading_size", "is_array"]


class Batches(NamedTuple):
    """A dataset as stacked groups of equal-shape batches (a pytree: arrays are leaves).

    Attributes
    ----------
    groups : tuple
        Each a batch pytree whose leaves have shape ``(num_batches_in_group, n_b, ...)``;
        for :func:`single_batch`, the one batch itself, unstacked.
    weights : tuple of arrays or None
        Each ``(num_batches_in_group,)``, the :math:`n_b / N` of its batches (they sum
        to one). ``None`` marks one unstacked batch of weight exactly one.
    """

    groups: tuple
    weights: tuple | None

    @property
    def stacked(self) -> bool:
        """False for :func:`single_batch` (no scan, weight one)."""
        return self.weights is not None

    @property
    def num_batches(self) -> int:
        return sum(int(w.shape[0]) for w in self.weights) if self.stacked else 1

    @property
    def num_examples(self) -> int:
        """:math:`N`, from the static shapes (``(num_batches, n_b, ...)`` per group)."""
        if not self.stacked:
            return leading_size(self.groups[0], "the batch")
        return sum(math_prod(np.shape(jax.tree_util.tree_leaves(g)[0])[:2]) for g in self.groups)

    def first(self) -> PyTree:
        """The first batch, unstacked (for shape checks)."""
        if not self.stacked:
            return self.groups[0]
        return jax.tree_util.tree_map(lambda a: a[0], self.groups[0])


def math_prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def single_batch(batch: PyTree) -> Batches:
    """One batch used as is: its products need no loop and no weight."""
    return Batches((batch,), None)


def is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _is_array_tree(data) -> bool:
    """Array data (cut into batches by ``batch_size``): an array, or a tuple / dict of arrays."""
    if is_array(data):
        return True
    if isinstance(data, tuple):
        children = list(data)
    elif isinstance(data, dict):
        children = list(data.values())
    else:
        return False
    return bool(children) and all(is_array(c) for c in children)


def leading_size(batch: PyTree, what: str = "every batch") -> int:
    """The shared leading (example) dimension of ``batch``'s arrays; errors name ``what``."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(f"{what} has no arrays")
    sizes = {int(np.shape(a)[0]) if np.ndim(a) > 0 else None for a in leaves}
    if None in sizes:
        raise ValueError(f"every array of {what} needs a leading example axis")
    if len(sizes) != 1:
        raise ValueError(f"the arrays of {what} disagree on the number of examples: {sorted(sizes)}")
    (n,) = sizes
    if n == 0:
        raise ValueError(f"{what} is empty (0 examples)")
    return n


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
    batch_size = min(n if batch_size is None else check_positive_int("batch_size", batch_size), n)
    nb, r = divmod(n, batch_size)
    cut = nb * batch_size
    stack = lambda a: jnp.asarray(a)[:cut].reshape(nb, batch_size, *np.shape(a)[1:])
    groups = [jax.tree_util.tree_map(stack, data)]
    counts = [np.full(nb, batch_size)]
    if r:
        groups.append(jax.tree_util.tree_map(lambda a: jnp.asarray(a)[cut:][None], data))
        counts.append(np.array([r]))
    return groups, counts


def _iter_batches(data) -> Iterator:
    if isinstance(data, types.GeneratorType) or (isinstance(data, Iterator) and iter(data) is data):
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
    group_of: dict = {}
    stacks: list[list] = []
    counts: list[list] = []
    treedef0 = None
    for i, batch in enumerate(_iter_batches(data)):
        batch = jax.tree_util.tree_map(jnp.asarray, batch)
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        treedef0 = treedef if treedef0 is None else treedef0
        if treedef != treedef0:
            raise ValueError(
                f"batch {i} has structure {treedef}, but batch 0 has {treedef0}; all batches must share "
                "one pytree structure"
            )
        size = _leading(batch)
        g = group_of.setdefault(tuple((a.shape, a.dtype) for a in leaves), len(stacks))
        if g == len(stacks):
            stacks.append([])
            counts.append([])
        stacks[g].append(batch)
        counts[g].append(size)
    if not stacks:
        raise ValueError("data yielded no batches")
    groups = [jax.tree_util.tree_map(lambda *a: jnp.stack(a), *s) for s in stacks]
    return groups, [np.asarray(c) for c in counts]


def _leading(batch) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves or np.ndim(leaves[0]) == 0:
        raise ValueError("every batch must hold arrays with a leading example axis")
    return int(np.shape(leaves[0])[0])


def prepare_data(data, batch_size: int | None, dtype) -> Batches:
    """Read ``data`` once into :class:`Batches` with weights :math:`n_b/N` of ``dtype``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> b = prepare_data((jnp.zeros((5, 2)), jnp.zeros(5)), 2, jnp.float32)
    >>> b.num_examples, b.num_batches, [w.tolist() for w in b.weights]
    (5, 3, [[0.4000000059604645, 0.4000000059604645], [0.20000000298023224]])
    """
    if _is_array_tree(data):
        groups, counts = _array_batches(data, batch_size)
    else:
        groups, counts = _iterable_batches(data, batch_size)
    n = sum(int(c.sum()) for c in counts)
    return Batches(tuple(groups), tuple(jnp.asarray(c / n, dtype=dtype) for c in counts))


def _is_single_batch(b) -> bool:
    if isinstance(b, (dict, Batches)):
        return True
    if isinstance(b, (tuple, list)) and len(b) > 0 and all(is_array(a) for a in b):
        return True
    return is_array(b)


def batch_stream(batches, name: str) -> tuple[PyTree, Iterator, bool]:
    """An optimizer's batches as ``(first batch, iterator from the first, single)``.

    A single batch (a tuple / dict of arrays, an array, or a whole :class:`Batches`
    dataset) repeats forever, a list or tuple of batches is cycled, an iterator is
    consumed (it may end). Errors name ``name``.
    """
    if batches is None:
        raise ValueError(f"{name} is required: a batch (inputs, targets) or a sequence/iterable of batches")
    if _is_single_batch(batches):
        return batches, itertools.repeat(batches), True
    if isinstance(batches, (list, tuple)):
        if len(batches) == 0:
            raise ValueError(f"{name} is empty")
        return batches[0], itertools.cycle(batches), len(batches) == 1
    if isinstance(batches, (Iterator, Iterable)):
        it = iter(batches)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError(f"{name} is empty (the iterator yielded no batch)") from None
        return first, itertools.chain([first], it), False
    raise TypeError(
        f"{name} must be a batch tuple, a sequence of batches or an iterable, got {type(batches).__name__}"
    )

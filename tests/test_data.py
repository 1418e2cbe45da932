"""Tests for curvlab._data: datasets read once into weighted stacked groups, and optimizer streams."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from curvlab._data import Batches, batch_stream, leading_size, prepare_data, single_batch

X = jnp.arange(14.0).reshape(7, 2)
Y = jnp.arange(7.0)


def _unstack(batches: Batches):
    """The batches in order, as (x, y) numpy pairs, with their weights."""
    out = []
    for group, w in zip(batches.groups, batches.weights, strict=True):
        for i in range(w.shape[0]):
            out.append((np.asarray(group[0][i]), np.asarray(group[1][i]), float(w[i])))
    return out


@pytest.mark.parametrize(
    "batch_size, sizes", [(3, [3, 3, 1]), (7, [7]), (None, [7]), (100, [7]), (1, [1] * 7), (2, [2, 2, 2, 1])]
)
def test_array_data_cut_into_batches_with_weights_nb_over_n(batch_size, sizes):
    b = prepare_data((X, Y), batch_size, jnp.float64)
    parts = _unstack(b)
    assert [len(y) for _, y, _ in parts] == sizes
    np.testing.assert_allclose([w for *_, w in parts], np.array(sizes) / 7, rtol=1e-15)
    np.testing.assert_array_equal(np.concatenate([x for x, _, _ in parts]), X)  # order and content kept
    assert (b.num_examples, b.num_batches) == (7, len(sizes))
    assert len(b.groups) == (2 if sizes[-1] != sizes[0] else 1)  # the remainder is its own group
    np.testing.assert_array_equal(b.first()[0], X[: sizes[0]])


def test_weights_take_the_dtype_and_sum_to_one_in_float32():
    b = prepare_data({"x": X}, 3, jnp.float32)
    assert all(w.dtype == jnp.float32 for w in b.weights)
    assert abs(sum(float(w.sum()) for w in b.weights) - 1.0) < 1e-6


def _forms(batches):
    class Loader:  # __iter__ restarts, like a NumPy / torch loader
        def __iter__(self):
            return iter([tuple(np.asarray(a) for a in b) for b in batches])

    def gen():
        yield from batches

    return [list(batches), gen, lambda: iter(batches), Loader()]


@pytest.mark.parametrize("form", range(4))
def test_iterables_read_once_and_grouped_by_shape(form):
    batches = [(X[i : i + 3], Y[i : i + 3]) for i in range(0, 7, 3)]  # 3, 3, 1
    b = prepare_data(_forms(batches)[form], None, jnp.float64)
    a = prepare_data((X, Y), 3, jnp.float64)
    for (xa, ya, wa), (xb, yb, wb) in zip(_unstack(a), _unstack(b), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert wa == wb


def test_interleaved_shapes_keep_their_weights():
    batches = [(X[:3], Y[:3]), (X[3:4], Y[3:4]), (X[4:7], Y[4:7])]  # 3, 1, 3: two groups
    b = prepare_data(batches, None, jnp.float64)
    assert [int(w.shape[0]) for w in b.weights] == [2, 1]
    np.testing.assert_allclose(np.concatenate([np.asarray(w) for w in b.weights]), [3 / 7, 3 / 7, 1 / 7])


@pytest.mark.parametrize(
    "data, batch_size, error, match",
    [
        (((X[i : i + 2], Y[i : i + 2]) for i in range(0, 6, 2)), None, TypeError, "one-shot iterator"),
        (iter([(X, Y)]), None, TypeError, "one-shot iterator"),
        ([(X, Y)], 2, ValueError, "batch_size applies to array data only"),
        ([], None, ValueError, "data yielded no batches"),
        ((X, Y[:3]), 2, ValueError, "share their leading"),
        ((X[:0], Y[:0]), None, ValueError, "no examples"),
        ((X, Y), 0, ValueError, "batch_size"),
        ([(X, Y), {"x": X}], None, ValueError, "one pytree structure"),
        (lambda: 3, None, TypeError, "must return an iterable"),
        (3.0, None, TypeError, "data must be a pytree of arrays"),
    ],
)
def test_bad_data_rejected_with_a_clear_message(data, batch_size, error, match):
    with pytest.raises(error, match=match):
        prepare_data(data, batch_size, jnp.float64)


def test_single_batch_is_unstacked_with_no_weights():
    b = single_batch((X, Y))
    assert not b.stacked and b.weights is None and b.first() == (X, Y)
    assert (b.num_examples, b.num_batches) == (7, 1)


def test_batch_stream_repeats_cycles_or_consumes():
    first, it, single = batch_stream((X, Y), "batches")
    assert single and all(b is first for b in itertools.islice(it, 3))
    b1, b2 = (X[:3], Y[:3]), (X[3:], Y[3:])
    first, it, single = batch_stream([b1, b2], "batches")
    assert (
        not single and [b is want for b, want in zip(itertools.islice(it, 4), [b1, b2, b1, b2])] == [True] * 4
    )
    first, it, single = batch_stream(iter([b1, b2]), "batches")
    assert first is b1 and list(it) == [b1, b2]
    data = prepare_data((X, Y), 3, jnp.float64)  # a whole dataset is one (curvature) batch
    first, it, single = batch_stream(data, "curvature_batches")
    assert single and first is data and next(it) is data


@pytest.mark.parametrize(
    "batches, match",
    [(None, "batches is required"), ([], "batches is empty"), (iter([]), "yielded no batch")],
)
def test_batch_stream_errors_name_the_argument(batches, match):
    with pytest.raises(ValueError, match=match):
        batch_stream(batches, "batches")


def test_leading_size_errors():
    assert leading_size((X, Y)) == 7
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        leading_size((X, Y[:2]), "the batch")
    with pytest.raises(ValueError, match="leading example axis"):
        leading_size((jnp.ones(()),), "the batch")
    with pytest.raises(ValueError, match="has no arrays"):
        leading_size((), "the batch")

"""Curvature of an Equinox model.

An Equinox module mixes arrays with non-array leaves (activation functions,
sizes), so either pass the module itself (curvlab partitions it with
``eqx.partition(model, eqx.is_inexact_array)`` and ``loss_fn`` receives the
module rebuilt around the arrays being differentiated)::

    curvlab.diagnose(loss_fn, model, data, batch_size=16)

or partition it yourself and differentiate the array part::

    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    curvlab.diagnose(lambda a, b: loss_fn(eqx.combine(a, static), b), arrays, data, batch_size=16)

``curvlab diagnose examples/equinox_mlp.py --out report.html`` uses :func:`make_problem` (the first form).
"""

import equinox as eqx
import jax
import jax.numpy as jnp


def loss_fn(model, batch):
    """Mean squared error of a scalar-output model over ``(inputs, targets)``."""
    inputs, targets = batch
    preds = jax.vmap(model)(inputs)
    return 0.5 * jnp.mean(jnp.sum((preds - targets) ** 2, axis=-1))


def make_model(dtype=None, din=2, width=5, depth=1, dout=1, seed=0):
    dtype = dtype or jnp.result_type(float)
    return eqx.nn.MLP(din, dout, width, depth, activation=jnp.tanh, key=jax.random.key(seed), dtype=dtype)


def make_data(dtype=None, num_examples=40, din=2, seed=1):
    dtype = dtype or jnp.result_type(float)
    x = jax.random.normal(jax.random.key(seed), (num_examples, din), dtype)
    y = jnp.cos(x[:, :1]) * x[:, 1:]
    return x, y


def make_problem(dtype=None):
    """The module itself as ``params``; 40 examples in batches of 16 (16, 16 and a remainder of 8)."""
    return {"loss_fn": loss_fn, "params": make_model(dtype), "data": make_data(dtype), "batch_size": 16}


if __name__ == "__main__":
    import curvlab

    print(curvlab.diagnose(**make_problem(), k=3).summary())

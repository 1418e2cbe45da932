"""Curvature of a small plain-JAX MLP (dict parameters) on synthetic regression data.

Run it directly (``python examples/plain_jax_mlp.py``) or through the CLI::

    curvlab diagnose examples/plain_jax_mlp.py --out report.html

The CLI finds :func:`make_problem` and calls :func:`curvlab.diagnose` with what it returns.
"""

import jax
import jax.numpy as jnp


def init_params(key, sizes, dtype):
    params = {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"layer{i}"] = {
            "w": jax.random.normal(sub, (m, n), dtype) / jnp.sqrt(m).astype(dtype),
            "b": jnp.zeros((n,), dtype),
        }
    return params


def model_fn(params, x):
    """The network's outputs (used for the Gauss-Newton curvature)."""
    layers = [params[k] for k in sorted(params)]
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"][None, :])
    return x @ layers[-1]["w"] + layers[-1]["b"][None, :]


def output_loss_fn(outputs, targets):
    """Mean squared error over the batch, as a function of the outputs."""
    return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))


def loss_fn(params, batch):
    """Mean loss over a batch ``(inputs, targets)``."""
    inputs, targets = batch
    return output_loss_fn(model_fn(params, inputs), targets)


def make_problem(dtype=None, num_examples=64, sizes=(3, 6, 2), seed=0):
    """``loss_fn``, ``params`` and array ``data`` in batches of 16 (a smaller last batch if needed)."""
    dtype = dtype or jnp.result_type(float)
    kx, kw, kp = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (num_examples, sizes[0]), dtype)
    teacher = jax.random.normal(kw, (sizes[0], sizes[-1]), dtype)
    y = jnp.sin(x @ teacher)
    return {
        "loss_fn": loss_fn,
        "params": init_params(kp, sizes, dtype),
        "data": (x, y),
        "batch_size": 16,
        "model_fn": model_fn,
        "output_loss_fn": output_loss_fn,
    }


if __name__ == "__main__":
    import curvlab

    problem = make_problem()
    report = curvlab.diagnose(**problem, k=3)
    print(report.summary())

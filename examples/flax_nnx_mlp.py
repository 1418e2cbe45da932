"""Curvature of a Flax NNX model.

Two equivalent ways to hand an NNX model to :func:`curvlab.diagnose`:

1. split it yourself and differentiate the state::

       graphdef, state = nnx.split(model)
       loss_fn = lambda state, batch: loss(nnx.merge(graphdef, state), batch)
       curvlab.diagnose(loss_fn, state, data, batch_size=16)

2. pass the module itself; curvlab splits out the ``nnx.Param`` variables and
   ``loss_fn`` receives the module rebuilt around them::

       curvlab.diagnose(lambda model, batch: loss(model, batch), model, data, batch_size=16)

``curvlab diagnose examples/flax_nnx_mlp.py --out report.html`` uses :func:`make_problem` (form 1).
"""

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, din, dhidden, dout, *, rngs, dtype=jnp.float32):
        self.hidden = nnx.Linear(din, dhidden, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.out = nnx.Linear(dhidden, dout, rngs=rngs, param_dtype=dtype, dtype=dtype)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def module_loss(model, batch):
    """Softmax cross-entropy averaged over the batch ``(inputs, integer labels)``."""
    inputs, labels = batch
    logits = model(inputs)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def make_data(dtype, num_examples=48, din=3, classes=3, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (num_examples, din), dtype)
    labels = jnp.argmax(x @ jax.random.normal(kw, (din, classes), dtype), axis=1)
    return x, labels


def make_model(dtype=None, din=3, dhidden=5, classes=3, seed=1):
    dtype = dtype or jnp.result_type(float)
    return MLP(din, dhidden, classes, rngs=nnx.Rngs(seed), dtype=dtype)


def make_problem(dtype=None):
    """Form 1: ``params`` is the NNX state; ``loss_fn`` merges it back into the model."""
    dtype = dtype or jnp.result_type(float)
    model = make_model(dtype)
    graphdef, state = nnx.split(model)

    def loss_fn(state, batch):
        return module_loss(nnx.merge(graphdef, state), batch)

    return {"loss_fn": loss_fn, "params": state, "data": make_data(dtype), "batch_size": 16}


if __name__ == "__main__":
    import curvlab

    print(curvlab.diagnose(**make_problem(), k=3).summary())
    # form 2: the module itself
    print(curvlab.diagnose(module_loss, make_model(), make_data(jnp.float32), batch_size=16, k=3).summary())

"""The true (Monte-Carlo) Fisher, with labels sampled from the model, and the curvature conventions.

For an output loss that is a negative log-likelihood, :math:`\\ell_i(z_i) = -\\log
q(y_i \\mid z_i)`, the Fisher information of the model's predictive distribution is

.. math::

    F = c \\sum_{i=1}^{M} J_i^\\top\\, \\mathbb E_{\\tilde y \\sim q(\\cdot \\mid z_i)}
        \\big[\\nabla_{z}\\ell(z_i, \\tilde y)\\, \\nabla_{z}\\ell(z_i, \\tilde y)^\\top\\big]\\, J_i ,

(:math:`J_i = \\partial z_i / \\partial\\theta`, :math:`c` the loss's reduction factor, see
:mod:`curvlab._output_hessians`). For softmax cross-entropy and squared error the inner
expectation equals the output Hessian, so :math:`F` equals the GGN. The Monte-Carlo
Fisher replaces the expectation by ``num_samples`` labels drawn per row:

.. math:: \\hat F = \\frac{c}{S} \\sum_{i=1}^{M} \\sum_{s=1}^{S} J_i^\\top r_{is} r_{is}^\\top J_i,
          \\qquad r_{is} = \\nabla_z \\ell(z_i, \\tilde y_{is}),

an unbiased estimate of the GGN, positive semidefinite, and (unlike the empirical Fisher)
blind to the true labels. The labels are drawn from a key stored in the operator, one
key per batch, so the operator is one fixed matrix: every product, every solver and a
``jax.jit`` see the same samples (a new key gives a new sample of :math:`\\hat F`).

Curvature conventions (dataset of :math:`N` examples, batch losses averaged with the
weights :math:`n_b / N`; :math:`c` the output loss's reduction factor, :math:`\\ell_i` the
unreduced per-row loss, :math:`g_i = \\nabla_\\theta \\ell_i`, :math:`C` outputs per row):

* ``hessian_operator``: :math:`\\nabla^2 L` of the loss :math:`L` you pass; curvlinops: equal.
* ``ggn_operator``: :math:`c \\sum_i J_i^\\top \\nabla^2\\ell_i J_i`; curvlinops ``GGNLinearOperator``: equal.
* ``mc_fisher_operator``: :math:`\\frac{c}{S} \\sum_{i,s} J_i^\\top r_{is} r_{is}^\\top J_i`;
  curvlinops ``FisherMCLinearOperator``: equal in distribution (other random numbers).
* ``fisher_operator`` (empirical): :math:`\\frac1N \\sum_i g_i g_i^\\top` always; curvlinops
  ``EFLinearOperator``: :math:`c \\sum_i g_i g_i^\\top`.

So the Hessian, the GGN and the MC Fisher follow the loss you pass: ``reduction="sum"``
multiplies each by :math:`N` (by :math:`M`, the number of rows, e.g. tokens), and the
squared error's ``"mean"`` carries :math:`1/(NC)`, as in curvlinops. The empirical Fisher
(:func:`curvlab.fisher_operator`) is always :math:`\\frac1N \\sum_i g_i g_i^\\top` of the
per-example losses you return, whatever the loss's reduction: for a sum-reduced loss it is
:math:`1/N` of curvlinops' EF, and for squared error with :math:`\\ell_i = \\|z_i - y_i\\|^2`
it is :math:`C` times curvlinops' EF (whose ``"mean"`` factor is :math:`1/(NC)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from curvlab._curvature import CurvatureOperator, _check_batch_pair, _one_or_dataset, _unwrap_module
from curvlab._data import Batches
from curvlab._operators import _SYM_PSD, _set, pytree_operator, static_field
from curvlab._output_hessians import OutputLoss
from curvlab._validation import as_key, check_positive_int, check_real_floating

PyTree = Any

__all__ = ["MCFisherOperator", "mc_fisher_operator"]


def _check_output_loss(output_loss_fn) -> OutputLoss:
    if not isinstance(output_loss_fn, OutputLoss):
        raise TypeError(
            "mc_fisher_operator samples labels from the likelihood whose negative log is the output loss, "
            "which cannot be read off an arbitrary function: pass output_loss_fn="
            "curvlab.softmax_cross_entropy (categorical) or curvlab.mean_squared_error (Gaussian), or "
            "SoftmaxCrossEntropy(reduction='sum') / "
            f"MeanSquaredError(reduction='sum'); got {type(output_loss_fn).__name__}"
        )
    return output_loss_fn


def _with_keys(data: Batches, key) -> Batches:
    """Append one PRNG key per batch to every batch ``(inputs, targets)`` of ``data``."""
    if not data.stacked:
        return data._replace(groups=((*_check_batch_pair(data.groups[0]), key),))
    groups = []
    for g, (group, w) in enumerate(zip(data.groups, data.weights, strict=True)):
        keys = jax.random.split(jax.random.fold_in(key, g), w.shape[0])
        groups.append((*_check_batch_pair(group), keys))
    return data._replace(groups=tuple(groups))


@pytree_operator
class MCFisherOperator(CurvatureOperator):
    """Monte-Carlo Fisher :math:`\\frac{c}{S}\\sum_{i,s} J_i^\\top r_{is} r_{is}^\\top J_i`; see
    :func:`mc_fisher_operator`. Tagged PSD.

    ``data`` holds batches ``(inputs, targets, key)``: the key of each batch is a leaf, so
    a new key reuses compiled code. ``targets`` only enter :meth:`value_and_gradient`.
    """

    x: PyTree
    data: Batches
    model_fn: Callable = static_field()
    output_loss_fn: OutputLoss = static_field()
    num_samples: int = static_field()
    loss_fn: Callable | None = static_field()

    def __init__(
        self,
        model_fn,
        output_loss_fn,
        params,
        batch=None,
        *,
        num_samples=1,
        key=None,
        data=None,
        loss_fn=None,
    ):
        loss = _check_output_loss(output_loss_fn)
        num_samples = check_positive_int("num_samples", num_samples)
        key = as_key("key", key, required=True)
        check_real_floating("params", params)
        data = _one_or_dataset(None if batch is None else _check_batch_pair(batch), data, "batch")
        inputs, targets = _check_batch_pair(data.first())
        out = jax.eval_shape(model_fn, params, inputs)
        if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim < 1:
            raise ValueError(
                "mc_fisher_operator needs model_fn(params, inputs) to return one array of shape (..., C), "
                f"got {out}"
            )
        jax.eval_shape(loss, out, targets)  # the targets' shape is checked by the loss
        _set(
            self,
            x=params,
            data=_with_keys(data, key),
            model_fn=model_fn,
            output_loss_fn=loss,
            num_samples=num_samples,
            loss_fn=loss_fn,
        )

    tags = property(lambda self: _SYM_PSD)

    def batch_product(self, batch, linearize):
        inputs, _, key = batch
        loss, S = self.output_loss_fn, self.num_samples

        def model(p):
            return self.model_fn(p, inputs)

        if linearize:
            z, jvp_lin = jax.linearize(model, self.x)
            _, vjp_fn = jax.vjp(model, self.x)
            fisher = loss.mc_output_fisher(key, z, S)
            return lambda v: vjp_fn(fisher(jvp_lin(v)))[0]

        def product(v):
            z, jv = jax.jvp(model, (self.x,), (v,))
            return jax.vjp(model, self.x)[1](loss.mc_output_fisher(key, z, S)(jv))[0]

        return product

    def batch_loss(self, x, batch):
        inputs, targets, _ = batch
        if self.loss_fn is not None:
            return self.loss_fn(x, (inputs, targets))
        return self.output_loss_fn(self.model_fn(x, inputs), targets)


def mc_fisher_operator(
    model_fn: Callable,
    output_loss_fn: OutputLoss,
    params: PyTree,
    batch: tuple,
    *,
    num_samples: int = 1,
    key: jax.Array,
) -> MCFisherOperator:
    """The true Fisher by Monte Carlo: labels sampled from the model's predictive distribution.

    :math:`\\hat F = \\frac{c}{S}\\sum_{i}\\sum_{s=1}^{S} J_i^\\top r_{is} r_{is}^\\top J_i` with
    :math:`r_{is} = \\nabla_z \\ell(z_i, \\tilde y_{is})`, :math:`\\tilde y_{is} \\sim q(\\cdot\\mid z_i)`
    (see :mod:`curvlab._fisher`); :math:`\\mathbb E \\hat F` is the GGN of the same loss.

    Parameters
    ----------
    model_fn : callable
        ``model_fn(params, inputs) -> outputs``, one array of shape ``(..., C)`` (every leading
        index a row: an example or a token).
    output_loss_fn : OutputLoss
        :data:`curvlab.softmax_cross_entropy` (categorical likelihood) or
        :data:`curvlab.mean_squared_error` (Gaussian :math:`\\mathcal N(z, \\frac12 I)`), or
        their ``reduction="sum"`` versions. The likelihood is the loss's (documented rule: an
        arbitrary function raises ``TypeError``); its reduction factor :math:`c` scales
        :math:`\\hat F` exactly as it scales the GGN.
    params : pytree or module
        Floating arrays, or a Flax NNX / Equinox module (then ``model_fn`` receives the module
        and the operator acts on its parameter arrays).
    batch : (inputs, targets)
        ``targets`` are not used by the products (only by ``value_and_gradient``).
    num_samples : int
        Labels :math:`S` drawn per row. One product costs one JVP and one VJP whatever ``S``,
        plus :math:`O(S \\cdot M)` (categorical) or :math:`O(S \\cdot M C)` (Gaussian) work.
    key : PRNG key
        Required. The operator is a fixed matrix: the same ``key`` gives the same samples.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, curvlab
    >>> X = jnp.eye(3); y = jnp.array([0, 1, 2])
    >>> F = mc_fisher_operator(lambda W, x: x @ W, curvlab.softmax_cross_entropy, jnp.zeros((3, 3)),
    ...                        (X, y), num_samples=4, key=jax.random.key(0))
    >>> F.shape, sorted(F.tags)
    ((9, 9), ['psd', 'symmetric'])
    """
    params, _, model_fn, _ = _unwrap_module(params, None, model_fn, None)
    return MCFisherOperator(model_fn, output_loss_fn, params, batch, num_samples=num_samples, key=key)

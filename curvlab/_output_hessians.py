"""Output losses that carry their curvature in closed form: softmax cross-entropy, squared error.

An :class:`OutputLoss` is an ``output_loss_fn(outputs, targets) -> scalar`` (use it
wherever curvlab takes one) that also knows, analytically,

* its output Hessian :math:`H_\\ell = \\nabla^2_z \\ell` applied to a vector
  (:meth:`OutputLoss.output_hessian`): :func:`curvlab.ggn_operator` and
  :func:`curvlab.gnvp` then use it instead of differentiating twice through the loss
  (the **memory-lean GGN**: for softmax cross-entropy :math:`H u = c\\,(p \\odot u - p\\,
  (p^\\top u))` per row, never formed, about two logits-sized buffers);
* the likelihood it is the negative log of, to sample labels for the Monte-Carlo
  Fisher (:meth:`OutputLoss.mc_output_fisher`, used by :func:`curvlab.mc_fisher_operator`).

Shapes and reduction. ``outputs`` has shape ``(..., C)``: every leading index is one
independent *row* (an example, or a token of a sequence), the last axis its ``C``
outputs (classes). With :math:`M` rows the loss is

.. math::

    L(z) = c \\sum_{i=1}^M \\ell_i(z_i), \\qquad
    c = \\begin{cases} 1/M & \\text{softmax cross-entropy, reduction="mean"} \\\\
    1/(M C) & \\text{squared error, reduction="mean" (the mean over every entry)} \\\\
    1 & \\text{reduction="sum"} \\end{cases}

with the unreduced row losses :math:`\\ell_i(z_i) = \\operatorname{logsumexp}(z_i) -
z_{i, y_i}` (integer labels ``y`` of shape ``(...)``; probability targets of shape
``(..., C)`` give :math:`-\\sum_k t_{ik} \\log \\operatorname{softmax}(z_i)_k`) and
:math:`\\ell_i(z_i) = \\|z_i - y_i\\|^2` (squared error). These are the conventions of
``optax.softmax_cross_entropy_with_integer_labels(...).mean()``, ``jnp.mean((z - y) ** 2)``
and of PyTorch's ``CrossEntropyLoss`` / ``MSELoss`` (so of curvlinops), reduction for
reduction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "REDUCTIONS",
    "OutputLoss",
    "SoftmaxCrossEntropy",
    "MeanSquaredError",
    "softmax_cross_entropy",
    "mean_squared_error",
]

#: Reductions of an :class:`OutputLoss` over its rows.
REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


@dataclasses.dataclass(frozen=True)
class OutputLoss:
    """Base of the output losses with closed-form curvature (see the module docs).

    Frozen and compared by value, so two equal losses share compiled code when passed
    as static arguments. A subclass writes :meth:`row_losses`, :meth:`weight`,
    :meth:`output_hessian` and :meth:`mc_output_fisher`.
    """

    reduction: str = "mean"

    #: The likelihood :math:`q(y \\mid z)` with :math:`\\ell_i = -\\log q(y_i \\mid z_i)` (+ const).
    likelihood = ""

    def __post_init__(self):
        _check_reduction(self.reduction)

    def row_losses(self, outputs, targets) -> jax.Array:
        """The unreduced :math:`\\ell_i`, shape ``outputs.shape[:-1]``."""
        raise NotImplementedError

    def weight(self, outputs) -> float:
        """The reduction factor :math:`c` for ``outputs`` (a Python float: shapes are static)."""
        raise NotImplementedError

    def __call__(self, outputs, targets) -> jax.Array:
        outputs = jnp.asarray(outputs)
        if outputs.ndim < 1:
            raise ValueError(f"{type(self).__name__} needs outputs of shape (..., C), got shape ()")
        return self.weight(outputs) * jnp.sum(self.row_losses(outputs, targets))

    def output_hessian(self, outputs, targets) -> Callable[[jax.Array], jax.Array]:
        """``u -> H u`` with :math:`H = \\nabla^2_z L(z)` at ``z = outputs`` (shared work done once)."""
        raise NotImplementedError

    def mc_output_fisher(self, key, outputs, num_samples: int) -> Callable[[jax.Array], jax.Array]:
        """``u -> \\hat F u``, :math:`\\hat F = \\frac{c}{S} \\sum_s \\operatorname{blkdiag}_i
        (r_{is} r_{is}^\\top)`, :math:`r_{is} = \\nabla_{z_i} \\ell_i(z_i, \\tilde y_{is})`,
        labels :math:`\\tilde y_{is} \\sim q(\\cdot \\mid z_i)` drawn from ``key``.

        :math:`\\mathbb E \\hat F` is the output Fisher, which for these losses equals
        :math:`H` (the GGN's output Hessian): the MC Fisher is unbiased for the GGN.
        """
        raise NotImplementedError


def _rows(outputs):
    return math.prod(outputs.shape[:-1])


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy(OutputLoss):
    """Softmax cross-entropy of logits ``(..., C)``, integer labels ``(...)`` or probabilities ``(..., C)``.

    Output Hessian per row :math:`c\\,s_i(\\operatorname{diag}(p_i) - p_i p_i^\\top)`,
    :math:`p_i = \\operatorname{softmax}(z_i)`, :math:`s_i = \\sum_k t_{ik}` (one for labels
    and for probability targets); likelihood: categorical.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> z = jnp.zeros((2, 4)); y = jnp.array([0, 3])
    >>> round(float(softmax_cross_entropy(z, y)), 6) == round(float(jnp.log(4.0)), 6)
    True
    """

    likelihood = "categorical"

    def _targets(self, outputs, targets):
        t = jnp.asarray(targets)
        if t.shape == outputs.shape[:-1] and jnp.issubdtype(t.dtype, jnp.integer):
            return t, True
        if t.shape == outputs.shape and jnp.issubdtype(t.dtype, jnp.floating):
            return t, False
        raise ValueError(
            f"softmax cross-entropy needs integer labels of shape {tuple(outputs.shape[:-1])} or "
            f"probabilities of shape {tuple(outputs.shape)}, got {t.dtype} targets of shape {tuple(t.shape)}"
        )

    def row_losses(self, outputs, targets):
        t, labels = self._targets(outputs, targets)
        logp = jax.nn.log_softmax(outputs, axis=-1)
        if labels:
            return -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
        return -jnp.sum(t * logp, axis=-1)

    def weight(self, outputs):
        return 1.0 / _rows(outputs) if self.reduction == "mean" else 1.0

    def output_hessian(self, outputs, targets):
        t, labels = self._targets(outputs, targets)
        p = jax.nn.softmax(outputs, axis=-1)
        scale = self.weight(outputs) * (1.0 if labels else jnp.sum(t, axis=-1, keepdims=True))
        cp = scale * p

        def hvp(u):
            return cp * (u - jnp.sum(p * u, axis=-1, keepdims=True))

        return hvp

    def mc_output_fisher(self, key, outputs, num_samples):
        M, C = _rows(outputs), outputs.shape[-1]
        z = jax.lax.stop_gradient(outputs).reshape(M, C)
        p = jax.nn.softmax(z, axis=-1)
        # Gumbel-max with float32 noise in any dtype: one key draws the same labels in float32 and float64
        g = jax.random.gumbel(key, (num_samples, M, C), jnp.float32).astype(z.dtype)
        y = jnp.argmax(z[None] + g, axis=-1)  # (S, M)
        rows = jnp.arange(M)[None, :]
        scale = self.weight(outputs) / num_samples

        def product(u):
            u2 = u.reshape(M, C)
            a = jnp.sum(p * u2, axis=-1)[None, :] - u2[rows, y]  # r_s . u per row, r_s = p - e_y
            back = p * jnp.sum(a, axis=0)[:, None]
            back = back.at[rows, y].add(-a)
            return (scale * back).reshape(outputs.shape).astype(u.dtype)

        return product


@dataclasses.dataclass(frozen=True)
class MeanSquaredError(OutputLoss):
    """Squared error :math:`c \\sum_{i,k} (z_{ik} - y_{ik})^2` of outputs and targets shaped ``(..., C)``.

    ``reduction="mean"`` is the mean over all :math:`MC` entries (``jnp.mean((z - y) ** 2)``,
    PyTorch's ``MSELoss``). Output Hessian :math:`2c I`; likelihood: Gaussian
    :math:`\\mathcal N(z_i, \\tfrac12 I)` (whose negative log is :math:`\\ell_i` + const),
    so sampled gradients :math:`r = 2 (z - \\tilde y) = -\\sqrt2\\,\\varepsilon`,
    :math:`\\varepsilon \\sim \\mathcal N(0, I)`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(mean_squared_error(jnp.ones((2, 2)), jnp.zeros((2, 2))))
    1.0
    """

    likelihood = "gaussian"

    def row_losses(self, outputs, targets):
        t = jnp.asarray(targets)
        if t.shape != outputs.shape:
            raise ValueError(
                f"mean_squared_error needs targets of the outputs' shape {tuple(outputs.shape)}, "
                f"got {tuple(t.shape)}"
            )
        return jnp.sum((outputs - t) ** 2, axis=-1)

    def weight(self, outputs):
        return 1.0 / (_rows(outputs) * outputs.shape[-1]) if self.reduction == "mean" else 1.0

    def output_hessian(self, outputs, targets):
        scale = 2.0 * self.weight(outputs)
        return lambda u: scale * u

    def mc_output_fisher(self, key, outputs, num_samples):
        M, C = _rows(outputs), outputs.shape[-1]
        eps = jax.random.normal(key, (num_samples, M, C), jnp.float32).astype(outputs.dtype)  # as above
        r = -math.sqrt(2.0) * eps
        scale = self.weight(outputs) / num_samples

        def product(u):
            u2 = u.reshape(M, C)
            a = jnp.sum(r * u2[None], axis=-1)  # (S, M)
            return (scale * jnp.sum(r * a[..., None], axis=0)).reshape(outputs.shape).astype(u.dtype)

        return product


#: Softmax cross-entropy, ``reduction="mean"`` (an :class:`OutputLoss`): ``softmax_cross_entropy(z, labels)``.
softmax_cross_entropy = SoftmaxCrossEntropy("mean")
#: Squared error averaged over every entry (an :class:`OutputLoss`): ``mean_squared_error(outputs, targets)``.
mean_squared_error = MeanSquaredError("mean")

"""Hessian-vector products.

The Hessian of a scalar function :math:`f` at :math:`x` is never formed: every
routine here returns :math:`H_f(x)\\,v` as a pytree shaped like ``x`` at the cost
of a small constant number of gradient evaluations.

Three automatic-differentiation compositions are offered (Pearlmutter 1994):

* ``"fwd_rev"`` -- forward over reverse, :math:`\\partial_t \\nabla f(x + t v)`
  (``jax.jvp`` of ``jax.grad``); the default, cheapest in memory and time.
* ``"rev_fwd"`` -- reverse over forward, :math:`\\nabla_x \\langle \\nabla f(x), v\\rangle`
  computed as ``jax.grad`` of a ``jax.jvp``.
* ``"rev_rev"`` -- reverse over reverse, ``jax.grad`` of
  :math:`\\langle \\nabla f(x), v\\rangle` with the inner gradient by ``jax.grad``
  (what PyTorch's double backprop does).

plus finite differences of gradients (:func:`fd_hvp`) as a teaching contrast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._output_hessians import OutputLoss
from curvlab._validation import check_like, check_real_floating, check_scalar_output, tree_vdot

PyTree = Any

HVP_MODES = ("fwd_rev", "rev_fwd", "rev_rev")
FD_SCHEMES = ("forward", "central")

__all__ = [
    "HVP_MODES",
    "FD_SCHEMES",
    "hvp",
    "hvp_fn",
    "fd_hvp",
    "fd_default_eps",
    "directional_curvature",
    "gnvp",
]


def _check_mode(mode: str) -> None:
    if mode not in HVP_MODES:
        raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")


def _hvp_kernel(f: Callable, mode: str, args: tuple) -> Callable:
    """Return ``(x, v) -> H v`` for the given mode (traceable, not jitted)."""

    def g(x):
        return jax.grad(f)(x, *args)

    if mode == "fwd_rev":
        return lambda x, v: jax.jvp(g, (x,), (v,))[1]
    if mode == "rev_fwd":

        def rev_fwd(x, v):
            return jax.grad(lambda y: jax.jvp(lambda z: f(z, *args), (y,), (v,))[1])(x)

        return rev_fwd

    def rev_rev(x, v):
        return jax.grad(lambda y: tree_vdot(g(y), v))(x)

    return rev_rev


def _hessian_product(
    f: Callable, x: PyTree, args: tuple, *, mode: str = "fwd_rev", linearize: bool = False
) -> Callable[[PyTree], PyTree]:
    """The one Hessian kernel: ``v -> \\nabla^2_x f(x, *args) v`` on pytrees (traceable).

    With ``linearize`` the gradient is linearized once (``jax.linearize``) and each
    product replays only its tangent part; otherwise every product runs ``mode``.
    """
    if linearize:
        return jax.linearize(lambda y: jax.grad(f)(y, *args), x)[1]
    kernel = _hvp_kernel(f, mode, args)
    return lambda v: kernel(x, v)


def _ggn_product(
    model_fn: Callable, output_loss_fn: Callable, params: PyTree, batch: tuple, *, linearize: bool = False
) -> Callable[[PyTree], PyTree]:
    """The one Gauss-Newton kernel: ``v -> J^T H_L J v`` on pytrees (traceable).

    :math:`J` is the Jacobian of ``model_fn(params, inputs)`` in ``params`` and
    :math:`H_L` the Hessian of ``output_loss_fn(outputs, targets)`` in the outputs;
    ``batch = (inputs, targets)``. One JVP, one HVP of the output loss, one VJP; with
    ``linearize`` the model and the output-loss gradient are linearized once.

    Memory-lean path: when ``output_loss_fn`` is a :class:`curvlab.OutputLoss` (e.g.
    :data:`curvlab.softmax_cross_entropy`), :math:`H_L u` is its closed form
    (:meth:`~curvlab.OutputLoss.output_hessian`), with no second derivative through the loss.
    """
    inputs, targets = batch

    def model(p):
        return model_fn(p, inputs)

    if isinstance(output_loss_fn, OutputLoss):
        return _lean_ggn_product(model, output_loss_fn, params, targets, linearize)

    loss_grad = jax.grad(lambda z: output_loss_fn(z, targets))
    if linearize:
        z, jvp_lin = jax.linearize(model, params)
        _, vjp_fn = jax.vjp(model, params)
        _, hl = jax.linearize(loss_grad, z)
        return lambda v: vjp_fn(hl(jvp_lin(v)))[0]

    def product(v):
        z, jv = jax.jvp(model, (params,), (v,))
        hjv = jax.jvp(loss_grad, (z,), (jv,))[1]
        return jax.vjp(model, params)[1](hjv)[0]

    return product


def _lean_ggn_product(model, loss: OutputLoss, params, targets, linearize):
    """``v -> J^T H_L J v`` with the output loss's closed-form ``H_L`` (one JVP, one VJP)."""
    if linearize:
        z, jvp_lin = jax.linearize(model, params)
        _, vjp_fn = jax.vjp(model, params)
        hl = loss.output_hessian(z, targets)
        return lambda v: vjp_fn(hl(jvp_lin(v)))[0]

    def product(v):
        z, jv = jax.jvp(model, (params,), (v,))
        hjv = loss.output_hessian(z, targets)(jv)
        return jax.vjp(model, params)[1](hjv)[0]

    return product


def _fisher_product(
    per_example_loss_fn: Callable, params: PyTree, batch: Any, *, linearize: bool = False
) -> Callable[[PyTree], PyTree]:
    """The one empirical-Fisher kernel: ``v -> (1/N) G^T G v`` on pytrees (traceable).

    Row :math:`i` of :math:`G` is :math:`\\nabla \\ell_i` for the ``(N,)`` losses
    ``per_example_loss_fn(params, batch)``: one JVP and one VJP of the loss vector.
    """

    def losses_fn(p):
        return per_example_loss_fn(p, batch)

    def scale(tree, n):
        return jax.tree_util.tree_map(lambda a: a / n, tree)

    if linearize:
        losses, jvp_lin = jax.linearize(losses_fn, params)
        _, vjp_fn = jax.vjp(losses_fn, params)
        return lambda v: scale(vjp_fn(jvp_lin(v))[0], losses.shape[0])

    def product(v):
        losses, gv = jax.jvp(losses_fn, (params,), (v,))
        return scale(jax.vjp(losses_fn, params)[1](gv)[0], losses.shape[0])

    return product


def hvp(f: Callable, x: PyTree, v: PyTree, *args, mode: str = "fwd_rev") -> PyTree:
    """Hessian-vector product :math:`H_f(x)\\,v`.

    Parameters
    ----------
    f : callable
        Scalar function ``f(x, *args)``.
    x, v : pytree
        Point and direction, with the same structure, shapes and dtypes.
    *args
        Extra arguments passed through to ``f`` (a data batch, say); not
        differentiated.
    mode : {"fwd_rev", "rev_fwd", "rev_rev"}
        Which composition of forward and reverse mode to use.

    Returns
    -------
    pytree
        :math:`H_f(x)\\,v`, shaped like ``x``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda x: x[0] ** 2 * x[1] + jnp.sin(x[1])
    >>> hvp(f, jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0])).tolist()
    [0.0, 2.0]
    """
    _check_mode(mode)
    check_real_floating("x", x)
    check_real_floating("v", v)
    check_like(x, v, "x", "v")
    check_scalar_output(f, x, *args)
    return _hvp_jit(f, mode, x, v, args)


def _hvp_impl(f, mode, x, v, args):
    return _hessian_product(f, x, args, mode=mode)(v)


_hvp_jit = jax.jit(_hvp_impl, static_argnums=(0, 1))


def hvp_fn(
    f: Callable, x: PyTree, *args, mode: str = "fwd_rev", linearize: bool = True
) -> Callable[[PyTree], PyTree]:
    """A jitted function ``v -> H_f(x) v`` for many products at one point.

    With ``linearize=True`` (the default) the gradient is linearized once with
    ``jax.linearize``; each later product replays only the tangent part, which
    skips the forward (primal) computation of ``f`` and its gradient (``mode`` is
    then unused). ``linearize=False`` recomputes every product with ``mode``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> H = hvp_fn(lambda x: jnp.sum(x**3), jnp.array([1.0, 2.0]))
    >>> H(jnp.array([1.0, 1.0])).tolist()
    [6.0, 12.0]
    """
    _check_mode(mode)
    check_real_floating("x", x)
    check_scalar_output(f, x, *args)
    if linearize:
        # Linearize under jit (one compiled forward + backward pass, not an
        # op-by-op eager trace). ``lin`` is a jax.tree_util.Partial whose
        # residuals are pytree leaves, so passing it to ``_apply_linear_jit``
        # keeps them out of the compiled constants, and a second ``hvp_fn`` at
        # a new point with the same shapes reuses both compiled functions.
        lin = _linearize_grad_jit(f, x, args)

        def product(v):
            check_real_floating("v", v)
            check_like(x, v, "x", "v")
            return _apply_linear_jit(lin, v)

        return product

    def product(v):
        check_real_floating("v", v)
        check_like(x, v, "x", "v")
        return _hvp_jit(f, mode, x, v, args)

    return product


def _linearize_grad_impl(f, x, args):
    return _hessian_product(f, x, args, linearize=True)


_linearize_grad_jit = jax.jit(_linearize_grad_impl, static_argnums=(0,))
_apply_linear_jit = jax.jit(lambda fn, v: fn(v))


def fd_default_eps(x: PyTree, v: PyTree, scheme: str = "central") -> float:
    """Textbook step for a finite-difference HVP.

    :math:`h = \\epsilon_{\\mathrm{mach}}^{1/2}` (forward) or
    :math:`\\epsilon_{\\mathrm{mach}}^{1/3}` (central), scaled by
    :math:`\\max(1, \\lVert x\\rVert) / \\lVert v\\rVert` so that the perturbation
    ``h v`` is small relative to ``x`` whatever the length of ``v``.
    """
    if scheme not in FD_SCHEMES:
        raise ValueError(f"scheme must be one of {FD_SCHEMES}, got {scheme!r}")
    check_real_floating("x", x)
    check_real_floating("v", v)
    leaves = jax.tree_util.tree_leaves(x)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    mach = float(jnp.finfo(dtype).eps)
    base = mach**0.5 if scheme == "forward" else mach ** (1.0 / 3.0)
    xnorm = float(np.sqrt(sum(float(jnp.vdot(a, a)) for a in leaves)))
    vnorm = float(np.sqrt(float(tree_vdot(v, v))))
    if vnorm == 0.0:
        return base
    return base * max(1.0, xnorm) / vnorm


def fd_hvp(
    f: Callable,
    x: PyTree,
    v: PyTree,
    *args,
    eps: float | None = None,
    scheme: str = "central",
) -> PyTree:
    """Finite-difference approximation of :math:`H_f(x)\\,v` from gradients.

    forward: :math:`(\\nabla f(x + h v) - \\nabla f(x)) / h`, error
    :math:`O(h) + O(\\epsilon_{\\mathrm{mach}}/h)`;
    central: :math:`(\\nabla f(x + h v) - \\nabla f(x - h v)) / 2h`, error
    :math:`O(h^2) + O(\\epsilon_{\\mathrm{mach}}/h)`.

    Parameters
    ----------
    eps : float, optional
        The step ``h``; default :func:`fd_default_eps`.
    scheme : {"forward", "central"}
    """
    if scheme not in FD_SCHEMES:
        raise ValueError(f"scheme must be one of {FD_SCHEMES}, got {scheme!r}")
    check_real_floating("x", x)
    check_real_floating("v", v)
    check_like(x, v, "x", "v")
    check_scalar_output(f, x, *args)
    if isinstance(eps, jax.core.Tracer):  # traced step, e.g. jax.vmap over a grid of eps
        return _fd_impl(f, scheme, x, v, eps, args)
    if eps is not None:
        eps = float(eps)
        if not np.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a positive finite number, got {eps}")
    # eps=None: the default step (fd_default_eps's formula) is computed inside
    # the compiled function, with no host round trips, and works under jit.
    return _fd_jit(f, scheme, x, v, eps, args)


def _default_eps_traced(x, v, scheme):
    """:func:`fd_default_eps` as traced array operations."""
    leaves = jax.tree_util.tree_leaves(x)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    mach = float(jnp.finfo(dtype).eps)
    base = mach**0.5 if scheme == "forward" else mach ** (1.0 / 3.0)
    xnorm = jnp.sqrt(tree_vdot(x, x))
    vnorm = jnp.sqrt(tree_vdot(v, v))
    safe = jnp.where(vnorm == 0, 1.0, vnorm)
    return jnp.where(vnorm == 0, base, base * jnp.maximum(1.0, xnorm) / safe)


def _fd_impl(f, scheme, x, v, eps, args):
    if eps is None:
        eps = _default_eps_traced(x, v, scheme)
    g = jax.grad(f)
    dtype_of = jax.tree_util.tree_map(lambda a: a.dtype, x)

    def shift(s):
        return jax.tree_util.tree_map(lambda a, b, d: (a + (s * eps) * b).astype(d), x, v, dtype_of)

    if scheme == "forward":
        return jax.tree_util.tree_map(lambda a, b: (a - b) / eps, g(shift(1.0), *args), g(x, *args))
    return jax.tree_util.tree_map(
        lambda a, b: (a - b) / (2 * eps), g(shift(1.0), *args), g(shift(-1.0), *args)
    )


_fd_jit = jax.jit(_fd_impl, static_argnums=(0, 1))


def directional_curvature(f: Callable, x: PyTree, v: PyTree, *args, mode: str = "fwd_rev") -> jax.Array:
    """Curvature of ``f`` along ``v``: :math:`v^\\top H v / v^\\top v`.

    Positive: ``f`` bends upward along ``v``; negative: downward; zero: flat.
    Raises ``ValueError`` for ``v = 0``.
    """
    check_real_floating("x", x)
    check_real_floating("v", v)
    check_like(x, v, "x", "v")
    vv = tree_vdot(v, v)
    if not isinstance(vv, jax.core.Tracer) and float(vv) == 0.0:
        raise ValueError("v must be non-zero: the curvature along the zero vector is undefined")
    return tree_vdot(v, hvp(f, x, v, *args, mode=mode)) / vv


def gnvp(model_fn: Callable, output_loss_fn: Callable, params: PyTree, batch: tuple, v: PyTree) -> PyTree:
    """Generalized Gauss-Newton product :math:`J^\\top H_L J v`.

    ``model_fn(params, inputs) -> outputs`` (any pytree), ``output_loss_fn(outputs,
    targets) -> scalar``, ``batch = (inputs, targets)``;
    :math:`J = \\partial\\,\\mathrm{outputs} / \\partial\\,\\mathrm{params}` and
    :math:`H_L = \\nabla^2_{\\mathrm{outputs}} \\ell`. Positive semidefinite whenever
    the output loss is convex in the outputs, unlike the Hessian. The same kernel as
    :func:`curvlab.ggn_operator`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.array([[1.0, 2.0], [3.0, 4.0]]); y = jnp.zeros(2)
    >>> sq = lambda z, t: 0.5 * jnp.sum((z - t) ** 2)
    >>> gnvp(lambda w, x: x @ w, sq, jnp.zeros(2), (X, y), jnp.array([1.0, 0.0])).tolist()
    [10.0, 14.0]
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    check_real_floating("params", params)
    check_real_floating("v", v)
    check_like(params, v, "params", "v")
    check_scalar_output(output_loss_fn, jax.eval_shape(model_fn, params, batch[0]), batch[1])
    return _gnvp_jit(model_fn, output_loss_fn, params, tuple(batch), v)


def _gnvp_impl(model_fn, output_loss_fn, params, batch, v):
    return _ggn_product(model_fn, output_loss_fn, params, batch)(v)


_gnvp_jit = jax.jit(_gnvp_impl, static_argnums=(0, 1))

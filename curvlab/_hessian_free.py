"""Hessian-free optimization (Martens 2010) and its Levenberg-Marquardt damping rule.

:func:`hessian_free` minimizes ``loss_fn(params, batch)`` over a stream of batches with
Gauss-Newton (or Hessian, or empirical Fisher) curvature, Tikhonov damping
:math:`B + \\lambda I` adapted by :func:`update_damping`, CG warm-started from the previous
direction and stopped by Martens' relative-progress rule, CG backtracking, an optional
diagonal preconditioner, mini-batching, structural damping for recurrent networks
(Martens & Sutskever 2011) and an Armijo line search. Its options are one documented,
validated :class:`HFConfig`. Each iteration is one jitted call; the outer loop is
:func:`curvlab._optim_loop.run_optimizer`'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from curvlab._cg import cg
from curvlab._curvature import curvature_operator
from curvlab._data import Batches, batch_stream, leading_size, single_batch
from curvlab._operators import LinearOperator, pytree_operator, static_field
from curvlab._optim_loop import (
    Iterate,
    IterationInfo,
    OptimizeResult,
    armijo,
    check_bool,
    check_callback,
    check_choice,
    check_nonneg_float,
    check_not_traced,
    check_point,
    rel_residual,
    run_optimizer,
)
from curvlab._status import check_throw
from curvlab._validation import as_key, check_positive_int, check_scalar_output
from curvlab.preconditioners import empirical_fisher_diagonal, martens

PyTree = Any

__all__ = ["HFConfig", "hessian_free", "update_damping"]

# ---------------------------------------------------------------------------
# damping rule
# ---------------------------------------------------------------------------


def update_damping(
    damping, rho, *, lower: float = 0.25, upper: float = 0.75, increase: float = 1.5, decrease: float = 2 / 3
):
    """Levenberg-Marquardt damping rule of Martens (2010, §4.1).

    .. math::
        \\lambda \\leftarrow \\begin{cases}
        \\text{increase}\\cdot\\lambda & \\rho < \\text{lower} \\\\
        \\text{decrease}\\cdot\\lambda & \\rho > \\text{upper} \\\\
        \\lambda & \\text{otherwise} \\end{cases}

    (defaults :math:`\\tfrac32`, :math:`\\tfrac23`, :math:`\\tfrac14`, :math:`\\tfrac34`), where
    :math:`\\rho = (f(\\theta + d) - f(\\theta)) / (q(d) - q(0))` is the reduction ratio:
    the model is trusted more (less damping) when it predicts the decrease well. Pure and
    traceable (Python floats, arrays, traced arrays); traced, a NaN :math:`\\rho` (no valid
    model decrease) counts as :math:`\\rho < \\text{lower}`.

    Parameters
    ----------
    damping : float or array
        :math:`\\lambda \\ge 0`.
    rho : float or array
        Finite reduction ratio (``-inf`` is allowed: a step that made things worse).
    lower, upper : float
        Thresholds, ``lower <= upper``.
    increase, decrease : float
        Factors, ``increase >= 1`` and ``0 < decrease <= 1``.

    Raises
    ------
    ValueError
        Concrete negative or non-finite ``damping``, NaN or ``+inf`` ``rho``, bad factors.

    Examples
    --------
    >>> [round(float(update_damping(1.0, r)), 6) for r in (0.1, 0.5, 0.9)]
    [1.5, 1.0, 0.666667]
    """
    for name, v in (("lower", lower), ("upper", upper), ("increase", increase), ("decrease", decrease)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not math.isfinite(v)
        ):
            raise ValueError(f"update_damping: {name} must be a finite number, got {v!r}")
    if lower > upper:
        raise ValueError(f"update_damping: lower must be <= upper, got lower={lower}, upper={upper}")
    if increase < 1 or not 0 < decrease <= 1:
        raise ValueError(
            "update_damping: need increase >= 1 and 0 < decrease <= 1, "
            f"got increase={increase}, decrease={decrease}"
        )
    if not isinstance(damping, jax.core.Tracer):
        arr = np.asarray(damping)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise TypeError(f"update_damping: damping must be real, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"update_damping: damping must be finite and >= 0, got {damping}")
    if not isinstance(rho, jax.core.Tracer):
        r = np.asarray(rho)
        if not np.issubdtype(r.dtype, np.number) or np.issubdtype(r.dtype, np.complexfloating):
            raise TypeError(f"update_damping: rho must be real, got dtype {r.dtype}")
        if np.any(np.isnan(r)) or np.any(r == np.inf):
            raise ValueError(f"update_damping: rho must be a number < inf (not NaN), got {rho}")
    lam = jnp.asarray(damping)
    rho = jnp.asarray(rho, lam.dtype if jnp.issubdtype(lam.dtype, jnp.floating) else None)
    grow = (rho < lower) | jnp.isnan(rho)
    return jnp.where(grow, increase * lam, jnp.where(rho > upper, decrease * lam, lam))


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


class HFConfig(NamedTuple):
    """Options of :func:`hessian_free` (validated by :meth:`validate`, errors name the field).

    Attributes
    ----------
    curvature : {"ggn", "hessian", "fisher"}
        Curvature :math:`B` on the curvature batch: the Gauss-Newton matrix
        :math:`J^\\top H_\\ell J` (needs ``model_fn`` and ``output_loss_fn``; positive
        semidefinite for convex output losses; ignores terms of ``loss_fn`` outside
        ``output_loss_fn``, e.g. an L2 penalty, for which the damping stands in), the Hessian of
        ``loss_fn`` (may be indefinite) or the empirical Fisher (needs ``per_example_loss_fn``).
    damping : float
        Initial Tikhonov damping :math:`\\lambda \\ge 0` (``0`` keeps it at 0).
    maxiter : int
        Number of HF iterations (outer steps), ``>= 0``.
    gtol : float
        Stop when the gradient norm on the batch is :math:`\\le` ``gtol`` (the step of that
        iteration is still taken).
    cg_maxiter : int
        CG iteration cap (also the length of CG's history buffers).
    cg_decay : float
        Warm-start factor :math:`\\zeta \\in [0, 1]` (0: cold start).
    cg_rtol : float
        CG's residual tolerance relative to :math:`\\|g\\|`.
    martens_eps : float
        :math:`\\varepsilon` of Martens' relative-progress CG stopping rule.
    cg_backtracking : bool
        Backtrack over the CG iterates saved at :math:`\\lceil 1.3^j \\rceil` (else use the last).
    preconditioner : {None, "martens"}
        :math:`P = (\\operatorname{diag}(F) + \\lambda)^{-\\alpha}` with :math:`F` the empirical
        Fisher on the gradient batch (needs ``per_example_loss_fn``).
    precond_alpha : float
        :math:`\\alpha \\in (0, 1]`.
    batching : {"same", "separate", "subsample"}
        Curvature batch: the gradient batch; the next batch of the stream (or of
        ``curvature_batches``); a random ``curvature_batch_fraction`` of the gradient batch.
    curvature_batch_fraction : float
        In ``(0, 1]``.
    structural_damping : float
        :math:`\\mu \\ge 0`; :math:`\\mu > 0` needs ``hidden_fn``.
    line_search : bool
        Armijo backtracking :math:`t \\leftarrow 0.8 t` after CG.
    rho_model : {"undamped", "damped"}
        Model of the reduction ratio: without the damping terms (a trust-region ratio) or the
        one CG minimized.
    """

    curvature: str = "ggn"
    damping: float = 1.0
    maxiter: int = 100
    gtol: float = 1e-6
    cg_maxiter: int = 250
    cg_decay: float = 0.95
    cg_rtol: float = 1e-10
    martens_eps: float = 5e-4
    cg_backtracking: bool = True
    preconditioner: str | None = None
    precond_alpha: float = 0.75
    batching: str = "same"
    curvature_batch_fraction: float = 0.25
    structural_damping: float = 0.0
    line_search: bool = True
    rho_model: str = "undamped"

    def validate(self) -> HFConfig:
        """This configuration with numbers normalized; ``ValueError``/``TypeError`` naming the field."""

        def name(field):
            return f"HFConfig.{field}"

        def unit(field, value, *, closed_low):
            v = check_nonneg_float(name(field), value)
            if not ((0 <= v if closed_low else 0 < v) and v <= 1):
                raise ValueError(f"{name(field)} must be in {'[0' if closed_low else '(0'}, 1], got {value}")
            return v

        check_choice(name("curvature"), self.curvature, ("ggn", "hessian", "fisher"))
        check_choice(name("preconditioner"), self.preconditioner, (None, "martens"))
        check_choice(name("batching"), self.batching, ("same", "separate", "subsample"))
        check_choice(name("rho_model"), self.rho_model, ("undamped", "damped"))
        return self._replace(
            damping=check_nonneg_float(name("damping"), self.damping),
            maxiter=check_positive_int(name("maxiter"), self.maxiter, minimum=0),
            gtol=check_nonneg_float(name("gtol"), self.gtol),
            cg_maxiter=check_positive_int(name("cg_maxiter"), self.cg_maxiter),
            cg_decay=unit("cg_decay", self.cg_decay, closed_low=True),
            cg_rtol=check_nonneg_float(name("cg_rtol"), self.cg_rtol),
            martens_eps=check_nonneg_float(name("martens_eps"), self.martens_eps),
            cg_backtracking=check_bool(name("cg_backtracking"), self.cg_backtracking),
            precond_alpha=unit("precond_alpha", self.precond_alpha, closed_low=False),
            curvature_batch_fraction=unit(
                "curvature_batch_fraction", self.curvature_batch_fraction, closed_low=False
            ),
            structural_damping=check_nonneg_float(name("structural_damping"), self.structural_damping),
            line_search=check_bool(name("line_search"), self.line_search),
        )


class _Static(NamedTuple):
    """The parts of the configuration the jitted step compiles in (hashable)."""

    curvature: str
    cg_maxiter: int
    cg_rtol: float
    martens_eps: float
    precondition: bool
    structural: bool
    backtracking: bool
    line_search: bool
    rho_model: str
    subsample: int | None
    ls_c1: float = 1e-2
    ls_shrink: float = 0.8
    ls_max_trials: int = 60


# ---------------------------------------------------------------------------
# one iteration
# ---------------------------------------------------------------------------


@pytree_operator
class _HiddenGramOperator(LinearOperator):
    """:math:`J_h^\\top J_h` for the Jacobian :math:`J_h` of ``hidden(x)`` (flat in, any pytree out); PSD."""

    hidden: Callable = static_field()
    x: jax.Array

    size = property(lambda self: self.x.shape[0])
    dtype = property(lambda self: self.x.dtype)
    tags = property(lambda self: frozenset({"symmetric", "psd"}))

    def matvec(self, v):
        _, jv = jax.jvp(self.hidden, (self.x,), (v,))
        return jax.vjp(self.hidden, self.x)[1](jv)[0]

    def prepare(self):
        _, lin = jax.linearize(self.hidden, self.x)
        _, vjp_fn = jax.vjp(self.hidden, self.x)
        return lambda v: vjp_fn(lin(v))[0]

    def sq_norm(self, v):
        """:math:`\\|J_h v\\|^2`."""
        _, jv = jax.jvp(self.hidden, (self.x,), (v,))
        return sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(jv))


def _flat_per_example(pel_fn, unravel):
    """The user's ``per_example_loss_fn(params, batch)`` on flat parameters."""
    return lambda y, batch: pel_fn(unravel(y), batch)


def _curvature(cfg: _Static, fns, flat, unravel, cbatch) -> LinearOperator:
    """The undamped curvature operator :math:`B` on the curvature batch (the operators of
    :mod:`curvlab._curvature`), or its dataset average :math:`\\sum_b (n_b/N) B_b` when the
    curvature batch is a :class:`~curvlab._data.Batches` dataset."""
    loss_fn, model_fn, output_loss_fn, pel_fn, _ = fns
    if not isinstance(cbatch, Batches):
        cbatch = single_batch(cbatch if cfg.curvature == "hessian" else tuple(cbatch))
    return curvature_operator(
        cfg.curvature,
        flat,
        cbatch,
        loss_fn=lambda y, batch: loss_fn(unravel(y), batch),
        model_fn=lambda y, inputs: model_fn(unravel(y), inputs),
        output_loss_fn=output_loss_fn,
        per_example_loss_fn=_flat_per_example(pel_fn, unravel),
    )


def _backtrack(res, L, flat, dtype, backtracking):
    """CG backtracking: of the saved iterates and the last one, the direction with the lowest loss.

    Returns ``(d, L(flat + d), its CG iteration, loss evaluations)``.
    """
    num = res.num_iterations
    if not backtracking:
        return res.x, L(flat + res.x), num, jnp.asarray(1)
    cands = jnp.concatenate([res.saved_iterates, res.x[None, :]], axis=0)
    its = jnp.concatenate([res.saved_iterations, num[None].astype(res.saved_iterations.dtype)])
    valid = (its <= num) & jnp.all(jnp.isfinite(cands), axis=1)

    def value(args):
        d, ok = args
        return lax.cond(ok, lambda: L(flat + d), lambda: jnp.asarray(jnp.inf, dtype))

    vals = lax.map(value, (cands, valid))
    vals = jnp.where(jnp.isfinite(vals), vals, jnp.inf)
    best = jnp.argmin(vals)
    return cands[best], vals[best], its[best], jnp.sum(valid)


class _StepStats(NamedTuple):
    """What one jitted HF iteration reports (device scalars; see :func:`_history_entry`)."""

    loss_before: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    rho: jax.Array
    cg_iterations: jax.Array
    cg_status: jax.Array
    cg_residual: jax.Array
    backtrack_iteration: jax.Array
    step_length: jax.Array
    step_norm: jax.Array
    hvps: jax.Array
    fun_evals: jax.Array


def _curvature_batch(cfg: _Static, gbatch, cbatch, key):
    """The batch :math:`B` is measured on: a random ``cfg.subsample`` examples of the gradient
    batch, the separate curvature batch ``cbatch``, or the gradient batch itself."""
    if cfg.subsample is not None:
        N = jax.tree_util.tree_leaves(gbatch)[0].shape[0]
        idx = jax.random.choice(key, N, (cfg.subsample,), replace=False)
        return jax.tree_util.tree_map(lambda a: a[idx], gbatch)
    return gbatch if cbatch is None else cbatch


def _damped_system(cfg: _Static, fns, flat, unravel, cbatch, lam, mu):
    """:math:`A = B + \\lambda I + \\mu\\lambda S` with :math:`S = J_h^\\top J_h` (structural damping)
    and ``S`` itself (``None`` without structural damping)."""
    A = _curvature(cfg, fns, flat, unravel, cbatch).damped(lam)
    if not cfg.structural:
        return A, None
    hidden_fn = fns[4]
    S = _HiddenGramOperator(lambda y: hidden_fn(unravel(y), cbatch), flat)
    return A + (mu * lam) * S, S


def _preconditioner(cfg: _Static, pel_fn, flat, unravel, gbatch, lam, alpha):
    """Martens' :math:`P = (\\mathrm{diag}(F) + \\lambda)^{-\\alpha}`, :math:`F` on the gradient batch."""
    if not cfg.precondition:
        return None
    diag = empirical_fisher_diagonal(_flat_per_example(pel_fn, unravel), flat, tuple(gbatch), chunk_size=128)
    return martens(diag, lam, alpha)


def _solve(cfg: _Static, A, g, d0, P):
    """CG on :math:`A d = -g` from the warm start ``d0`` by Martens' rule, iterates saved for backtracking."""
    return cg(
        A,
        -g,
        x0=d0,
        preconditioner=P,
        rtol=cfg.cg_rtol,
        maxiter=cfg.cg_maxiter,
        stop_rule="martens",
        martens_eps=cfg.martens_eps,
        save_iterates=cfg.backtracking,
    )


def _model_decrease(cfg: _Static, res, p, p_it, lam, mu, S):
    """:math:`q(d) - q(0)` at the chosen CG iterate: CG's recorded
    :math:`\\tfrac12 d^\\top A d + g^\\top d` (no extra matvec), less the damping terms
    :math:`\\tfrac\\lambda2\\|d\\|^2 + \\tfrac{\\mu\\lambda}2\\|J_h d\\|^2` for ``rho_model="undamped"``."""
    q_damped = res.quadratic_values[p_it]
    if cfg.rho_model != "undamped":
        return q_damped
    tikhonov = 0.5 * lam * jnp.vdot(p, p)
    if cfg.structural:
        tikhonov = tikhonov + 0.5 * mu * lam * S.sq_norm(p)
    return q_damped - tikhonov


def _reduction_ratio(f_p, f0, q):
    """:math:`\\rho = (f(\\theta + d) - f(\\theta)) / q`; ``-inf`` unless finite with :math:`q < 0`."""
    valid = jnp.isfinite(f_p) & jnp.isfinite(q) & (q < 0)
    return jnp.where(valid, (f_p - f0) / jnp.where(valid, q, -1.0), -jnp.inf)


def _line_search(cfg: _Static, L, flat, f0, g, p, f_p):
    """Armijo backtracking on :math:`t \\mapsto L(\\theta + t d)` from :math:`t = 1` (``f_p`` known),
    or the full step. Returns ``(t, L(theta + t d), ok, extra loss evaluations)``; ``t = 0`` unless ok."""
    if cfg.line_search:
        t, f_t, trials, ok = armijo(
            lambda t: L(flat + t * p),
            f0,
            jnp.vdot(g, p),
            f_p,
            c1=cfg.ls_c1,
            shrink=cfg.ls_shrink,
            max_trials=cfg.ls_max_trials,
        )
        extra = trials - 1
    else:
        t, f_t, ok, extra = jnp.ones((), flat.dtype), f_p, jnp.isfinite(f_p), 0
    return jnp.where(ok, t, 0.0), f_t, ok, extra


def _next_warm_start(x, cg_decay):
    """:math:`\\zeta d` for the next CG run (zeros if CG's last iterate is not finite)."""
    return jnp.where(jnp.all(jnp.isfinite(x)), cg_decay * x, jnp.zeros_like(x))


@functools.partial(jax.jit, static_argnames=("fns", "cfg"))
def _hf_step(params, lam, d0, gbatch, cbatch, key, mu, cg_decay, alpha, *, fns, cfg):
    """One HF iteration: gradient, damped curvature, CG, backtracking, :math:`\\rho`, damping update,
    line search. Returns ``(params, damping, next warm start, _StepStats)``."""
    loss_fn, pel_fn = fns[0], fns[3]
    flat, unravel = ravel_pytree(params)
    lam = jnp.asarray(lam, flat.dtype)

    def L(y):
        return loss_fn(unravel(y), gbatch)

    f0, g = jax.value_and_grad(L)(flat)
    gnorm = jnp.linalg.norm(g)
    cbatch = _curvature_batch(cfg, gbatch, cbatch, key)
    A, S = _damped_system(cfg, fns, flat, unravel, cbatch, lam, mu)
    res = _solve(cfg, A, g, d0, _preconditioner(cfg, pel_fn, flat, unravel, gbatch, lam, alpha))
    p, f_p, p_it, evals = _backtrack(res, L, flat, flat.dtype, cfg.backtracking)
    rho = _reduction_ratio(f_p, f0, _model_decrease(cfg, res, p, p_it, lam, mu, S))
    t, f_t, ok, ls_evals = _line_search(cfg, L, flat, f0, g, p, f_p)
    # a rejected step keeps the parameters exactly (flat + 0 * NaN would be NaN)
    new_flat = jnp.where(ok, flat + t * p, flat)
    stats = _StepStats(
        loss_before=f0,
        loss=jnp.where(ok, f_t, f0),
        grad_norm=gnorm,
        rho=rho,
        cg_iterations=res.num_iterations,
        cg_status=res.status,
        cg_residual=rel_residual(res, gnorm),
        backtrack_iteration=p_it,
        step_length=t,
        step_norm=jnp.where(ok, t * jnp.linalg.norm(p), 0.0),
        # every product CG made: r0 = b - A d0 (warm start) and one per loop pass, also the pass
        # that found negative curvature (or a non-finite value) and was not counted as an iteration
        hvps=res.num_matvecs,
        fun_evals=evals + ls_evals + 1,
    )
    return unravel(new_flat), update_damping(lam, rho), _next_warm_start(res.x, cg_decay), stats


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _batch_value_and_grad(params, batch, *, loss_fn):
    flat, unravel = ravel_pytree(params)
    val, g = jax.value_and_grad(lambda y: loss_fn(unravel(y), batch))(flat)
    return val, jnp.linalg.norm(g)


# ---------------------------------------------------------------------------
# batches and arguments
# ---------------------------------------------------------------------------


def _from_problem(prob):
    """``(loss_fn, params, batches, model_fn, output_loss_fn, per_example_loss_fn)`` of a Problem."""
    fields = ("loss", "x0", "batch", "model_fn", "output_loss_fn", "per_example_loss_fn")
    return tuple(getattr(prob, name, None) for name in fields)


def _check_functions(cfg: HFConfig, model_fn, output_loss_fn, per_example_loss_fn, hidden_fn):
    for name, fn in (
        ("model_fn", model_fn),
        ("output_loss_fn", output_loss_fn),
        ("per_example_loss_fn", per_example_loss_fn),
        ("hidden_fn", hidden_fn),
    ):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if cfg.curvature == "ggn" and model_fn is None:
        raise ValueError(
            "curvature='ggn' needs model_fn(params, inputs) -> outputs and output_loss_fn(outputs, targets) "
            "(or pass a Problem); use HFConfig(curvature='hessian') for a bare loss_fn"
        )
    if cfg.curvature == "ggn" and output_loss_fn is None:
        raise ValueError(
            "curvature='ggn' needs output_loss_fn(outputs, targets) -> scalar (the loss on the outputs)"
        )
    if cfg.curvature == "fisher" and per_example_loss_fn is None:
        raise ValueError("curvature='fisher' needs per_example_loss_fn(params, batch) -> (N,) losses")
    if cfg.preconditioner == "martens" and per_example_loss_fn is None:
        raise ValueError("preconditioner='martens' needs per_example_loss_fn(params, batch) -> (N,) losses")
    if cfg.structural_damping > 0 and hidden_fn is None:
        raise ValueError("HFConfig.structural_damping > 0 needs hidden_fn(params, batch) -> hidden states")


# ---------------------------------------------------------------------------
# the optimizer
# ---------------------------------------------------------------------------


class _HFCarry(NamedTuple):
    """What an HF iteration passes to the next: the damping, CG's warm start and the random key."""

    damping: jax.Array
    cg_x0: jax.Array
    key: jax.Array


def _resolve_problem(loss_fn, params, batches, model_fn, output_loss_fn, per_example_loss_fn):
    """Fill the arguments not given from a Problem-like first argument; check the three required ones."""
    if not callable(loss_fn) and hasattr(loss_fn, "loss"):
        f_loss, x0, batch, p_model, p_out, p_pel = _from_problem(loss_fn)
        loss_fn = f_loss
        model_fn = model_fn if model_fn is not None else p_model
        output_loss_fn = output_loss_fn if output_loss_fn is not None else p_out
        per_example_loss_fn = per_example_loss_fn if per_example_loss_fn is not None else p_pel
        params = params if params is not None else x0
        batches = batches if batches is not None else batch
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable loss_fn(params, batch) -> scalar, or a Problem")
    if params is None:
        raise ValueError("params is required (the starting parameters)")
    return loss_fn, params, batches, model_fn, output_loss_fn, per_example_loss_fn


def _curvature_stream(cfg: HFConfig, first, curvature_batches, single):
    """Check that the batches suit the curvature; the separate curvature stream (``None``: the
    gradient stream supplies the curvature batches too, or the batching is not ``"separate"``)."""
    if cfg.curvature in ("ggn", "fisher") or cfg.preconditioner == "martens":
        if not (isinstance(first, (tuple, list)) and len(first) == 2):
            raise ValueError(
                f"curvature={cfg.curvature!r} and the Martens preconditioner need batches (inputs, targets)"
            )
    if cfg.batching != "separate":
        return None
    if curvature_batches is not None:
        return batch_stream(curvature_batches, "curvature_batches")[1]
    if single:
        raise ValueError(
            "HFConfig.batching='separate' needs at least two batches (or curvature_batches=); "
            "with a single batch use batching='same' or 'subsample'"
        )
    return None


def _static_config(cfg: HFConfig, num_examples: int) -> _Static:
    """The compiled-in part of a validated configuration (``num_examples``: the first batch's)."""
    subsample = max(1, round(cfg.curvature_batch_fraction * num_examples))
    return _Static(
        curvature=cfg.curvature,
        cg_maxiter=cfg.cg_maxiter,
        cg_rtol=cfg.cg_rtol,
        martens_eps=cfg.martens_eps,
        precondition=cfg.preconditioner == "martens",
        structural=cfg.structural_damping > 0,
        backtracking=cfg.cg_backtracking,
        line_search=cfg.line_search,
        rho_model=cfg.rho_model,
        subsample=subsample if cfg.batching == "subsample" else None,
    )


def _history_entry(stats: _StepStats, damping) -> dict:
    """The outer loop's history entry of one iteration (host numbers) from its :class:`_StepStats`."""
    floats = ("loss", "loss_before", "grad_norm", "rho", "cg_residual", "step_length", "step_norm")
    ints = ("cg_iterations", "cg_status", "backtrack_iteration", "hvps", "fun_evals")
    entry = {name: float(getattr(stats, name)) for name in floats}
    entry.update({name: int(getattr(stats, name)) for name in ints})
    return dict(entry, damping=float(damping), grad_evals=1)


def _hf_init(loss_fn, params, first, cfg: HFConfig, key):
    """The outer loop's ``init``: loss and gradient norm at the start, on the first batch."""

    def init() -> Iterate:
        f0, gnorm = _batch_value_and_grad(params, first, loss_fn=loss_fn)
        entry = dict(
            loss=float(f0),
            loss_before=float(f0),
            grad_norm=float(gnorm),
            damping=cfg.damping,
            fun_evals=1,
            grad_evals=1,
        )
        flat = ravel_pytree(params)[0]
        carry = _HFCarry(jnp.asarray(cfg.damping, flat.dtype), jnp.zeros_like(flat), key)
        return Iterate(params, carry, entry)

    return init


def _hf_iteration(fns, cfg: HFConfig, static: _Static, stream, curv_stream, traced):
    """The outer loop's ``step``: next batches, one :func:`_hf_step`, its history entry."""

    def step(it: Iterate) -> Iterate:
        c = it.carry
        gbatch = next(stream)  # StopIteration ends the loop with DATA_EXHAUSTED
        cbatch = None
        if cfg.batching == "separate":
            cbatch = next(curv_stream) if curv_stream is not None else next(stream)
        key, sub = jax.random.split(c.key)
        x, damping, cg_x0, stats = _hf_step(
            it.x, c.damping, c.cg_x0, gbatch, cbatch, sub, *traced, fns=fns, cfg=static
        )
        entry = _history_entry(jax.device_get(stats), c.damping)
        return Iterate(x, _HFCarry(damping, cg_x0, key), entry)

    return step


def hessian_free(
    loss_fn: Callable | Any,
    params: PyTree | None = None,
    batches: Any = None,
    *,
    config: HFConfig = HFConfig(),
    model_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    per_example_loss_fn: Callable | None = None,
    hidden_fn: Callable | None = None,
    curvature_batches: Any = None,
    key: jax.Array | None = None,
    callback: Callable[[IterationInfo], bool | None] | None = None,
    throw: bool = False,
) -> OptimizeResult:
    """Hessian-free optimization (Martens 2010) of ``loss_fn(params, batch)``.

    Each iteration :math:`k`, on a gradient batch with loss :math:`f` and gradient :math:`g`:

    1. **Curvature** :math:`B` on a curvature batch (``config.curvature``): Gauss-Newton,
       Hessian or empirical Fisher.
    2. **Damping**: CG minimizes :math:`q(d) = g^\\top d + \\tfrac12 d^\\top (B + \\lambda I
       + \\mu\\lambda J_h^\\top J_h) d`, the last term being structural damping (below).
    3. **CG** (:func:`curvlab.cg`) warm-started at ``cg_decay`` times the previous run's last
       iterate, stopped by Martens' relative-progress rule (``martens_eps``), by
       :math:`\\|r\\| \\le` ``cg_rtol`` :math:`\\|g\\|`, by negative curvature or at ``cg_maxiter``;
       optionally preconditioned (``preconditioner="martens"``).
    4. **CG backtracking**: of the iterates saved at :math:`\\lceil 1.3^j \\rceil` and the last one,
       keep the direction :math:`d` with the lowest :math:`f(\\theta + d)` on the gradient batch.
    5. **Damping update** (:func:`update_damping`) from
       :math:`\\rho = (f(\\theta + d) - f(\\theta)) / (q(d) - q(0))` (``rho_model``).
    6. **Line search**: Armijo backtracking :math:`t \\leftarrow 0.8 t` from 1 until
       :math:`f(\\theta + t d) \\le f(\\theta) + 10^{-2} t\\, g^\\top d`; no acceptable :math:`t`
       rejects the step (:math:`t = 0`, the parameters are kept; :math:`\\rho < 0` raises
       :math:`\\lambda`).

    **Structural damping** (Martens & Sutskever 2011, for recurrent networks): with
    ``hidden_fn(params, batch)`` returning the hidden states (any pytree of arrays) and
    :math:`\\mu` = ``config.structural_damping``, the penalty :math:`\\tfrac{\\mu\\lambda}{2}\\|J_h d\\|^2`
    (the Gauss-Newton form of :math:`\\tfrac{\\mu\\lambda}{2}\\|h(\\theta + d) - h(\\theta)\\|^2`)
    discourages steps that change the hidden states much. Scale ``hidden_fn``'s output to your
    loss (e.g. divide by :math:`\\sqrt{N}` for a mean over :math:`N` sequences).

    Parameters
    ----------
    loss_fn : callable or Problem
        ``loss_fn(params, batch) -> scalar``, or a :class:`curvlab.problems.Problem`: its
        ``loss``, ``model_fn``, output loss and per-example loss fill the arguments not given,
        and ``params``/``batches`` default to its ``x0``/``batch``.
    params : pytree
        Starting parameters (real floating-point leaves).
    batches : batch, sequence of batches, or iterable of batches
        A single batch is a tuple of arrays ``(inputs, targets)`` (or a dict or an array) and is
        used at every iteration (full-batch training). A list/tuple of batches is cycled; an
        iterator is consumed (``DATA_EXHAUSTED`` when it ends). Batches of different shapes
        trigger a new compilation; keep them equal.
    config : HFConfig
        Every algorithmic option (see :class:`HFConfig`).
    model_fn, output_loss_fn : callable, optional
        ``model_fn(params, inputs) -> outputs``, ``output_loss_fn(outputs, targets) -> scalar``,
        for ``curvature="ggn"`` (batches are ``(inputs, targets)``).
    per_example_loss_fn : callable, optional
        ``per_example_loss_fn(params, batch) -> (N,)``, for ``curvature="fisher"`` and the Martens
        preconditioner.
    hidden_fn : callable, optional
        ``hidden_fn(params, batch) -> hidden states`` for structural damping.
    curvature_batches : optional
        A separate stream of curvature batches for ``batching="separate"``. A whole dataset
        read by :func:`curvlab._data.prepare_data` counts as one curvature batch: the curvature
        is then the dataset-averaged operator :math:`\\sum_b (n_b/N) B_b` of
        :mod:`curvlab._curvature`.
    key : jax.random key, optional
        For ``batching="subsample"`` (default ``jax.random.key(0)``).
    callback : callable, optional
        Called with an :class:`IterationInfo` after every iteration; returning True stops.
    throw : bool
        Raise :class:`~curvlab.SolverError` unless the status is successful.

    Returns
    -------
    OptimizeResult
        ``history["loss"][k]`` is the loss after iteration ``k`` on its gradient batch,
        ``history["grad_norm"][k]`` the norm of the gradient that iteration used (entry 0: both
        at the start, on the first batch), ``damping`` the :math:`\\lambda` it used;
        extra keys ``loss_before`` (the loss at the start of the iteration) and
        ``backtrack_iteration`` (the CG iteration of the chosen direction). ``num_hvps`` counts
        the matvecs of the damped curvature operator. After a batch with non-finite loss or
        gradient the status is ``NONFINITE`` and ``x`` the last (finite) parameters.

    Raises
    ------
    ValueError, TypeError
        Bad configuration (naming the :class:`HFConfig` field), missing functions, empty
        batches, non-finite ``params``, a call under ``jax.jit``; before any computation.

    Examples
    --------
    >>> from curvlab.problems import logistic_regression
    >>> prob = logistic_regression(num_examples=128)
    >>> res = hessian_free(prob, config=HFConfig(maxiter=5))
    >>> bool(res.fun < res.history["loss"][0])
    True
    """
    loss_fn, params, batches, model_fn, output_loss_fn, per_example_loss_fn = _resolve_problem(
        loss_fn, params, batches, model_fn, output_loss_fn, per_example_loss_fn
    )
    if not isinstance(config, HFConfig):
        raise TypeError(f"config must be an HFConfig, got {type(config).__name__}")

    # -- checks, before any work -------------------------------------------------------------
    check_not_traced("hessian_free", params=params, config=config)
    cfg = config.validate()
    throw = check_throw("hessian_free", throw)
    check_callback(callback)
    _check_functions(cfg, model_fn, output_loss_fn, per_example_loss_fn, hidden_fn)
    check_point("params", params)
    first, stream, single = batch_stream(batches, "batches")
    N = leading_size(first, "the first batch")
    curv_stream = _curvature_stream(cfg, first, curvature_batches, single)
    key = as_key("key", key, required=False)
    check_scalar_output(loss_fn, params, first)

    # -- the one outer loop over jitted iterations ---------------------------------------------
    fns = (loss_fn, model_fn, output_loss_fn, per_example_loss_fn, hidden_fn)
    dtype = ravel_pytree(params)[0].dtype
    traced = tuple(jnp.asarray(v, dtype) for v in (cfg.structural_damping, cfg.cg_decay, cfg.precond_alpha))
    step = _hf_iteration(fns, cfg, _static_config(cfg, N), stream, curv_stream, traced)
    return run_optimizer(
        "hessian_free",
        _hf_init(loss_fn, params, first, cfg, key),
        step,
        maxiter=cfg.maxiter,
        gtol=cfg.gtol,
        callback=callback,
        throw=throw,
        extra_keys=("loss_before", "backtrack_iteration"),
    )

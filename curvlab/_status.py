"""One status table for every iterative solver (lineax's ``RESULTS`` idea).

A status name keeps its number in every solver, so a CG status can be stored in
a Newton history or compared across solvers. Inside a jitted loop a status is an
``int32`` array; results hand it back as a :class:`Status` member when it is
concrete (:func:`as_status`). Each member's :attr:`~Status.message` says what
happened and what to do about it; :func:`raise_if_failed` is the single
implementation of every solver's ``throw=True``.
"""

from __future__ import annotations

import enum

import jax
import numpy as np

__all__ = [
    "Status",
    "SolverError",
    "as_status",
    "check_throw",
    "converged_of",
    "message_of",
    "raise_if_failed",
]

#: Loop still running (never returned by a solver).
RUNNING = -1


class Status(enum.IntEnum):
    """How an iterative solver ended. The same name has the same number in every solver."""

    #: the requested tolerance was met (residual, eigen-residual or gradient norm)
    CONVERGED = 0
    #: a fixed number of steps was requested and taken (Lanczos, SLQ)
    COMPLETED = 1
    #: the iteration or matvec budget ran out before the tolerance was met
    MAX_ITERATIONS = 2
    #: a NaN or infinity appeared (in the operator, the objective or its gradient)
    NONFINITE = 3
    #: CG met a direction with ``pᵀAp <= 0``: the operator is not positive definite
    NEGATIVE_CURVATURE = 4
    #: truncated CG stopped on the trust-region boundary
    TRUST_REGION_BOUNDARY = 5
    #: CG stopped by Martens' relative-progress rule (a success for Hessian-free)
    RELATIVE_PROGRESS = 6
    #: Lanczos found an invariant subspace (``beta ~ 0``): its Ritz values are exact eigenvalues
    INVARIANT_SUBSPACE = 7
    #: ``rᵀPr <= 0`` with a nonzero residual: the preconditioner is not positive definite
    INDEFINITE_PRECONDITIONER = 8
    #: the estimates converged but a verified true residual exceeds the tolerance
    INACCURATE = 9
    #: the line search found no step with sufficient decrease
    LINE_SEARCH_FAILED = 10
    #: the user's callback asked to stop
    CALLBACK = 11
    #: the iterator of batches ran out
    DATA_EXHAUSTED = 12

    @property
    def message(self) -> str:
        """What happened, in words fit to show a user."""
        return _MESSAGES[self]

    @property
    def successful(self) -> bool:
        """Whether the solver's answer can be used as what was asked for."""
        return self in _SUCCESSFUL


_SUCCESSFUL = frozenset(
    {
        Status.CONVERGED,
        Status.COMPLETED,
        Status.TRUST_REGION_BOUNDARY,
        Status.RELATIVE_PROGRESS,
        Status.INVARIANT_SUBSPACE,
        Status.CALLBACK,
    }
)

_MESSAGES = {
    Status.CONVERGED: "converged: the requested tolerance was met",
    Status.COMPLETED: "completed all requested steps",
    Status.MAX_ITERATIONS: (
        "not converged: the iteration budget ran out before the tolerance was met "
        "(raise maxiter / max_matvecs, loosen the tolerance, or precondition)"
    ),
    Status.NONFINITE: (
        "stopped: a NaN or infinity appeared (in the operator's output, the objective or its gradient); "
        "the last finite values are returned"
    ),
    Status.NEGATIVE_CURVATURE: (
        "stopped: found a direction p with pᵀAp <= 0, so the operator is not positive definite "
        "(indefinite or singular); returned the last iterate and the direction. Damp the operator "
        "(op.damped(damping)) or use a Gauss-Newton or Fisher operator, which are positive semidefinite"
    ),
    Status.TRUST_REGION_BOUNDARY: "stopped on the trust-region boundary: the step reached the radius",
    Status.RELATIVE_PROGRESS: (
        "converged by Martens' relative-progress rule: over the last k iterations the quadratic "
        "decreased by less than k * martens_eps relative to its value"
    ),
    Status.INVARIANT_SUBSPACE: (
        "breakdown: beta ~ 0, an invariant subspace was found; the Ritz values are exact eigenvalues "
        "of the operator (a start vector in a smaller invariant subspace sees only some of them)"
    ),
    Status.INDEFINITE_PRECONDITIONER: (
        "stopped: rᵀPr <= 0 with a nonzero residual, so the preconditioner is not positive definite"
    ),
    Status.INACCURATE: (
        "the estimates converged but some true residuals exceed the tolerance: it is below the accuracy "
        "attainable in this dtype (see residual_norms; in float32 use rtol >= 1e-5)"
    ),
    Status.LINE_SEARCH_FAILED: (
        "stopped: the line search found no step with sufficient decrease (the gradient is probably "
        "at the level of rounding errors; gtol may be too small for the dtype)"
    ),
    Status.CALLBACK: "stopped by the callback",
    Status.DATA_EXHAUSTED: "stopped: the iterator of batches is exhausted",
}


class SolverError(RuntimeError):
    """Raised by a solver called with ``throw=True`` that did not succeed."""

    def __init__(self, solver: str, status: Status):
        self.solver = solver
        self.status = status
        super().__init__(f"{solver}: {status.name}: {status.message}")


def _is_concrete(s) -> bool:
    return not isinstance(s, jax.core.Tracer)


def as_status(s):
    """A :class:`Status` member for a concrete scalar status; the array itself when traced or batched."""
    if isinstance(s, Status):
        return s
    if _is_concrete(s) and np.ndim(s) == 0:
        return Status(int(s))
    return s


def message_of(s) -> str:
    """Readable message of a status (scalar, batch of statuses, or traced)."""
    if not _is_concrete(s):
        return "<traced status: read result.status after the jitted function returns>"
    if np.ndim(s) == 0:
        return Status(int(s)).message
    return "; ".join(Status(v).message for v in sorted({int(x) for x in np.ravel(np.asarray(s))}))


def converged_of(s):
    """``bool`` (concrete scalar), boolean array (batched) or traced boolean: did the solver succeed?"""
    if _is_concrete(s):
        flags = np.isin(np.asarray(s), [int(m) for m in _SUCCESSFUL])
        return bool(flags) if np.ndim(s) == 0 else flags
    import jax.numpy as jnp

    return jnp.isin(s, jnp.asarray([int(m) for m in _SUCCESSFUL]))


def check_throw(solver: str, throw) -> bool:
    """Validate a ``throw`` argument before any work: a plain Python bool."""
    if not isinstance(throw, (bool, np.bool_)):
        raise TypeError(f"{solver}: throw must be True or False, got {type(throw).__name__}")
    return bool(throw)


def raise_if_failed(solver: str, status, throw: bool) -> None:
    """The one implementation of ``throw=True``: raise :class:`SolverError` unless successful.

    Under the user's ``jax.jit`` the status is not known at trace time; ``throw=True``
    then raises a clear ``ValueError`` instead of a tracer error (use ``throw=False``
    and test ``result.converged`` after the call).
    """
    if not throw:
        return
    if not _is_concrete(status):
        raise ValueError(
            f"{solver}(throw=True) cannot be traced: under jax.jit the solver's status is only known "
            "after the call. Use throw=False inside jit and check result.converged / result.status"
        )
    s = as_status(status)
    if isinstance(s, Status):
        if not s.successful:
            raise SolverError(solver, s)
        return
    bad = [Status(int(x)) for x in np.ravel(np.asarray(s)) if not Status(int(x)).successful]
    if bad:
        raise SolverError(solver, bad[0])

"""Lanczos runs and SLQ densities of one operator for many damping values and step counts.

An explorer that moves a damping slider or a step-count slider asks for the spectrum of

.. math::

    B(\\lambda) = P^{-1/2} (A + \\lambda I) P^{-1/2},
    \\qquad P = \\begin{cases} I & \\text{plain} \\\\
    \\operatorname{diag}(|A + \\lambda I|) & \\text{Jacobi-preconditioned} \\end{cases}

over and over. Two identities make most requests free (no matvec):

* **prefixes**: the first ``k`` steps of a Lanczos run do not depend on how many follow, so
  a stored run of at least ``k`` steps from the same start vector serves ``k``
  (:meth:`curvlab.LanczosResult.prefix`);
* **shifts**: Lanczos on :math:`A + \\lambda I` builds the same basis with
  :math:`\\alpha_j + \\lambda` and the same :math:`\\beta_j`, so a reorthogonalized run on
  :math:`A` serves every :math:`\\lambda` (:meth:`curvlab.LanczosResult.shifted`); an SLQ
  density moves with its grid (:meth:`curvlab.SpectralDensity.shifted`), and the dense
  eigenvalues move by :math:`\\lambda`.

Where the result methods refuse (no reorthogonalization, a breakdown the shift would move,
equal SLQ nodes) and for the Jacobi scaling (:math:`P` depends on :math:`\\lambda`) a fresh
run on :math:`B(\\lambda)` is made and kept in a bounded least-recently-used table.
:class:`SpectrumCache` is that logic; :func:`ghost_mask` finds the ghost copies a run
without reorthogonalization produces.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._lanczos import LanczosResult, lanczos
from curvlab._operators import CongruenceOperator, LinearOperator, as_operator
from curvlab._spectral import SpectralDensity, spectral_density
from curvlab._spectral import diagonal as estimate_diagonal
from curvlab._tridiagonal import host_eigvals
from curvlab._validation import as_key, check_positive_int

__all__ = ["SpectrumCache", "ghost_mask"]


@dataclasses.dataclass
class _Run:
    """One stored Lanczos run, with its Ritz history filled row by row on the host when asked."""

    result: LanczosResult
    requested: int  # num_steps of the run
    alpha: np.ndarray  # (taken,) float64 host copies
    beta: np.ndarray
    rows: np.ndarray  # (taken, taken) Ritz history, NaN-padded; rows < rows_done filled
    rows_done: int = 0

    @classmethod
    def of(cls, result: LanczosResult, requested: int, keep_basis: bool) -> _Run:
        if not keep_basis:  # the basis is (k + 1) x n: keep its shape's first axis only
            result = result._replace(basis=np.zeros((result.basis.shape[0], 0), result.basis.dtype))
        result = _on_host(result)
        m = result.num_steps
        alpha = result.alpha.astype(np.float64)[:m]
        beta = result.beta.astype(np.float64)[:m]
        return cls(result, requested, alpha, beta, np.full((requested, requested), np.nan))

    @property
    def taken(self) -> int:
        return self.result.num_steps

    def serves(self, k: int) -> bool:
        """A run of ``requested >= k`` steps, or one that stopped early (so would a longer one)."""
        return self.requested >= k or self.taken < self.requested

    def whole(self, k: int) -> LanczosResult:
        """The whole run with the Ritz history filled for its first ``k`` steps."""
        m = min(k, self.taken)
        for j in range(self.rows_done, m):
            self.rows[j, : j + 1] = host_eigvals(self.alpha[: j + 1], self.beta[:j])
        self.rows_done = max(self.rows_done, m)
        return self.result._replace(ritz_history=self.rows.copy())


def _on_host(res: LanczosResult) -> LanczosResult:
    """``res`` with NumPy arrays: its prefixes are slices (no device work, nothing compiled per ``k``)."""
    return res._replace(
        alpha=np.asarray(res.alpha),
        beta=np.asarray(res.beta),
        basis=np.asarray(res.basis),
        ritz_history=np.asarray(res.ritz_history),
        num_steps=int(res.num_steps),
        anorm=np.asarray(res.anorm),
        matvec_norms=np.asarray(res.matvec_norms),
        breakdown_tol=np.asarray(res.breakdown_tol),
    )


def _prefix(res: LanczosResult, k: int) -> LanczosResult:
    """The ``k``-step run from a (host) run: its prefix, or all of it when it stopped before ``k``."""
    return res.prefix(k) if k < res.alpha.shape[0] and k <= res.num_steps else res


def _density_on_host(sd: SpectralDensity) -> SpectralDensity:
    return SpectralDensity(*(x if isinstance(x, int) else np.asarray(x) for x in sd))


@dataclasses.dataclass
class _Entry:
    """Everything known about one operator :math:`B(\\lambda)`."""

    op: LinearOperator
    scale: np.ndarray  # the Jacobi scaling P^{-1/2} (ones when plain)
    runs: dict = dataclasses.field(default_factory=dict)  # reorthogonalize -> [_Run]
    densities: dict = dataclasses.field(default_factory=dict)  # (num_probes, num_steps) -> SpectralDensity
    eigenvalues: np.ndarray | None = None


class SpectrumCache:
    """Lanczos runs, SLQ densities and dense eigenvalues of :math:`B(\\lambda)` for many :math:`\\lambda`.

    .. math::

        B(\\lambda) = P^{-1/2} (A + \\lambda I) P^{-1/2}, \\qquad
        P = I \\text{ or } \\operatorname{diag}(|A + \\lambda I|) \\text{ (Jacobi)}.

    Every answer equals a fresh call on :meth:`operator` with this cache's keys, to rounding:
    ``cache.lanczos(k, damping=d)`` is ``lanczos(cache.operator(d), k, key=key)`` and
    ``cache.spectral_density(num_probes=p, num_steps=m, damping=d)`` is
    ``spectral_density(cache.operator(d), num_probes=p, num_steps=m, key=slq_key)``. Requests
    are served without matvecs through :meth:`~curvlab.LanczosResult.prefix` (a stored run of
    at least ``k`` steps), :meth:`~curvlab.LanczosResult.shifted` and
    :meth:`~curvlab.SpectralDensity.shifted` (a run on :math:`A` serves :math:`A + \\lambda I`;
    where they refuse, a fresh run on :math:`B(\\lambda)` is made). Runs for damping values no
    shift serves (and every Jacobi-preconditioned run) are kept for the last ``maxsize``
    values; the runs on :math:`A` are always kept. Safe to call from two threads (a
    background worker and the kernel's); a run is never computed under the lock.

    Parameters
    ----------
    op : LinearOperator or square array
        Symmetric :math:`A`.
    key : PRNG key, optional
        Start vector of the Lanczos runs (default ``jax.random.key(0)``).
    slq_key : PRNG key, optional
        Probes of the SLQ runs (default ``jax.random.key(1)``).
    maxsize : int
        Damping values whose own runs are kept (least recently used dropped first).
    keep_basis : bool
        Keep the Lanczos bases (``(k + 1) x n`` each); by default results have ``basis`` of
        shape ``(k + 1, 0)``.
    dense_max_n : int
        Largest size for which :meth:`eigenvalues` builds the dense matrix (``n`` matvecs, once).
    diagonal_probes : int
        Probes of the Hutchinson estimate of :math:`\\operatorname{diag}(A)` when the operator has
        no cheap diagonal and ``n > dense_max_n`` (Jacobi scaling only).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from curvlab import DiagonalOperator, lanczos
    >>> cache = SpectrumCache(DiagonalOperator(jnp.arange(1.0, 21.0)))
    >>> a = cache.lanczos(12, damping=0.5)  # a 12-step run on A, shifted: one run, 12 matvecs
    >>> b = lanczos(DiagonalOperator(jnp.arange(1.0, 21.0) + 0.5), 12)
    >>> bool(jnp.allclose(a.ritz_history[-1], b.ritz_history[-1]))
    True
    >>> cache.lanczos(5, damping=2.0).num_steps  # a prefix of the same run, shifted
    5
    """

    def __init__(
        self,
        op: LinearOperator,
        *,
        key: jax.Array | None = None,
        slq_key: jax.Array | None = None,
        maxsize: int = 32,
        keep_basis: bool = False,
        dense_max_n: int = 500,
        diagonal_probes: int = 10,
    ):
        self.op = as_operator(op)
        self.key = as_key("key", key, required=False)
        self.slq_key = jax.random.key(1) if slq_key is None else as_key("slq_key", slq_key, required=True)
        self.maxsize = check_positive_int("maxsize", maxsize)
        self.keep_basis = bool(keep_basis)
        self.dense_max_n = check_positive_int("dense_max_n", dense_max_n, minimum=0)
        self.diagonal_probes = check_positive_int("diagonal_probes", diagonal_probes)
        self._lock = threading.Lock()
        self._dense: np.ndarray | None = None
        self._diag: np.ndarray | None = None
        ones = np.ones(self.op.size)
        # the plain runs are on D (A + 0 I) D with D = 1: every operator has one pytree structure,
        # so every run of a length compiles once
        self._base = _Entry(self._congruence(0.0, ones), ones)
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()

    # -- operators ------------------------------------------------------------
    def _congruence(self, damping: float, scale: np.ndarray) -> LinearOperator:
        return CongruenceOperator(self.op.damped(damping), jnp.asarray(scale, self.op.dtype))

    def dense(self) -> np.ndarray | None:
        """Dense float64 :math:`A` (built once from ``n`` matvecs), or ``None`` above ``dense_max_n``."""
        if self._dense is None and self.op.size <= self.dense_max_n:
            self._dense = np.asarray(self.op.to_dense(), dtype=np.float64)
        return self._dense

    def _diagonal(self) -> np.ndarray:
        """:math:`\\operatorname{diag}(A)`: of the dense matrix, the operator's, or a Hutchinson estimate."""
        if self._diag is None:
            if self.dense() is not None:
                self._diag = np.diag(self._dense).copy()
            else:
                try:
                    self._diag = np.asarray(self.op.diagonal(), dtype=np.float64)
                except NotImplementedError:
                    est = estimate_diagonal(self.op, num_probes=self.diagonal_probes, key=jax.random.key(2))
                    self._diag = np.asarray(est.value, dtype=np.float64)
        return self._diag

    def _entry(self, damping: float, preconditioned: bool) -> _Entry:
        """The table entry of :math:`B(\\lambda)` (created, and marked most recently used)."""
        if not preconditioned and damping == 0.0:
            return self._base
        key = (damping, preconditioned)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        if preconditioned:
            d = np.abs(self._diagonal() + damping)
            scale = 1.0 / np.sqrt(np.maximum(d, 1e-12 * max(float(np.max(d)), 1e-300)))
        else:
            scale = self._base.scale
        entry = _Entry(self._congruence(damping, scale), scale)
        with self._lock:
            entry = self._entries.setdefault(key, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return entry

    def operator(self, damping: float = 0.0, *, preconditioned: bool = False) -> LinearOperator:
        """:math:`B(\\lambda)` as a :class:`~curvlab.CongruenceOperator` (scaling ones when plain)."""
        return self._entry(_check_damping(damping), bool(preconditioned)).op

    # -- Lanczos --------------------------------------------------------------
    def _stored_run(self, entry: _Entry, k: int, reorthogonalize: bool) -> _Run | None:
        with self._lock:
            runs = [r for r in entry.runs.get(reorthogonalize, ()) if r.serves(k)]
        return max(runs, key=lambda r: r.requested, default=None)

    def _run(self, entry: _Entry, k: int, reorthogonalize: bool, run_steps: int) -> _Run:
        run = self._stored_run(entry, k, reorthogonalize)
        if run is None:
            res = lanczos(entry.op, run_steps, key=self.key, reorthogonalize=reorthogonalize, history=False)
            run = _Run.of(res, run_steps, self.keep_basis)
            with self._lock:
                entry.runs.setdefault(reorthogonalize, []).append(run)
        return run

    def lanczos(
        self,
        num_steps: int,
        *,
        damping: float = 0.0,
        preconditioned: bool = False,
        reorthogonalize: bool = True,
        run_steps: int | None = None,
    ) -> LanczosResult:
        """The ``num_steps``-step Lanczos run on :math:`B(\\lambda)`, with its Ritz history.

        Served by a stored run (a prefix, shifted by :math:`\\lambda` when plain and
        :meth:`~curvlab.LanczosResult.shifted` accepts), else by a new run of
        ``max(run_steps, num_steps)`` steps (default ``num_steps``) that later requests of
        up to that many steps reuse. A stored run is shifted whole, then cut (one compiled
        shape per run length, none per ``num_steps``): a breakdown test anywhere in it that
        the shift would change sends the request to a fresh run. The arrays are NumPy arrays;
        the Ritz history is computed on the host, row by row as requests reach it. When the
        run stopped before ``num_steps`` (an invariant subspace, a non-finite value) the
        result is that whole run. See :func:`curvlab.lanczos` for the fields.
        """
        k = check_positive_int("num_steps", num_steps)
        steps = max(k, check_positive_int("run_steps", run_steps if run_steps is not None else k))
        damping, reorth = _check_damping(damping), bool(reorthogonalize)
        if not preconditioned and damping != 0.0:
            base = self._stored_run(self._base, k, reorth)
            if base is None and reorth:  # only a reorthogonalized run on A can serve a shift
                base = self._run(self._base, k, reorth, steps)
            if base is not None:
                try:
                    whole = base.whole(k)
                    whole = whole._replace(basis=jnp.asarray(whole.basis))  # shifted may zero a row
                    return _prefix(_on_host(whole.shifted(damping)), k)
                except ValueError:  # the shift would not be a fresh run's: run on A + λI
                    pass
        run = self._run(self._entry(damping, bool(preconditioned)), k, reorth, steps)
        return _prefix(run.whole(k), k)

    # -- SLQ and dense eigenvalues --------------------------------------------
    def spectral_density(
        self,
        *,
        num_probes: int,
        num_steps: int,
        damping: float = 0.0,
        preconditioned: bool = False,
        compute: bool = True,
    ) -> SpectralDensity | None:
        """SLQ density of :math:`B(\\lambda)` (:func:`curvlab.spectral_density` with ``slq_key``).

        A plain request is the density on :math:`A`, shifted by :math:`\\lambda`, where
        :meth:`~curvlab.SpectralDensity.shifted` accepts. With ``compute=False`` returns
        ``None`` instead of running SLQ (to ask whether the answer is free).
        """
        p, m = check_positive_int("num_probes", num_probes), check_positive_int("num_steps", num_steps)
        m = min(m, self.op.size)  # as spectral_density caps it
        damping, preconditioned = _check_damping(damping), bool(preconditioned)
        if not preconditioned and damping != 0.0:
            base = self._density(self._base, p, m, compute)
            if base is None:
                return None
            try:
                return _density_on_host(base.shifted(damping))
            except ValueError:  # equal nodes or a breakdown the shift could move: run on A + λI
                pass
        return self._density(self._entry(damping, preconditioned), p, m, compute)

    def _density(self, entry: _Entry, p: int, m: int, compute: bool) -> SpectralDensity | None:
        sd = entry.densities.get((p, m))
        if sd is None and compute:
            sd = _density_on_host(spectral_density(entry.op, num_probes=p, num_steps=m, key=self.slq_key))
            with self._lock:
                sd = entry.densities.setdefault((p, m), sd)
        return sd

    def eigenvalues(
        self, *, damping: float = 0.0, preconditioned: bool = False, compute: bool = True
    ) -> np.ndarray | None:
        """Ascending eigenvalues of the dense :math:`B(\\lambda)` (float64), ``None`` above ``dense_max_n``.

        Plain: those of :math:`A` plus :math:`\\lambda` (one ``eigvalsh`` for every damping).
        With ``compute=False`` returns ``None`` instead of running ``eigvalsh``.
        """
        damping, preconditioned = _check_damping(damping), bool(preconditioned)
        if self.op.size > self.dense_max_n:
            return None
        entry = self._entry(damping, True) if preconditioned else self._base
        if entry.eigenvalues is None and compute:
            dense = self.dense()
            B = entry.scale[:, None] * dense * entry.scale[None, :]
            if preconditioned:
                B[np.diag_indices_from(B)] += damping * entry.scale**2
            entry.eigenvalues = _eigvalsh((B + B.T) / 2)
        if entry.eigenvalues is None:
            return None
        return entry.eigenvalues if preconditioned else entry.eigenvalues + damping


def _check_damping(damping) -> float:
    if isinstance(damping, bool) or not (np.ndim(damping) == 0 and math.isfinite(float(damping))):
        raise ValueError(f"damping must be a finite real scalar, got {damping!r}")
    return float(damping)


_BLAS_LOCK = threading.Lock()
_BLAS_CONTROLLER = None


def _eigvalsh(matrix: np.ndarray) -> np.ndarray:
    """``np.linalg.eigvalsh`` with the BLAS thread pool limited to one thread, where threadpoolctl exists.

    On a small shared machine a multi-threaded OpenBLAS ``syevd`` of a 500 x 500 matrix
    takes 10 ms one time and 1-2.5 s the next (its threads spin waiting for cores that other
    processes hold); single-threaded it takes ~10 ms every time. The limit (process-wide
    while it lasts) is set only around this call.
    """
    global _BLAS_CONTROLLER
    with _BLAS_LOCK:
        if _BLAS_CONTROLLER is None:
            try:
                from threadpoolctl import ThreadpoolController

                _BLAS_CONTROLLER = ThreadpoolController()
            except ImportError:  # pragma: no cover - threadpoolctl comes with the viz extra
                _BLAS_CONTROLLER = False
        if _BLAS_CONTROLLER:
            with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
                return np.linalg.eigvalsh(matrix)
    return np.linalg.eigvalsh(matrix)


def ghost_mask(ritz_history, *, dtype=None, exact_eigenvalues=None) -> np.ndarray:
    """Mark Ritz values that duplicate the next larger one: ghost copies of a converged eigenvalue.

    Entry ``[j, i]`` is True when :math:`\\theta_{j,i+1} - \\theta_{j,i} \\le r \\max_i|\\theta_{j,i}|`
    with :math:`r = 10\\,\\varepsilon^{2/3}` of ``dtype`` (the operator's working precision;
    default the dtype of ``ritz_history``; about ``4e-10`` in float64): ghost copies agree to
    rounding, distinct eigenvalues of well-conditioned spectra do not.

    With ``exact_eigenvalues`` a mark is kept only where more Ritz values sit within that
    distance than eigenvalues do: the gap test alone cannot tell a ghost from a true
    multiplicity or a cluster tighter than :math:`r` (float32).

    Examples
    --------
    >>> import numpy as np
    >>> ghost_mask(np.array([[1.0, 2.0, 2.0, 3.0]])).tolist()
    [[False, True, False, False]]
    >>> ghost_mask(np.array([[1.0, 2.0, 2.0, 3.0]]), exact_eigenvalues=[1.0, 2.0, 2.0, 3.0]).tolist()
    [[False, False, False, False]]
    """
    R = np.asarray(ritz_history)
    if dtype is None:
        dtype = R.dtype if np.issubdtype(R.dtype, np.floating) else np.float64
    rtol = 10 * float(np.finfo(dtype).eps) ** (2 / 3)
    R = R.astype(np.float64)
    mask = np.zeros(R.shape, dtype=bool)
    if R.ndim != 2 or R.shape[1] < 2:
        return mask
    with np.errstate(invalid="ignore"):
        scale = np.nanmax(np.abs(np.where(np.isfinite(R), R, np.nan)), axis=1, initial=0.0)
        gaps = np.diff(R, axis=1)
        mask[:, :-1] = np.isfinite(gaps) & (gaps <= rtol * scale[:, None])
    if exact_eigenvalues is not None and mask.any():
        mask = _drop_true_multiplicity(R, mask, np.sort(np.asarray(exact_eigenvalues, float)), rtol)
    return mask


def _drop_true_multiplicity(R: np.ndarray, mask: np.ndarray, exact: np.ndarray, rtol: float) -> np.ndarray:
    """Keep a mark only where the cluster around it holds more Ritz values than eigenvalues."""
    out = mask.copy()
    for j, i in zip(*np.nonzero(mask)):
        row = R[j][np.isfinite(R[j])]
        tol = rtol * float(np.max(np.abs(row)))
        theta = R[j, i]
        near_ritz = int(np.sum(np.abs(row - theta) <= tol))
        near_exact = int(
            np.searchsorted(exact, theta + tol, "right") - np.searchsorted(exact, theta - tol, "left")
        )
        out[j, i] = near_ritz > near_exact
    return out

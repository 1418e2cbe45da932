"""Curvature diagnostics for a user's own model and dataset.

:func:`diagnose` builds the **dataset-averaged** curvature operator of
:func:`curvlab.dataset_operator`

.. math::

    A = \\sum_b \\frac{n_b}{N} A_b, \\qquad N = \\sum_b n_b,

where :math:`A_b` is the Hessian, generalized Gauss-Newton matrix or empirical
Fisher of the batch-mean loss on batch :math:`b` (of :math:`n_b` examples; the
empirical Fisher averages to :math:`\\frac1N \\sum_i \\nabla\\ell_i \\nabla\\ell_i^\\top`),
and runs the Krylov solvers of :mod:`curvlab._eigsh` and :mod:`curvlab._spectral`
on it. It is an orchestrator of small pieces, each tested on its own:

1. :func:`curvlab.dataset_operator` -- the operator (data read once, see :mod:`curvlab._data`);
2. :func:`gradient_stats` -- dataset loss, gradient norm, curvature along the gradient;
3. :func:`extreme_eigenvalues` -- the ``k`` top and bottom eigenvalues (one ``"BE"`` eigsh run);
4. :func:`curvlab.trace` -- Hutch++ trace;
5. :func:`density_stats` -- SLQ spectral density and its negative mass;
6. :func:`block_reports` -- per parameter block (layer) top eigenvalue and trace;
7. :func:`assemble_report` -- the :class:`CurvatureReport`.

Every product :math:`A v` loops over the batches with ``lax.scan`` inside the
solver's jitted loop, so the memory of a product is that of one batch's HVP.
Products are counted from the solvers' ``num_matvecs`` (no global state: concurrent
calls do not interfere), which also drives the optional progress bar.

Models
------
``params`` is any pytree of arrays: plain dicts, Flax linen variables, the
``state`` of ``graphdef, state = nnx.split(model)``, the array part of
``eqx.partition(model, eqx.is_inexact_array)``. A Flax NNX or Equinox *module*
may also be passed as ``params`` directly: it is split internally into its
parameters and the rest, and ``loss_fn`` (and ``model_fn``) then receive the
module itself, rebuilt around the parameters being differentiated.

Multi-device
------------
Pass ``mesh=`` (a :class:`jax.sharding.Mesh` with a ``"data"`` axis, or
``"auto"``): batches are sharded along the batch axis, parameters and Lanczos
vectors replicated. See :mod:`curvlab.sharding`.

No NaN results
--------------
Eigenvalues, residuals, traces and densities in a report are always finite. When
the eigensolver stops on a non-finite value (it can, on an operator with a large
null space such as the empirical Fisher of an over-parametrized softmax model),
the extremes come from a fully reorthogonalized Lanczos run instead (Ritz values
with their residual bounds) and ``messages["eigsh"]`` says so. A loss or gradient
that is not finite at ``params`` raises ``ValueError`` before any solver runs.
``condition_number`` and ``gradient_curvature`` are ``nan`` only where they are
not defined (an operator that is not positive definite after damping; a zero
gradient), as documented on :class:`CurvatureReport`.

The report (:class:`CurvatureReport`) is data: ``to_dict`` (JSON-safe) and
``summary()`` (text) live here; its figure and HTML page come from
:func:`curvlab.viz.report_figure` and :func:`curvlab.viz.report_html`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._curvature import CURVATURES as _EXACT_CURVATURES
from curvlab._curvature import CurvatureOperator, dataset_operator
from curvlab._operators import LinearOperator, pytree_operator, static_field
from curvlab._validation import check_not_traced, check_positive_int

PyTree = Any

#: Curvatures of :func:`diagnose`: the exact ones of :func:`curvlab.dataset_operator` and the
#: approximations ``"kfac"``, ``"ekfac"`` (:func:`curvlab.kfac_operator`, exact-Fisher type, over
#: the whole dataset) and ``"fisher_mc"`` (:func:`curvlab.mc_fisher_operator`).
CURVATURES = _EXACT_CURVATURES + ("kfac", "ekfac", "fisher_mc")
APPROXIMATIONS = ("kfac", "ekfac", "fisher_mc")

#: Default :math:`\\tau` of the spectral masses: an SLQ node :math:`\\theta` counts as negative only
#: below :math:`-\\tau s` and as positive only above :math:`\\tau s` (:math:`s` the spectral scale
#: :math:`\\max(|\\lambda_{\\max}|, |\\lambda_{\\min}|)`); in between it is the zero cluster. ``1e-3``
#: sits above the rounding floor of float32 Lanczos nodes (a few ``1e-4`` of :math:`s` at worst),
#: so a node standing for an exactly singular cluster cannot flip its sign, and ten times below
#: the default smoothing width of the density (1% of the spread), so any mass the plot shows apart
#: from zero is counted.
MASS_TOL = 1e-3

__all__ = [
    "CURVATURES",
    "MASS_TOL",
    "DiagnoseOptions",
    "BlockReport",
    "CurvatureReport",
    "BlockOperator",
    "diagnose",
    "gradient_stats",
    "extreme_eigenvalues",
    "density_stats",
    "spectral_masses",
    "block_reports",
    "assemble_report",
    "summary_table",
]


# ---------------------------------------------------------------------------
# Block operators
# ---------------------------------------------------------------------------


@pytree_operator
class BlockOperator(LinearOperator):
    """Diagonal block :math:`A_{[s:e],[s:e]}` of an operator: ``v`` is zero outside the block.

    A principal submatrix: it keeps the operator's tags.
    """

    op: LinearOperator
    start: int = static_field()
    stop: int = static_field()

    def __init__(self, op: LinearOperator, start: int, stop: int):
        if not 0 <= start < stop <= op.size:
            raise ValueError(f"block [{start}, {stop}) is not inside [0, {op.size})")
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "start", int(start))
        object.__setattr__(self, "stop", int(stop))

    size = property(lambda self: self.stop - self.start)
    dtype = property(lambda self: self.op.dtype)
    tags = property(lambda self: self.op.tags)

    def _embed(self, fn, vb):
        v = jnp.zeros((self.op.size,), vb.dtype).at[self.start : self.stop].set(vb)
        return fn(v)[self.start : self.stop]

    def matvec(self, v):
        return self._embed(self.op.matvec, v)

    def prepare(self):
        fn = self.op.prepare()
        return lambda v: self._embed(fn, v)


@pytree_operator
class _MaskedOperator(LinearOperator):
    """:math:`P A P - c (I - P)` with :math:`P = \\operatorname{diag}(\\text{mask})`.

    Its eigenvalues are those of the diagonal block :math:`A_{bb}` and
    :math:`-c` (on the complement). With the mask a leaf (not static), every
    block of the same model reuses one compiled solver.
    """

    op: LinearOperator
    mask: jax.Array
    shift: jax.Array

    size = property(lambda self: self.op.size)
    dtype = property(lambda self: self.op.dtype)

    def matvec(self, v):
        return self.mask * self.op.matvec(self.mask * v) - self.shift * (1 - self.mask) * v

    def prepare(self):
        fn = self.op.prepare()
        return lambda v: self.mask * fn(self.mask * v) - self.shift * (1 - self.mask) * v


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


def _blocks(params, depth=None) -> list[tuple[str, int, int]]:
    """Contiguous ``(name, start, stop)`` ranges of the flat parameters, one per block.

    Blocks group the leaves by the first ``depth`` entries of their pytree path.
    With ``depth=None`` the smallest depth giving more than one block is used
    (so an Equinox ``MLP`` splits into ``.layers[0]``, ``.layers[1]``, ...).
    """
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    sizes = [math.prod(np.shape(a)) for _, a in paths]
    max_depth = max(len(p) for p, _ in paths)

    def group(d):
        out: list[list] = []
        for (path, _), size in zip(paths, sizes, strict=True):
            name = jax.tree_util.keystr(path[:d]) or "<root>"
            if out and out[-1][0] == name:
                out[-1][1] += size
            else:
                out.append([name, size])
        return out

    if depth is None:
        groups = group(max_depth)
        for d in range(1, max_depth + 1):
            g = group(d)
            if len(g) > 1:
                groups = g
                break
    else:
        groups = group(check_positive_int("block_depth", depth))
    res, start = [], 0
    for name, size in groups:
        clean = name.replace(".value", "") if name.endswith(".value") else name
        res.append((clean, start, start + size))
        start += size
    return res


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


class BlockReport(NamedTuple):
    """Curvature of one parameter block (the diagonal block of the operator).

    Attributes
    ----------
    name : str
        Pytree path of the block (e.g. ``['layer1']``).
    size : int
        Number of parameters in the block.
    top_eigenvalue : float
        Largest eigenvalue of the diagonal block :math:`A_{bb}`.
    top_residual : float
        Its residual norm :math:`\\|A_{bb} u - \\lambda u\\|`.
    trace, trace_stderr : float
        Hutch++ estimate of :math:`\\operatorname{tr} A_{bb}` and its standard error.
    """

    name: str
    size: int
    top_eigenvalue: float
    top_residual: float
    trace: float
    trace_stderr: float


def _f(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _fl(a):
    return [_f(v) for v in np.asarray(a, dtype=np.float64).ravel()]


class CurvatureReport(NamedTuple):
    """Curvature of a model's loss over a dataset; see :func:`diagnose`.

    Attributes
    ----------
    curvature : str
        ``"hessian"``, ``"ggn"`` or ``"fisher"``.
    top_eigenvalues, top_residuals : ndarray
        The ``k`` largest eigenvalues (descending) and their residual norms.
    bottom_eigenvalues, bottom_residuals : ndarray
        The ``k`` smallest eigenvalues (ascending) and their residual norms.
    trace, trace_stderr : float
        Hutch++ estimate of :math:`\\operatorname{tr} A` and its standard error.
    density_grid, density, density_stderr : ndarray
        SLQ spectral density on a grid (integrates to one) and its standard
        error across probes (the band is ``density ± 2 stderr``).
    negative_mass, negative_mass_stderr : float
        Fraction of the spectrum clearly below zero, :math:`\\frac1m\\sum_j\\sum_i
        w_{ij}[\\theta_{ij} < -\\tau s]` from the SLQ nodes :math:`\\theta` and weights :math:`w`
        of the :math:`m` probes, and its standard error across probes. :math:`s =
        \\max(|\\lambda_{\\max}|, |\\lambda_{\\min}|)`, :math:`\\tau` = ``mass_tol``
        (:data:`MASS_TOL`): eigenvalues within :math:`\\tau s` of zero are the zero cluster,
        which therefore cannot flip sign on rounding.
    condition_number : float
        :math:`(\\lambda_{\\max}+\\delta)/(\\lambda_{\\min}+\\delta)` of the damped
        operator, ``nan`` when :math:`\\lambda_{\\min}+\\delta \\le 0`.
    damping : float
        :math:`\\delta`.
    gradient_curvature : float
        :math:`g^\\top A g / g^\\top g` along the dataset gradient ``g``.
    gradient_norm, loss : float
        :math:`\\|g\\|` and the dataset-average loss.
    blocks : tuple of BlockReport
        Per-block top eigenvalue and trace (empty if ``per_block=False``).
    num_params, num_examples, num_batches : int
    num_operator_products : int
        Products :math:`A v` (each one pass over the dataset).
    num_hvps : int
        Per-batch curvature products (``num_operator_products * num_batches``).
    wall_time : float
        Seconds.
    messages : dict
        Status messages of the solvers.
    zero_mass, zero_mass_stderr, positive_mass, positive_mass_stderr : float
        The same for :math:`|\\theta| \\le \\tau s` and :math:`\\theta > \\tau s` (the three sum to one).
    mass_threshold, mass_tol : float
        :math:`\\tau s` and :math:`\\tau`.
    approximation : dict or None
        For ``curvature`` ``"kfac"``, ``"ekfac"``, ``"fisher_mc"`` with ``compare_exact=True``:
        ``{"exact": "ggn", "exact_top_eigenvalues": [...], "relative_errors": [...]}``, the top
        eigenvalues of the exact GGN and the relative errors
        :math:`|\\lambda_i - \\lambda_i^{\\text{exact}}| / |\\lambda_i^{\\text{exact}}|`.
    """

    curvature: str
    top_eigenvalues: np.ndarray
    top_residuals: np.ndarray
    bottom_eigenvalues: np.ndarray
    bottom_residuals: np.ndarray
    trace: float
    trace_stderr: float
    density_grid: np.ndarray
    density: np.ndarray
    density_stderr: np.ndarray
    negative_mass: float
    condition_number: float
    damping: float
    gradient_curvature: float
    gradient_norm: float
    loss: float
    blocks: tuple
    num_params: int
    num_examples: int
    num_batches: int
    num_operator_products: int
    num_hvps: int
    wall_time: float
    messages: dict
    negative_mass_stderr: float = float("nan")
    zero_mass: float = float("nan")
    zero_mass_stderr: float = float("nan")
    positive_mass: float = float("nan")
    positive_mass_stderr: float = float("nan")
    mass_threshold: float = float("nan")
    mass_tol: float = MASS_TOL
    approximation: dict | None = None

    # -- serialization ------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe dictionary (plain floats and lists; ``nan``/``inf`` become ``None``)."""
        return {
            "curvature": self.curvature,
            "top_eigenvalues": _fl(self.top_eigenvalues),
            "top_residuals": _fl(self.top_residuals),
            "bottom_eigenvalues": _fl(self.bottom_eigenvalues),
            "bottom_residuals": _fl(self.bottom_residuals),
            "trace": _f(self.trace),
            "trace_stderr": _f(self.trace_stderr),
            "density": {
                "grid": _fl(self.density_grid),
                "density": _fl(self.density),
                "stderr": _fl(self.density_stderr),
            },
            "negative_mass": _f(self.negative_mass),
            "negative_mass_stderr": _f(self.negative_mass_stderr),
            "spectral_masses": {
                "tau": _f(self.mass_tol),
                "threshold": _f(self.mass_threshold),
                "negative": {"value": _f(self.negative_mass), "stderr": _f(self.negative_mass_stderr)},
                "zero": {"value": _f(self.zero_mass), "stderr": _f(self.zero_mass_stderr)},
                "positive": {"value": _f(self.positive_mass), "stderr": _f(self.positive_mass_stderr)},
            },
            "approximation": _approx_dict(self.approximation),
            "condition_number": _f(self.condition_number),
            "damping": _f(self.damping),
            "gradient_curvature": _f(self.gradient_curvature),
            "gradient_norm": _f(self.gradient_norm),
            "loss": _f(self.loss),
            "blocks": [
                {
                    "name": b.name,
                    "size": int(b.size),
                    "top_eigenvalue": _f(b.top_eigenvalue),
                    "top_residual": _f(b.top_residual),
                    "trace": _f(b.trace),
                    "trace_stderr": _f(b.trace_stderr),
                }
                for b in self.blocks
            ],
            "num_params": int(self.num_params),
            "num_examples": int(self.num_examples),
            "num_batches": int(self.num_batches),
            "num_operator_products": int(self.num_operator_products),
            "num_hvps": int(self.num_hvps),
            "wall_time": _f(self.wall_time),
            "messages": {str(k): str(v) for k, v in self.messages.items()},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A plain-text table of the main numbers (what ``curvlab diagnose`` prints)."""
        return summary_table(self)


def _approx_dict(a):
    if a is None:
        return None
    return {
        "exact": str(a["exact"]),
        "exact_top_eigenvalues": _fl(a["exact_top_eigenvalues"]),
        "relative_errors": _fl(a["relative_errors"]),
    }


def summary_table(report: CurvatureReport) -> str:
    """A plain-text table of a report's main numbers."""

    def g(x):
        x = float(x)
        return f"{x:.6g}" if math.isfinite(x) else "n/a"

    rows = [
        ("curvature", report.curvature),
        ("parameters", f"{report.num_params:,}"),
        ("examples / batches", f"{report.num_examples:,} / {report.num_batches}"),
        ("loss", g(report.loss)),
        ("gradient norm", g(report.gradient_norm)),
        ("top eigenvalues", ", ".join(g(v) for v in report.top_eigenvalues)),
        ("  residuals", ", ".join(f"{float(v):.1e}" for v in report.top_residuals)),
        ("bottom eigenvalues", ", ".join(g(v) for v in report.bottom_eigenvalues)),
        ("  residuals", ", ".join(f"{float(v):.1e}" for v in report.bottom_residuals)),
        ("trace", f"{g(report.trace)} ± {g(report.trace_stderr)}"),
        (
            f"spectral mass < -{g(report.mass_threshold)}",
            f"{g(report.negative_mass)} ± {g(report.negative_mass_stderr)}",
        ),
        (
            f"  |λ| <= {g(report.mass_threshold)} / above",
            f"{g(report.zero_mass)} ± {g(report.zero_mass_stderr)} / "
            f"{g(report.positive_mass)} ± {g(report.positive_mass_stderr)}",
        ),
        (f"condition (damping {g(report.damping)})", g(report.condition_number)),
        ("curvature along gradient", g(report.gradient_curvature)),
        ("operator products / HVPs", f"{report.num_operator_products} / {report.num_hvps}"),
        ("wall time", f"{report.wall_time:.2f} s"),
    ]
    if report.approximation is not None:
        a = report.approximation
        rows.append(
            (f"exact {a['exact']} top eigenvalues", ", ".join(g(v) for v in a["exact_top_eigenvalues"]))
        )
        rows.append(("  relative errors", ", ".join(f"{float(v):.2e}" for v in a["relative_errors"])))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {val}" for name, val in rows]
    if report.blocks:
        nw = max(max(len(b.name) for b in report.blocks), 5)
        lines.append("")
        lines.append(f"{'block':<{nw}}  {'size':>10}  {'λmax':>12}  {'trace':>12}  {'± stderr':>10}")
        for b in report.blocks:
            lines.append(
                f"{b.name:<{nw}}  {b.size:>10,}  {g(b.top_eigenvalue):>12}  {g(b.trace):>12}  "
                f"{g(b.trace_stderr):>10}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# diagnose: options, progress, and the pieces it orchestrates
# ---------------------------------------------------------------------------


class DiagnoseOptions(NamedTuple):
    """The solver options of :func:`diagnose`, validated (:meth:`validate`, errors name the argument).

    Attributes
    ----------
    k : int
        Number of top and of bottom eigenvalues.
    num_probes, num_steps : int
        Stochastic Lanczos quadrature probes and Lanczos steps per probe.
    trace_probes : int or None
        Hutch++ matvec budget of the traces (default ``max(num_probes, 4)``).
    rtol : float
        Relative residual tolerance of :func:`curvlab.eigsh`.
    max_matvecs, block_max_matvecs : int or None
        ``max_matvecs`` of the eigensolve and of the per-block eigensolves (default the former).
    damping : float
        :math:`\\delta \\ge 0` of the condition estimate.
    per_block : bool
        Also report each parameter block's top eigenvalue and trace.
    block_depth : int or None
        Pytree path depth that defines blocks (default: the first depth with > 1 block).
    chunk_size : int or None
        Probes of the trace and density estimators in flight at a time (default: all
        below 100,000 parameters, else one).
    mass_tol : float
        :math:`\\tau` of the spectral masses (:data:`MASS_TOL`), in ``[0, 1)``.
    """

    k: int = 5
    num_probes: int = 10
    num_steps: int = 60
    trace_probes: int | None = None
    rtol: float = 1e-6
    max_matvecs: int | None = None
    block_max_matvecs: int | None = None
    damping: float = 0.0
    per_block: bool = True
    block_depth: int | None = None
    chunk_size: int | None = None
    mass_tol: float = MASS_TOL

    def validate(self) -> DiagnoseOptions:
        """These options with defaults filled in; ``ValueError`` naming a bad argument."""
        opt = lambda name, v: None if v is None else check_positive_int(name, v)
        tp = self.trace_probes
        damping = self.damping
        if not (isinstance(damping, (int, float, np.floating)) and math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
        tau = self.mass_tol
        if not (isinstance(tau, (int, float, np.floating)) and 0 <= tau < 1):
            raise ValueError(f"mass_tol must be a number in [0, 1), got {tau!r}")
        max_matvecs = opt("max_matvecs", self.max_matvecs)
        block_max = opt("block_max_matvecs", self.block_max_matvecs)
        return self._replace(
            k=check_positive_int("k", self.k),
            num_probes=check_positive_int("num_probes", self.num_probes),
            num_steps=check_positive_int("num_steps", self.num_steps),
            trace_probes=max(self.num_probes, 4) if tp is None else check_positive_int("trace_probes", tp, 4),
            max_matvecs=max_matvecs,
            block_max_matvecs=max_matvecs if block_max is None else block_max,
            block_depth=opt("block_depth", self.block_depth),
            chunk_size=opt("chunk_size", self.chunk_size),
            damping=float(damping),
            mass_tol=float(tau),
        )


class _Progress:
    """Per-call progress: counts operator products from the solvers' ``num_matvecs`` (and a tqdm bar)."""

    def __init__(self, progress: bool | None, desc: str):
        self.passes = 0
        self.bar = None
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=desc, unit=" pass", leave=False)

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name)

    def add(self, num_matvecs) -> None:
        n = int(num_matvecs)
        self.passes += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class GradientStats(NamedTuple):
    """Dataset loss, :math:`\\|g\\|` and :math:`g^\\top A g / g^\\top g` (``nan`` for ``g = 0``)."""

    loss: float
    gradient_norm: float
    gradient_curvature: float
    num_matvecs: int


@jax.jit
def _gradient_stats_jit(op):
    loss, g = op.value_and_gradient()
    gg = jnp.vdot(g, g)
    gAg = jnp.vdot(g, op.matvec(g))
    return loss, jnp.sqrt(gg), jnp.where(gg > 0, gAg / jnp.where(gg > 0, gg, 1), jnp.nan)


def gradient_stats(op: CurvatureOperator) -> GradientStats:
    """Loss and gradient of the operator's dataset and the curvature along the gradient.

    Raises ``ValueError`` when the loss or the gradient is not finite (no solver could give
    a finite result from such an operator).
    """
    loss, gnorm, curv = (float(a) for a in _gradient_stats_jit(op))
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        raise ValueError(
            f"the dataset loss ({loss}) or its gradient norm ({gnorm}) is not finite at params; "
            "check params and data for NaN / inf"
        )
    return GradientStats(loss, gnorm, curv, 1)


class Extremes(NamedTuple):
    """The ``k`` top (descending) and bottom (ascending) eigenvalues with residual norms."""

    top: np.ndarray
    top_residuals: np.ndarray
    bottom: np.ndarray
    bottom_residuals: np.ndarray
    num_matvecs: int
    message: str


def _dense_extremes(op, k) -> Extremes:
    """Tiny problem (``n <= 2k``): all eigenvalues from ``n`` matvecs."""
    n = op.size
    dense = np.asarray(op.to_dense(), dtype=np.float64)
    lam, vec = np.linalg.eigh((dense + dense.T) / 2)
    idx = np.r_[np.arange(k), np.arange(n - k, n)]
    res = np.linalg.norm(dense @ vec[:, idx] - vec[:, idx] * lam[idx], axis=0)
    msg = f"exact: dense eigendecomposition (n = {n} <= 2k = {2 * k})"
    return Extremes(lam[idx][k:][::-1], res[k:][::-1], lam[idx][:k], res[:k], n, msg)


def _lanczos_extremes(op, k, num_steps, key, why) -> Extremes:
    """Fallback: Ritz values of a reorthogonalized Lanczos run, residual bounds :math:`|\\beta_m s_{mi}|`."""
    from curvlab._lanczos import lanczos

    run = lanczos(op, num_steps, key=key, history=False)
    m = int(run.num_steps)
    if m < 2 * k or not bool(np.all(np.isfinite(np.asarray(run.alpha[:m])))):
        raise ValueError(f"the curvature operator gave non-finite products ({why}; Lanczos: {run.message})")
    theta, S = np.linalg.eigh(np.asarray(run.tridiagonal(), dtype=np.float64))
    res = np.abs(float(run.beta[m - 1]) * S[m - 1, :])
    msg = f"{why}; the extremes are Ritz values of a {m}-step Lanczos run (residual bounds as residuals)"
    return Extremes(theta[::-1][:k], res[::-1][:k], theta[:k], res[:k], int(run.num_matvecs), msg)


def extreme_eigenvalues(
    op: LinearOperator, k: int, *, rtol: float, max_matvecs, key, retries: int = 2
) -> Extremes:
    """Both ends of the spectrum from one thick-restart ``eigsh(which="BE")`` run; always finite.

    ``n <= 2k``: a dense eigendecomposition. An eigsh run that stops on a non-finite value
    (seen on operators with a large null space) is retried from ``retries`` new start
    vectors, then replaced by :func:`_lanczos_extremes`; the message says which, and
    ``num_matvecs`` counts every attempt.
    """
    from curvlab._eigsh import eigsh

    if 2 * k >= op.size:
        return _dense_extremes(op, k)
    used, why = 0, []
    for attempt_key in (key, *jax.random.split(key, retries)):
        ends = eigsh(op, k=2 * k, which="BE", rtol=rtol, max_matvecs=max_matvecs, key=attempt_key)
        used += int(ends.num_matvecs)
        evals, resid = np.asarray(ends.eigenvalues), np.asarray(ends.residual_norms)
        if np.all(np.isfinite(evals)) and np.all(np.isfinite(resid)):
            msg = ends.message
            if why:
                msg = f"{msg} (after {len(why)} restart(s) from new start vectors: eigsh {why[0]})"
            return Extremes(evals[k:][::-1], resid[k:][::-1], evals[:k], resid[:k], used, msg)
        why.append(ends.message)
    steps = min(op.size, max(int(ends.num_matvecs), 4 * k + 20))
    fb = _lanczos_extremes(op, k, steps, key, f"eigsh failed {len(why)} times ({why[0]})")
    return fb._replace(num_matvecs=fb.num_matvecs + used)


class DensityStats(NamedTuple):
    """SLQ density on a grid, its standard error and the spectral masses with their standard errors.

    ``negative_mass``, ``zero_mass``, ``positive_mass`` are the fractions of the spectrum below
    :math:`-\\tau s`, within :math:`[-\\tau s, \\tau s]` and above :math:`\\tau s`
    (``mass_threshold`` :math:`= \\tau s`), each the mean over the probes; ``*_stderr`` the standard
    error of that mean across probes (``nan`` for one probe).
    """

    grid: np.ndarray
    density: np.ndarray
    stderr: np.ndarray
    negative_mass: float
    num_matvecs: int
    message: str
    negative_mass_stderr: float = float("nan")
    zero_mass: float = float("nan")
    zero_mass_stderr: float = float("nan")
    positive_mass: float = float("nan")
    positive_mass_stderr: float = float("nan")
    mass_threshold: float = 0.0
    mass_tol: float = MASS_TOL


def spectral_masses(nodes, weights, threshold: float) -> dict[str, tuple[float, float]]:
    """``{"negative" | "zero" | "positive": (mean, stderr)}`` of the per-probe SLQ masses.

    Probe :math:`j` estimates :math:`\\frac1n \\#\\{\\lambda < -t\\}` by
    :math:`\\sum_i w_{ij} [\\theta_{ij} < -t]` (its weights normalised to one; NaN nodes carry no
    weight); the mean over the :math:`m` probes is reported with the standard error
    :math:`\\operatorname{std}_j / \\sqrt m` (``nan`` for :math:`m = 1`). Likewise
    :math:`|\\theta| \\le t` (zero) and :math:`\\theta > t` (positive).
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.where(np.isnan(nodes), 0.0, np.asarray(weights, dtype=np.float64))
    nodes = np.where(np.isnan(nodes), 0.0, nodes)
    total = weights.sum(axis=1)
    keep = total > 0
    out = {}
    for name, mask in (
        ("negative", nodes < -threshold),
        ("zero", np.abs(nodes) <= threshold),
        ("positive", nodes > threshold),
    ):
        per = (weights * mask).sum(axis=1)[keep] / total[keep]
        m = per.size
        mean = float(per.mean()) if m else 0.0
        err = float(per.std(ddof=1) / math.sqrt(m)) if m > 1 else float("nan")
        out[name] = (mean, err)
    return out


def density_stats(
    op: LinearOperator, *, num_probes, num_steps, key, chunk_size, scale=None, mass_tol: float = MASS_TOL
) -> DensityStats:
    """:func:`curvlab.spectral_density` and its spectral masses (see :func:`spectral_masses`).

    The threshold is :math:`\\tau s` with :math:`\\tau` ``= mass_tol`` and :math:`s` ``= scale``
    (default: the largest :math:`|\\theta|` among the nodes); see :data:`MASS_TOL`.
    """
    from curvlab._spectral import spectral_density

    sd = spectral_density(
        op, num_probes=num_probes, num_steps=min(num_steps, op.size), key=key, chunk_size=chunk_size
    )
    nodes = np.asarray(sd.nodes, dtype=np.float64)
    if scale is None:
        scale = float(np.nanmax(np.abs(nodes))) if np.any(np.isfinite(nodes)) else 0.0
    threshold = float(mass_tol) * abs(float(scale))
    masses = spectral_masses(nodes, sd.weights, threshold)
    density = np.asarray(sd.density)
    stderr = np.asarray(getattr(sd, "density_stderr", np.zeros_like(density)))
    (neg, neg_e), (zero, zero_e), (pos, pos_e) = masses["negative"], masses["zero"], masses["positive"]
    return DensityStats(
        np.asarray(sd.grid),
        density,
        stderr,
        neg,
        int(sd.num_matvecs),
        sd.message,
        neg_e,
        zero,
        zero_e,
        pos,
        pos_e,
        threshold,
        float(mass_tol),
    )


def _block_top(op, mask, shift, size, s, *, rtol, max_matvecs, key):
    """Top eigenvalue of one diagonal block: ``(eigenvalue, residual, message, matvecs)``."""
    from curvlab._eigsh import eigsh

    if size == 1:  # one parameter: A_bb = e_s^T A e_s
        lam = float(_MaskedOperator(op, mask, jnp.zeros((), op.dtype)).matvec(mask)[s])
        return lam, 0.0, "exact (one parameter)", 1
    be = eigsh(_MaskedOperator(op, mask, shift), k=1, which="LA", rtol=rtol, max_matvecs=max_matvecs, key=key)
    return float(be.eigenvalues[0]), float(be.residual_norms[0]), be.message, int(be.num_matvecs)


def block_reports(op: CurvatureOperator, opts: DiagnoseOptions, extremes: Extremes, key, progress=None):
    """Per-block top eigenvalue and trace: ``(tuple of BlockReport, messages)``.

    The complement of a block is pushed below the spectrum (:class:`_MaskedOperator` with
    shift :math:`2 \\max(|\\lambda_{\\max}|, |\\lambda_{\\min}|) + 1`), so the top eigenvalue
    found is the block's own; one compiled solver serves every block (the mask is a leaf).
    """
    from curvlab._spectral import trace

    progress = progress or _Progress(False, "")
    ranges = _blocks(op.x, opts.block_depth)
    if len(ranges) <= 1:
        return (), {}
    n, dtype = op.size, op.dtype
    keys = jax.random.split(key, 2 * len(ranges))
    shift = jnp.asarray(2 * max(abs(extremes.top[0]), abs(extremes.bottom[0])) + 1, dtype)
    blocks, messages = [], {}
    for i, (name, s, e) in enumerate(ranges):
        progress.phase(f"block {name}")
        mask = jnp.zeros((n,), dtype).at[s:e].set(1)
        lam, res, msg, used = _block_top(
            op, mask, shift, e - s, s, rtol=opts.rtol, max_matvecs=opts.block_max_matvecs, key=keys[2 * i]
        )
        masked = _MaskedOperator(op, mask, jnp.zeros((), dtype))
        bt = trace(masked, num_probes=opts.trace_probes, key=keys[2 * i + 1], chunk_size=opts.chunk_size)
        progress.add(used + int(bt.num_matvecs))
        messages[f"block {name}"] = msg
        blocks.append(BlockReport(name, e - s, lam, res, float(bt.value), float(bt.stderr)))
    return tuple(blocks), messages


def assemble_report(
    op: CurvatureOperator,
    curvature: str,
    opts: DiagnoseOptions,
    grad: GradientStats,
    ends: Extremes,
    tr,
    dens: DensityStats,
    blocks: tuple,
    messages: dict,
    *,
    num_operator_products: int,
    wall_time: float,
    approximation: dict | None = None,
) -> CurvatureReport:
    """The :class:`CurvatureReport` of the pieces; the condition number of the damped operator."""
    lmax, lmin, d = float(ends.top[0]), float(ends.bottom[0]), opts.damping
    return CurvatureReport(
        curvature=curvature,
        top_eigenvalues=np.ascontiguousarray(ends.top),
        top_residuals=np.ascontiguousarray(ends.top_residuals),
        bottom_eigenvalues=np.ascontiguousarray(ends.bottom),
        bottom_residuals=np.ascontiguousarray(ends.bottom_residuals),
        trace=float(tr.value),
        trace_stderr=float(tr.stderr),
        density_grid=dens.grid,
        density=dens.density,
        density_stderr=dens.stderr,
        negative_mass=dens.negative_mass,
        condition_number=(lmax + d) / (lmin + d) if lmin + d > 0 else float("nan"),
        damping=d,
        gradient_curvature=grad.gradient_curvature,
        gradient_norm=grad.gradient_norm,
        loss=grad.loss,
        blocks=blocks,
        num_params=op.size,
        num_examples=op.num_examples,
        num_batches=op.num_batches,
        num_operator_products=num_operator_products,
        num_hvps=num_operator_products * op.num_batches,
        wall_time=wall_time,
        messages=messages,
        negative_mass_stderr=dens.negative_mass_stderr,
        zero_mass=dens.zero_mass,
        zero_mass_stderr=dens.zero_mass_stderr,
        positive_mass=dens.positive_mass,
        positive_mass_stderr=dens.positive_mass_stderr,
        mass_threshold=dens.mass_threshold,
        mass_tol=dens.mass_tol,
        approximation=approximation,
    )


@pytree_operator
class ApproximateCurvature(LinearOperator):
    """An approximate curvature ``approx`` (K-FAC, EK-FAC) over an exact operator's dataset.

    Products are ``approx``'s; the loss, gradient, parameters and dataset sizes are the exact
    operator's (what :func:`diagnose` reports beside the spectrum). Tagged as ``approx``.
    """

    approx: LinearOperator
    exact: CurvatureOperator

    size = property(lambda self: self.approx.size)
    dtype = property(lambda self: self.approx.dtype)
    tags = property(lambda self: self.approx.tags)
    x = property(lambda self: self.exact.x)
    num_examples = property(lambda self: self.exact.num_examples)
    num_batches = property(lambda self: self.exact.num_batches)

    def matvec(self, v):
        return self.approx.matvec(v)

    def prepare(self):
        return self.approx.prepare()

    def value_and_gradient(self):
        return self.exact.value_and_gradient()


def approximate_operator(curvature: str, ggn: CurvatureOperator, *, key, num_samples: int = 1):
    """The ``"kfac"``, ``"ekfac"`` or ``"fisher_mc"`` operator over the dataset of a GGN operator."""
    if curvature == "fisher_mc":
        from curvlab._fisher import MCFisherOperator

        return MCFisherOperator(
            ggn.model_fn,
            ggn.output_loss_fn,
            ggn.x,
            data=ggn.data,
            num_samples=num_samples,
            key=key,
            loss_fn=ggn.loss_fn,
        )
    from curvlab._kfac import _constructor

    approx = _constructor(
        curvature,
        ggn.model_fn,
        ggn.output_loss_fn,
        ggn.x,
        None,
        fisher_type="exact",
        damping=0.0,
        key=key,
        num_samples=1,
        likelihood=None,
        reduction="mean",
        data=ggn.data,
    )
    return ApproximateCurvature(approx, ggn)


def compare_with_exact(top, exact: LinearOperator, *, rtol, key):
    """Top ``len(top)`` eigenvalues of ``exact`` and the relative errors of ``top``.

    Returns ``(approximation dict, matvecs used, eigsh message)``.
    """
    from curvlab._eigsh import eigsh

    k = len(top)
    if 2 * k >= exact.size:
        dense = np.asarray(exact.to_dense(), dtype=np.float64)
        lam, used, msg = np.linalg.eigvalsh((dense + dense.T) / 2)[::-1][:k], exact.size, "exact: dense"
    else:
        res = eigsh(exact, k=k, which="LA", rtol=rtol, key=key)
        lam, used, msg = np.asarray(res.eigenvalues, dtype=np.float64), int(res.num_matvecs), res.message
    top = np.asarray(top, dtype=np.float64)
    err = np.abs(top - lam) / np.where(lam != 0, np.abs(lam), 1.0)
    return {"exact": "ggn", "exact_top_eigenvalues": lam, "relative_errors": err}, used, msg


def diagnose(
    loss_fn: Callable | None,
    params: PyTree,
    data,
    *,
    k: int = 5,
    curvature: str = "hessian",
    batch_size: int | None = None,
    model_fn: Callable | None = None,
    output_loss_fn: Callable | None = None,
    per_example_loss_fn: Callable | None = None,
    num_probes: int = 10,
    num_steps: int = 60,
    trace_probes: int | None = None,
    rtol: float = 1e-6,
    max_matvecs: int | None = None,
    key: jax.Array | None = None,
    damping: float = 0.0,
    per_block: bool = True,
    block_depth: int | None = None,
    block_max_matvecs: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    checkpoint: bool = False,
    mesh=None,
    data_axis: str = "data",
    mass_tol: float = MASS_TOL,
    compare_exact: bool = False,
    num_samples: int = 1,
) -> CurvatureReport:
    """Curvature report of ``loss_fn`` at ``params`` over a dataset.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch) -> scalar``, the *mean* loss over the batch.
        May be ``None`` for ``curvature="ggn"`` (then
        ``output_loss_fn(model_fn(params, inputs), targets)``).
    params : pytree or module
        Floating-point arrays only; or a Flax NNX / Equinox module (see module docs).
    data : pytree of arrays, list of batches, function returning batches, or re-iterable loader
        See :mod:`curvlab._data`. The operator is the batch-size-weighted average of
        per-batch curvature.
    curvature : {"hessian", "ggn", "fisher", "kfac", "ekfac", "fisher_mc"}
        ``"fisher"`` is the empirical Fisher :math:`\\frac1N \\sum_i \\nabla\\ell_i
        \\nabla\\ell_i^\\top` (1/N of the sum of per-example gradient outer products), the
        same operator as :func:`curvlab.fisher_operator` on the whole dataset. ``"kfac"`` /
        ``"ekfac"``: :func:`curvlab.kfac_operator` / :func:`curvlab.ekfac_operator` of the GGN
        (``fisher_type="exact"``) with factors averaged over the dataset; ``"fisher_mc"``:
        :func:`curvlab.mc_fisher_operator` (``output_loss_fn`` a curvlab ``OutputLoss``,
        ``num_samples`` labels per example). All three need ``model_fn`` and ``output_loss_fn``;
        loss, gradient and the curvature along the gradient's denominator are the exact ones.
    mass_tol : float
        :math:`\\tau` of the spectral masses (default :data:`MASS_TOL`): eigenvalues within
        :math:`\\tau \\max(|\\lambda_{\\max}|, |\\lambda_{\\min}|)` of zero form the zero cluster.
    compare_exact : bool
        With an approximate ``curvature``: also compute the top ``k`` eigenvalues of the exact
        GGN and report them with the relative errors (``report.approximation``).
    batch_size : int, optional
        For array ``data``: batch size (the remainder forms a smaller batch).
    model_fn, output_loss_fn : callable, optional
        For ``"ggn"``: ``model_fn(params, inputs)``, ``output_loss_fn(outputs, targets)``.
    per_example_loss_fn : callable, optional
        For ``"fisher"``: ``(params, batch) -> (n_b,)``; default: ``loss_fn`` on each example.
    k, num_probes, num_steps, trace_probes, rtol, max_matvecs, damping, per_block, block_depth, \
block_max_matvecs, chunk_size
        Solver options, see :class:`DiagnoseOptions`.
    key : jax.random key, optional
        Randomness of all estimators (default ``jax.random.key(0)``).
    progress : bool, optional
        tqdm progress bar counting dataset passes (default: when stderr is a terminal).
    checkpoint : bool
        Wrap the loss in ``jax.checkpoint``: less memory per HVP, more compute.
    mesh : jax.sharding.Mesh or "auto", optional
        Data-parallel over the mesh axis ``data_axis`` (see :mod:`curvlab.sharding`).

    Returns
    -------
    CurvatureReport
        Finite eigenvalues, residuals, traces and density (see "No NaN results" in the module docs).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.key(0), (32, 3)); y = X @ jnp.ones(3)
    >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
    >>> r = diagnose(loss, jnp.zeros(3), (X, y), batch_size=8, k=1, num_probes=3,
    ...              num_steps=3, per_block=False, progress=False)
    >>> bool(jnp.allclose(r.top_eigenvalues[0], jnp.linalg.eigvalsh(X.T @ X / 32)[-1]))
    True
    """
    from curvlab._spectral import trace

    check_not_traced(
        "diagnose",
        "it runs several solvers, each one compiled call, and assembles a report of Python numbers",
        params=params,
        data=data if not callable(data) else None,
    )
    opts = DiagnoseOptions(
        k=k,
        num_probes=num_probes,
        num_steps=num_steps,
        trace_probes=trace_probes,
        rtol=rtol,
        max_matvecs=max_matvecs,
        block_max_matvecs=block_max_matvecs,
        damping=damping,
        per_block=per_block,
        block_depth=block_depth,
        chunk_size=chunk_size,
    ).validate()
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if compare_exact and curvature not in APPROXIMATIONS:
        raise ValueError(
            f"compare_exact=True needs an approximate curvature {APPROXIMATIONS}, got {curvature!r}"
        )
    opts = opts._replace(mass_tol=DiagnoseOptions(mass_tol=mass_tol).validate().mass_tol)
    t0 = time.perf_counter()
    keys = jax.random.split(jax.random.key(0) if key is None else key, 6)
    op = dataset_operator(
        loss_fn,
        params,
        data,
        curvature="ggn" if curvature in APPROXIMATIONS else curvature,
        batch_size=batch_size,
        model_fn=model_fn,
        output_loss_fn=output_loss_fn,
        per_example_loss_fn=per_example_loss_fn,
        checkpoint=checkpoint,
        mesh=mesh,
        data_axis=data_axis,
    )
    exact = op
    if curvature in APPROXIMATIONS:
        op = approximate_operator(curvature, op, key=keys[5], num_samples=num_samples)
    if opts.k >= op.size:
        raise ValueError(f"k = {opts.k} must be smaller than the number of parameters ({op.size})")
    if opts.chunk_size is None and op.size >= 100_000:
        opts = opts._replace(chunk_size=1)
    prog = _Progress(progress, f"curvlab.diagnose ({curvature}, {op.size:,} params)")
    try:
        prog.phase("gradient")
        grad = gradient_stats(op)
        prog.add(grad.num_matvecs)
        prog.phase("extreme eigenvalues")
        ends = extreme_eigenvalues(op, opts.k, rtol=opts.rtol, max_matvecs=opts.max_matvecs, key=keys[0])
        prog.add(ends.num_matvecs)
        prog.phase("trace")
        tr = trace(op, num_probes=opts.trace_probes, key=keys[2], chunk_size=opts.chunk_size)
        prog.add(tr.num_matvecs)
        prog.phase("spectral density")
        dens = density_stats(
            op,
            num_probes=opts.num_probes,
            num_steps=opts.num_steps,
            key=keys[3],
            chunk_size=opts.chunk_size,
            scale=max(abs(float(ends.top[0])), abs(float(ends.bottom[0]))),
            mass_tol=opts.mass_tol,
        )
        prog.add(dens.num_matvecs)
        blocks, block_msgs = block_reports(op, opts, ends, keys[4], prog) if opts.per_block else ((), {})
        approximation = None
        if compare_exact:
            prog.phase("exact top eigenvalues")
            approximation, used, msg = compare_with_exact(ends.top, exact, rtol=opts.rtol, key=keys[1])
            block_msgs["exact ggn"] = msg
            prog.add(used)
    finally:
        prog.close()
    messages = {"eigsh": ends.message, "density": dens.message, **block_msgs}
    return assemble_report(
        op,
        curvature,
        opts,
        grad,
        ends,
        tr,
        dens,
        blocks,
        messages,
        num_operator_products=prog.passes,
        wall_time=time.perf_counter() - t0,
        approximation=approximation,
    )

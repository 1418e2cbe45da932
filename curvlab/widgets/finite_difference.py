"""FiniteDifferenceExplorer: why finite-difference HVPs have a best step, and AD does not need one.

For a function :math:`f`, a point :math:`x` and a unit direction :math:`v`,
the explorer plots the relative error

.. math:: e(\\varepsilon) = \\frac{\\lVert \\mathrm{FD}_\\varepsilon - H v\\rVert}{\\lVert H v\\rVert}

of the forward and central finite-difference HVPs
(:func:`curvlab.fd_hvp`) against the step :math:`\\varepsilon \\in [10^{-14}, 10^{-1}]`
on log-log axes, in float32 or float64, against the automatic-differentiation
product :func:`curvlab._hvp` computed in float64 as the reference. The curves
are V-shaped:

* **truncation** (right branch): with :math:`g(t) = \\nabla f(x + t v)`,
  forward :math:`= Hv + \\tfrac{\\varepsilon}{2} g''(0) + O(\\varepsilon^2)`,
  central :math:`= Hv + \\tfrac{\\varepsilon^2}{6} g'''(0) + O(\\varepsilon^4)`;
  the asymptotes :math:`\\varepsilon\\lVert g''\\rVert / (2\\lVert Hv\\rVert)`
  and :math:`\\varepsilon^2\\lVert g'''\\rVert / (6\\lVert Hv\\rVert)` use the exact
  derivatives (nested ``jax.jacfwd``, float64);
* **rounding** (left branch): the gradients are only accurate to about
  :math:`\\epsilon_{\\mathrm{mach}}` times their size, and :math:`x + \\varepsilon v`
  is rounded, so the difference quotient carries an error
  :math:`\\approx \\epsilon_{\\mathrm{mach}} (\\lVert\\nabla f\\rVert + \\lVert x\\rVert
  \\lVert Hv\\rVert) / (\\varepsilon \\lVert Hv\\rVert)` (an order-of-magnitude guide).

The minimum sits near :math:`\\epsilon_{\\mathrm{mach}}^{1/2}` (forward) and
:math:`\\epsilon_{\\mathrm{mach}}^{1/3}` (central); stars mark
:func:`curvlab.fd_default_eps`. Flat dashed lines are the errors of the three
AD modes (``fwd_rev``, ``rev_fwd``, ``rev_rev``) in the working dtype: no step
to choose, error at the rounding level.

Float64 and ``jax_enable_x64``
------------------------------
Every computation runs inside ``with jax.enable_x64(True):`` so the float64
reference (and the float64 mode) works whether or not the global flag is on;
float32 work uses explicitly float32 arrays. JAX's jit cache keys include the
x64 setting, so the functions compiled here are reused across calls and never
mixed with ones traced under the other setting.

Speed: all 53 steps and both schemes, the three AD modes, the default-step
markers and the reference are **one** jitted call per slider move (``jax.vmap``
of :func:`curvlab.fd_hvp` over a traced step), compiled once per function and dtype.
"""

from __future__ import annotations

import functools
import html
import math
from typing import NamedTuple

import ipywidgets as widgets
import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go

from curvlab import problems, viz
from curvlab._hvp import FD_SCHEMES, HVP_MODES, fd_default_eps, fd_hvp, hvp
from curvlab.widgets._base import Explorer

__all__ = ["FiniteDifferenceExplorer", "FDResult", "FUNCTIONS", "EPS_GRID", "axis_ranges"]

#: Dropdown choices: value -> label.
FUNCTIONS = {
    "seed": "x²y + sin(y) (seed example)",
    "rosenbrock": "Rosenbrock",
    "himmelblau": "Himmelblau",
    "mlp": "small MLP on digits (a 2-D slice of its parameters)",
}
#: Steps ε, 4 per decade from 1e-14 to 1e-1.
EPS_GRID = np.logspace(-14.0, -1.0, 53)
DTYPES = ("float32", "float64")
ASYMPTOTES = ("∝ ε (forward truncation)", "∝ ε² (central truncation)", "∝ macheps/ε (rounding)")


class FDResult(NamedTuple):
    """What :meth:`FiniteDifferenceExplorer.compute` returns.

    Attributes
    ----------
    function, label, dtype : str
    point : ndarray
        The point in the working dtype (flat; 2 entries for 2-D functions).
    direction : ndarray
        The unit direction in the working dtype.
    angle : float
        Direction angle in degrees (in the plane of the two slider axes).
    eps : ndarray (53,)
        The steps, :data:`EPS_GRID` (rounded to the working dtype).
    errors : dict
        ``{"forward": (53,), "central": (53,)}`` relative errors against the float64 AD product.
    ad_errors : dict
        ``{"fwd_rev": float, "rev_fwd": float, "rev_rev": float}``: relative error of each AD
        mode in the working dtype (0.0 if it matches the reference exactly).
    asymptotes : dict
        The three reference lines of :data:`ASYMPTOTES`, each ``(53,)``.
    default_eps : dict
        ``{scheme: (eps, error)}``: :func:`curvlab.fd_default_eps` and the error there.
    best_eps, min_error : dict
        ``{scheme: float}``: the step with the smallest error on the grid, and that error.
    macheps : float
        Machine epsilon of the working dtype.
    hv_norm : float
        :math:`\\lVert H v\\rVert` (float64 reference).
    """

    function: str
    label: str
    dtype: str
    point: np.ndarray
    direction: np.ndarray
    angle: float
    eps: np.ndarray
    errors: dict
    ad_errors: dict
    asymptotes: dict
    default_eps: dict
    best_eps: dict
    min_error: dict
    macheps: float
    hv_norm: float


class _Fn(NamedTuple):
    label: str
    f: object  # flat f in this dtype
    base: jax.Array  # flat point at slider (0, 0)
    d1: jax.Array  # slider axes (unit, orthogonal)
    d2: jax.Array
    bounds: tuple  # (xmin, xmax, ymin, ymax) of the sliders


@functools.lru_cache(maxsize=16)
def _function(name: str, dtype: str) -> _Fn:
    """The function in ``dtype`` (call inside ``jax.enable_x64(True)``)."""
    dt = jnp.dtype(dtype)
    if name in problems.TWO_D_PROBLEMS:
        p = problems.TWO_D_PROBLEMS[name](dtype=dt)
        eye = jnp.eye(2, dtype=dt)
        b = tuple(float(a) for a in p.bounds)
        return _Fn(FUNCTIONS[name], p.f, jnp.zeros(2, dt), eye[0], eye[1], b)
    if name == "mlp":
        from jax.flatten_util import ravel_pytree

        p = problems.mlp(hidden=(8,), num_examples=64, dtype=dt)
        # cast the leaves: problems.mlp's weights may come out float64 under x64 even for dtype=float32
        x0, unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), p.x0))

        def f(w):
            return p.f(unravel(w))

        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((x0.size, 2)))
        d1, d2 = jnp.asarray(q[:, 0], dt), jnp.asarray(q[:, 1], dt)
        return _Fn(FUNCTIONS[name], f, x0, d1, d2, (-1.0, 1.0, -1.0, 1.0))
    raise ValueError(f"function must be one of {tuple(FUNCTIONS)}, got {name!r}")


@functools.lru_cache(maxsize=16)
def _kernel(name: str, dtype: str):
    """One jitted call: reference, FD errors over all eps, AD-mode errors, default-eps errors."""
    f64 = _function(name, "float64").f
    fd = _function(name, dtype).f
    dt = jnp.dtype(dtype)

    def rel(a, ref):
        return jnp.linalg.norm(a.astype(jnp.float64) - ref) / jnp.linalg.norm(ref)

    def kernel(p, v, eps, h_default):
        p64, v64 = p.astype(jnp.float64), v.astype(jnp.float64)
        ref = hvp(f64, p64, v64)  # float64 AD reference at the same (rounded) point

        def g(t):
            return jax.grad(f64)(p64 + t * v64)

        t0 = jnp.zeros((), jnp.float64)
        g2 = jax.jacfwd(jax.jacfwd(g))(t0)
        g3 = jax.jacfwd(jax.jacfwd(jax.jacfwd(g)))(t0)
        grad64 = g(t0)
        errors = {
            s: jax.vmap(lambda e, s=s: rel(fd_hvp(fd, p, v, eps=e, scheme=s), ref))(eps) for s in FD_SCHEMES
        }
        ad = {m: rel(hvp(fd, p, v, mode=m), ref) for m in HVP_MODES}
        at_default = {
            s: rel(fd_hvp(fd, p, v, eps=h_default[i], scheme=s), ref) for i, s in enumerate(FD_SCHEMES)
        }
        norms = dict(
            hv=jnp.linalg.norm(ref),
            g2=jnp.linalg.norm(g2),
            g3=jnp.linalg.norm(g3),
            grad=jnp.linalg.norm(grad64),
            x=jnp.linalg.norm(p64),
        )
        return errors, ad, at_default, norms

    del dt
    return jax.jit(kernel)


class FiniteDifferenceExplorer(Explorer):
    """Relative error of finite-difference HVPs against the step ε, in float32 or float64.

    Controls (attributes): ``function`` (dropdown, see :data:`FUNCTIONS`),
    ``dtype`` (toggle ``"float32"``/``"float64"``), ``x``, ``y`` (the point;
    for the MLP, coordinates along two fixed random unit directions in
    parameter space from its initialization) and ``angle`` (the direction,
    degrees, in the same plane). Every slider move recomputes all steps.

    Examples
    --------
    In a notebook cell::

        ex = FiniteDifferenceExplorer()
        ex.dtype.value = "float64"
        ex.last_result.best_eps["central"]  # about 1e-5 = macheps ** (1/3)
    """

    css_name = "finite-difference"

    #: a vertical legend right of the plot (plotly widens the right margin to fit it): never over the title
    figure_layout = {
        "legend": dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top", yref="paper"),
    }

    def __init__(self, function: str = "seed", *, dtype: str = "float32"):
        super().__init__()
        if function not in FUNCTIONS:
            raise ValueError(f"function must be one of {tuple(FUNCTIONS)}, got {function!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        style = {"description_width": "initial"}
        self.function = widgets.Dropdown(
            options=[(v, k) for k, v in FUNCTIONS.items()],
            value=function,
            description="function",
            style=style,
        )
        self.dtype = widgets.ToggleButtons(options=DTYPES, value=dtype, description="dtype", style=style)
        with jax.enable_x64(True):
            b = _function(function, "float64").bounds
        x0, y0 = (1.0, 0.5) if function in problems.TWO_D_PROBLEMS else (0.0, 0.0)
        self.x = widgets.FloatSlider(value=x0, min=b[0], max=b[1], step=0.01, description="x")
        self.y = widgets.FloatSlider(value=y0, min=b[2], max=b[3], step=0.01, description="y")
        self.angle = widgets.FloatSlider(
            value=30.0, min=0.0, max=360.0, step=1.0, description="direction θ (°)", style=style
        )
        fig = viz.fd_error_figure(
            EPS_GRID,
            {s: np.ones_like(EPS_GRID) for s in FD_SCHEMES},
            {m: 1.0 for m in HVP_MODES},
            {a: np.ones_like(EPS_GRID) for a in ASYMPTOTES},
            default_eps={s: (1e-8, 1.0) for s in FD_SCHEMES},
        )
        fig.update_layout(height=480)
        figure = go.FigureWidget(fig)
        self._index = {t.name: i for i, t in enumerate(figure.data)}
        controls = {
            "function": self.function,
            "dtype": self.dtype,
            "x": self.x,
            "y": self.y,
            "angle": self.angle,
        }
        self._setup(controls, figure)

    def _control_changed(self, name, change) -> None:
        if name != "function":
            return
        with jax.enable_x64(True):
            lo_x, hi_x, lo_y, hi_y = _function(change["new"], "float64").bounds
        for w, lo, hi in ((self.x, lo_x, hi_x), (self.y, lo_y, hi_y)):
            w.min, w.max = min(w.min, lo), max(w.max, hi)
            w.value = float(np.clip(w.value, lo, hi))
            w.min, w.max = lo, hi

    def first_compile(self, function="seed", dtype="float32", **_):
        """The MLP's HVPs compile on its first selection in each dtype (tens of seconds)."""
        return (f"finite-difference/mlp/{dtype}", f"the MLP ({dtype})", 40.0) if function == "mlp" else None

    def compute(
        self,
        function: str = "seed",
        dtype: str = "float32",
        x: float = 1.0,
        y: float = 0.5,
        angle: float = 30.0,
    ) -> FDResult:
        """Errors of the FD and AD Hessian-vector products at the control values (no widget access)."""
        if function not in FUNCTIONS:
            raise ValueError(f"function must be one of {tuple(FUNCTIONS)}, got {function!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        with jax.enable_x64(True):
            return self._compute(function, dtype, float(x), float(y), float(angle))

    @staticmethod
    def _compute(function, dtype, x, y, angle) -> FDResult:
        F64 = _function(function, "float64")
        dt = jnp.dtype(dtype)
        th = math.radians(angle)
        p = (F64.base + x * F64.d1 + y * F64.d2).astype(dt)
        v = (math.cos(th) * F64.d1 + math.sin(th) * F64.d2).astype(dt)
        h_default = jnp.asarray([fd_default_eps(p, v, s) for s in FD_SCHEMES], dt)
        eps = jnp.asarray(EPS_GRID, dt)
        errors, ad, at_default, norms = jax.device_get(_kernel(function, dtype)(p, v, eps, h_default))
        hv = float(norms["hv"])
        if not (hv > 1e-12 * max(1.0, float(norms["grad"]))) or not math.isfinite(hv):
            raise ValueError(
                f"Hv is (nearly) zero here (‖Hv‖ = {hv:.2g}): the relative error is undefined; "
                "move the point or turn the direction"
            )
        macheps = float(jnp.finfo(dt).eps)
        e = np.asarray(eps, dtype=float)
        asymptotes = {
            ASYMPTOTES[0]: e * float(norms["g2"]) / (2 * hv),
            ASYMPTOTES[1]: e**2 * float(norms["g3"]) / (6 * hv),
            ASYMPTOTES[2]: macheps * (float(norms["grad"]) + float(norms["x"]) * hv) / (e * hv),
        }
        errs = {s: np.asarray(errors[s], dtype=float) for s in FD_SCHEMES}
        best = {s: float(e[int(np.nanargmin(errs[s]))]) for s in FD_SCHEMES}
        return FDResult(
            function=function,
            label=F64.label,
            dtype=dtype,
            point=np.asarray(p),
            direction=np.asarray(v),
            angle=angle,
            eps=e,
            errors=errs,
            ad_errors={m: float(ad[m]) for m in HVP_MODES},
            asymptotes=asymptotes,
            default_eps={s: (float(h_default[i]), float(at_default[s])) for i, s in enumerate(FD_SCHEMES)},
            best_eps=best,
            min_error={s: float(np.nanmin(errs[s])) for s in FD_SCHEMES},
            macheps=macheps,
            hv_norm=hv,
        )

    def _render(self, r: FDResult) -> None:
        fig, idx = self.figure, self._index
        floor = 1e-18

        def clip(a):
            a = np.asarray(a, dtype=float)
            return np.where(a > 0, a, floor)

        for s in FD_SCHEMES:
            fig.data[idx[s]].update(x=r.eps, y=clip(r.errors[s]))
            h, err = r.default_eps[s]
            fig.data[idx[f"default ε ({s})"]].update(x=[h], y=clip([err]))
        for a in ASYMPTOTES:
            fig.data[idx[a]].update(x=r.eps, y=clip(r.asymptotes[a]))
        for m in HVP_MODES:
            fig.data[idx[f"AD {m}"]].update(x=[r.eps[0], r.eps[-1]], y=clip([r.ad_errors[m]] * 2))
        xrange, yrange = axis_ranges(r)
        fig.layout.xaxis.range, fig.layout.yaxis.range = xrange, yrange
        fig.layout.title = dict(
            text=f"{r.label}: finite-difference HVP error in {r.dtype}", x=0.5, xanchor="center"
        )
        rows = [
            ("point, direction", f"{_fmt_point(r.point)}, θ = {r.angle:.0f}°,  ‖Hv‖ = {r.hv_norm:.4g}"),
            ("machine ε", f"{r.macheps:.3g} ({r.dtype})"),
        ]
        for s in FD_SCHEMES:
            h, err = r.default_eps[s]
            rows.append(
                (s, f"best ε = {r.best_eps[s]:.1e} (error {r.min_error[s]:.2e}); default ε = {h:.1e} "
                 f"(error {err:.2e})")
            )  # fmt: skip
        rows.append(("AD modes", ", ".join(f"{m}: {v:.1e}" for m, v in r.ad_errors.items())))
        body = "".join(f"<tr><td>{k}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
        self.readout.value = f'<table class="curvlab-readout-table">{body}</table>'


def axis_ranges(r: FDResult) -> tuple[list[float], list[float]]:
    """Log10 axis ranges that show both branches of the V with their slopes.

    x: from one decade left of the last step where both differences vanish (``x + εv`` rounds
    to ``x``: relative error exactly 1, a plateau that teaches nothing more) to the largest
    step. y: from half a decade under the smallest positive error drawn (FD or AD) to a decade
    above the plateau at 1, so the rounding branch :math:`O(u/\\varepsilon)` (slope -1) and the
    truncation branches :math:`O(\\varepsilon)`, :math:`O(\\varepsilon^2)` (slopes 1, 2) are all
    on the chart (float32's used to sit squeezed in the top fifth of a fixed 20-decade axis,
    its rounding guide line off it). Exact zeros (drawn at 1e-18) widen y to show them.
    """
    e = np.asarray(r.eps, dtype=float)
    errs = np.stack([np.asarray(r.errors[s], dtype=float) for s in FD_SCHEMES])
    plateau = np.all(errs >= 1.0 - 1e-6, axis=0)
    first = int(np.max(np.nonzero(plateau)[0])) if np.any(plateau) else 0
    x_lo = max(float(np.log10(e[0])), float(np.log10(e[first])) - 1.0) - 0.1
    x_hi = float(np.log10(e[-1])) + 0.1
    shown = np.log10(e) >= x_lo
    values = np.concatenate(
        [errs[:, shown].ravel(), np.asarray(list(r.ad_errors.values()), dtype=float),
         np.asarray([err for _, err in r.default_eps.values()], dtype=float)]
    )  # fmt: skip
    values = values[np.isfinite(values)]
    positive = values[values > 0]
    y_lo = float(np.log10(positive.min())) - 0.5 if positive.size else -18.5
    if np.any(values == 0):
        y_lo = -18.5
    y_hi = max(1.0, float(np.log10(values.max())) + 1.0) if values.size else 1.5
    return [x_lo, x_hi], [y_lo, y_hi]


def _fmt_point(p: np.ndarray) -> str:
    if p.size == 2:
        return f"x = ({float(p[0]):.3g}, {float(p[1]):.3g})"
    return f"x ∈ ℝ^{p.size}"

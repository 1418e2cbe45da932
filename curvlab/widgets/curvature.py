"""CurvatureExplorer: how a function bends along a direction, :math:`v^\\top H v / v^\\top v`.

Two modes, chosen by the ``problem`` dropdown:

**2-D functions** (the seed example :math:`x^2 y + \\sin y`, Rosenbrock,
Himmelblau, or a custom formula typed by the user and parsed safely by
:func:`curvlab.formula.parse_formula`): a contour plot with the point
:math:`x` (sliders ``x``, ``y``, or click on the contour), the unit direction
:math:`v = (\\cos\\theta, \\sin\\theta)` (slider ``angle`` in degrees), the
gradient and :math:`Hv` as arrows and the Hessian's eigen-directions as dashed
lines; beside it a polar plot of the Rayleigh quotient

.. math:: c(\\theta) = \\frac{v_\\theta^\\top H v_\\theta}{v_\\theta^\\top v_\\theta}
          = \\lambda_1 \\cos^2(\\theta - \\theta_1) + \\lambda_2 \\sin^2(\\theta - \\theta_1),

which peaks at the top eigen-direction and dips at the bottom one. The
:math:`2\\times2` Hessian is assembled from two :func:`curvlab._hvp` products
(:math:`He_1`, :math:`He_2`); :math:`Hv` and :math:`c(\\theta)` at the slider
angle come from :func:`curvlab._hvp` and :func:`curvlab.directional_curvature`.

**High-dimensional** (``"mlp"``: a small tanh MLP on scikit-learn's digits):
the curvature along random directions, the gradient and the top Hessian
eigenvector (from :func:`curvlab.eigsh` on :func:`curvlab.hessian_operator`),
and the 1-D slice :math:`f(x + t v)` beside its quadratic model
:math:`f + t\\, g^\\top v + \\tfrac12 t^2 v^\\top H v` (:math:`v` of unit length).

Speed: per problem, one jitted function evaluates ``f`` on the contour grid
(vmapped, once) and one jitted function returns every local quantity at a
point (value, gradient, two HVP columns, :math:`Hv`, curvature); a slider move
costs one call of the latter plus a figure update.
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
from plotly.subplots import make_subplots

from curvlab import problems, viz
from curvlab._hvp import directional_curvature, hvp
from curvlab.formula import describe_grammar, parse_formula
from curvlab.widgets._base import Explorer
from curvlab.widgets._worker import LRU

__all__ = ["CurvatureExplorer", "CurvatureResult", "HighDimCurvatureResult", "PROBLEMS"]

#: Dropdown choices: value -> label.
PROBLEMS = {
    "seed": "x²y + sin(y) (seed example)",
    "rosenbrock": "Rosenbrock",
    "himmelblau": "Himmelblau",
    "custom": "custom formula",
    "mlp": "MLP on digits (high-dimensional)",
}
TWO_D = ("seed", "rosenbrock", "himmelblau", "custom")
DEFAULT_FORMULA = "x^2 - y^2 + x*y/2"
CUSTOM_BOUNDS = (-3.0, 3.0, -3.0, 3.0)
NUM_ANGLES = 181  # polar curve samples on [0°, 360°]
SLICE_POINTS = 121
SLICE_DIRECTIONS = ("top eigenvector", "gradient", "random")


class CurvatureResult(NamedTuple):
    """What :meth:`CurvatureExplorer.compute` returns for a 2-D function.

    Attributes
    ----------
    problem, label : str
        Dropdown value and a readable name (the formula for ``"custom"``).
    bounds : tuple
        ``(xmin, xmax, ymin, ymax)`` of the contour window.
    grid : tuple
        ``(xs, ys, Z)``, ``Z[i, j] = f(xs[j], ys[i])`` (cached per problem).
    log_levels : bool
        Whether the contour shows ``log(1 + f - min f)``.
    point, direction : ndarray (2,)
        The point and the unit direction :math:`v = (\\cos\\theta, \\sin\\theta)`.
    angle : float
        :math:`\\theta` in degrees.
    value : float
        :math:`f(x)`.
    gradient, hv : ndarray (2,)
        :math:`\\nabla f(x)` and :math:`H v` (``curvlab._hvp``).
    curvature : float
        :math:`v^\\top H v / v^\\top v` (``curvlab.directional_curvature``).
    hessian : ndarray (2, 2)
        :math:`[He_1, He_2]` from two ``curvlab._hvp`` products.
    eigenvalues, eigenvectors : ndarray
        Ascending eigenvalues of ``hessian`` and eigenvectors as columns.
    eigen_angles : ndarray (2,)
        Angles of the eigenvectors in degrees, in ``[0, 180)``.
    angles, curvatures : ndarray (NUM_ANGLES,)
        :math:`\\theta` in degrees on ``[0, 360]`` and :math:`c(\\theta)`.
    kind : str
        ``"minimum-like (convex)"``, ``"maximum-like (concave)"``, ``"saddle"`` or ``"degenerate"``:
        the sign pattern of the eigenvalues.
    """

    problem: str
    label: str
    bounds: tuple
    grid: tuple
    log_levels: bool
    point: np.ndarray
    direction: np.ndarray
    angle: float
    value: float
    gradient: np.ndarray
    hv: np.ndarray
    curvature: float
    hessian: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    eigen_angles: np.ndarray
    angles: np.ndarray
    curvatures: np.ndarray
    kind: str


class HighDimCurvatureResult(NamedTuple):
    """What :meth:`CurvatureExplorer.compute` returns for a high-dimensional problem.

    Attributes
    ----------
    problem, label : str
    dim : int
        Number of parameters.
    value : float
        :math:`f(x)`.
    gradient_norm : float
    curvatures : dict
        ``{"random": (k,), "gradient": float, "top eigenvector": float}``:
        :math:`v^\\top H v / v^\\top v` along each (``curvlab.directional_curvature``).
    top_eigenvalue : float
        From ``curvlab.eigsh(hessian_operator(f, x), k=1, which="LA")``.
    eigsh_message : str
    slice_direction : str
        Which direction the slice uses.
    t, f_values, quadratic_model : ndarray (SLICE_POINTS,)
        :math:`f(x + t v)` and :math:`f + t g^\\top v + \\tfrac12 t^2 v^\\top H v` (unit ``v``).
    slope, slice_curvature : float
        :math:`g^\\top v` and :math:`v^\\top H v` for the slice direction.
    """

    problem: str
    label: str
    dim: int
    value: float
    gradient_norm: float
    curvatures: dict
    top_eigenvalue: float
    eigsh_message: str
    slice_direction: str
    t: np.ndarray
    f_values: np.ndarray
    quadratic_model: np.ndarray
    slope: float
    slice_curvature: float


# ---------------------------------------------------------------------------
# per-problem state (compiled once)
# ---------------------------------------------------------------------------


class _TwoD(NamedTuple):
    label: str
    f: object
    bounds: tuple
    grid: tuple
    log_levels: bool
    local: object  # jitted (xy, v) -> dict of local quantities


def _make_local(f):
    eye = jnp.eye(2)

    def local(xy, v):
        value, grad = jax.value_and_grad(f)(xy)
        hcols = jnp.stack([hvp(f, xy, eye[0].astype(xy.dtype)), hvp(f, xy, eye[1].astype(xy.dtype))], axis=1)
        hv = hvp(f, xy, v)
        curv = directional_curvature(f, xy, v)
        return value, grad, hcols, hv, curv

    return jax.jit(local)


def _two_d_state(problem: str, formula: str) -> _TwoD:
    if problem == "custom":
        return _custom_state(formula.strip())
    return _zoo_state(problem)


@functools.lru_cache(maxsize=8)
def _zoo_state(problem: str) -> _TwoD:
    p = problems.TWO_D_PROBLEMS[problem]()
    bounds = tuple(float(b) for b in p.bounds)
    return _TwoD(
        PROBLEMS[problem],
        p.f,
        bounds,
        viz.contour_grid(p.f, bounds),
        problem == "rosenbrock",
        _make_local(p.f),
    )


#: the last 8 parsed formulas (a formula that fails to parse is not stored)
_CUSTOM_STATES: LRU[_TwoD] = LRU(8)


def _custom_state(text: str) -> _TwoD:
    def build() -> _TwoD:
        f = parse_formula(text)  # FormulaError -> shown in the error area
        grid = viz.contour_grid(f, CUSTOM_BOUNDS)
        return _TwoD(f"f = {text}", f, CUSTOM_BOUNDS, grid, False, _make_local(f))

    return _CUSTOM_STATES.get(text, build)


class _HighD(NamedTuple):
    label: str
    f: object
    x: jax.Array
    value: float
    grad: jax.Array
    top_eigenvalue: float
    top_vector: jax.Array
    eigsh_message: str
    curvatures_of: object  # jitted (V (k, n)) -> (k,)
    slice_of: object  # jitted (v, t) -> f(x + t v)


@functools.lru_cache(maxsize=2)
def _high_d_state(problem: str) -> _HighD:
    from jax.flatten_util import ravel_pytree

    from curvlab._curvature import hessian_operator
    from curvlab._eigsh import eigsh

    if problem != "mlp":
        raise ValueError(f"unknown high-dimensional problem {problem!r}")
    p = problems.mlp(hidden=(16,), num_examples=256)
    x, unravel = ravel_pytree(p.x0)

    def f(w):
        return p.f(unravel(w))

    value, grad = jax.jit(jax.value_and_grad(f))(x)
    res = eigsh(hessian_operator(f, x), k=1, which="LA", rtol=1e-4)
    top = res.eigenvectors[:, 0]
    curvatures_of = jax.jit(jax.vmap(lambda v: directional_curvature(f, x, v)))
    slice_of = jax.jit(lambda v, t: jax.vmap(lambda s: f(x + s * v))(t))
    label = f"MLP 64→16→10 on digits ({x.size} parameters)"
    return _HighD(
        label, f, x, float(value), grad, float(res.eigenvalues[0]), top, str(getattr(res, "message", "")),
        curvatures_of, slice_of,
    )  # fmt: skip


@functools.lru_cache(maxsize=16)
def _directions(problem: str, seed: int, num_random: int):
    """Unit directions ``[random × k, gradient, top eigenvector]`` and their curvatures (cached)."""
    s = _high_d_state(problem)
    R = jax.random.normal(jax.random.key(seed), (num_random, s.x.size), s.x.dtype)
    R = R / jnp.linalg.norm(R, axis=1, keepdims=True)
    g_unit = s.grad / jnp.linalg.norm(s.grad)
    V = jnp.concatenate([R, g_unit[None], s.top_vector[None].astype(s.x.dtype)], axis=0)
    return V, np.asarray(s.curvatures_of(V), dtype=float)


def _kind(lam: np.ndarray, scale: float) -> str:
    tol = 1e-9 * max(scale, 1e-300)
    lo, hi = float(lam[0]), float(lam[1])
    if lo > tol:
        return "minimum-like (convex: curves up in every direction)"
    if hi < -tol:
        return "maximum-like (concave: curves down in every direction)"
    if lo < -tol and hi > tol:
        return "saddle (curves up along one eigen-direction, down along the other)"
    return "degenerate (an eigenvalue is zero: flat along that direction)"


# ---------------------------------------------------------------------------
# the widget
# ---------------------------------------------------------------------------


class CurvatureExplorer(Explorer):
    """Curvature along a direction, :math:`v^\\top H v / v^\\top v`, for 2-D and high-dimensional problems.

    Controls (attributes): ``problem`` (dropdown, see :data:`PROBLEMS`),
    ``formula`` (text, used by ``"custom"``; Enter or ``apply`` applies it),
    ``apply`` (button), ``x``, ``y`` (the point), ``angle`` (direction in
    degrees), and for the high-dimensional mode ``slice_direction``,
    ``t_max`` (half-width of the slice) and ``seed`` (random directions).

    Parameters
    ----------
    problem : str
        Initial problem (a key of :data:`PROBLEMS`).
    formula : str
        Initial custom formula.
    num_random : int
        Number of random directions in the high-dimensional mode.

    Examples
    --------
    In a notebook cell::

        ex = CurvatureExplorer()
        ex  # displays it
        ex.angle.value = 30  # the figure, the readout and ex.last_result follow
    """

    css_name = "curvature"

    def __init__(self, problem: str = "seed", *, formula: str = DEFAULT_FORMULA, num_random: int = 5):
        super().__init__()
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {tuple(PROBLEMS)}, got {problem!r}")
        self.num_random = int(num_random)
        style = {"description_width": "initial"}
        self.problem = widgets.Dropdown(
            options=[(v, k) for k, v in PROBLEMS.items()], value=problem, description="function", style=style
        )
        self.formula = widgets.Text(
            value=formula,
            description="f(x, y) =",
            continuous_update=False,
            placeholder="e.g. x^2*y + sin(y)",
            layout=widgets.Layout(width="360px"),
            style=style,
        )
        self.apply = widgets.Button(description="apply", tooltip=describe_grammar(), button_style="primary")
        self.apply.on_click(lambda _: self.refresh())
        bounds = self._bounds_for(problem, formula)
        self.x = widgets.FloatSlider(
            value=1.0, min=bounds[0], max=bounds[1], step=0.01, description="x", continuous_update=True
        )
        self.y = widgets.FloatSlider(
            value=0.5, min=bounds[2], max=bounds[3], step=0.01, description="y", continuous_update=True
        )
        self.angle = widgets.FloatSlider(
            value=0.0,
            min=0.0,
            max=360.0,
            step=1.0,
            description="angle θ (°)",
            continuous_update=True,
            style=style,
        )
        self.slice_direction = widgets.Dropdown(
            options=SLICE_DIRECTIONS, value="top eigenvector", description="slice along", style=style
        )
        self.t_max = widgets.FloatLogSlider(
            value=1.0, base=10, min=-2, max=1, step=0.05, description="slice |t| ≤", style=style
        )
        self.seed = widgets.IntSlider(value=0, min=0, max=20, description="random seed", style=style)
        self.help = widgets.HTML(
            value="<details><summary>formula syntax</summary><pre>"
            + html.escape(describe_grammar())
            + "</pre></details>"
        )
        self._two_d_controls = [self.x, self.y, self.angle]
        self._high_d_controls = [self.slice_direction, self.t_max, self.seed]
        self._mode = None
        controls = {
            "problem": self.problem,
            "formula": self.formula,
            "apply": self.apply,
            "x": self.x,
            "y": self.y,
            "angle": self.angle,
            "slice_direction": self.slice_direction,
            "t_max": self.t_max,
            "seed": self.seed,
        }
        formula_row = widgets.HBox([self.formula, self.apply, self.help])
        self._formula_row = formula_row
        figure = go.FigureWidget()
        viz.apply_theme(figure, height=460)
        self._update_visibility(problem)
        rows = [
            widgets.HBox([self.problem]),
            formula_row,
            widgets.HBox(self._two_d_controls, layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox(self._high_d_controls, layout=widgets.Layout(flex_flow="row wrap")),
            self.error,
            self.readout,
            figure,
        ]
        self._setup(controls, figure, rows)
        # click on the contour to move the point (a FigureWidget callback)
        self._click_handler_installed = False
        self._install_click()

    # ------------------------------------------------------------- controls

    @staticmethod
    def _bounds_for(problem: str, formula: str) -> tuple:
        if problem == "custom":
            return CUSTOM_BOUNDS
        if problem in TWO_D:
            return tuple(float(b) for b in problems.TWO_D_PROBLEMS[problem]().bounds)
        return CUSTOM_BOUNDS

    def _update_visibility(self, problem: str) -> None:
        two_d = problem in TWO_D
        for w in self._two_d_controls:
            w.layout.display = None if two_d else "none"
        for w in self._high_d_controls:
            w.layout.display = "none" if two_d else None
        self._formula_row.layout.display = None if problem == "custom" else "none"

    def _control_changed(self, name, change) -> None:
        if name != "problem":
            return
        problem = change["new"]
        self._update_visibility(problem)
        if problem in TWO_D:
            xmin, xmax, ymin, ymax = self._bounds_for(problem, self.formula.value)
            for w, lo, hi in ((self.x, xmin, xmax), (self.y, ymin, ymax)):
                # widen first so that value stays inside [min, max] while moving
                w.min, w.max = min(w.min, lo), max(w.max, hi)
                w.value = float(np.clip(w.value, lo, hi))
                w.min, w.max = lo, hi

    def _install_click(self) -> None:
        if self._click_handler_installed or not self.figure.data:
            return
        for trace in self.figure.data:
            if trace.name == "f":
                trace.on_click(self._on_contour_click)
                self._click_handler_installed = True

    def _on_contour_click(self, trace, points, selector) -> None:
        if not points.xs:
            return
        with self.hold_refresh():
            self.x.value = float(np.clip(points.xs[0], self.x.min, self.x.max))
            self.y.value = float(np.clip(points.ys[0], self.y.min, self.y.max))

    def first_compile(self, problem="seed", **_):
        """The MLP's curvature functions compile on its first selection (tens of seconds)."""
        return ("curvature/mlp", "the MLP", 40.0) if problem == "mlp" else None

    # -------------------------------------------------------------- compute

    def compute(
        self,
        problem: str = "seed",
        formula: str = DEFAULT_FORMULA,
        x: float = 1.0,
        y: float = 0.5,
        angle: float = 0.0,
        slice_direction: str = "top eigenvector",
        t_max: float = 1.0,
        seed: int = 0,
    ) -> CurvatureResult | HighDimCurvatureResult:
        """Curvature quantities for the given control values (no widget access).

        Returns a :class:`CurvatureResult` for 2-D problems and a
        :class:`HighDimCurvatureResult` for ``"mlp"``. Raises
        :class:`curvlab.formula.FormulaError` for a bad custom formula.
        """
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {tuple(PROBLEMS)}, got {problem!r}")
        if problem in TWO_D:
            return self._compute_two_d(problem, formula, float(x), float(y), float(angle))
        return self._compute_high_d(problem, slice_direction, float(t_max), int(seed))

    def _compute_two_d(self, problem, formula, x, y, angle) -> CurvatureResult:
        state = _two_d_state(problem, formula)
        dtype = jnp.result_type(float)
        theta = math.radians(angle)
        xy = jnp.asarray([x, y], dtype)
        v = jnp.asarray([math.cos(theta), math.sin(theta)], dtype)
        value, grad, hcols, hv, curv = jax.device_get(state.local(xy, v))
        if not math.isfinite(float(value)):
            raise ValueError(
                f"f is not finite at ({x:.3g}, {y:.3g}): f = {float(value)} (a division by zero, the log or "
                "square root of a negative number, or an overflow); there is no curvature to show here: "
                "move the point or change the formula"
            )
        if not np.any(np.isfinite(np.asarray(state.grid[2], dtype=float))):
            raise ValueError(f"{state.label} is not finite anywhere on the plotted window: nothing to draw")
        H = np.asarray(hcols, dtype=float)
        Hs = 0.5 * (H + H.T)
        if not np.all(np.isfinite(Hs)):
            raise ValueError(f"the Hessian is not finite at ({x:.3g}, {y:.3g}): move the point")
        lam, vecs = np.linalg.eigh(Hs)
        eig_angles = np.degrees(np.arctan2(vecs[1], vecs[0])) % 180.0
        angles = np.linspace(0.0, 360.0, NUM_ANGLES)
        t = np.radians(angles)
        U = np.stack([np.cos(t), np.sin(t)])  # (2, m), unit columns
        curvatures = np.einsum("im,ij,jm->m", U, Hs, U)
        return CurvatureResult(
            problem=problem,
            label=state.label,
            bounds=state.bounds,
            grid=state.grid,
            log_levels=state.log_levels,
            point=np.asarray([x, y]),
            direction=np.asarray(v, dtype=float),
            angle=angle,
            value=float(value),
            gradient=np.asarray(grad, dtype=float),
            hv=np.asarray(hv, dtype=float),
            curvature=float(curv),
            hessian=H,
            eigenvalues=lam,
            eigenvectors=vecs,
            eigen_angles=eig_angles,
            angles=angles,
            curvatures=curvatures,
            kind=_kind(lam, float(np.max(np.abs(lam)))),
        )

    def _compute_high_d(self, problem, slice_direction, t_max, seed) -> HighDimCurvatureResult:
        if slice_direction not in SLICE_DIRECTIONS:
            raise ValueError(f"slice_direction must be one of {SLICE_DIRECTIONS}, got {slice_direction!r}")
        if not (t_max > 0 and math.isfinite(t_max)):
            raise ValueError(f"t_max must be positive, got {t_max}")
        s = _high_d_state(problem)
        n = s.x.size
        k = self.num_random
        V, curv = _directions(problem, seed, k)
        curvatures = {"random": curv[:k], "gradient": float(curv[k]), "top eigenvector": float(curv[k + 1])}
        v = {"top eigenvector": V[k + 1], "gradient": V[k], "random": V[0]}[slice_direction]
        t = np.linspace(-t_max, t_max, SLICE_POINTS)
        f_values = np.asarray(s.slice_of(v, jnp.asarray(t, s.x.dtype)), dtype=float)
        slope = float(jnp.vdot(s.grad, v))
        c = float(curv[{"top eigenvector": k + 1, "gradient": k, "random": 0}[slice_direction]])
        model = s.value + t * slope + 0.5 * t**2 * c
        return HighDimCurvatureResult(
            problem=problem,
            label=s.label,
            dim=int(n),
            value=s.value,
            gradient_norm=float(jnp.linalg.norm(s.grad)),
            curvatures=curvatures,
            top_eigenvalue=s.top_eigenvalue,
            eigsh_message=s.eigsh_message,
            slice_direction=slice_direction,
            t=t,
            f_values=f_values,
            quadratic_model=model,
            slope=slope,
            slice_curvature=c,
        )

    # --------------------------------------------------------------- render

    def _render(self, result) -> None:
        if isinstance(result, CurvatureResult):
            self._render_two_d(result)
        else:
            self._render_high_d(result)

    def _rebuild(self, fig: go.Figure, mode) -> None:
        """Replace the figure's traces and layout (on a change of problem or mode)."""
        target = self.figure
        target.data = ()
        target.layout = fig.layout
        target.add_traces(list(fig.data))
        self._mode = mode
        self._index = {t.name: i for i, t in enumerate(target.data)}
        self._click_handler_installed = False
        self._install_click()

    def _render_two_d(self, r: CurvatureResult) -> None:
        mode = ("2d", r.problem, r.label)
        if self._mode != mode:
            fig = make_subplots(
                rows=1,
                cols=2,
                specs=[[{"type": "xy"}, {"type": "polar"}]],
                column_widths=[0.58, 0.42],
                subplot_titles=(r.label, "curvature vᵀHv/vᵀv against the angle of v"),
            )
            viz.contour_figure(
                None, r.bounds, r.point, r.direction, r.gradient, r.hv,
                eigenvalues=r.eigenvalues, eigenvectors=r.eigenvectors, grid=r.grid,
                log_levels=r.log_levels, fig=fig, row=1, col=1,
            )  # fmt: skip
            viz.polar_curvature_figure(
                r.angles, r.curvatures, r.eigen_angles, eigenvalues=r.eigenvalues,
                current_angle=r.angle, current_curvature=r.curvature, fig=fig, row=1, col=2,
            )  # fmt: skip
            viz.apply_theme(fig, height=520, legend="bottom", subplot_titles=True)
            # the polar plot's 90° label sits above its domain: lift its title clear of it
            fig.layout.annotations[1].yshift = 22
            fig.update_layout(margin_t=fig.layout.margin.t + 22)
            # equal scale: one unit of x as long as one of y, so angles and eigen-directions look right
            # (constrain="range": plotly.js widening a range, not moving the domain, which the widget
            # model would then send back beside the whole axis: "cannot set xaxis.domain and a parent")
            fig.update_yaxes(scaleanchor="x", scaleratio=1, row=1, col=1)
            self._rebuild(fig, mode)
        self._update_two_d_traces(r)
        self.readout.value = self._two_d_readout(r)

    def _update_two_d_traces(self, r: CurvatureResult) -> None:
        fig, idx = self.figure, self._index
        xmin, xmax, ymin, ymax = r.bounds
        length = 0.15 * max(xmax - xmin, ymax - ymin)
        for name, vec, color in (
            ("v", r.direction, viz.COLORS["direction"]),
            ("∇f", r.gradient, viz.COLORS["gradient"]),
            ("Hv", r.hv, viz.COLORS["hv"]),
        ):
            new = viz.arrow_trace(r.point, vec, length=length, name=name, color=color)
            tr = fig.data[idx[name]]
            tr.x, tr.y, tr.customdata = new.x, new.y, new.customdata
        tr = fig.data[idx["x"]]
        tr.x, tr.y = [float(r.point[0])], [float(r.point[1])]
        span = max(xmax - xmin, ymax - ymin)
        for i in range(2):
            u = r.eigenvectors[:, i]
            a, b = r.point - 0.6 * span * u, r.point + 0.6 * span * u
            tr = fig.data[idx[f"eigvec {i + 1}"]]
            tr.x, tr.y = [a[0], b[0]], [a[1], b[1]]
            tr.customdata = [[r.eigenvalues[i], u[0], u[1]]] * 2
        c = r.curvatures
        fig.data[idx["vᵀHv > 0"]].r = np.where(c >= 0, c, np.nan)
        fig.data[idx["vᵀHv > 0"]].customdata = c
        fig.data[idx["vᵀHv < 0"]].r = np.where(c < 0, -c, np.nan)
        fig.data[idx["vᵀHv < 0"]].customdata = c
        rmax = float(np.max(np.abs(c))) if np.any(np.isfinite(c)) else 1.0
        for i in range(2):
            ang = float(r.eigen_angles[i])
            tr = fig.data[idx[f"eigen {i + 1}"]]
            tr.r, tr.theta = [rmax, 0.0, rmax], [ang, ang, ang + 180.0]
            tr.customdata = [float(r.eigenvalues[i])] * 3
        tr = fig.data[idx["current v"]]
        tr.r, tr.theta, tr.customdata = [abs(r.curvature)], [r.angle], [r.curvature]

    def show_error(self, err: Exception | str) -> None:
        """Show the error, and a readout that follows the controls and says why it has no numbers.

        Without this the readout would keep the numbers of the last good point while the sliders
        move (it looked frozen); it shows the current point and direction instead.
        """
        super().show_error(err)
        v = self.values()
        if v.get("problem") in TWO_D:
            rows = [
                ("point", f"({float(v['x']):.3g}, {float(v['y']):.3g})"),
                ("direction", f"θ = {float(v['angle']):.0f}°"),
                ("f, ∇f, Hv, vᵀHv", "not available: see the error above"),
            ]
        else:
            rows = [("values", "not available: see the error above")]
        body = "".join(f"<tr><td>{k}</td><td><b>{html.escape(t)}</b></td></tr>" for k, t in rows)
        self.readout.value = f'<table class="curvlab-readout-table curvlab-readout-error">{body}</table>'

    @staticmethod
    def _two_d_readout(r: CurvatureResult) -> str:
        lam = r.eigenvalues
        rows = [
            ("point", f"({r.point[0]:.3g}, {r.point[1]:.3g}),  f = {r.value:.5g}"),
            ("direction", f"θ = {r.angle:.0f}°,  v = ({r.direction[0]:.3f}, {r.direction[1]:.3f})"),
            ("vᵀHv / vᵀv", f"{r.curvature:.5g}"),
            ("eigenvalues", f"λ₁ = {lam[0]:.5g} (at {r.eigen_angles[0]:.0f}°), λ₂ = {lam[1]:.5g} "
             f"(at {r.eigen_angles[1]:.0f}°)"),
            ("∇f", f"({r.gradient[0]:.4g}, {r.gradient[1]:.4g}),  |∇f| = {np.hypot(*r.gradient):.3g}"),
            ("Hv", f"({r.hv[0]:.4g}, {r.hv[1]:.4g})"),
            ("kind", r.kind),
        ]  # fmt: skip
        body = "".join(f"<tr><td>{k}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
        return f'<table class="curvlab-readout-table">{body}</table>'

    def _render_high_d(self, r: HighDimCurvatureResult) -> None:
        mode = ("hd", r.problem)
        if self._mode != mode:
            fig = make_subplots(
                rows=1,
                cols=2,
                subplot_titles=("curvature along directions", "1-D slice and its quadratic model"),
            )
            viz.directions_bar_figure(r.curvatures, fig=fig, row=1, col=1)
            viz.slice_figure(r.t, r.f_values, r.quadratic_model, fig=fig, row=1, col=2)
            viz.apply_theme(fig, height=480, legend="bottom", subplot_titles=True)
            self._rebuild(fig, mode)
        fig, idx = self.figure, self._index
        new = viz.directions_bar_figure(r.curvatures)
        for name in ("curvature", "samples"):
            src = new.data[[t.name for t in new.data].index(name)]
            tr = fig.data[idx[name]]
            tr.x, tr.y = src.x, src.y
            if name == "curvature":
                tr.marker.color = src.marker.color
        fig.data[idx["f(x + t v)"]].update(x=r.t, y=r.f_values)
        fig.data[idx["quadratic model"]].update(x=r.t, y=r.quadratic_model)
        fig.layout.xaxis2.title.text = f"t  (step along unit v = {r.slice_direction})"
        rows = [
            ("problem", f"{r.label}, f = {r.value:.5g}, |∇f| = {r.gradient_norm:.3g}"),
            ("λ_max (eigsh)", f"{r.top_eigenvalue:.5g}"),
            ("vᵀHv/vᵀv", "random: " + ", ".join(f"{c:.3g}" for c in r.curvatures["random"])
             + f";  gradient: {r.curvatures['gradient']:.4g};  top eigenvector: "
             f"{r.curvatures['top eigenvector']:.4g}"),
            ("slice", f"along {r.slice_direction}: gᵀv = {r.slope:.4g}, vᵀHv = {r.slice_curvature:.4g}"),
        ]  # fmt: skip
        body = "".join(f"<tr><td>{k}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
        self.readout.value = f'<table class="curvlab-readout-table">{body}</table>'

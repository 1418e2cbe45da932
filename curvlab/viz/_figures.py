"""Figure builders: pure functions ``result -> plotly.graph_objects.Figure``.

No widgets here: notebooks call these directly, the explorers in
:mod:`curvlab.widgets` wrap their output in a ``go.FigureWidget`` and then only
update trace data. Conventions shared by every builder:

* colors come from :data:`COLORS`, layout from :func:`apply_theme`;
* axis titles are plain unicode (``vᵀHv/vᵀv``, ``λ``, ``κ``, ``ε``), never
  LaTeX, because Voila pages do not always load MathJax;
* traces have stable ``name`` s (the explorers find them by name) and carry
  the exact numbers in ``customdata`` where the drawing is rescaled (arrows);
* a builder takes optional ``fig``, ``row``, ``col`` to draw into a subplot of
  an existing figure (made with :func:`plotly.subplots.make_subplots`);
* every figure exports to standalone HTML with
  ``fig.to_html(include_plotlyjs="cdn")`` (or ``True`` to embed plotly.js).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from curvlab._spectrum_cache import ghost_mask

#: One color per concept, used by every figure.
COLORS = {
    "point": "#111111",
    "direction": "#1f77b4",  # v
    "gradient": "#d62728",  # ∇f
    "hv": "#2ca02c",  # Hv
    "eig_max": "#9467bd",
    "eig_min": "#ff7f0e",
    "positive": "#1f77b4",
    "negative": "#d62728",
    "model": "#7f7f7f",
    "forward": "#d62728",
    "central": "#1f77b4",
    "fwd_rev": "#2ca02c",
    "rev_fwd": "#9467bd",
    "rev_rev": "#8c564b",
    "asymptote": "#aaaaaa",
    "random": "#7f7f7f",
    "accent": "#17becf",
}

#: Colors for series without a named color (cycled).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

FONT_FAMILY = "system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"


#: Height in pixels of the strip under the plots that holds a ``legend="bottom"`` legend (one or
#: two rows) below the x-axis titles.
LEGEND_STRIP = 56


def apply_theme(
    fig: go.Figure,
    *,
    title: str | None = None,
    height: int | None = 420,
    legend: str = "top",
    subplot_titles: bool = False,
) -> go.Figure:
    """Shared look: white template, compact margins, the width of the page; returns ``fig``.

    Parameters
    ----------
    title : str, optional
        Figure title, centered at the top.
    height : int, optional
        Height in pixels (the width follows the container: ``autosize``).
    legend : {"top", "bottom"}
        ``"top"``: a horizontal legend right above the plot area (for figures without subplot
        titles); ``"bottom"``: a horizontal legend centered at the bottom of the figure, under
        the x-axis titles, in a strip of :data:`LEGEND_STRIP` pixels (it never covers a title).
    subplot_titles : bool
        Leave room above the plot area for subplot titles (and the title above them).
    """
    if legend not in ("top", "bottom"):
        raise ValueError(f"legend must be 'top' or 'bottom', got {legend!r}")
    top = 30 + (30 if title else 0) + (26 if subplot_titles else 0)
    if legend == "top":
        legend_layout = dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0)
        bottom = 50
    else:
        legend_layout = dict(
            orientation="h",
            yref="container",
            yanchor="bottom",
            y=0.0,
            xanchor="center",
            x=0.5,
            traceorder="normal",
        )
        bottom = 50 + LEGEND_STRIP
    fig.update_layout(
        template="plotly_white",
        font=dict(family=FONT_FAMILY, size=13),
        margin=dict(l=60, r=20, t=top, b=bottom),
        legend=legend_layout,
        hovermode="closest",
        autosize=True,
        width=None,
    )
    if title is not None:
        # centered in the top margin, above the subplot titles
        fig.update_layout(
            title=dict(text=title, x=0.5, xanchor="center", yref="container", y=1.0, yanchor="top", pad_t=8)
        )
    if height is not None:
        fig.update_layout(height=height)
    return fig


def _new(fig):
    return go.Figure() if fig is None else fig


def _add(fig, trace, row, col):
    if row is None:
        fig.add_trace(trace)
    else:
        fig.add_trace(trace, row=row, col=col)


def _line(x, y, name, color, *, width=2.0, dash=None, mode="lines", **kw) -> go.Scatter:
    """A named line trace (the builders' common case); ``kw`` goes to ``go.Scatter``."""
    return go.Scatter(x=x, y=y, mode=mode, name=name, line=dict(color=color, width=width, dash=dash), **kw)


def _marker(x, y, name, color, *, size=11, symbol=None, **kw) -> go.Scatter:
    """A named marker-only trace (a current point, eigenvalue ticks); ``kw`` goes to ``go.Scatter``."""
    marker = dict(color=color, size=size) if symbol is None else dict(color=color, size=size, symbol=symbol)
    return go.Scatter(x=x, y=y, mode="markers", name=name, marker=marker, **kw)


def _vec2(a, name):
    a = np.asarray(a, dtype=float).reshape(-1)
    if a.shape != (2,):
        raise ValueError(f"{name} must have 2 entries, got shape {np.shape(a)}")
    return a


def arrow_trace(start, vector, *, length: float | None, name: str, color: str, **kwargs) -> go.Scatter:
    """A 2-D arrow from ``start`` along ``vector`` as a line with an arrow-head marker.

    Drawn with length ``length`` (data units) if given, else ``|vector|``; the
    exact ``vector`` is stored in ``customdata`` and shown on hover.
    """
    p = _vec2(start, "start")
    d = _vec2(vector, "vector")
    norm = float(np.hypot(*d))
    scale = 1.0 if length is None or norm == 0.0 or not np.isfinite(norm) else length / norm
    tip = p + scale * d if np.all(np.isfinite(d)) else p
    return go.Scatter(
        x=[p[0], tip[0]],
        y=[p[1], tip[1]],
        mode="lines+markers",
        name=name,
        line=dict(color=color, width=3),
        marker=dict(symbol=["circle", "arrow"], size=[1, 14], angleref="previous", color=color),
        customdata=[[d[0], d[1], norm]] * 2,
        hovertemplate=f"{name}<br>(%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}})<br>"
        "norm %{customdata[2]:.4g}<extra></extra>",
        **kwargs,
    )


def contour_grid(f: Callable, bounds: Sequence[float], resolution: int = 80):
    """Evaluate ``f([x, y])`` on a ``resolution × resolution`` grid (vmapped, jitted).

    Returns ``(xs, ys, Z)`` with ``Z[i, j] = f([xs[j], ys[i]])`` as numpy arrays.
    """
    import jax
    import jax.numpy as jnp

    xmin, xmax, ymin, ymax = (float(b) for b in bounds)
    xs = np.linspace(xmin, xmax, int(resolution))
    ys = np.linspace(ymin, ymax, int(resolution))
    X, Y = np.meshgrid(xs, ys)
    pts = jnp.asarray(np.stack([X.ravel(), Y.ravel()], axis=1))
    Z = np.asarray(jax.jit(jax.vmap(f))(pts), dtype=float).reshape(X.shape)
    return xs, ys, Z


def contour_figure(
    f: Callable | None,
    bounds: Sequence[float],
    point,
    direction,
    gradient,
    hv,
    *,
    eigenvalues=None,
    eigenvectors=None,
    grid=None,
    resolution: int = 80,
    arrow_length: float | None = None,
    log_levels: bool = False,
    title: str | None = None,
    fig: go.Figure | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """Contours of a 2-D function with the point, v, ∇f, Hv and the Hessian's eigen-directions.

    Parameters
    ----------
    f : callable or None
        ``f([x, y]) -> scalar`` (jittable); ignored when ``grid`` is given.
    bounds : (xmin, xmax, ymin, ymax)
    point, direction, gradient, hv : length-2 arrays
        The point x, the direction v, ∇f(x) and H(x) v.
    eigenvalues, eigenvectors : optional
        Hessian eigenpairs at the point (``eigenvectors[:, i]`` pairs with
        ``eigenvalues[i]``), drawn as dashed lines through the point.
    grid : (xs, ys, Z), optional
        Precomputed :func:`contour_grid` output (the explorers compute it once).
    arrow_length : float, optional
        Drawn length of every arrow (data units); default 15% of the window.
        The arrows show directions; exact vectors are in ``customdata``.
    log_levels : bool
        Contour ``log(1 + f - min f)`` instead of ``f`` (Rosenbrock's valley).

    Traces, by name: ``"f"`` (contour), ``"eigvec 1"``, ``"eigvec 2"`` (if
    given), ``"v"``, ``"∇f"``, ``"Hv"``, ``"x"`` (the point).
    """
    fig = _new(fig)
    xmin, xmax, ymin, ymax = (float(b) for b in bounds)
    if grid is None:
        if f is None:
            raise ValueError("contour_figure needs f or grid")
        grid = contour_grid(f, bounds, resolution)
    xs, ys, Z = grid
    Z = np.asarray(Z, dtype=float)
    if log_levels:
        Z = np.log1p(Z - np.nanmin(Z))
    span = max(xmax - xmin, ymax - ymin)
    length = 0.15 * span if arrow_length is None else float(arrow_length)
    p = _vec2(point, "point")
    _add(
        fig,
        go.Contour(
            x=np.asarray(xs),
            y=np.asarray(ys),
            z=Z,
            name="f",
            colorscale="Viridis",
            ncontours=30,
            contours=dict(coloring="heatmap", showlines=True),
            line=dict(width=0.5),
            showscale=False,
            hovertemplate="x=%{x:.3g}<br>y=%{y:.3g}<br>f=%{z:.4g}<extra></extra>",
        ),
        row,
        col,
    )
    if eigenvectors is not None:
        vecs = np.asarray(eigenvectors, dtype=float)
        vals = np.asarray(eigenvalues, dtype=float) if eigenvalues is not None else np.full(2, np.nan)
        for i in range(2):
            u = vecs[:, i]
            a, b = p - 0.6 * span * u, p + 0.6 * span * u
            _add(
                fig,
                go.Scatter(
                    x=[a[0], b[0]],
                    y=[a[1], b[1]],
                    mode="lines",
                    name=f"eigvec {i + 1}",
                    line=dict(color=COLORS["eig_max" if i == 1 else "eig_min"], dash="dash", width=2),
                    customdata=[[vals[i], u[0], u[1]]] * 2,
                    hovertemplate="λ=%{customdata[0]:.4g}<br>u=(%{customdata[1]:.3f}, "
                    "%{customdata[2]:.3f})<extra></extra>",
                ),
                row,
                col,
            )
    for name, vec, color in (
        ("v", direction, COLORS["direction"]),
        ("∇f", gradient, COLORS["gradient"]),
        ("Hv", hv, COLORS["hv"]),
    ):
        _add(fig, arrow_trace(p, vec, length=length, name=name, color=color), row, col)
    _add(
        fig,
        go.Scatter(
            x=[p[0]],
            y=[p[1]],
            mode="markers",
            name="x",
            marker=dict(color="white", size=11, line=dict(color=COLORS["point"], width=2)),
            hovertemplate="x=(%{x:.4g}, %{y:.4g})<extra></extra>",
        ),
        row,
        col,
    )
    axis = dict(row=row, col=col) if row is not None else {}
    fig.update_xaxes(range=[xmin, xmax], title_text="x", **axis)
    fig.update_yaxes(range=[ymin, ymax], title_text="y", scaleanchor=None, **axis)
    if row is None:
        apply_theme(fig, title=title)
    return fig


def polar_curvature_figure(
    angles,
    curvatures,
    eigen_angles=None,
    *,
    eigenvalues=None,
    current_angle: float | None = None,
    current_curvature: float | None = None,
    title: str | None = None,
    fig: go.Figure | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """vᵀHv/vᵀv against the angle of v, as a polar plot (angles in degrees).

    Polar radii cannot be negative, so the radius is ``|vᵀHv/vᵀv|`` and the
    sign is the trace: ``"vᵀHv > 0"`` (blue, bends up) and ``"vᵀHv < 0"``
    (red, bends down); points of the other sign are ``None`` (gaps). The
    signed values are in ``customdata``. Eigen-directions are radial lines
    ``"eigen 1"``, ``"eigen 2"`` at ``eigen_angles`` (and +180°), labeled by
    ``eigenvalues``; the current direction is the marker ``"current v"``.
    """
    fig = _new(fig)
    theta = np.asarray(angles, dtype=float).reshape(-1)
    c = np.asarray(curvatures, dtype=float).reshape(-1)
    if theta.shape != c.shape:
        raise ValueError(f"angles and curvatures must have the same length, got {theta.size} and {c.size}")
    pos = np.where(c >= 0, c, np.nan)
    neg = np.where(c < 0, -c, np.nan)
    for name, r, color in (("vᵀHv > 0", pos, COLORS["positive"]), ("vᵀHv < 0", neg, COLORS["negative"])):
        _add(
            fig,
            go.Scatterpolar(
                r=r,
                theta=theta,
                mode="lines",
                name=name,
                line=dict(color=color, width=2.5),
                customdata=c,
                connectgaps=False,
                hovertemplate="θ=%{theta:.1f}°<br>vᵀHv/vᵀv=%{customdata:.4g}<extra></extra>",
            ),
            row,
            col,
        )
    rmax = float(np.nanmax(np.abs(c))) if np.any(np.isfinite(c)) else 1.0
    if eigen_angles is not None:
        vals = np.full(2, np.nan) if eigenvalues is None else np.asarray(eigenvalues, dtype=float)
        for i, ang in enumerate(np.asarray(eigen_angles, dtype=float).reshape(-1)):
            _add(
                fig,
                go.Scatterpolar(
                    r=[rmax, 0.0, rmax],
                    theta=[ang, ang, ang + 180.0],
                    mode="lines",
                    name=f"eigen {i + 1}",
                    line=dict(color=COLORS["eig_max" if i == 1 else "eig_min"], dash="dash", width=1.5),
                    customdata=[vals[i]] * 3,
                    hovertemplate="eigen-direction<br>λ=%{customdata:.4g}<extra></extra>",
                ),
                row,
                col,
            )
    if current_angle is not None:
        cc = np.nan if current_curvature is None else float(current_curvature)
        _add(
            fig,
            go.Scatterpolar(
                r=[abs(cc)],
                theta=[float(current_angle)],
                mode="markers",
                name="current v",
                marker=dict(color=COLORS["direction"], size=12, symbol="diamond"),
                customdata=[cc],
                hovertemplate="v at θ=%{theta:.1f}°<br>vᵀHv/vᵀv=%{customdata:.4g}<extra></extra>",
            ),
            row,
            col,
        )
    if row is None:
        fig.update_layout(polar=dict(angularaxis=dict(direction="counterclockwise", rotation=0)))
        apply_theme(fig, title=title)
    return fig


def fd_error_figure(
    eps,
    errors_by_scheme: Mapping[str, np.ndarray],
    ad_errors: Mapping[str, float] | None = None,
    asymptotes: Mapping[str, np.ndarray] | None = None,
    *,
    default_eps: Mapping[str, tuple[float, float]] | None = None,
    floor: float = 1e-18,
    title: str | None = None,
    fig: go.Figure | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """Log-log relative error of finite-difference HVPs against the step ε (the "V" curves).

    Parameters
    ----------
    eps : array (m,)
        Steps.
    errors_by_scheme : {"forward": (m,), "central": (m,)}
        ``‖FD − AD‖ / ‖AD‖`` per step; trace names are the keys.
    ad_errors : {"fwd_rev": float, ...}, optional
        Error of each AD mode in the working dtype, drawn as flat lines named
        ``"AD fwd_rev"``, ...
    asymptotes : {name: (m,)}, optional
        Reference slopes (e.g. ``"∝ ε"``, ``"∝ ε²"``, ``"∝ macheps/ε"``), dotted.
    default_eps : {scheme: (eps, error)}, optional
        Markers named ``"default ε (forward)"`` etc.
    floor : float
        Exact zeros are drawn at ``floor`` (a log axis cannot show 0).
    """
    fig = _new(fig)
    e = np.asarray(eps, dtype=float).reshape(-1)

    def clip(a):
        a = np.asarray(a, dtype=float)
        return np.where(a > 0, a, floor)

    for i, (scheme, err) in enumerate(errors_by_scheme.items()):
        _add(
            fig,
            go.Scatter(
                x=e,
                y=clip(err),
                mode="lines+markers",
                name=scheme,
                line=dict(color=COLORS.get(scheme, PALETTE[i % len(PALETTE)]), width=2.5),
                marker=dict(size=5),
                hovertemplate=f"{scheme}<br>ε=%{{x:.2e}}<br>rel. error=%{{y:.2e}}<extra></extra>",
            ),
            row,
            col,
        )
    for name, ys in (asymptotes or {}).items():
        _add(
            fig,
            go.Scatter(
                x=e,
                y=clip(ys),
                mode="lines",
                name=name,
                line=dict(color=COLORS["asymptote"], dash="dot", width=1.5),
                hovertemplate=f"{name}<br>ε=%{{x:.2e}}<br>%{{y:.2e}}<extra></extra>",
            ),
            row,
            col,
        )
    for i, (mode, err) in enumerate((ad_errors or {}).items()):
        _add(
            fig,
            go.Scatter(
                x=[e.min(), e.max()],
                y=[float(clip(err)), float(clip(err))],
                mode="lines",
                name=f"AD {mode}",
                line=dict(color=COLORS.get(mode, PALETTE[i % len(PALETTE)]), dash="dash", width=1.5),
                hovertemplate=f"AD {mode}<br>rel. error=%{{y:.2e}}<extra></extra>",
            ),
            row,
            col,
        )
    for i, (scheme, (h, err)) in enumerate((default_eps or {}).items()):
        _add(
            fig,
            go.Scatter(
                x=[float(h)],
                y=[float(clip(err))],
                mode="markers",
                name=f"default ε ({scheme})",
                marker=dict(
                    color=COLORS.get(scheme, PALETTE[i % len(PALETTE)]),
                    size=13,
                    symbol="star",
                    line=dict(color="black", width=1),
                ),
                hovertemplate=f"default ε ({scheme})<br>ε=%{{x:.2e}}<br>rel. error=%{{y:.2e}}<extra></extra>",
            ),
            row,
            col,
        )
    axis = dict(row=row, col=col) if row is not None else {}
    fig.update_xaxes(type="log", title_text="step ε", exponentformat="power", **axis)
    fig.update_yaxes(type="log", title_text="relative error ‖FD − AD‖/‖AD‖", exponentformat="power", **axis)
    if row is None:
        apply_theme(fig, title=title)
    return fig


def directions_bar_figure(
    curvatures: Mapping[str, float | np.ndarray],
    *,
    eigenvalue_range: tuple[float, float] | None = None,
    title: str | None = None,
    fig: go.Figure | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """Curvature vᵀHv/vᵀv along named directions (random, gradient, top eigenvector, ...).

    ``curvatures`` maps a label to a value or to an array of samples (e.g.
    several random directions): the bar (trace ``"curvature"``) is the mean,
    the samples are dots (trace ``"samples"``). ``eigenvalue_range=(λ_min,
    λ_max)`` adds horizontal lines ``"λ_min"``/``"λ_max"``: every Rayleigh
    quotient lies between them.
    """
    fig = _new(fig)
    labels = list(curvatures)
    means, sx, sy = [], [], []
    for label in labels:
        vals = np.asarray(curvatures[label], dtype=float).reshape(-1)
        means.append(float(np.mean(vals)) if vals.size else np.nan)
        if vals.size > 1:
            sx.extend([label] * vals.size)
            sy.extend(vals.tolist())
    colors = [COLORS["positive"] if m >= 0 else COLORS["negative"] for m in means]
    _add(
        fig,
        go.Bar(
            x=labels,
            y=means,
            name="curvature",
            marker_color=colors,
            opacity=0.8,
            hovertemplate="%{x}<br>vᵀHv/vᵀv=%{y:.4g}<extra></extra>",
        ),
        row,
        col,
    )
    _add(
        fig,
        go.Scatter(
            x=sx,
            y=sy,
            mode="markers",
            name="samples",
            marker=dict(color=COLORS["point"], size=6, opacity=0.6),
            hovertemplate="%{x}<br>%{y:.4g}<extra></extra>",
        ),
        row,
        col,
    )
    if eigenvalue_range is not None:
        lo, hi = (float(a) for a in eigenvalue_range)
        for name, val, color in (("λ_min", lo, COLORS["eig_min"]), ("λ_max", hi, COLORS["eig_max"])):
            _add(
                fig,
                go.Scatter(
                    x=[labels[0], labels[-1]] if labels else [],
                    y=[val, val],
                    mode="lines",
                    name=name,
                    line=dict(color=color, dash="dash"),
                    hovertemplate=f"{name}=%{{y:.4g}}<extra></extra>",
                ),
                row,
                col,
            )
    axis = dict(row=row, col=col) if row is not None else {}
    fig.update_yaxes(title_text="vᵀHv / vᵀv", **axis)
    fig.update_xaxes(title_text="direction v", **axis)
    if row is None:
        apply_theme(fig, title=title)
    return fig


def slice_figure(
    t,
    f_values,
    quadratic_model,
    *,
    title: str | None = None,
    fig: go.Figure | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """1-D slice ``f(x + t v)`` (trace ``"f(x + t v)"``) beside its quadratic model
    ``f + t gᵀv + ½ t² vᵀHv`` (trace ``"quadratic model"``)."""
    fig = _new(fig)
    t = np.asarray(t, dtype=float).reshape(-1)
    fv = np.asarray(f_values, dtype=float).reshape(-1)
    q = np.asarray(quadratic_model, dtype=float).reshape(-1)
    if not (t.shape == fv.shape == q.shape):
        raise ValueError(
            f"t, f_values and quadratic_model must have the same length, got {t.size}, {fv.size}, {q.size}"
        )
    f_hover, q_hover = (
        "t=%{x:.3g}<br>f=%{y:.5g}<extra></extra>",
        "t=%{x:.3g}<br>model=%{y:.5g}<extra></extra>",
    )
    _add(fig, _line(t, fv, "f(x + t v)", COLORS["direction"], width=2.5, hovertemplate=f_hover), row, col)
    _add(fig, _line(t, q, "quadratic model", COLORS["model"], dash="dash", hovertemplate=q_hover), row, col)
    axis = dict(row=row, col=col) if row is not None else {}
    fig.update_xaxes(title_text="t  (step along unit v)", **axis)
    fig.update_yaxes(title_text="f", **axis)
    if row is None:
        apply_theme(fig, title=title)
    return fig


# --- Krylov and optimization figures (SpectrumExplorer, CGExplorer, HessianFreeExplorer) ---


def update_figure(target: go.Figure, source: go.Figure) -> go.Figure:
    """Copy ``source``'s traces and layout into ``target`` (e.g. a ``FigureWidget``); returns ``target``.

    When the two have the same trace names and types in the same order, the
    traces are updated in place (the browser only redraws data); otherwise
    ``target``'s traces are replaced. Used by the explorers to render a pure
    builder's output.
    """
    same = len(target.data) == len(source.data) and all(
        a.type == b.type and a.name == b.name for a, b in zip(target.data, source.data, strict=True)
    )
    if same:
        for a, b in zip(target.data, source.data, strict=True):
            props = b.to_plotly_json()
            props.pop("type", None)
            a.update(props, overwrite=True)
    else:
        target.data = ()
        target.add_traces(list(source.data))
    target.update_layout(source.layout.to_plotly_json(), overwrite=True)
    return target


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=float).reshape(-1)
    return a[np.isfinite(a)]


def ritz_data(ritz_history, *, exact_eigenvalues=None, ghosts=None) -> dict[str, dict]:
    """Trace data of :func:`ritz_figure` by trace name (``{"Ritz values": {"x": ..., "y": ...}, ...}``).

    Explorers update an existing figure with these (cheaper than building a new one).
    """
    R = np.asarray(ritz_history, dtype=float)
    k = R.shape[0]
    steps = np.broadcast_to(np.arange(1, k + 1)[:, None], R.shape)
    ok = np.isfinite(R)
    G = ghost_mask(ritz_history) if ghosts is None else np.asarray(ghosts, dtype=bool)
    ex = _finite(exact_eigenvalues) if exact_eigenvalues is not None else np.zeros(0)
    return {
        "Ritz values": dict(x=steps[ok], y=R[ok]),
        "ghost copies": dict(x=steps[ok & G], y=R[ok & G]),
        "exact eigenvalues": dict(x=np.full(ex.size, k + 1.5), y=ex),
    }


def ritz_figure(
    ritz_history,
    *,
    exact_eigenvalues=None,
    ghosts=None,
    title: str | None = None,
    fig: go.Figure | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """Ritz values after every Lanczos step (x: step, y: Ritz values).

    ``ritz_history`` is ``(k, k)``: row ``j`` holds the Ritz values after step
    ``j + 1`` (ascending, NaN-padded), as :func:`curvlab._lanczos.lanczos`
    returns it. Traces: ``"Ritz values"``; ``"ghost copies"`` (red crosses:
    Ritz values that duplicate the next one, ``ghosts`` is a boolean mask like
    :func:`curvlab.ghost_mask`'s, its default); ``"exact eigenvalues"`` (a rug right of
    the last step, empty if not given). Data: :func:`ritz_data`.
    """
    fig = _new(fig)
    k = np.shape(ritz_history)[0]
    d = ritz_data(ritz_history, exact_eigenvalues=exact_eigenvalues, ghosts=ghosts)
    style = {
        "Ritz values": dict(
            marker=dict(color=COLORS["direction"], size=4),
            hovertemplate="step %{x}<br>θ=%{y:.6g}<extra></extra>",
        ),
        "ghost copies": dict(
            marker=dict(color=COLORS["negative"], size=8, symbol="x-thin-open", line=dict(width=2)),
            hovertemplate="ghost at step %{x}<br>θ=%{y:.6g}<extra></extra>",
        ),
        "exact eigenvalues": dict(
            marker=dict(color=COLORS["point"], symbol="line-ew-open", size=12, line=dict(width=1.5)),
            hovertemplate="λ=%{y:.6g}<extra>exact</extra>",
        ),
    }
    for name, xy in d.items():
        _add(fig, go.Scatter(mode="markers", name=name, **xy, **style[name]), row, col)
    axis = dict(row=row, col=col) if row is not None else {}
    fig.update_xaxes(title_text="Lanczos step", range=[0, k + 2.5], **axis)
    fig.update_yaxes(title_text="Ritz values θ", **axis)
    if row is None:
        apply_theme(fig, title=title)
    return fig


def density_data(grid, density, density_stderr=None, *, exact_eigenvalues=None) -> dict[str, dict]:
    """Trace data of :func:`density_figure` by trace name."""
    x = np.asarray(grid, dtype=float).reshape(-1)
    y = np.asarray(density, dtype=float).reshape(-1)
    s = np.full_like(y, np.nan)
    if density_stderr is not None:
        s = np.asarray(density_stderr, dtype=float).reshape(-1)
    ex = _finite(exact_eigenvalues) if exact_eigenvalues is not None else np.zeros(0)
    return {
        "density + stderr": dict(x=x, y=y + s),
        "density − stderr": dict(x=x, y=np.maximum(y - s, 0.0)),
        "SLQ density": dict(x=x, y=y),
        "exact spectrum": dict(x=ex, nbinsx=int(min(80, max(10, ex.size // 4)))),
    }


def density_figure(
    grid,
    density,
    density_stderr=None,
    *,
    exact_eigenvalues=None,
    title: str | None = None,
    fig: go.Figure | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """A spectral density on ``grid`` with a ± one-standard-error band and the exact spectrum.

    Traces: ``"density + stderr"`` and ``"density − stderr"`` (the band, filled
    between), ``"SLQ density"``, ``"exact spectrum"`` (histogram of the exact
    eigenvalues normalized as a probability density, empty if not given).
    Data: :func:`density_data`.
    """
    fig = _new(fig)
    d = density_data(grid, density, density_stderr, exact_eigenvalues=exact_eigenvalues)
    band = dict(
        mode="lines", line=dict(width=0, color=COLORS["direction"]), hoverinfo="skip", showlegend=False
    )
    _add(fig, go.Scatter(name="density + stderr", **d["density + stderr"], **band), row, col)
    _add(
        fig,
        go.Scatter(
            name="density − stderr",
            fill="tonexty",
            fillcolor="rgba(31, 119, 180, 0.25)",
            **d["density − stderr"],
            **band,
        ),
        row,
        col,
    )
    hover = "λ=%{x:.4g}<br>density=%{y:.4g}<extra></extra>"
    _add(
        fig,
        _line(name="SLQ density", color=COLORS["direction"], hovertemplate=hover, **d["SLQ density"]),
        row,
        col,
    )
    _add(
        fig,
        go.Histogram(
            name="exact spectrum",
            histnorm="probability density",
            marker=dict(color=COLORS["model"]),
            opacity=0.45,
            hovertemplate="λ∈%{x}<br>density=%{y:.4g}<extra>exact</extra>",
            **d["exact spectrum"],
        ),
        row,
        col,
    )
    axis = dict(row=row, col=col) if row is not None else {}
    fig.update_xaxes(title_text="eigenvalue λ", **axis)
    fig.update_yaxes(title_text="density", rangemode="tozero", **axis)
    if row is None:
        fig.update_layout(barmode="overlay")
        apply_theme(fig, title=title)
    return fig


def spectrum_figure(
    ritz_history,
    grid,
    density,
    density_stderr=None,
    *,
    exact_eigenvalues=None,
    ghosts=None,
    density_title: str = "SLQ density",
    title: str | None = None,
    height: int = 500,
) -> go.Figure:
    """Lanczos Ritz values per step (left) beside the SLQ density and the exact spectrum (right).

    See :func:`ritz_figure` and :func:`density_figure` for the traces; the
    subplot titles are the first two layout annotations. The figure takes the width of
    its container; the legend sits under the plots, clear of the titles.
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=("Ritz values per Lanczos step", density_title),
    )
    ritz_figure(ritz_history, exact_eigenvalues=exact_eigenvalues, ghosts=ghosts, fig=fig, row=1, col=1)
    density_figure(grid, density, density_stderr, exact_eigenvalues=exact_eigenvalues, fig=fig, row=1, col=2)
    fig.update_layout(barmode="overlay")
    return apply_theme(fig, title=title, height=height, legend="bottom", subplot_titles=True)


def cg_data(iterations, relative_residuals, *, bound=None, anorm_errors=None, rtol=None) -> dict[str, dict]:
    """Trace data of :func:`cg_figure`'s current run, by trace name (NaN entries dropped)."""
    k = np.asarray(iterations, dtype=float).reshape(-1)
    r = np.asarray(relative_residuals, dtype=float).reshape(-1)
    ok = np.isfinite(r)
    out = {"‖r_k‖/‖b‖": dict(x=k[ok], y=r[ok])}
    e = np.full_like(r, np.nan) if anorm_errors is None else np.asarray(anorm_errors, dtype=float).reshape(-1)
    ok_e = np.isfinite(e)
    out["‖e_k‖_A/‖e_0‖_A"] = dict(x=k[ok_e], y=e[ok_e])
    b = np.full_like(k, np.nan) if bound is None else np.asarray(bound, dtype=float).reshape(-1)
    ok_b = np.isfinite(b)
    out["bound 2((√κ−1)/(√κ+1))^k"] = dict(x=k[ok_b], y=b[ok_b])
    kmax = float(k[ok].max()) if ok.any() else 1.0
    out["tolerance"] = dict(x=[0.0, max(kmax, 1.0)], y=[rtol, rtol] if rtol is not None else [None, None])
    return out


def cg_figure(
    iterations,
    relative_residuals,
    *,
    bound=None,
    anorm_errors=None,
    rtol: float | None = None,
    kept: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
    title: str | None = None,
    height: int = 440,
) -> go.Figure:
    """CG convergence on a log scale: relative residuals, A-norm errors and the κ bound.

    Traces, by name: ``"‖r_k‖/‖b‖"`` (solid), ``"‖e_k‖_A/‖e_0‖_A"`` (dotted; the
    quantity the bound is about), ``"bound 2((√κ−1)/(√κ+1))^k"`` (dashed; pass
    ``bound = condition_bound(κ, iterations)``), ``"tolerance"`` (horizontal
    line at ``rtol``), then one faded trace per ``kept`` curve
    ``(label, iterations, relative_residuals)`` named ``"kept: <label>"``.
    Data of the current run: :func:`cg_data`.
    """
    fig = go.Figure()
    d = cg_data(iterations, relative_residuals, bound=bound, anorm_errors=anorm_errors, rtol=rtol)
    style = {
        "‖r_k‖/‖b‖": dict(line=dict(color=COLORS["direction"], width=2.5)),
        "‖e_k‖_A/‖e_0‖_A": dict(line=dict(color=COLORS["hv"], width=2, dash="dot")),
        "bound 2((√κ−1)/(√κ+1))^k": dict(line=dict(color=COLORS["negative"], width=2, dash="dash")),
        "tolerance": dict(line=dict(color=COLORS["asymptote"], width=1)),
    }
    for name, xy in d.items():
        fig.add_trace(
            go.Scatter(
                mode="lines",
                name=name,
                hovertemplate=f"{name}<br>k=%{{x}}<br>%{{y:.3e}}<extra></extra>",
                **xy,
                **style[name],
            )
        )
    for i, (label, kk, rr) in enumerate(kept):
        kk = np.asarray(kk, dtype=float).reshape(-1)
        rr = np.asarray(rr, dtype=float).reshape(-1)
        ok = np.isfinite(rr)
        fig.add_trace(
            go.Scatter(
                x=kk[ok],
                y=rr[ok],
                mode="lines",
                name=f"kept: {label}",
                opacity=0.45,
                line=dict(color=PALETTE[(i + 3) % len(PALETTE)], width=1.5),
                hovertemplate=f"{label}<br>k=%{{x}}<br>%{{y:.3e}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="iteration k", rangemode="tozero")
    fig.update_yaxes(type="log", title_text="relative residual / error", exponentformat="power")
    return apply_theme(fig, title=title, height=height)


#: Display range of the reduction ratio ρ in :func:`hf_data` (the LM rule acts at 1/4 and 3/4).
RHO_RANGE = (-1.0, 2.0)

#: Trace names of :func:`hf_training_figure`, in order (baselines: ``"<name> loss vs time"``).
HF_TRACES = ("HF loss", "HF loss vs time", "damping λ", "ρ", "CG iterations")


def hf_data(history: Mapping[str, Sequence[float]], baselines: Mapping | None = None) -> dict[str, dict]:
    """Trace data of :func:`hf_training_figure` by trace name.

    ``history`` holds at least ``loss``, ``time``, ``damping``, ``rho`` and ``cg_iterations``
    (entry 0 the start, entry ``k`` iteration ``k``, as in
    :attr:`curvlab.OptimizeResult.history`), all of the same length; live lists with an
    ``iteration`` key (the iteration numbers, e.g. from the callback) work too. ``baselines`` maps
    a name (``"Adam"``) to ``(times, losses)``.
    """

    def col(key):
        return np.asarray(history.get(key, ()), dtype=float).reshape(-1)

    loss = col("loss")
    k = col("iteration") if "iteration" in history else np.arange(loss.size, dtype=float)
    t = col("time")
    step = k >= 1  # entry 0 (the start) has no damping, ρ or CG run
    # ρ is drawn clipped to RHO_RANGE (a rejected step can have ρ = -inf; plotly cannot draw it);
    # an undefined ρ (NaN: no predicted reduction) is left out
    rho_shown = ~np.isnan(col("rho")[step])
    out = {
        "HF loss": dict(x=k, y=loss),
        "HF loss vs time": dict(x=t, y=loss),
        "damping λ": dict(x=k[step], y=col("damping")[step]),
        "ρ": dict(x=k[step][rho_shown], y=np.clip(col("rho")[step][rho_shown], *RHO_RANGE)),
        "CG iterations": dict(x=k[step], y=col("cg_iterations")[step]),
    }
    for name, (bt, bl) in (baselines or {}).items():
        out[f"{name} loss vs time"] = dict(x=np.asarray(bt, dtype=float), y=np.asarray(bl, dtype=float))
    return out


def hf_training_figure(
    history: Mapping[str, Sequence[float]],
    baselines: Mapping | None = None,
    *,
    title: str | None = None,
    height: int = 620,
) -> go.Figure:
    """Hessian-free training: loss per iteration, loss vs wall time beside baselines, damping, ρ, CG.

    A 2 × 2 grid: loss vs iteration (``"HF loss"``); loss vs wall time
    (``"HF loss vs time"`` and one ``"<name> loss vs time"`` per baseline);
    the damping :math:`\\lambda` (``"damping λ"``, log axis) and the reduction
    ratio (``"ρ"``, right axis) per iteration; CG iterations per step (bars,
    ``"CG iterations"``). Data: :func:`hf_data`.
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{}, {}], [{"secondary_y": True}, {}]],
        subplot_titles=(
            "loss per iteration",
            "loss vs wall time",
            "damping λ and ratio ρ",
            "CG iterations per step",
        ),
        vertical_spacing=0.16,
        # wide: the ρ axis (right of the damping plot) and the "CG iterations" axis title keep apart
        horizontal_spacing=0.18,
    )
    d = hf_data(history, baselines)
    hf = dict(color=COLORS["direction"], width=2.5)
    fig.add_trace(go.Scatter(mode="lines+markers", name="HF loss", line=hf, **d["HF loss"]), row=1, col=1)
    fig.add_trace(
        go.Scatter(
            mode="lines+markers", name="HF loss vs time", line=hf, showlegend=False, **d["HF loss vs time"]
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            mode="lines+markers", name="damping λ", line=dict(color=COLORS["eig_min"]), **d["damping λ"]
        ),
        row=2,
        col=1,
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            mode="markers", name="ρ", marker=dict(color=COLORS["eig_max"], size=7, symbol="diamond"), **d["ρ"]
        ),
        row=2,
        col=1,
        secondary_y=True,
    )
    fig.add_trace(go.Bar(name="CG iterations", marker_color=COLORS["hv"], **d["CG iterations"]), row=2, col=2)
    for i, name in enumerate(baselines or {}):
        fig.add_trace(
            go.Scatter(
                mode="lines",
                name=f"{name} loss vs time",
                line=dict(color=PALETTE[(i + 1) % len(PALETTE)], width=1.5),
                **d[f"{name} loss vs time"],
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(type="log", title_text="loss", row=1, col=1)
    fig.update_yaxes(type="log", title_text="loss", row=1, col=2)
    fig.update_yaxes(type="log", title_text="λ", row=2, col=1, secondary_y=False)
    fig.update_yaxes(title_text="ρ", row=2, col=1, secondary_y=True, showgrid=False)
    fig.update_yaxes(title_text="CG iterations", row=2, col=2)
    fig.update_xaxes(title_text="iteration", row=1, col=1)
    fig.update_xaxes(title_text="seconds", row=1, col=2)
    fig.update_xaxes(title_text="iteration", row=2, col=1)
    fig.update_xaxes(title_text="iteration", row=2, col=2)
    return apply_theme(fig, title=title, height=height)

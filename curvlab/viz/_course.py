"""Figure builders for the teaching notebooks (the curvature course).

Same conventions as :mod:`curvlab.viz._figures`: pure functions, numbers in (computed live
by curvlab in the notebook), ``plotly.graph_objects.Figure`` out; colors from
:data:`~curvlab.viz.COLORS`, layout from :func:`~curvlab.viz.apply_theme`, unicode axis titles,
stable trace names so that a notebook control can redraw a ``FigureWidget`` in place with
:func:`~curvlab.viz.update_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from curvlab.viz._figures import COLORS, PALETTE, _line, _marker, apply_theme

__all__ = [
    "hvp_motion_figure",
    "slope_curvature_figure",
    "methods_error_figure",
    "storage_figure",
    "cost_bars_figure",
    "quadratic_paths_figure",
    "lines_figure",
    "model_vs_loss_figure",
    "spectra_side_by_side_figure",
    "agreement_figure",
    "forcing_stop",
    "truncated_cg_figure",
    "batch_noise_figure",
    "minibatch_choices_figure",
]


def _arr(a, name, ndim=1):
    a = np.asarray(a, dtype=float)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {a.shape}")
    return a


def _color(name: str, i: int) -> str:
    return COLORS.get(name, PALETTE[i % len(PALETTE)])


def hvp_motion_figure(
    eps,
    points,
    grads,
    hv,
    *,
    eps_now: float,
    contour=None,
    title: str | None = None,
) -> go.Figure:
    """The HVP as the velocity of ∇f: :math:`Hv = \\partial_\\varepsilon\\nabla f(x + \\varepsilon v)`
    at :math:`\\varepsilon = 0`.

    Left, the input plane: the path :math:`x + \\varepsilon v` (trace ``"x + εv"``) on the contours of
    :math:`f`. Right, the gradient plane: the curve :math:`\\varepsilon \\mapsto \\nabla f(x +
    \\varepsilon v)` (``"∇f(x + εv)"``), its tangent :math:`\\nabla f(x) + \\varepsilon Hv` (``"∇f(x) +
    ε Hv"``) and the arrow :math:`Hv` from :math:`\\nabla f(x)` (``"Hv (velocity)"``). Both panels
    mark the current :math:`\\varepsilon` (``"ε now"``, ``"∇f now"``).

    Parameters
    ----------
    eps : (m,) array
        Increasing steps, containing 0.
    points, grads : (m, 2) arrays
        :math:`x + \\varepsilon v` and :math:`\\nabla f(x + \\varepsilon v)` for each step.
    hv : (2,) array
        :math:`Hv` at :math:`x` (computed by autodiff).
    eps_now : float
        The step to highlight (the slider's value).
    contour : (xs, ys, Z), optional
        Grid of :math:`f` for the left panel (from :func:`~curvlab.viz.contour_grid`).
    """
    e = _arr(eps, "eps")
    P, G = _arr(points, "points", 2), _arr(grads, "grads", 2)
    hv = _arr(hv, "hv")
    if not (P.shape == G.shape == (e.size, 2)) or hv.shape != (2,):
        raise ValueError(
            f"points and grads must be ({e.size}, 2) and hv (2,), got {P.shape}, {G.shape}, {hv.shape}"
        )
    i0 = int(np.argmin(np.abs(e)))
    j = int(np.argmin(np.abs(e - eps_now)))
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("input plane: walk x + εv", "gradient plane: ∇f moves")
    )
    if contour is not None:
        xs, ys, Z = contour
        fig.add_trace(
            go.Contour(
                x=xs,
                y=ys,
                z=Z,
                name="f",
                showscale=False,
                ncontours=24,
                colorscale="Viridis",
                opacity=0.6,
                contours=dict(coloring="lines"),
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(_line(P[:, 0], P[:, 1], "x + εv", COLORS["direction"], width=3), row=1, col=1)
    now = _marker(
        [P[j, 0]], [P[j, 1]], "ε now", COLORS["point"], hovertemplate=f"ε = {e[j]:.3g}<extra></extra>"
    )
    fig.add_trace(now, row=1, col=1)
    g0 = G[i0]
    lin = g0[None, :] + e[:, None] * hv[None, :]
    fig.add_trace(_line(G[:, 0], G[:, 1], "∇f(x + εv)", COLORS["gradient"], width=3), row=1, col=2)
    fig.add_trace(_line(lin[:, 0], lin[:, 1], "∇f(x) + ε Hv", COLORS["model"], dash="dash"), row=1, col=2)
    scale = 0.5 * float(np.max(np.abs(e))) if e.size else 1.0  # drawn at half the range, beside the tangent
    tip = g0 + scale * hv
    fig.add_trace(
        go.Scatter(
            x=[g0[0], tip[0]],
            y=[g0[1], tip[1]],
            mode="lines+markers",
            name="Hv (velocity)",
            line=dict(color=COLORS["hv"], width=4),
            marker=dict(symbol=["circle", "arrow"], angleref="previous", size=[6, 16]),
            customdata=[hv, hv],
            hovertemplate="Hv = (%{customdata[0]:.4f}, %{customdata[1]:.4f})<extra></extra>",
        ),
        row=1,
        col=2,
    )
    hover = f"ε = {e[j]:.3g}<br>∇f = ({G[j, 0]:.4f}, {G[j, 1]:.4f})<extra></extra>"
    fig.add_trace(_marker([G[j, 0]], [G[j, 1]], "∇f now", COLORS["point"], hovertemplate=hover), row=1, col=2)
    fig.update_xaxes(title_text="x", row=1, col=1)
    fig.update_yaxes(title_text="y", scaleanchor="x", row=1, col=1)
    fig.update_xaxes(title_text="∂f/∂x", row=1, col=2)
    fig.update_yaxes(title_text="∂f/∂y", row=1, col=2)
    apply_theme(fig, title=title, height=440, legend="bottom", subplot_titles=True)
    return fig


def slope_curvature_figure(
    t, phi, dphi, *, slope: float, curvature: float, title: str | None = None
) -> go.Figure:
    """Slope, change of slope and curvature along a direction, for :math:`\\varphi(t) = f(x + tv)`.

    Top: :math:`\\varphi` (``"f(x + tv)"``), its tangent :math:`\\varphi(0) + t\\,\\nabla f^\\top v`
    (``"tangent (slope)"``) and quadratic model :math:`\\ldots + \\tfrac12 t^2 v^\\top Hv`
    (``"quadratic model"``). Bottom: the slope :math:`\\varphi'(t) = \\nabla f(x+tv)^\\top v`
    (``"slope φ′(t)"``) and its tangent :math:`\\nabla f^\\top v + t\\, v^\\top H v` (``"change of
    slope vᵀHv"``): the curvature is the slope of the slope.
    """
    t, phi, dphi = _arr(t, "t"), _arr(phi, "phi"), _arr(dphi, "dphi")
    if not (t.shape == phi.shape == dphi.shape):
        raise ValueError(f"t, phi and dphi must have the same length, got {t.size}, {phi.size}, {dphi.size}")
    i0 = int(np.argmin(np.abs(t)))
    f0 = phi[i0]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.09,
        subplot_titles=("value φ(t) = f(x + tv)", "slope φ′(t) = ∇f(x + tv)ᵀv"),
    )
    model = f0 + slope * t + 0.5 * curvature * t**2
    for trace, row in (
        (_line(t, phi, "f(x + tv)", COLORS["direction"], width=3), 1),
        (_line(t, f0 + slope * t, "tangent (slope)", COLORS["gradient"], dash="dot"), 1),
        (_line(t, model, "quadratic model", COLORS["model"], dash="dash"), 1),
        (_line(t, dphi, "slope φ′(t)", COLORS["gradient"], width=3), 2),
        (_line(t, slope + curvature * t, "change of slope vᵀHv", COLORS["hv"], dash="dash"), 2),
    ):
        fig.add_trace(trace, row=row, col=1)
    fig.update_xaxes(title_text="t", row=2, col=1)
    fig.update_yaxes(title_text="f", row=1, col=1)
    fig.update_yaxes(title_text="φ′", row=2, col=1)
    apply_theme(fig, title=title, height=520, legend="bottom", subplot_titles=True)
    return fig


def methods_error_figure(
    errors: Mapping[str, float], *, floor: float = 1e-18, title: str | None = None
) -> go.Figure:
    """Horizontal log bars: the error of each way of computing a quantity against a reference.

    ``errors`` maps a method name to its error (``max |computed - closed form|``, say); exact zeros
    are drawn at ``floor`` (a log axis cannot show 0) and labelled "0 (exact)".
    """
    if not errors:
        raise ValueError("errors is empty")
    names = list(errors)
    vals = np.array([float(errors[k]) for k in names])
    shown = np.where(vals > 0, vals, floor)
    text = [("0 (exact)" if v == 0 else f"{v:.1e}") for v in vals]
    fig = go.Figure(
        go.Bar(
            y=names,
            x=shown,
            orientation="h",
            name="error",
            text=text,
            textposition="outside",
            marker_color=[_color(n.split()[0], i) for i, n in enumerate(names)],
        )
    )
    fig.update_xaxes(
        type="log",
        title_text="error vs the closed form (log scale)",
        exponentformat="power",
        range=[np.log10(floor) - 0.5, np.log10(max(shown.max(), floor)) + 1.5],
    )
    fig.update_yaxes(autorange="reversed")
    apply_theme(fig, title=title, height=80 + 48 * len(names))
    fig.update_layout(showlegend=False)
    return fig


def storage_figure(
    n,
    *,
    bytes_per_entry: int = 4,
    vectors: int = 3,
    measured: Mapping[str, tuple[float, float]] | None = None,
    limits: Mapping[str, float] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Memory of the dense Hessian (:math:`n^2` entries, trace ``"dense H: n²"``) against an HVP's
    vectors (``vectors`` × :math:`n`, trace ``"HVP: x, v, Hv"``), log-log in :math:`n`.

    ``measured`` adds named markers ``{name: (n, bytes)}`` (memory measured live); ``limits`` adds
    horizontal lines ``{name: bytes}`` (this machine's RAM, an accelerator's memory).
    """
    n = _arr(n, "n")
    if np.any(n <= 0):
        raise ValueError("n must be positive")
    dense = n**2 * bytes_per_entry
    vec = vectors * n * bytes_per_entry
    fig = go.Figure()
    hover = "n=%{x:.3g}<br>%{y:.3s}B<extra></extra>"
    fig.add_trace(_line(n, dense, "dense H: n²", COLORS["gradient"], width=3, hovertemplate=hover))
    fig.add_trace(_line(n, vec, f"HVP: x, v, Hv ({vectors}n)", COLORS["hv"], width=3, hovertemplate=hover))
    for i, (name, b) in enumerate((limits or {}).items()):
        color = PALETTE[(i + 3) % len(PALETTE)]
        fig.add_trace(_line([n.min(), n.max()], [b, b], name, color, width=1.5, dash="dot"))
    for name, (nn, b) in (measured or {}).items():
        fig.add_trace(
            go.Scatter(
                x=[nn],
                y=[b],
                mode="markers+text",
                name=name,
                text=[name],
                textposition="top left",
                marker=dict(size=12, color=COLORS["point"], symbol="diamond"),
            )
        )
    fig.update_xaxes(type="log", title_text="number of parameters n", exponentformat="power")
    fig.update_yaxes(type="log", title_text="bytes", exponentformat="SI")
    apply_theme(fig, title=title, height=440, legend="bottom")
    return fig


def cost_bars_figure(
    times: Mapping[str, float],
    memory: Mapping[str, Mapping[str, float]] | None = None,
    *,
    reference: str = "gradient",
    memory_title: str = "scratch memory (XLA memory_analysis)",
    memory_unit: str = "MiB",
    log: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Time and memory of derivative programs (or operators), side by side, as bars.

    Left: ``times[name] / times[reference]`` (trace ``"time"``). Right: grouped bars of memory
    in ``memory_unit`` ("MiB" or "KiB"), one group per variant (``memory = {"plain": {name:
    bytes}, "checkpointed": {...}}``; trace names are the variants); without ``memory`` only the
    time panel is drawn. ``log=True`` puts both value axes on a log scale (for costs that differ by
    orders of magnitude).
    """
    if reference not in times:
        raise ValueError(f"reference {reference!r} is not one of the timed programs {list(times)}")
    names = list(times)
    ratio = np.array([times[k] / times[reference] for k in names])
    fig = make_subplots(
        rows=1,
        cols=2 if memory else 1,
        horizontal_spacing=0.12,
        subplot_titles=(f"time ÷ {reference} time", memory_title)
        if memory
        else (f"time ÷ {reference} time",),
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=ratio,
            name="time",
            marker_color=[_color(k, i) for i, k in enumerate(names)],
            text=[f"{r:.3g}×" for r in ratio],
            textposition="outside",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    units = {"MiB": 2**20, "KiB": 2**10}
    if memory_unit not in units:
        raise ValueError(f"memory_unit must be 'MiB' or 'KiB', got {memory_unit!r}")
    unit = units[memory_unit]
    for i, (variant, mem) in enumerate((memory or {}).items()):
        ks = list(mem)
        fig.add_trace(
            go.Bar(
                x=ks,
                y=[mem[k] / unit for k in ks],
                name=variant,
                marker_color=PALETTE[i % 8],
                text=[f"{mem[k] / unit:.3g}" for k in ks],
                textposition="outside",
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(title_text="ratio", row=1, col=1)
    if memory:
        fig.update_yaxes(title_text=memory_unit, row=1, col=2)
    if log:
        fig.update_yaxes(type="log", exponentformat="power")
    fig.update_layout(barmode="group")
    apply_theme(fig, title=title, height=440, legend="bottom", subplot_titles=True)
    return fig


def quadratic_paths_figure(
    A,
    b,
    paths: Mapping[str, np.ndarray],
    *,
    bounds: Sequence[float] | None = None,
    resolution: int = 120,
    title: str | None = None,
) -> go.Figure:
    """Iterates of minimizers drawn on the ellipses of :math:`q(x) = \\tfrac12 x^\\top A x - b^\\top x`.

    ``A`` is (2, 2) symmetric, ``paths`` maps a method name (the trace name) to its (k, 2)
    iterates. The minimizer :math:`A^{-1}b` is the star ``"x*"``. ``bounds`` is
    ``(xmin, xmax, ymin, ymax)``, by default a box around all the paths.
    """
    A = _arr(A, "A", 2)
    b = _arr(b, "b")
    if A.shape != (2, 2) or b.shape != (2,):
        raise ValueError(f"A must be (2, 2) and b (2,), got {A.shape} and {b.shape}")
    xs_star = np.linalg.solve(A, b)
    pts = [np.asarray(p, dtype=float).reshape(-1, 2) for p in paths.values()] + [xs_star[None]]
    allp = np.concatenate(pts)
    if bounds is None:
        lo, hi = allp.min(axis=0), allp.max(axis=0)
        pad = 0.15 * max(float(np.max(hi - lo)), 1e-9)
        bounds = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)
    gx = np.linspace(bounds[0], bounds[1], resolution)
    gy = np.linspace(bounds[2], bounds[3], resolution)
    XX, YY = np.meshgrid(gx, gy)
    Z = 0.5 * (A[0, 0] * XX**2 + 2 * A[0, 1] * XX * YY + A[1, 1] * YY**2) - b[0] * XX - b[1] * YY
    zmin = float(0.5 * xs_star @ A @ xs_star - b @ xs_star)
    fig = go.Figure()
    fig.add_trace(
        go.Contour(
            x=gx,
            y=gy,
            z=np.log10(Z - zmin + 1e-3 * (Z.max() - zmin)),
            name="q",
            showscale=False,
            ncontours=18,
            colorscale="Blues",
            reversescale=True,
            opacity=0.55,
            contours=dict(coloring="lines"),
            hoverinfo="skip",
        )
    )
    for i, (name, p) in enumerate(paths.items()):
        p = np.asarray(p, dtype=float).reshape(-1, 2)
        fig.add_trace(
            go.Scatter(
                x=p[:, 0],
                y=p[:, 1],
                mode="lines+markers",
                name=f"{name} ({len(p) - 1} steps)",
                line=dict(color=PALETTE[(i + 1) % 8], width=3),
                marker=dict(size=7),
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[xs_star[0]],
            y=[xs_star[1]],
            mode="markers",
            name="x*",
            marker=dict(symbol="star", size=16, color=COLORS["point"]),
        )
    )
    fig.update_xaxes(title_text="x₁", range=list(bounds[:2]))
    fig.update_yaxes(title_text="x₂", range=list(bounds[2:]), scaleanchor="x")
    apply_theme(fig, title=title, height=480, legend="bottom")
    return fig


def lines_figure(
    x,
    series: Mapping[str, np.ndarray],
    *,
    xtitle: str,
    ytitle: str,
    log_x: bool = False,
    log_y: bool = False,
    dashed: Sequence[str] = (),
    markers: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Several named series against a shared x (the workhorse of the course's measured curves).

    Series named in ``dashed`` are drawn as dashed reference lines (bounds, fitted slopes); a
    series may contain NaN (a gap).
    """
    x = _arr(x, "x")
    fig = go.Figure()
    for i, (name, y) in enumerate(series.items()):
        y = _arr(y, f"series {name!r}")
        if y.shape != x.shape:
            raise ValueError(f"series {name!r} has {y.size} values for {x.size} x values")
        ref = name in dashed
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                mode="lines" if (ref or not markers) else "lines+markers",
                line=dict(color=PALETTE[i % 8], width=2 if ref else 3, dash="dash" if ref else None),
            )
        )
    fig.update_xaxes(title_text=xtitle, type="log" if log_x else "linear")
    fig.update_yaxes(
        title_text=ytitle, type="log" if log_y else "linear", exponentformat="power" if log_y else None
    )
    apply_theme(fig, title=title, height=420, legend="bottom")
    return fig


def model_vs_loss_figure(t, loss, model, *, rho: float, title: str | None = None) -> go.Figure:
    """The Levenberg-Marquardt picture: true loss :math:`f(\\theta + t d)` (``"true loss"``) against the
    quadratic model :math:`f(\\theta) + q(t d)` (``"quadratic model"``) along a step :math:`d`, with the
    full step :math:`t = 1` marked and the reduction ratio :math:`\\rho` (actual / predicted decrease)
    in the annotation.
    """
    t, loss, model = _arr(t, "t"), _arr(loss, "loss"), _arr(model, "model")
    if not (t.shape == loss.shape == model.shape):
        raise ValueError("t, loss and model must have the same length")
    i1 = int(np.argmin(np.abs(t - 1.0)))
    i0 = int(np.argmin(np.abs(t)))
    fig = go.Figure()
    fig.add_trace(_line(t, loss, "true loss", COLORS["direction"], width=3))
    fig.add_trace(_line(t, model, "quadratic model", COLORS["model"], width=2.5, dash="dash"))
    fig.add_trace(
        go.Scatter(
            x=[t[i1], t[i1]],
            y=[loss[i1], model[i1]],
            mode="markers+lines",
            name="step t = 1",
            line=dict(color=COLORS["gradient"], width=1.5, dash="dot"),
            marker=dict(size=10, color=COLORS["gradient"]),
        )
    )
    verdict = (
        "ρ < ¼: model too optimistic → raise λ"
        if rho < 0.25
        else ("ρ > ¾: model trustworthy → lower λ" if rho > 0.75 else "¼ ≤ ρ ≤ ¾: keep λ")
    )
    fig.add_annotation(
        x=t[i1],
        y=max(loss[i1], model[i1]),
        text=f"ρ = {rho:.3f}<br>{verdict}",
        showarrow=True,
        ax=-60,
        ay=-50,
        bgcolor="white",
    )
    fig.add_hline(y=loss[i0], line=dict(color=COLORS["asymptote"], width=1, dash="dot"))
    fig.update_xaxes(title_text="t  (fraction of the CG step d)")
    fig.update_yaxes(title_text="loss")
    apply_theme(fig, title=title, height=420, legend="bottom")
    return fig


def spectra_side_by_side_figure(
    spectra: Mapping[str, np.ndarray], *, bins: int = 60, title: str | None = None
) -> go.Figure:
    """Histograms of several eigenvalue spectra in a row (counts on a log axis), each subplot titled
    with its smallest eigenvalue and how many eigenvalues are negative beyond rounding
    (:math:`\\lambda < -10^{-8}\\,\\max|\\lambda|`): PSD or not, measured."""
    if not spectra:
        raise ValueError("spectra is empty")
    names = list(spectra)
    ev = [np.sort(_arr(spectra[k], f"spectra[{k!r}]")) for k in names]
    titles = []
    for k, e in zip(names, ev, strict=True):
        tol = 1e-8 * float(np.max(np.abs(e)))
        neg = int(np.sum(e < -tol))
        titles.append(f"{k}: λmin = {e[0]:+.2e}<br>{neg} negative → {'PSD' if neg == 0 else 'indefinite'}")
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.06)
    lo = min(float(e[0]) for e in ev)
    hi = max(float(e[-1]) for e in ev)
    edges = np.linspace(lo, hi, bins + 1)
    for i, e in enumerate(ev):
        counts, _ = np.histogram(e, bins=edges)
        centers = 0.5 * (edges[1:] + edges[:-1])
        colors = [COLORS["negative"] if c < 0 else COLORS["positive"] for c in centers]
        fig.add_trace(
            go.Bar(
                x=centers,
                y=np.where(counts > 0, counts, np.nan),
                name=names[i],
                marker_color=colors,
                width=(edges[1] - edges[0]),
                showlegend=False,
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text="λ", row=1, col=i + 1)
        fig.update_yaxes(type="log", row=1, col=i + 1)
    fig.update_yaxes(title_text="count (log)", row=1, col=1)
    apply_theme(fig, title=title, height=420, subplot_titles=True)
    fig.update_layout(margin=dict(t=fig.layout.margin.t + 24))
    fig.update_annotations(font_size=12)
    return fig


def _label_groups(u, v, spacing: tuple[float, float]) -> list[list[int]]:
    """Group points whose labels would overlap; ``u, v`` are positions in axis fractions.

    Each group is labelled once, above its topmost point (its first entry). Two label positions
    clash when they are closer than ``spacing`` in both u and v; a point joins a group when it clashes
    with the group's label, and groups whose labels clash are merged until none do."""
    groups: list[list[int]] = [[int(i)] for i in range(len(u))]

    def clash(a, b):
        return abs(u[a] - u[b]) < spacing[0] and abs(v[a] - v[b]) < spacing[1]

    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if clash(groups[a][0], groups[b][0]):
                    g = groups[a] + groups.pop(b)
                    groups[a] = sorted(g, key=lambda i: (-v[i], i))
                    merged = True
                    break
            if merged:
                break
    return groups


def agreement_figure(
    predicted,
    actual,
    *,
    labels: Sequence[str] | None = None,
    xtitle: str = "predicted",
    ytitle: str = "actual",
    title: str | None = None,
    label_spacing: tuple[float, float] = (0.09, 0.07),
) -> go.Figure:
    """Scatter of predictions against measured values with the line ``y = x`` (``"y = x"``):
    points on the line are predicted exactly (influence functions vs retraining, say).

    With ``labels``, points whose labels would overlap (closer than ``label_spacing`` of the plotted
    range in both x and y) share one label, written above the group's topmost point as
    ``"a, b, c"``; every point keeps its own label in the hover text.
    """
    p, a = _arr(predicted, "predicted"), _arr(actual, "actual")
    if p.shape != a.shape:
        raise ValueError(f"predicted and actual must have the same length, got {p.size} and {a.size}")
    if labels is not None and len(labels) != p.size:
        raise ValueError(f"labels must have one entry per point ({p.size}), got {len(labels)}")
    lo, hi = float(min(p.min(), a.min())), float(max(p.max(), a.max()))
    pad = 0.08 * max(hi - lo, 1e-12)
    text = hover = None
    if labels is not None:
        span = (hi - lo) + 2 * pad
        groups = _label_groups((p - lo + pad) / span, (a - lo + pad) / span, label_spacing)
        text = [""] * p.size
        for g in groups:
            text[g[0]] = ", ".join(str(labels[i]) for i in sorted(g))
        hover = [f"{lab}<br>{xtitle}: {x:.4g}<br>{ytitle}: {y:.4g}" for lab, x, y in zip(labels, p, a)]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[lo - pad, hi + pad],
            y=[lo - pad, hi + pad],
            mode="lines",
            name="y = x",
            line=dict(color=COLORS["asymptote"], dash="dash"),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=p,
            y=a,
            mode="markers+text" if labels is not None else "markers",
            name="points",
            text=text,
            hovertext=hover,
            hoverinfo="text" if labels is not None else None,
            textposition="top center",
            marker=dict(size=10, color=COLORS["direction"]),
        )
    )
    fig.update_xaxes(title_text=xtitle, exponentformat="power")
    fig.update_yaxes(title_text=ytitle, exponentformat="power")
    apply_theme(fig, title=title, height=420)
    return fig


def forcing_stop(rel_residuals, forcing: float) -> int:
    """The CG iteration at which truncated Newton stops for forcing term :math:`\\eta`: the first
    :math:`k` with :math:`\\|H p_k + g\\| \\le \\eta \\|g\\|` (``rel_residuals[k]``), else the last
    finite entry (the iteration cap)."""
    r = _arr(rel_residuals, "rel_residuals")
    finite = np.flatnonzero(np.isfinite(r))
    if finite.size == 0:
        raise ValueError("rel_residuals has no finite entry")
    below = np.flatnonzero(np.isfinite(r) & (r <= forcing))
    return int(below[0]) if below.size else int(finite[-1])


def truncated_cg_figure(
    rel_residuals,
    predicted,
    actual_iterations,
    actual,
    *,
    forcing: float,
    title: str | None = None,
) -> go.Figure:
    """Truncated Newton: where the forcing term :math:`\\eta` stops CG on :math:`H p = -g`, and what
    that does to the step.

    Left: the relative residual :math:`\\|H p_k + g\\| / \\|g\\|` per CG iteration :math:`k`
    (``"relative residual"``), the forcing term (``"forcing term η"``) and the iteration where CG
    stops (``"CG stops"``, :func:`forcing_stop`). Right: the decrease the quadratic model predicts,
    :math:`-q(p_k)` (``"predicted decrease −q(p_k)"``), against the decrease of the true loss
    :math:`f(x) - f(x + p_k)` measured at the iterations ``actual_iterations``
    (``"actual decrease"``), and the step taken (``"step taken"``).

    Parameters
    ----------
    rel_residuals, predicted : (K + 1,) arrays
        Entry :math:`k` is CG iterate :math:`k` (entry 0 is :math:`p_0 = 0`); NaN past the run.
    actual_iterations, actual : (m,) arrays
        CG iterations and the true decrease there (the saved iterates).
    forcing : float
        :math:`\\eta > 0`.
    """
    r, q = _arr(rel_residuals, "rel_residuals"), _arr(predicted, "predicted")
    ka, a = _arr(actual_iterations, "actual_iterations"), _arr(actual, "actual")
    if r.shape != q.shape or ka.shape != a.shape:
        raise ValueError(
            "rel_residuals and predicted, and actual_iterations and actual, must have the same lengths, "
            f"got {r.size}, {q.size} and {ka.size}, {a.size}"
        )
    if not forcing > 0:
        raise ValueError(f"forcing must be positive, got {forcing}")
    k = np.arange(r.size)
    stop = forcing_stop(r, forcing)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=(f"CG on Hp = −g stops at k = {stop}", "what the truncated step buys"),
    )
    hover = f"k = {stop}<extra></extra>"
    for trace, col in (
        (_line(k, r, "relative residual", COLORS["direction"], width=3), 1),
        (
            _line(
                [0, k[-1]], [forcing, forcing], "forcing term η", COLORS["asymptote"], width=1.5, dash="dash"
            ),
            1,
        ),
        (_marker([stop], [r[stop]], "CG stops", COLORS["point"], size=12, hovertemplate=hover), 1),
        (_line(k, q, "predicted decrease −q(p_k)", COLORS["model"], width=2.5, dash="dash"), 2),
        (_line(ka, a, "actual decrease", COLORS["gradient"], width=3, mode="lines+markers"), 2),
        (_marker([stop], [q[stop]], "step taken", COLORS["point"], size=12, hovertemplate=hover), 2),
    ):
        fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="CG iteration k")
    fig.update_yaxes(title_text="‖Hp_k + g‖ / ‖g‖", type="log", exponentformat="power", row=1, col=1)
    fig.update_yaxes(title_text="loss decrease", row=1, col=2)
    apply_theme(fig, title=title, height=440, legend="bottom", subplot_titles=True)
    return fig


def batch_noise_figure(
    sizes, rel_errors, full, samples, *, size_now: int, title: str | None = None
) -> go.Figure:
    """Noise of a mini-batch curvature product :math:`G_B v` against the batch size :math:`B`.

    Left: the mean relative error :math:`\\|G_B v - G v\\| / \\|G v\\|` (``"relative error"``) on
    log-log axes with the :math:`1/\\sqrt{B}` line through its first point (``"∝ 1/√B"``) and the
    chosen size (``"B now"``). Right: the entries of one batch's :math:`G_B v` against those of the
    full-data :math:`G v` (``"entries of G_B v"``) with ``"y = x"``: they close in on the line as
    :math:`B` grows.

    Parameters
    ----------
    sizes, rel_errors : (s,) arrays
    full : (n,) array
        :math:`G v` on all the data.
    samples : (s, n) array
        Row :math:`i` is :math:`G_B v` on one batch of size ``sizes[i]``.
    size_now : int
        One of ``sizes`` (the control's value).
    """
    B, e = _arr(sizes, "sizes"), _arr(rel_errors, "rel_errors")
    full, S = _arr(full, "full"), _arr(samples, "samples", 2)
    if B.shape != e.shape or S.shape != (B.size, full.size):
        raise ValueError(
            f"sizes and rel_errors must have the same length and samples be ({B.size}, {full.size}), "
            f"got {B.size}, {e.size} and {S.shape}"
        )
    hits = np.flatnonzero(B == size_now)
    if hits.size == 0:
        raise ValueError(f"size_now={size_now} is not one of the sizes {B.astype(int).tolist()}")
    i = int(hits[0])
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=("mean relative error of G_B v", f"one batch of B = {int(B[i])}: entries vs G v"),
    )
    lim = 1.05 * float(np.max(np.abs(np.concatenate([full, S.ravel()])))) or 1.0
    entries = dict(marker=dict(color=COLORS["hv"], size=4, opacity=0.6))
    for trace, col in (
        (_line(B, e, "relative error", COLORS["direction"], width=3, mode="lines+markers"), 1),
        (_line(B, e[0] * np.sqrt(B[0] / B), "∝ 1/√B", COLORS["asymptote"], width=1.5, dash="dash"), 1),
        (_marker([B[i]], [e[i]], "B now", COLORS["point"], size=12), 1),
        (_line([-lim, lim], [-lim, lim], "y = x", COLORS["asymptote"], dash="dash"), 2),
        (go.Scatter(x=full, y=S[i], mode="markers", name="entries of G_B v", **entries), 2),
    ):
        fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="curvature batch size B", type="log", row=1, col=1)
    fig.update_yaxes(title_text="‖G_B v − G v‖ / ‖G v‖", type="log", exponentformat="power", row=1, col=1)
    fig.update_xaxes(title_text="(G v)ᵢ, all data", range=[-lim, lim], row=1, col=2)
    fig.update_yaxes(title_text="(G_B v)ᵢ, one batch", range=[-lim, lim], row=1, col=2)
    apply_theme(fig, title=title, height=440, legend="bottom", subplot_titles=True)
    return fig


def minibatch_choices_figure(
    sizes,
    choices: Mapping[str, tuple],
    *,
    size_now: int,
    title: str | None = None,
) -> go.Figure:
    """The mini-batch choices of Hessian-free optimization: how well the quadratic model that CG
    minimized predicts the decrease of the loss on all the data.

    For each choice of curvature batch :math:`C` (the gradient batch :math:`B` itself, a subset of
    it, an independent batch) and each draw, CG solves :math:`(G_C + \\lambda I)\\, d = -g_B` with
    the gradient :math:`g_B` of the gradient batch; ``predicted`` is the model's decrease
    :math:`-(g_B^\\top d + \\tfrac12 d^\\top G_C d)` and ``actual`` the decrease of the full-data
    loss :math:`f(\\theta) - f(\\theta + d)`.

    Left: the mean over draws of the reduction ratio :math:`\\rho = \\text{actual} /
    \\text{predicted}` against the curvature batch size :math:`|C|` (one trace per choice, named
    by its key, with the standard error as error bars; a choice with a single curvature batch
    is a dotted horizontal line), ``"ρ = 1 (model exact)"`` and the chosen size (``"|C| now"``).
    Right: every draw's predicted against actual decrease at the chosen size (``"<choice>:
    draws"``) with ``"y = x"``; points under the line are steps whose model promised more than
    the loss gave.

    Parameters
    ----------
    sizes : (s,) array
        Curvature batch sizes, increasing.
    choices : mapping of name to ``(predicted, actual)``
        Arrays of shape ``(s, m)`` (size ``i``, draw ``j``; NaN at a size where the choice does not
        exist, such as a subset larger than the gradient batch), or ``(m,)`` for a choice whose
        curvature batch does not depend on the size (the gradient batch itself).
    size_now : int
        One of ``sizes`` (the control's value).
    """
    B = _arr(sizes, "sizes")
    if B.size == 0 or not np.all(np.diff(B) > 0):
        raise ValueError(f"sizes must be non-empty and increasing, got {B.tolist()}")
    if not choices:
        raise ValueError("choices is empty")
    hits = np.flatnonzero(B == size_now)
    if hits.size == 0:
        raise ValueError(f"size_now={size_now} is not one of the sizes {B.astype(int).tolist()}")
    i_now = int(hits[0])
    data = {}
    for name, pair in choices.items():
        if len(pair) != 2:
            raise ValueError(f"choices[{name!r}] must be a pair (predicted, actual)")
        pr, ac = (np.asarray(a, dtype=float) for a in pair)
        if pr.shape != ac.shape or pr.ndim not in (1, 2) or (pr.ndim == 2 and pr.shape[0] != B.size):
            raise ValueError(
                f"choices[{name!r}]: predicted and actual must both be (m,) or ({B.size}, m), "
                f"got {pr.shape} and {ac.shape}"
            )
        ok = np.isfinite(pr)
        if not np.array_equal(ok, np.isfinite(ac)) or not ok.any() or (pr.ndim == 1 and not ok.all()):
            raise ValueError(f"choices[{name!r}]: predicted and actual must be finite at the same entries")
        if not np.all(pr[ok] > 0):
            raise ValueError(
                f"choices[{name!r}]: every predicted decrease must be positive (ρ divides by it)"
            )
        data[name] = (pr, ac)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=(
            "ρ on all the data (mean ± s.e. over draws)",
            f"every draw at |C| = {int(B[i_now])}: predicted vs actual decrease",
        ),
    )
    fig.add_trace(
        _line([B[0], B[-1]], [1.0, 1.0], "ρ = 1 (model exact)", COLORS["asymptote"], width=1.5, dash="dash"),
        row=1,
        col=1,
    )
    now_x, now_y = [], []
    for k, (name, (pr, ac)) in enumerate(data.items()):
        rho = ac / pr
        count = np.sum(np.isfinite(rho), axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(rho, axis=-1) / count
            se = np.sqrt(np.nansum((rho - np.expand_dims(mean, -1)) ** 2, axis=-1) / (count - 1) / count)
        mean = np.where(count > 0, mean, np.nan)
        se = np.where(count > 1, se, 0.0)
        color = PALETTE[k % len(PALETTE)]
        if rho.ndim == 1:
            trace = _line([B[0], B[-1]], [float(mean)] * 2, name, color, width=2.5, dash="dot")
            trace.update(
                customdata=[[float(se)]] * 2,
                hovertemplate=f"{name}: ρ = %{{y:.3f}} ± %{{customdata[0]:.3f}}<extra></extra>",
            )
        else:
            trace = _line(
                B,
                mean,
                name,
                color,
                width=2.5,
                mode="lines+markers",
                error_y=dict(type="data", array=se, visible=True, thickness=1.2),
            )
            if np.isfinite(mean[i_now]):
                now_x.append(B[i_now])
                now_y.append(mean[i_now])
        fig.add_trace(trace, row=1, col=1)
    fig.add_trace(
        _marker(now_x, now_y, "|C| now", COLORS["point"], size=14, symbol="circle-open"), row=1, col=1
    )
    shown = [
        (pr if pr.ndim == 1 else pr[i_now], ac if ac.ndim == 1 else ac[i_now]) for pr, ac in data.values()
    ]
    every = np.concatenate([np.concatenate(s) for s in shown])
    every = np.append(every[np.isfinite(every)], 0.0)
    lo, hi = float(every.min()), float(every.max())
    pad = 0.05 * max(hi - lo, 1e-12)
    fig.add_trace(
        _line([lo - pad, hi + pad], [lo - pad, hi + pad], "y = x", COLORS["asymptote"], dash="dash"),
        row=1,
        col=2,
    )
    for k, (name, (pr, ac)) in enumerate(zip(data, shown, strict=True)):
        fig.add_trace(
            _marker(pr, ac, f"{name}: draws", PALETTE[k % len(PALETTE)], size=8, opacity=0.75),
            row=1,
            col=2,
        )
    fig.update_xaxes(
        title_text="curvature batch |C| (examples per product)",
        type="log",
        tickvals=B,
        ticktext=[f"{b:g}" for b in B],
        row=1,
        col=1,
    )
    fig.update_yaxes(title_text="ρ = actual / predicted", row=1, col=1)
    fig.update_xaxes(title_text="predicted decrease (model)", row=1, col=2)
    fig.update_yaxes(title_text="actual decrease (all data)", row=1, col=2)
    apply_theme(fig, title=title, height=460, legend="bottom", subplot_titles=True)
    return fig

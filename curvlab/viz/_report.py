"""Rendering of :class:`curvlab.CurvatureReport`: a plotly figure, a self-contained HTML page.

The report itself is data in the core (``to_dict``, ``summary``); everything that needs
plotly lives here.
"""

from __future__ import annotations

import html as _html
import json
import os

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from curvlab._diagnostics import CurvatureReport
from curvlab.viz._figures import _marker


def report_figure(report: CurvatureReport) -> go.Figure:
    """A plotly figure: spectral density with its band and the extreme eigenvalues; per-block bars."""
    has_blocks = bool(report.blocks)
    fig = make_subplots(
        rows=1,
        cols=2 if has_blocks else 1,
        subplot_titles=("Spectral density (SLQ)",) + (("Per-block curvature",) if has_blocks else ()),
        specs=[[{}, {"secondary_y": True}]] if has_blocks else [[{}]],
    )
    grid, dens, err = (
        np.asarray(a, dtype=float) for a in (report.density_grid, report.density, report.density_stderr)
    )
    upper, lower = dens + 2 * err, np.maximum(dens - 2 * err, 0.0)
    fig.add_trace(
        go.Scatter(x=grid, y=upper, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=lower,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor="rgba(31,119,180,0.25)",
            name="± 2 stderr",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(go.Scatter(x=grid, y=dens, mode="lines", name="density"), row=1, col=1)
    ymax = float(np.max(upper)) if upper.size else 1.0
    for which, color in (("top", "crimson"), ("bottom", "seagreen")):
        ev = np.asarray(getattr(report, f"{which}_eigenvalues"), dtype=float)
        tick = _marker(
            ev, np.full(ev.size, ymax * 1.05), f"{which} eigenvalues", color, size=10, symbol="triangle-down"
        )
        fig.add_trace(tick, row=1, col=1)
    fig.update_xaxes(title_text="eigenvalue", row=1, col=1)
    fig.update_yaxes(title_text="density", row=1, col=1)
    if has_blocks:
        names = [b.name for b in report.blocks]
        fig.add_trace(
            go.Bar(x=names, y=[b.top_eigenvalue for b in report.blocks], name="block λmax", offsetgroup=0),
            row=1,
            col=2,
        )
        fig.add_trace(
            go.Bar(
                x=names,
                y=[b.trace for b in report.blocks],
                error_y={"type": "data", "array": [2 * b.trace_stderr for b in report.blocks]},
                name="block trace",
                offsetgroup=1,
            ),
            row=1,
            col=2,
            secondary_y=True,
        )
        fig.update_yaxes(title_text="λmax", row=1, col=2)
        fig.update_yaxes(title_text="trace", row=1, col=2, secondary_y=True)
    fig.update_layout(
        title=f"{report.curvature} curvature: λmax = {float(report.top_eigenvalues[0]):.4g}, "
        f"trace = {report.trace:.4g} ± {report.trace_stderr:.2g}",
        template="plotly_white",
        height=450,
        barmode="group",
    )
    return fig


def report_html(report: CurvatureReport, title: str = "curvlab curvature report") -> str:
    """A self-contained HTML page (plotly.js inlined) with the figures and the numbers."""
    figs = [report_figure(report)]
    parts = []
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    table = _html.escape(report.summary())
    return (
        _html_head(title)
        + "\n".join(parts)
        + f"\n<h2>Summary</h2><pre>{table}</pre>\n"
        + masses_html(report)
        + approximation_html(report)
        + "<h2>Data (JSON)</h2><pre id='curvlab-report-json'>"
        + _html.escape(json.dumps(report.to_dict(), indent=1))
        + "</pre></body></html>\n"
    )


def _num(x, fmt=".4g") -> str:
    x = float(x)
    return format(x, fmt) if np.isfinite(x) else "n/a"


def masses_html(report: CurvatureReport) -> str:
    """The spectral masses with their uncertainty, and what they mean (an HTML section)."""
    rows = "".join(
        f"<tr><td>{name}</td><td>{_num(v)}</td><td>± {_num(e, '.2g')}</td></tr>"
        for name, v, e in (
            (
                f"below −{_num(report.mass_threshold, '.3g')}",
                report.negative_mass,
                report.negative_mass_stderr,
            ),
            (f"within ±{_num(report.mass_threshold, '.3g')}", report.zero_mass, report.zero_mass_stderr),
            (
                f"above {_num(report.mass_threshold, '.3g')}",
                report.positive_mass,
                report.positive_mass_stderr,
            ),
        )
    )
    return (
        "<h2>Spectral masses</h2><div id='curvlab-report-masses'>"
        "<table><tr><th>eigenvalues</th><th>fraction of the spectrum</th><th>standard error</th></tr>"
        f"{rows}</table>"
        "<p>Each number is the fraction of the operator's eigenvalues in that range, estimated by "
        "stochastic Lanczos quadrature: every random probe gives one estimate (the quadrature weights of "
        "its nodes in the range) and the report shows their mean with its standard error across the "
        "probes (about two standard errors either side is a 95% "
        "interval). The ranges are relative to the spectral scale "
        "s = max(|λ<sub>max</sub>|, |λ<sub>min</sub>|): an eigenvalue counts as negative only below "
        f"−τ·s, with τ = {_num(report.mass_tol, '.3g')}. Eigenvalues closer to zero than that are the "
        "zero cluster (the flat directions of the loss, very large in over-parametrized networks): "
        "the quadrature node that stands for that cluster lies a rounding error away from zero on either "
        "side, and without the threshold it would carry the whole cluster into the negative (or positive) "
        "mass. A negative mass well above its standard error means directions of clearly negative "
        "curvature (a saddle or non-convex region); zero within the uncertainty means none that the "
        "estimator can see at this resolution.</p></div>\n"
    )


def approximation_html(report: CurvatureReport) -> str:
    """An approximate curvature compared with the exact GGN: top eigenvalues against the exact ones."""
    a = report.approximation
    if a is None:
        return ""
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{_num(x)}</td><td>{_num(y)}</td><td>{_num(e, '.2e')}</td></tr>"
        for i, (x, y, e) in enumerate(
            zip(report.top_eigenvalues, a["exact_top_eigenvalues"], a["relative_errors"])
        )
    )
    return (
        f"<h2>{_html.escape(report.curvature)} against the exact {_html.escape(str(a['exact']))}</h2>"
        "<table id='curvlab-report-approximation'><tr><th>i</th><th>approximation λ<sub>i</sub></th>"
        f"<th>exact λ<sub>i</sub></th><th>relative error</th></tr>{rows}</table>\n"
    )


def _html_head(title: str) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{_html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em} pre{background:#f6f6f6;padding:1em}"
        " td,th{padding:0 1em;text-align:right}</style>"
        f"</head><body><h1>{_html.escape(title)}</h1>\n"
    )


def save_report(report: CurvatureReport, path: str | os.PathLike) -> None:
    """Write HTML (``.html``/``.htm``) or JSON (``.json``) by the file suffix."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".html", ".htm"):
        text = report_html(report)
    elif suffix == ".json":
        text = json.dumps(report.to_dict(), indent=1)
    else:
        raise ValueError(f"out must end in .html or .json, got {path!r}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def sharpness_figure(reports, steps=None) -> go.Figure:
    """Plotly figure tracking curvature across checkpoints.

    Plots the top eigenvalue, the trace (± 2 stderr), the negative spectral
    mass and the curvature along the gradient against ``steps`` (default
    ``0, 1, ...``). ``reports`` are :class:`CurvatureReport` objects or their
    ``to_dict()`` dictionaries.
    """
    reports = [r.to_dict() if isinstance(r, CurvatureReport) else dict(r) for r in reports]
    if not reports:
        raise ValueError("reports must not be empty")
    steps = list(range(len(reports))) if steps is None else list(steps)
    if len(steps) != len(reports):
        raise ValueError(f"steps has {len(steps)} entries for {len(reports)} reports")
    nan = float("nan")
    val = lambda r, k: nan if r.get(k) is None else r[k]
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=("top eigenvalue", "trace", "negative spectral mass", "curvature along gradient"),
    )
    fig.add_trace(
        go.Scatter(x=steps, y=[r["top_eigenvalues"][0] for r in reports], mode="lines+markers", name="λmax"),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=[val(r, "trace") for r in reports],
            error_y={"type": "data", "array": [2 * val(r, "trace_stderr") for r in reports]},
            mode="lines+markers",
            name="trace",
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=steps, y=[val(r, "negative_mass") for r in reports], mode="lines+markers", name="neg. mass"
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=steps, y=[val(r, "gradient_curvature") for r in reports], mode="lines+markers", name="gᵀAg/gᵀg"
        ),
        row=2,
        col=2,
    )
    fig.update_xaxes(title_text="step")
    fig.update_layout(template="plotly_white", height=600, title="Curvature over training")
    return fig

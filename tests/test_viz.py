"""curvlab.viz: pure figure builders."""

import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from curvlab import viz


def seed(p):
    return p[0] ** 2 * p[1] + jnp.sin(p[1])


def names(fig):
    return [t.name for t in fig.data]


def test_contour_figure_traces_and_arrows():
    g, hv = np.array([3.0, -4.0]), np.array([0.0, 2.0])
    fig = viz.contour_figure(
        seed, (-2, 2, -1, 1), [1.0, 0.5], [1.0, 0.0], g, hv,
        eigenvalues=[-1.0, 2.0], eigenvectors=np.eye(2), resolution=21,
    )  # fmt: skip
    assert isinstance(fig, go.Figure)
    assert names(fig) == ["f", "eigvec 1", "eigvec 2", "v", "∇f", "Hv", "x"]
    contour = fig.data[0]
    assert np.asarray(contour.z).shape == (21, 21)
    i, j = 7, 13
    expected = float(seed(jnp.array([contour.x[j], contour.y[i]])))
    assert np.asarray(contour.z)[i, j] == pytest.approx(expected, rel=1e-12)
    arrow = fig.data[names(fig).index("∇f")]
    np.testing.assert_allclose(arrow.customdata[0][:2], g)
    assert arrow.customdata[0][2] == pytest.approx(5.0)
    d = np.array([arrow.x[1] - arrow.x[0], arrow.y[1] - arrow.y[0]])
    np.testing.assert_allclose(d / np.linalg.norm(d), g / 5.0, atol=1e-12)  # drawn along the gradient
    assert np.linalg.norm(d) == pytest.approx(0.15 * 4)  # default length: 15% of the window
    assert fig.layout.xaxis.title.text == "x"
    html = fig.to_html(include_plotlyjs="cdn")
    assert "plotly" in html and len(html) > 1000


def test_contour_figure_precomputed_grid_and_log_levels():
    xs, ys, Z = viz.contour_grid(seed, (-1, 1, -1, 1), resolution=5)
    fig = viz.contour_figure(
        None, (-1, 1, -1, 1), [0, 0], [1, 0], [1, 0], [0, 1], grid=(xs, ys, Z), log_levels=True
    )
    np.testing.assert_allclose(np.asarray(fig.data[0].z), np.log1p(Z - Z.min()))
    with pytest.raises(ValueError, match="f or grid"):
        viz.contour_figure(None, (-1, 1, -1, 1), [0, 0], [1, 0], [1, 0], [0, 1])
    with pytest.raises(ValueError, match="2 entries"):
        viz.contour_figure(None, (-1, 1, -1, 1), [0, 0, 0], [1, 0], [1, 0], [0, 1], grid=(xs, ys, Z))


def test_polar_curvature_splits_sign():
    theta = np.linspace(0, 360, 73)
    H = np.diag([2.0, -1.0])
    U = np.stack([np.cos(np.radians(theta)), np.sin(np.radians(theta))])
    c = np.einsum("im,ij,jm->m", U, H, U)
    fig = viz.polar_curvature_figure(
        theta, c, [0.0, 90.0], eigenvalues=[2.0, -1.0], current_angle=30, current_curvature=1.25
    )
    assert names(fig) == ["vᵀHv > 0", "vᵀHv < 0", "eigen 1", "eigen 2", "current v"]
    pos, neg = (np.array(fig.data[k].r, dtype=float) for k in (0, 1))
    np.testing.assert_allclose(np.where(c >= 0, c, np.nan), pos)
    np.testing.assert_allclose(np.where(c < 0, -c, np.nan), neg)
    assert all(isinstance(t, go.Scatterpolar) for t in fig.data)
    assert list(fig.data[2].theta) == [0.0, 0.0, 180.0]
    assert fig.data[4].r[0] == 1.25
    with pytest.raises(ValueError, match="same length"):
        viz.polar_curvature_figure(theta[:3], c, None)


def test_fd_error_figure():
    e = np.logspace(-14, -1, 14)
    fig = viz.fd_error_figure(
        e, {"forward": e, "central": np.where(e > 1e-10, e**2, 0.0)}, {"fwd_rev": 1e-16, "rev_rev": 0.0},
        {"∝ ε": e}, default_eps={"forward": (1e-8, 2e-8)},
    )  # fmt: skip
    assert names(fig) == ["forward", "central", "∝ ε", "AD fwd_rev", "AD rev_rev", "default ε (forward)"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert min(fig.data[1].y) == 1e-18  # zeros drawn at the floor
    assert list(fig.data[4].y) == [1e-18, 1e-18]
    assert fig.data[5].x == (1e-8,)
    assert "ε" in fig.layout.xaxis.title.text and "$" not in fig.layout.yaxis.title.text


def test_directions_bar_and_slice():
    fig = viz.directions_bar_figure(
        {"random": np.array([1.0, 3.0]), "gradient": -2.0}, eigenvalue_range=(-3, 5)
    )
    assert names(fig) == ["curvature", "samples", "λ_min", "λ_max"]
    assert list(fig.data[0].y) == [2.0, -2.0]
    assert list(fig.data[1].y) == [1.0, 3.0]
    t = np.linspace(-1, 1, 5)
    fig = viz.slice_figure(t, t**2, 0.5 * t**2)
    assert names(fig) == ["f(x + t v)", "quadratic model"]
    with pytest.raises(ValueError, match="same length"):
        viz.slice_figure(t, t[:2], t)


def test_builders_draw_into_subplots_and_theme():
    fig = make_subplots(1, 2, specs=[[{"type": "xy"}, {"type": "polar"}]])
    viz.contour_figure(
        seed, (-1, 1, -1, 1), [0, 0.5], [1, 0], [1, 0], [0, 1], resolution=5, fig=fig, row=1, col=1
    )
    viz.polar_curvature_figure([0, 90, 180], [1, -1, 1], fig=fig, row=1, col=2)
    assert fig.data[-1].subplot == "polar"
    themed = viz.apply_theme(go.Figure(), title="T", height=300)
    assert themed.layout.title.text == "T" and themed.layout.height == 300


def test_theme_legend_placement_and_width():
    top = viz.apply_theme(go.Figure(), title="T")
    assert top.layout.legend.y == pytest.approx(1.02) and top.layout.margin.b == 50
    assert top.layout.autosize is True and top.layout.width is None
    bottom = viz.apply_theme(go.Figure(), title="T", legend="bottom", subplot_titles=True)
    legend = bottom.layout.legend
    assert (legend.yref, legend.y, legend.yanchor, legend.xanchor) == ("container", 0, "bottom", "center")
    assert bottom.layout.margin.b == 50 + viz.LEGEND_STRIP
    # room for the title above the subplot titles
    assert bottom.layout.margin.t > top.layout.margin.t
    assert bottom.layout.title.yref == "container" and bottom.layout.title.yanchor == "top"
    with pytest.raises(ValueError, match="legend"):
        viz.apply_theme(go.Figure(), legend="left")


def test_spectrum_figure_legend_below_the_plots():
    R = np.array([[1.0, np.nan], [0.5, 2.0]])
    grid = np.linspace(0, 3, 7)
    fig = viz.spectrum_figure(R, grid, np.ones(7) / 3, exact_eigenvalues=[0.5, 2.0], title="T")
    assert [a.text for a in fig.layout.annotations][:2] == ["Ritz values per Lanczos step", "SLQ density"]
    assert fig.layout.legend.yref == "container" and fig.layout.legend.y == 0
    assert fig.layout.width is None and fig.layout.autosize is True


def _report(**kw):
    from curvlab._diagnostics import CurvatureReport

    base = dict(
        curvature="kfac",
        top_eigenvalues=np.array([2.0, 1.0]),
        top_residuals=np.zeros(2),
        bottom_eigenvalues=np.array([-0.5, 0.0]),
        bottom_residuals=np.zeros(2),
        trace=3.0,
        trace_stderr=0.1,
        density_grid=np.linspace(-1, 2, 5),
        density=np.ones(5) / 3,
        density_stderr=np.zeros(5),
        negative_mass=0.1,
        condition_number=float("nan"),
        damping=0.0,
        gradient_curvature=1.0,
        gradient_norm=1.0,
        loss=0.5,
        blocks=(),
        num_params=10,
        num_examples=4,
        num_batches=1,
        num_operator_products=7,
        num_hvps=7,
        wall_time=0.1,
        messages={},
        negative_mass_stderr=0.02,
        zero_mass=0.6,
        zero_mass_stderr=0.05,
        positive_mass=0.3,
        positive_mass_stderr=0.04,
        mass_threshold=2e-3,
    )
    base.update(kw)
    return CurvatureReport(**base)


def test_report_masses_and_approximation_sections():
    from curvlab.viz._report import approximation_html, masses_html

    r = _report()
    page = masses_html(r)
    assert "below −0.002" in page and "± 0.02" in page and "τ = 0.001" in page and "zero cluster" in page
    assert approximation_html(r) == ""  # no comparison requested
    a = {
        "exact": "ggn",
        "exact_top_eigenvalues": np.array([2.5, 1.0]),
        "relative_errors": np.array([0.2, 0.0]),
    }
    table = approximation_html(r._replace(approximation=a))
    assert "kfac against the exact ggn" in table and table.count("<tr>") == 3 and "2.00e-01" in table
    full = viz.report_html(r._replace(approximation=a))
    assert "curvlab-report-masses" in full and "curvlab-report-approximation" in full
    d = r._replace(approximation=a).to_dict()
    assert d["spectral_masses"]["zero"] == {"value": 0.6, "stderr": 0.05}
    assert d["approximation"]["relative_errors"] == [0.2, 0.0]
    assert _report(negative_mass_stderr=float("nan")).to_dict()["negative_mass_stderr"] is None

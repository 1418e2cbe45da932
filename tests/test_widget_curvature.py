"""CurvatureExplorer: set controls in Python, check the figure against the math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab import problems
from curvlab.widgets import CurvatureExplorer
from curvlab.widgets.curvature import CurvatureResult, HighDimCurvatureResult
from tests.widget_helpers import assert_intro_names_only_controls, trace


@pytest.fixture(scope="module")
def ex():
    return CurvatureExplorer()


def dense(problem, x, y):
    p = problems.TWO_D_PROBLEMS[problem]()
    xy = jnp.array([x, y])
    return p, np.asarray(p.hessian_fn(xy)), np.asarray(jax.grad(p.f)(xy))


def test_defaults_and_fields(ex):
    r = ex.last_result
    assert isinstance(r, CurvatureResult) and ex.error.value == ""
    assert r.problem == "seed" and r.point.tolist() == [1.0, 0.5]
    for field in ("gradient", "hv", "hessian", "eigenvalues", "eigenvectors", "curvatures", "grid", "kind"):
        assert getattr(r, field) is not None
    assert "curvlab-curvature" in ex._dom_classes and "curvlab-control-angle" in ex.angle._dom_classes
    assert "vᵀHv/vᵀv" in ex.readout.value.replace(" ", "")


@pytest.mark.parametrize("problem,x,y", [("seed", 1.0, 0.5), ("seed", -0.7, 1.2), ("himmelblau", 0.3, -0.2)])
def test_curvature_at_eigen_directions_equals_eigenvalues(ex, problem, x, y):
    ex.problem.value = problem
    with ex.hold_refresh():
        ex.x.value, ex.y.value = x, y
    _, H, g = dense(problem, x, y)
    lam, U = np.linalg.eigh(H)
    for i in range(2):
        angle = float(np.degrees(np.arctan2(U[1, i], U[0, i])) % 360.0)
        r = ex.compute(problem=problem, x=x, y=y, angle=angle)
        assert r.curvature == pytest.approx(lam[i], rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(r.eigenvalues, lam, rtol=1e-12, atol=1e-13)
    # the same through the slider: the polar marker and readout follow
    ex.angle.value = round(float(np.degrees(np.arctan2(U[1, 1], U[0, 1])) % 360.0))
    r = ex.last_result
    v = np.array([np.cos(np.radians(r.angle)), np.sin(np.radians(r.angle))])
    assert r.curvature == pytest.approx(v @ H @ v, rel=1e-10)
    assert trace(ex, "current v").customdata[0] == pytest.approx(r.curvature)
    np.testing.assert_allclose(r.hessian, H, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(r.hv, H @ v, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(r.gradient, g, rtol=1e-12, atol=1e-13)


def test_arrows_and_point_follow_sliders(ex):
    ex.problem.value = "seed"
    ex.x.value = -0.5
    ex.y.value = 1.0
    ex.angle.value = 90.0
    _, H, g = dense("seed", -0.5, 1.0)
    grad_arrow = trace(ex, "∇f")
    np.testing.assert_allclose(grad_arrow.customdata[0][:2], g, rtol=1e-12)
    d = np.array([grad_arrow.x[1] - grad_arrow.x[0], grad_arrow.y[1] - grad_arrow.y[0]])
    np.testing.assert_allclose(d / np.linalg.norm(d), g / np.linalg.norm(g), atol=1e-12)
    assert (grad_arrow.x[0], grad_arrow.y[0]) == (-0.5, 1.0)
    hv_arrow = trace(ex, "Hv")
    np.testing.assert_allclose(hv_arrow.customdata[0][:2], H @ np.array([0.0, 1.0]), atol=1e-12)
    v_arrow = trace(ex, "v")
    assert v_arrow.x[1] == pytest.approx(v_arrow.x[0], abs=1e-12) and v_arrow.y[1] > v_arrow.y[0]
    assert trace(ex, "x").x == (-0.5,) and trace(ex, "x").y == (1.0,)


def test_polar_curve_is_quadratic_form(ex):
    ex.problem.value = "seed"
    with ex.hold_refresh():
        ex.x.value, ex.y.value = 1.0, 0.5
    r = ex.last_result
    _, H, _ = dense("seed", 1.0, 0.5)
    th = np.radians(r.angles)
    expected = H[0, 0] * np.cos(th) ** 2 + 2 * H[0, 1] * np.cos(th) * np.sin(th) + H[1, 1] * np.sin(th) ** 2
    np.testing.assert_allclose(r.curvatures, expected, rtol=1e-10, atol=1e-12)
    pos = np.array(trace(ex, "vᵀHv > 0").r, dtype=float)
    neg = np.array(trace(ex, "vᵀHv < 0").r, dtype=float)
    np.testing.assert_allclose(np.where(expected >= 0, expected, np.nan), pos, rtol=1e-10)
    np.testing.assert_allclose(np.where(expected < 0, -expected, np.nan), neg, rtol=1e-10)
    assert r.kind.startswith("saddle")  # H has eigenvalues of both signs here


def test_problem_switch_updates_ranges_and_kind(ex):
    ex.problem.value = "himmelblau"
    assert (ex.x.min, ex.x.max, ex.y.min, ex.y.max) == (-5.0, 5.0, -5.0, 5.0)
    with ex.hold_refresh():
        ex.x.value, ex.y.value = 3.0, 2.0  # a minimum
    assert ex.last_result.kind.startswith("minimum")
    with ex.hold_refresh():
        ex.x.value, ex.y.value = -0.270845, -0.923039  # the local maximum
    assert ex.last_result.kind.startswith("maximum")
    ex.problem.value = "rosenbrock"
    assert ex.last_result.log_levels and (ex.y.min, ex.y.max) == (-1.0, 3.0)
    assert trace(ex, "f").z is not None


def test_bad_formula_shows_error_and_explorer_keeps_working(ex):
    ex.problem.value = "custom"
    ex.formula.value = "x^2 + z"
    assert "unknown name 'z'" in ex.error.value.replace("&#x27;", "'")
    assert ex.error.layout.display is None
    ex.formula.value = "__import__('os').system('true')"
    assert "Error" in ex.error.value
    ex.problem.value = "seed"  # other controls work
    assert ex.error.value == "" and ex.last_result.problem == "seed"
    ex.problem.value = "custom"
    ex.formula.value = "x^2 + 3*y^2 - x*y"
    assert ex.error.value == ""
    np.testing.assert_allclose(ex.last_result.eigenvalues, np.linalg.eigvalsh([[2.0, -1.0], [-1.0, 6.0]]))
    ex.apply.click()  # the apply button re-runs the same formula
    assert ex.error.value == ""


def test_click_on_contour_moves_point(ex):
    ex.problem.value = "seed"

    class Points:
        xs, ys = [0.25], [-0.75]

    ex._on_contour_click(None, Points(), None)
    assert ex.last_result.point.tolist() == [0.25, -0.75]


def test_high_dimensional_mode():
    ex = CurvatureExplorer(problem="mlp", num_random=3)
    r = ex.last_result
    assert isinstance(r, HighDimCurvatureResult), ex.error.value
    lam = r.top_eigenvalue
    c = r.curvatures
    assert c["top eigenvector"] == pytest.approx(lam, rel=1e-3)
    # every Rayleigh quotient is at most λ_max
    assert max(c["random"].max(), c["gradient"]) <= lam * (1 + 1e-6)
    assert len(c["random"]) == 3
    # the quadratic model agrees with the slice to third order near t = 0
    i0 = len(r.t) // 2
    assert r.t[i0] == 0.0 and r.f_values[i0] == pytest.approx(r.quadratic_model[i0], rel=1e-12)
    ex.t_max.value = 0.01
    r = ex.last_result
    gap = np.max(np.abs(r.f_values - r.quadratic_model))
    assert gap < 1e-4 * np.max(np.abs(r.quadratic_model - r.quadratic_model[i0]))
    bars = next(t for t in ex.figure.data if t.name == "curvature")
    assert list(bars.x) == ["random", "gradient", "top eigenvector"]
    ex.slice_direction.value = "gradient"
    assert ex.last_result.slope == pytest.approx(ex.last_result.gradient_norm, rel=1e-10)
    ex.problem.value = "seed"  # back to 2-D: traces rebuilt
    assert isinstance(ex.last_result, CurvatureResult) and any(t.name == "f" for t in ex.figure.data)


def _legend_at_the_bottom(layout):
    from curvlab.viz import LEGEND_STRIP

    legend = layout.legend
    assert legend.orientation == "h" and legend.yref == "container"
    assert legend.y == 0 and legend.yanchor == "bottom"  # in the bottom margin, under the x-axis titles
    assert layout.margin.b >= 50 + LEGEND_STRIP
    assert layout.autosize is True and layout.width is None  # the width of the page


def test_layout_keeps_titles_clear_of_the_legend_and_the_polar_labels():
    ex = CurvatureExplorer()
    layout = ex.figure.layout
    _legend_at_the_bottom(layout)
    titles = [a.text for a in layout.annotations]
    assert titles[1].startswith("curvature")
    # the polar title is lifted above the 90° tick label, and the top margin makes room for it
    shift = layout.annotations[1].yshift
    assert shift >= 20 and layout.margin.t >= 26 + shift
    ex.problem.value = "mlp"
    assert isinstance(ex.last_result, HighDimCurvatureResult)
    _legend_at_the_bottom(ex.figure.layout)


def test_superscript_formula_is_accepted(ex):
    """``x²`` is a power, as the menu labels write it (the seed label itself parses)."""
    ex.problem.value = "custom"
    ex.formula.value = "x²y + sin(y)"
    assert ex.error.value == "", ex.error.value
    with ex.hold_refresh():
        ex.x.value, ex.y.value = 1.0, 0.5
    _, H, _ = dense("seed", 1.0, 0.5)
    np.testing.assert_allclose(ex.last_result.hessian, H, rtol=1e-12, atol=1e-13)
    ex.problem.value = "seed"


def test_non_finite_value_says_why(ex):
    ex.problem.value = "custom"
    ex.formula.value = "1/0"
    msg = ex.error.value
    assert "not finite" in msg and "f = inf" in msg and "division by zero" in msg
    ex.formula.value = "1/x"  # infinite only on the line x = 0
    with ex.hold_refresh():
        ex.x.value, ex.y.value = 0.0, 1.0
    assert "not finite at (0, 1)" in ex.error.value
    ex.x.value = 1.0
    assert ex.error.value == "" and ex.last_result.value == pytest.approx(1.0)
    ex.problem.value = "seed"


def test_readout_follows_the_sliders_while_an_error_is_shown(ex):
    ex.problem.value = "custom"
    ex.formula.value = "x^2 + z"
    assert "Error" in ex.error.value
    for angle in (10.0, 75.0):
        ex.angle.value = angle
        assert f"θ = {angle:.0f}°" in ex.readout.value and "not available" in ex.readout.value
    ex.x.value = 0.25
    assert "(0.25, " in ex.readout.value
    ex.formula.value = "x^2 + y^2"  # valid again: the readout recovers with numbers
    assert ex.error.value == "" and "not available" not in ex.readout.value
    assert "vᵀHv/vᵀv" in ex.readout.value.replace(" ", "")
    ex.problem.value = "seed"


def test_intro_names_only_controls_that_exist(ex):
    assert assert_intro_names_only_controls(ex), "the intro names no control"

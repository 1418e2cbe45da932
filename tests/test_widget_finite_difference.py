"""FiniteDifferenceExplorer: the V-shaped error of finite-difference HVPs."""

import subprocess
import sys

import numpy as np
import pytest

from curvlab._hvp import fd_default_eps
from curvlab.widgets import FiniteDifferenceExplorer
from curvlab.widgets.finite_difference import ASYMPTOTES, EPS_GRID, FDResult
from tests.widget_helpers import assert_intro_names_only_controls, trace

TEXTBOOK = {  # (machine eps)^(1/2) forward, ^(1/3) central
    ("float32", "forward"): np.finfo(np.float32).eps ** 0.5,
    ("float32", "central"): np.finfo(np.float32).eps ** (1 / 3),
    ("float64", "forward"): np.finfo(np.float64).eps ** 0.5,
    ("float64", "central"): np.finfo(np.float64).eps ** (1 / 3),
}


@pytest.fixture(scope="module")
def ex():
    return FiniteDifferenceExplorer()


def test_fields_and_float32_arrays(ex):
    r = ex.last_result
    assert isinstance(r, FDResult) and ex.error.value == ""
    assert r.dtype == "float32" and r.point.dtype == np.float32 and r.direction.dtype == np.float32
    assert set(r.errors) == {"forward", "central"} and set(r.ad_errors) == {"fwd_rev", "rev_fwd", "rev_rev"}
    assert set(r.asymptotes) == set(ASYMPTOTES)
    assert r.errors["forward"].shape == EPS_GRID.shape
    assert r.macheps == float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(np.array(trace(ex, "forward").y), np.maximum(r.errors["forward"], 1e-18))
    assert "curvlab-finite-difference" in ex._dom_classes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("function", ["seed", "himmelblau"])
def test_minimum_near_textbook_step_and_central_beats_forward(ex, dtype, function):
    r = ex.compute(function=function, dtype=dtype, x=1.0, y=0.5, angle=30.0)
    for scheme in ("forward", "central"):
        decades = abs(np.log10(r.best_eps[scheme]) - np.log10(TEXTBOOK[dtype, scheme]))
        assert decades <= 1.5, (scheme, r.best_eps[scheme])
        h, err = r.default_eps[scheme]
        assert h == pytest.approx(fd_default_eps(r.point, r.direction, scheme), rel=1e-6)
        assert err <= 30 * r.min_error[scheme] + 1e-300  # the default step is near-optimal
    assert r.min_error["central"] < r.min_error["forward"]
    # V shape: far from the minimum the error is much larger on both sides
    for scheme in ("forward", "central"):
        e = r.errors[scheme]
        assert e[0] > 100 * r.min_error[scheme] and e[-1] > 10 * r.min_error[scheme]


def test_float32_errors_exceed_float64(ex):
    ex.dtype.value = "float32"
    r32 = ex.last_result
    ex.dtype.value = "float64"
    r64 = ex.last_result
    assert r64.dtype == "float64" and r64.point.dtype == np.float64
    for scheme in ("forward", "central"):
        assert r32.min_error[scheme] > 100 * r64.min_error[scheme]
    assert max(r64.ad_errors.values()) < 1e-14
    assert 0 < max(r32.ad_errors.values()) < 1e-5  # float32 AD: rounding level, no step to tune
    assert max(r32.ad_errors.values()) < r32.min_error["central"]
    ex.dtype.value = "float32"


def test_truncation_asymptotes_match_slopes(ex):
    r = ex.compute(function="seed", dtype="float64", x=1.0, y=0.5, angle=30.0)
    e = r.eps
    big = (e >= 1e-4) & (e <= 1e-2)
    fwd = r.asymptotes[ASYMPTOTES[0]]
    cen = r.asymptotes[ASYMPTOTES[1]]
    np.testing.assert_allclose(fwd[big], r.errors["forward"][big], rtol=0.1)
    np.testing.assert_allclose(cen[big], r.errors["central"][big], rtol=0.1)
    np.testing.assert_allclose(fwd[1:] / fwd[:-1], e[1:] / e[:-1])
    np.testing.assert_allclose(cen[1:] / cen[:-1], (e[1:] / e[:-1]) ** 2)
    rnd = r.asymptotes[ASYMPTOTES[2]]
    np.testing.assert_allclose(rnd[1:] / rnd[:-1], e[:-1] / e[1:])


def test_sliders_update_figure(ex):
    before = np.array(trace(ex, "central").y)
    ex.angle.value = 100.0
    after = np.array(trace(ex, "central").y)
    assert not np.allclose(before, after)
    assert ex.last_result.angle == 100.0
    ex.x.value = -0.3
    assert ex.last_result.point[0] == np.float32(-0.3)
    star = trace(ex, "default ε (forward)")
    assert star.x[0] == pytest.approx(ex.last_result.default_eps["forward"][0])


def test_zero_hv_shows_error_then_recovers(ex):
    ex.function.value = "seed"
    with ex.hold_refresh():
        ex.x.value, ex.y.value, ex.angle.value = 0.0, 0.0, 0.0  # H(0, 0) e1 = 0
    assert "Hv is (nearly) zero" in ex.error.value
    ex.y.value = 1.0
    assert ex.error.value == "" and ex.last_result.point.tolist() == [0.0, 1.0]


def test_function_switch_and_bad_arguments(ex):
    ex.function.value = "rosenbrock"
    assert (ex.y.min, ex.y.max) == (-1.0, 3.0) and ex.last_result.label == "Rosenbrock"
    with pytest.raises(ValueError, match="dtype"):
        ex.compute(dtype="float16")
    with pytest.raises(ValueError, match="function"):
        ex.compute(function="nope")


def test_float64_works_with_global_x64_off():
    code = (
        "import jax\n"
        "assert not jax.config.jax_enable_x64\n"
        "from curvlab.widgets import FiniteDifferenceExplorer\n"
        "ex = FiniteDifferenceExplorer('himmelblau', dtype='float64')\n"
        "r = ex.last_result\n"
        "assert ex.error.value == '', ex.error.value\n"
        "assert str(r.point.dtype) == 'float64', r.point.dtype\n"
        "assert r.min_error['central'] < 1e-9, r.min_error\n"
        "ex.dtype.value = 'float32'\n"
        "assert str(ex.last_result.point.dtype) == 'float32'\n"
        "assert ex.last_result.min_error['central'] > 1e-9\n"
        "import jax.numpy as jnp\n"
        "assert jnp.ones(1).dtype == jnp.float32  # the global flag is untouched\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("function", ["seed", "rosenbrock", "himmelblau"])
def test_float32_axis_shows_both_branches_with_their_slopes(ex, function):
    """The rounding branch O(u/ε) and the truncation branch O(ε^p) are both on the chart."""
    with ex.hold_refresh():
        ex.function.value = function
        ex.dtype.value = "float32"
        ex.x.value, ex.y.value, ex.angle.value = 1.0, 0.5, 30.0  # the defaults (other tests move them)
    r = ex.last_result
    (x_lo, x_hi), (y_lo, y_hi) = ex.figure.layout.xaxis.range, ex.figure.layout.yaxis.range
    e = np.log10(r.eps)
    visible = e >= x_lo
    assert x_hi >= e[-1] and visible.sum() >= 20
    for scheme, order in (("forward", 1), ("central", 2)):
        y = np.log10(r.errors[scheme][visible])
        assert np.all((y >= y_lo) & (y <= y_hi)), scheme  # every drawn point is on the chart
        best = int(np.argmin(y))
        left, right = e[visible][: best + 1], e[visible][best:]
        assert left.size >= 4 and right.size >= 2, (scheme, left.size, right.size)
        # least-squares slopes: rounding about -1 on the left (before the plateau at error 1),
        # truncation about +order on the right
        rounding = (y[: best + 1] < -0.05) & (left >= left[0] - 1)
        slope_left = np.polyfit(left[rounding], y[: best + 1][rounding], 1)[0]
        assert -2.0 < slope_left < -0.4, (scheme, slope_left)
        if right.size >= 3:
            slope_right = np.polyfit(right, y[best:], 1)[0]
            assert 0.3 < slope_right < order + 1.0, (scheme, slope_right)
    # the plateau where x + εv rounds to x is cut to about a decade (4 steps per decade)
    assert np.sum(r.errors["central"][visible] >= 1 - 1e-6) <= 5
    assert np.sum(r.errors["forward"][visible] >= 1 - 1e-6) <= 9
    # float64 keeps its wider range
    ex.dtype.value = "float64"
    assert ex.figure.layout.yaxis.range[0] < -10
    ex.function.value = "seed"


def test_intro_names_only_controls_that_exist(ex):
    assert "dtype" in assert_intro_names_only_controls(ex)

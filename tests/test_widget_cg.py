"""CGExplorer: set controls in Python, check the figure against the math (no browser)."""

import jax
import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from curvlab._cg import condition_bound  # noqa: E402
from curvlab.widgets.cg_explorer import PROBE_GRID, CGExplorer  # noqa: E402
from tests.widget_helpers import arr, assert_intro_names_only_controls, trace  # noqa: E402

VALUE_CONTROLS = ("problem", "kappa", "clusters", "damping", "preconditioner", "num_probes", "rtol")
RES, ERR, BOUND = "‖r_k‖/‖b‖", "‖e_k‖_A/‖e_0‖_A", "bound 2((√κ−1)/(√κ+1))^k"


@pytest.fixture(scope="module")
def explorer():
    ex = CGExplorer(n=60, maxiter=600)
    assert ex.error.value == "", ex.error.value
    return ex


@pytest.fixture
def ex(explorer):
    with explorer.hold_refresh():
        explorer.problem.value = "well_scaled"
        explorer.kappa.value = 1e3
        explorer.clusters.value = 0
        explorer.damping.value = 0.0
        explorer.preconditioner.value = "none"
        explorer.num_probes.value = 20
        explorer.rtol.value = 1e-8
    explorer.clear_kept()
    explorer.refresh()
    assert explorer.error.value == ""
    return explorer


def test_default_construction_and_controls():
    ex = CGExplorer()
    assert ex.error.value == ""
    assert set(ex.values()) == set(VALUE_CONTROLS)
    for name in (*VALUE_CONTROLS, "keep_button", "clear_button"):
        assert ex.controls[name] is getattr(ex, name)
    r = ex.last_result
    assert r.converged and r.num_iterations > 0
    assert [t.name for t in ex.figure.data] == [RES, ERR, BOUND, "tolerance"]
    assert ex.figure.layout.yaxis.type == "log"
    assert "iterations to" in ex.readout.value


def test_residual_curve_is_cg_history(ex):
    r = ex.last_result
    y = arr(trace(ex.figure, RES).y)
    assert y.shape == (r.num_iterations + 1,)
    np.testing.assert_allclose(y[0], 1.0, rtol=1e-12)  # x0 = 0: r0 = b
    assert y[-1] <= 1e-8 < y[-2]  # stopped at the first iterate below the tolerance
    e = arr(trace(ex.figure, ERR).y)
    assert e[0] == pytest.approx(1.0) and np.all(np.diff(e) <= 1e-12)  # A-norm error decreases
    np.testing.assert_allclose(arr(trace(ex.figure, "tolerance").y), [1e-8, 1e-8])


def test_iterations_grow_with_kappa(ex):
    its = []
    for kappa in (10.0, 1e2, 1e3, 1e4):
        ex.kappa.value = kappa
        assert ex.last_result.converged
        its.append(ex.last_result.num_iterations)
        assert f"κ(A)</td><td>{kappa:.4g}" in ex.readout.value
    assert its == sorted(its) and len(set(its)) == len(its), its


def test_iterations_fall_with_damping_and_effective_kappa(ex):
    ex.kappa.value = 1e4
    its = []
    for lam in (0.0, 1.0, 10.0, 100.0):
        ex.damping.value = lam
        r = ex.last_result
        its.append(r.num_iterations)
        # eigenvalues log-spaced on [1, κ]: effective κ = (κ + λ)/(1 + λ)
        np.testing.assert_allclose(r.kappa_effective, (1e4 + lam) / (1 + lam), rtol=1e-9)
        assert f"{r.kappa_effective:.4g}" in ex.readout.value
    assert its == sorted(its, reverse=True) and len(set(its)) == len(its), its


def test_plotted_bound_is_condition_bound(ex):
    for kappa, damping in ((1e3, 0.0), (1e4, 5.0)):
        with ex.hold_refresh():
            ex.kappa.value = kappa
            ex.damping.value = damping
        t = trace(ex.figure, BOUND)
        k = arr(t.x)
        np.testing.assert_array_equal(k, np.arange(ex.last_result.num_iterations + 1))
        expected = np.asarray(condition_bound((kappa + damping) / (1 + damping), k))
        np.testing.assert_allclose(arr(t.y), expected, rtol=1e-12)
        # the bound holds for the A-norm error it is about
        assert np.all(arr(trace(ex.figure, ERR).y) <= arr(t.y) * (1 + 1e-9))
        assert t.line.dash == "dash"


def test_jacobi_shines_on_the_badly_scaled_problem(ex):
    ex.kappa.value = 1e2
    ex.problem.value = "badly_scaled"
    plain = ex.last_result
    ex.preconditioner.value = "jacobi"
    jac = ex.last_result
    assert jac.converged
    assert jac.num_iterations < plain.num_iterations / 3
    assert jac.kappa_effective < plain.kappa_effective / 100
    # Jacobi undoes the scaling: the preconditioned spectrum is that of diag(A)^-1/2 A diag(A)^-1/2
    ex.problem.value = "well_scaled"
    np.testing.assert_allclose(ex.last_result.kappa_effective, jac.kappa_effective, rtol=1e-8)
    assert "P<sup>1/2</sup>" in ex.readout.value


def test_hutchinson_preconditioner_runs_and_uses_probes(ex):
    ex.problem.value = "badly_scaled"
    ex.kappa.value = 1e2
    ex.preconditioner.value = "hutchinson"
    r20 = ex.last_result
    ex.num_probes.value = 100
    r100 = ex.last_result
    assert ex.error.value == ""
    assert r20.kappa_effective != r100.kappa_effective
    # the probes' estimate of diag(DAD) beats no preconditioner on this problem
    ex.preconditioner.value = "none"
    assert r100.kappa_effective < ex.last_result.kappa_effective


def test_tolerance_control(ex):
    ex.rtol.value = 1e-4
    loose = ex.last_result.num_iterations
    ex.rtol.value = 1e-10
    tight = ex.last_result.num_iterations
    assert loose < tight
    assert arr(trace(ex.figure, RES).y)[-1] <= 1e-10


def test_keep_and_clear_curves(ex):
    first = arr(trace(ex.figure, RES).y)
    ex.keep_button.click()
    names = [t.name for t in ex.figure.data]
    assert len(names) == 5 and names[-1].startswith("kept: ")
    np.testing.assert_allclose(arr(ex.figure.data[-1].y), first)
    assert ex.figure.data[-1].opacity < 1
    ex.kappa.value = 1e2
    assert len(ex.figure.data) == 5  # kept curves survive control changes
    np.testing.assert_allclose(arr(ex.figure.data[-1].y), first)
    ex.keep_button.click()
    assert len(ex.figure.data) == 6
    ex.clear_button.click()
    assert [t.name for t in ex.figure.data] == [RES, ERR, BOUND, "tolerance"]
    assert ex.kept == []


def test_compute_rejects_bad_values(ex):
    base = ex.values()
    for name, bad in (("kappa", 0.5), ("damping", -1.0), ("rtol", 2.0), ("preconditioner", "ilu")):
        with pytest.raises(ValueError, match=name):
            ex.compute(**{**base, name: bad})


def test_errors_go_to_the_error_area(ex, monkeypatch):
    before = arr(trace(ex.figure, RES).y)

    def boom(**controls):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(ex, "compute", boom)
    ex.kappa.value = 50.0
    assert "forced failure" in ex.error.value
    np.testing.assert_array_equal(arr(trace(ex.figure, RES).y), before)
    monkeypatch.undo()
    ex.kappa.value = 60.0
    assert ex.error.value == ""


def test_default_settings_respect_the_bound_without_x64():
    """The dashboard runs with x64 off: the teaching histories are still float64 and under the bound."""
    with jax.enable_x64(False):
        ex = CGExplorer()
        r = ex.last_result
    assert ex.error.value == "" and r.converged
    err, bound = arr(trace(ex.figure, ERR).y), arr(trace(ex.figure, BOUND).y)
    assert err.shape == bound.shape == (r.num_iterations + 1,)
    # float32 stalled near 3e-6 and crossed the bound at 57 of 267 iterations; float64 goes on down
    assert err[-1] < 1e-8
    assert np.all(err <= bound) and r.bound_violations == 0
    assert r.rounding_margin < 1e-9  # the stated margin (1e3 u κ) is far below every plotted value
    assert "≤ bound at every iteration" in ex.readout.value


@pytest.mark.parametrize("kappa", [10.0, 1e3])
@pytest.mark.parametrize("rtol", [1e-8, 1e-12])
@pytest.mark.parametrize("preconditioner", ["none", "jacobi"])
def test_error_under_bound_beyond_rounding_margin(ex, kappa, rtol, preconditioner):
    base = {**ex.values(), "kappa": kappa, "rtol": rtol, "preconditioner": preconditioner}
    for problem in ("well_scaled", "badly_scaled"):
        r = ex.compute(**{**base, "problem": problem})
        assert np.all(r.anorm_errors <= r.bound + r.rounding_margin), (problem, r.bound_violations)
        assert r.bound_violations == int(np.sum(r.anorm_errors > r.bound))


@pytest.mark.parametrize("clusters", [1, 2, 3, 5])
def test_clustered_spectrum_finishes_in_about_as_many_steps_as_clusters(ex, clusters):
    with ex.hold_refresh():
        ex.kappa.value = 1e4
        ex.clusters.value = clusters
    r = ex.last_result
    assert ex.error.value == "" and r.converged and r.clusters == clusters
    assert r.num_iterations <= clusters + 2, r.num_iterations
    # the log-spaced spectrum with the same κ needs far more
    ex.clusters.value = 0
    assert ex.last_result.num_iterations > 10 * (clusters + 2)
    ex.clusters.value = clusters
    assert f"{clusters} distinct eigenvalues" in ex.readout.value
    assert r.kappa == pytest.approx(1e4 if clusters > 1 else 1.0)


def test_hutchinson_readout_says_why_and_how_many_probes(ex):
    with ex.hold_refresh():
        ex.problem.value = "badly_scaled"
        ex.preconditioner.value = "hutchinson"  # κ = 1e3, 20 probes
    r = ex.last_result
    h = r.hutchinson
    assert h is not None and h["num_probes"] == 20
    # 20 probes leave the preconditioned κ far above exact Jacobi's: the noisy small entries
    assert r.kappa_effective > 10 * h["kappa_jacobi"]
    assert h["probes_near_jacobi"] is None or h["probes_near_jacobi"] > 20
    assert h["num_floored"] >= 1 and h["median_rel_error"] > 0.1
    assert set(h["kappa_by_probes"]) == set(PROBE_GRID)
    helps = [m for m in PROBE_GRID if h["kappa_by_probes"][m] < h["kappa_none"]]
    assert h["probes_to_help"] == (min(helps) if helps else None)
    text = ex.readout.value
    assert "floored" in text and "variance" in text and "Probes to beat no preconditioner" in text
    ex.preconditioner.value = "none"
    assert ex.last_result.hutchinson is None and "Hutchinson" not in ex.readout.value


def test_intro_names_only_controls_that_exist(explorer):
    assert "clusters" in assert_intro_names_only_controls(explorer)  # the intro's promise is a real control

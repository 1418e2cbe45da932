"""HessianFreeExplorer: synchronous compute, start/stop in a thread, errors (no browser)."""

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")
pytest.importorskip("optax")

from curvlab.widgets.hessian_free import HessianFreeExplorer  # noqa: E402
from tests.widget_helpers import HANG_GUARD_S as TIMEOUT  # noqa: E402
from tests.widget_helpers import (  # noqa: E402
    assert_a_failed_run_is_shown,
    assert_intro_names_only_controls,
    assert_untrained,
    tab_intro,
    trace,
    wait_for,
)

SETTINGS = ("model", "damping", "cg_maxiter", "preconditioner", "curvature", "maxiter", "baselines", "x_axis")


@pytest.fixture(scope="module")
def ex():
    explorer = HessianFreeExplorer(num_examples=128)
    assert "compiling" in explorer.readout.value  # the default settings compile in the background
    assert explorer.wait(TIMEOUT) and not explorer.compiling
    yield explorer
    explorer.stop(timeout=TIMEOUT)


def test_construction_does_not_train(ex):
    assert_untrained(ex, SETTINGS)
    assert "Compiled in" in ex.readout.value
    assert ex.compile_seconds is not None and ex.compile_seconds > 0
    assert ex.model.value == "autoencoder" and ex.maxiter.value == 100
    names = [t.name for t in ex.figure.data]
    assert names == ["HF loss", "HF loss vs time", "damping λ", "ρ", "CG iterations"]
    assert all(len(t.x) == 0 for t in ex.figure.data)
    # settings do not retrain live
    ex.damping.value = 0.5
    ex.cg_maxiter.value = 20
    ex.curvature.value = "hessian"
    ex.curvature.value = "ggn"
    assert ex.last_result is None and not ex.running


def test_compute_trains_and_records_matching_histories(ex):
    r = ex.compute(**{**ex.values(), "maxiter": 3, "damping": 1.0, "cg_maxiter": 20})
    h = r.history
    assert r.num_iterations == 3 and not r.stopped and r.status == "MAX_ITERATIONS"
    for key in ("loss", "time", "damping", "rho", "cg_iterations", "grad_norm", "num_hvps"):
        assert len(h[key]) == r.num_iterations + 1, key
    assert h["loss"][-1] < h["loss"][0]
    assert np.all(h["cg_iterations"][1:] >= 1) and np.all(h["cg_iterations"][1:] <= 20)
    assert h["damping"][1] == pytest.approx(1.0)
    assert np.all(np.diff(h["time"]) >= 0)
    # baselines start from the same point and train for the same wall time
    assert set(r.baselines) == {"Adam", "SGD"}
    for times, losses in r.baselines.values():
        assert len(times) == len(losses) >= 1
        assert losses[0] == pytest.approx(h["loss"][0], rel=1e-6)
        # the same cost: one gradient evaluation per step, as many as HF used
        assert len(losses) == int(r.evaluations[-1]) + 1
        assert np.all(np.isfinite(losses))


def test_compute_other_options(ex):
    r = ex.compute(
        model="mlp",
        damping=10.0,
        cg_maxiter=10,
        preconditioner="martens",
        curvature="hessian",
        maxiter=2,
        baselines=False,
    )
    assert r.baselines == {} and r.num_iterations == 2
    assert np.all(np.isfinite(r.history["loss"]))
    assert r.history["loss"][-1] <= r.history["loss"][0]


def test_compute_rejects_bad_settings(ex):
    base = {**ex.values(), "maxiter": 1}
    for name, bad in (("model", "resnet"), ("curvature", "gn"), ("damping", -1.0), ("maxiter", 0)):
        with pytest.raises(ValueError, match=name):
            ex.compute(**{**base, name: bad})


def test_start_and_stop_with_the_button(ex):
    ex.maxiter.value = 200
    ex.baselines.value = True
    ex.start_button.value = True
    assert ex.running and ex.start_button.description == "Stop"
    wait_for(lambda: ex.progress.value >= 1)
    assert ex.progress.max == 200
    ex.start_button.value = False  # Stop
    assert ex.wait(TIMEOUT)
    assert not ex.running
    assert ex.start_button.description == "Start" and not ex.start_button.value
    r = ex.last_result
    assert r.stopped and r.status == "CALLBACK" and r.baselines == {}
    assert 1 <= r.num_iterations < 200
    assert ex.error.value == ""
    # the figure shows the run: every recorded loss, and one damping/ρ/CG entry per iteration
    np.testing.assert_allclose(np.asarray(trace(ex.figure, "HF loss").y, dtype=float), r.history["loss"])
    assert len(trace(ex.figure, "CG iterations").y) == r.num_iterations
    np.testing.assert_allclose(
        np.asarray(trace(ex.figure, "damping λ").y, dtype=float), r.history["damping"][1:]
    )
    assert "stopped" in ex.readout.value


def test_full_run_shows_baselines(ex):
    ex.maxiter.value = 3
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert not ex.running and ex.error.value == ""
    r = ex.last_result
    assert not r.stopped and r.num_iterations == 3 and ex.progress.value == 3
    names = [t.name for t in ex.figure.data]
    assert "Adam loss vs time" in names and "SGD loss vs time" in names
    adam = trace(ex.figure, "Adam loss vs time")
    np.testing.assert_allclose(np.asarray(adam.y, dtype=float), r.baselines["Adam"][1])
    assert "Adam" in ex.readout.value


def test_training_errors_go_to_the_error_area(ex, monkeypatch):
    assert_a_failed_run_is_shown(ex, monkeypatch)
    ex.maxiter.value = 1
    ex.baselines.value = False
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert ex.error.value == ""


def test_evaluation_counts_and_repeatable_baselines(ex):
    settings = {**ex.values(), "maxiter": 3, "cg_maxiter": 10, "baselines": True}
    r1, r2 = ex.compute(**settings), ex.compute(**settings)
    h = r1.history
    # HF's cost: gradients + curvature-vector products + loss evaluations, cumulative
    expected = np.asarray(h["num_grad_evals"]) + np.asarray(h["num_hvps"]) + np.asarray(h["num_fun_evals"])
    np.testing.assert_array_equal(r1.evaluations, expected)
    assert r1.evaluations[0] == 2 and np.all(np.diff(r1.evaluations) > 0)  # start: one loss + one gradient
    assert h["num_hvps"][-1] >= 3  # CG ran
    # two identical runs: identical curves against evaluation counts
    np.testing.assert_array_equal(r1.evaluations, r2.evaluations)
    np.testing.assert_array_equal(h["loss"], r2.history["loss"])
    for name in ("Adam", "SGD"):
        np.testing.assert_array_equal(r1.baselines[name][1], r2.baselines[name][1])
        times, losses = r1.baselines[name]
        # the wall-time axis: steps at the median step time (evenly spaced)
        step = r1.baseline_step_seconds[name]
        np.testing.assert_allclose(times, np.arange(len(losses)) * step)


def test_count_axis_is_drawn_and_switches_to_time(ex):
    ex.maxiter.value = 2
    ex.cg_maxiter.value = 10
    ex.baselines.value = True
    ex.start_button.value = True
    assert ex.wait(TIMEOUT) and ex.error.value == ""
    r = ex.last_result
    ex.x_axis.value = "evaluations"
    hf_x = np.asarray(trace(ex.figure, "HF loss vs time").x, dtype=float)
    np.testing.assert_array_equal(hf_x, r.evaluations)
    adam = trace(ex.figure, "Adam loss vs time")
    np.testing.assert_array_equal(np.asarray(adam.x, dtype=float), np.arange(int(r.evaluations[-1]) + 1))
    assert ex.figure.layout.xaxis2.title.text == "gradient evaluations"
    assert "gradient evaluations" in ex.readout.value
    ex.x_axis.value = "time"  # redraws, does not retrain
    assert ex.last_result is r and not ex.running
    hf_x = np.asarray(trace(ex.figure, "HF loss vs time").x, dtype=float)
    np.testing.assert_allclose(hf_x, r.history["time"])
    adam_x = np.asarray(trace(ex.figure, "Adam loss vs time").x, dtype=float)
    np.testing.assert_allclose(adam_x, r.baselines["Adam"][0])
    assert ex.figure.layout.xaxis2.title.text == "wall time (s)"
    ex.x_axis.value = "evaluations"


def test_intro_names_only_controls_that_exist(ex):
    names = assert_intro_names_only_controls(ex)
    assert "Start" in names and "Run" not in tab_intro("HessianFreeExplorer")

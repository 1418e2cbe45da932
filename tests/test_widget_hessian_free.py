"""HessianFreeExplorer: synchronous compute, start/stop in a thread, errors (no browser)."""

import time

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")
pytest.importorskip("optax")

from curvlab.widgets.hessian_free import HessianFreeExplorer  # noqa: E402

SETTINGS = ("model", "damping", "cg_maxiter", "preconditioner", "curvature", "maxiter", "baselines")
TIMEOUT = 300.0  # generous: the first iteration compiles (no wall-clock assertion, only a hang guard)


@pytest.fixture(scope="module")
def ex():
    explorer = HessianFreeExplorer(num_examples=128)
    yield explorer
    explorer.stop(timeout=TIMEOUT)


def trace(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def wait_for(predicate, timeout=TIMEOUT):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_construction_does_not_train(ex):
    assert set(ex.values()) == set(SETTINGS)
    for name in SETTINGS:
        assert ex.controls[name] is getattr(ex, name)
    assert ex.start_button.description == "Start" and not ex.start_button.value
    assert ex.progress.value == 0 and not ex.running
    assert ex.last_result is None and ex.error.value == ""
    assert "Start" in ex.readout.value
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
        assert losses[0] == pytest.approx(h["loss"][0], rel=1e-10)
        assert times[-1] >= h["time"][-1] or len(times) == 200_000
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
    def boom(settings, **kwargs):
        raise RuntimeError("forced training failure")

    monkeypatch.setattr(ex, "_train", boom)
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert not ex.running and ex.start_button.description == "Start"
    assert "forced training failure" in ex.error.value
    monkeypatch.undo()
    ex.maxiter.value = 1
    ex.baselines.value = False
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert ex.error.value == ""

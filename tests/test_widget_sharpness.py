"""SharpnessExplorer: GD and λ_max against independent float64 references; start/stop (no browser)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from curvlab import problems  # noqa: E402
from curvlab.viz._sharpness import EOS_TRACES, edge_of_stability_data, edge_of_stability_figure  # noqa: E402
from curvlab.widgets import SharpnessExplorer  # noqa: E402
from curvlab.widgets.sharpness import digits_mse_problem  # noqa: E402
from tests.widget_helpers import HANG_GUARD_S as TIMEOUT  # noqa: E402
from tests.widget_helpers import (  # noqa: E402
    assert_a_failed_run_is_shown,
    assert_intro_names_only_controls,
    assert_untrained,
    trace,
    wait_for,
)

SETTINGS = ("learning_rate", "num_steps", "eval_every")
HIDDEN, N = (4,), 40


@pytest.fixture(scope="module")
def ex():
    explorer = SharpnessExplorer(hidden=HIDDEN, num_examples=N, dtype=jnp.float64, rtol=1e-10)
    assert explorer.wait(TIMEOUT)  # the background precompilation
    yield explorer
    explorer.stop(timeout=TIMEOUT)


def reference_run(eta, num_steps, measure_at):
    """Independent float64 gradient descent on the same data, and dense λ_max by numpy's eigh."""
    X, y = problems.load_digits(N, dtype=jnp.float64)
    X = np.asarray(X)
    sd = X.std(axis=0)
    X = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    Y = np.eye(10)[np.asarray(y)]
    params0 = problems.mlp(hidden=HIDDEN, num_examples=N, dtype=jnp.float64).x0
    flat0, unravel = ravel_pytree(params0)

    def loss(w):
        (l1, l2) = unravel(w)
        h = jnp.tanh(X @ l1["W"] + l1["b"][None, :])
        out = h @ l2["W"] + l2["b"][None, :]
        return 0.5 * jnp.sum((out - Y) ** 2) / X.shape[0]

    grad, hess = jax.jit(jax.grad(loss)), jax.jit(jax.hessian(loss))
    w, losses, lam = flat0, [], {}
    for t in range(num_steps + 1):
        losses.append(float(loss(w)))
        if t in measure_at:
            lam[t] = float(np.linalg.eigvalsh(np.asarray(hess(w)))[-1])
        w = w - eta * grad(w)
    return np.asarray(losses), lam


def test_construction_does_not_train(ex):
    assert_untrained(ex, SETTINGS)
    assert [t.name for t in ex.figure.data] == list(EOS_TRACES)
    assert all(len(t.x) == 0 for t in ex.figure.data if t.name != "2/η")
    ex.learning_rate.value = 0.5  # settings do not retrain live
    ex.eval_every.value = 3
    assert ex.last_result is None and not ex.running


def test_compute_matches_independent_gradient_descent_and_dense_hessian(ex):
    eta = 0.5
    r = ex.compute(learning_rate=eta, num_steps=12, eval_every=5)
    assert r.num_steps == 12 and not r.stopped and not r.diverged
    np.testing.assert_array_equal(r.steps, np.arange(13))
    np.testing.assert_array_equal(r.sharpness_steps, [0, 5, 10, 12])
    ref_losses, ref_lam = reference_run(eta, 12, {0, 5, 10, 12})
    np.testing.assert_allclose(r.losses, ref_losses, rtol=1e-10)
    np.testing.assert_allclose(r.sharpness, [ref_lam[t] for t in (0, 5, 10, 12)], rtol=1e-8)
    assert r.converged.all() and set(r.eigsh_status) == {"CONVERGED"}
    assert np.all(r.residual_norms <= 1e-8 * np.abs(r.sharpness))
    assert r.threshold == 2 / eta and r.learning_rate == eta and r.num_matvecs > 0
    assert "ran 12 steps" in r.message


def test_one_step_per_measurement_and_problem_data(ex):
    r = ex.compute(learning_rate=0.2, num_steps=3, eval_every=1)
    np.testing.assert_array_equal(r.sharpness_steps, [0, 1, 2, 3])
    p = digits_mse_problem(HIDDEN, N, dtype=jnp.float64)
    X, Y = p.batch
    np.testing.assert_allclose(np.asarray(X).mean(axis=0), 0.0, atol=1e-12)
    assert np.all(np.isclose(np.asarray(X).std(axis=0), 1.0) | np.isclose(np.asarray(X).std(axis=0), 0.0))
    np.testing.assert_array_equal(np.asarray(Y).sum(axis=1), 1.0)
    assert r.losses[0] == pytest.approx(float(p.f(p.x0)), rel=1e-12)


def test_divergence_is_reported_not_raised(ex):
    r = ex.compute(learning_rate=1e3, num_steps=200, eval_every=5)
    assert r.diverged and not r.stopped and r.num_steps < 200
    assert "diverged" in r.message and "lower η" in r.message
    d = edge_of_stability_data(r.steps, r.losses, r.sharpness_steps, r.sharpness, r.learning_rate)
    assert all(np.all(np.isfinite(v["y"])) for v in d.values())


def test_compute_rejects_bad_settings(ex):
    base = dict(learning_rate=0.1, num_steps=5, eval_every=2)
    for name, bad in (
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("num_steps", 0),
        ("eval_every", 0),
        ("eval_every", 101),
    ):
        with pytest.raises(ValueError, match=name):
            ex.compute(**{**base, name: bad})
    with pytest.raises(TypeError, match="eval_every"):
        ex.compute(**{**base, "eval_every": 2.5})
    with pytest.raises(ValueError, match="rtol"):
        SharpnessExplorer(hidden=HIDDEN, num_examples=N, rtol=0.0, precompile=False)


def test_start_and_stop_with_the_button(ex):
    ex.learning_rate.value = 0.2
    ex.num_steps.value = 20000
    ex.eval_every.value = 1
    ex.start_button.value = True
    assert ex.start_button.description == "Stop"
    wait_for(lambda: ex.progress.value >= 1)
    assert ex.progress.max == 20000
    ex.start_button.value = False  # Stop
    assert ex.wait(TIMEOUT)
    assert not ex.running and ex.start_button.description == "Start" and not ex.start_button.value
    r = ex.last_result
    assert r.stopped and not r.diverged and 1 <= r.num_steps < 20000
    assert "stopped" in r.message and ex.error.value == ""
    eta = ex.learning_rate.value
    fig = ex.figure
    np.testing.assert_allclose(np.asarray(trace(fig, "loss").y, float), r.losses)
    np.testing.assert_allclose(np.asarray(trace(fig, "λ_max").y, float), r.sharpness[r.converged])
    np.testing.assert_allclose(np.asarray(trace(fig, "λ_max").x, float), r.sharpness_steps[r.converged])
    np.testing.assert_array_equal(np.asarray(trace(fig, "2/η").y, float), [2 / eta, 2 / eta])
    assert list(trace(fig, "2/η").x) == [0, r.num_steps]
    assert "stopped" in ex.readout.value and ex.progress.value == r.num_steps


def test_training_errors_go_to_the_error_area(ex, monkeypatch):
    assert_a_failed_run_is_shown(ex, monkeypatch)
    ex.num_steps.value = 100
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert ex.error.value == "" and not ex.last_result.stopped and ex.last_result.num_steps == 100


def test_edge_of_stability_data_and_figure():
    d = edge_of_stability_data([0, 1, 2], [1.0, 0.5, 0.25], [0, 2], [3.0, 4.0], 0.5, converged=[True, False])
    assert list(d) == list(EOS_TRACES)
    assert list(d["λ_max"]["y"]) == [3.0] and list(d["λ_max (not converged)"]["x"]) == [2.0]
    assert list(d["2/η"]["y"]) == [4.0, 4.0] and list(d["2/η"]["x"]) == [0.0, 2.0]
    fig = edge_of_stability_figure([0, 1], [1.0, np.inf], [0], [np.nan], 0.1)
    assert [t.name for t in fig.data] == list(EOS_TRACES)
    assert list(fig.data[0].y) == [1.0] and len(fig.data[1].y) == 0
    with pytest.raises(ValueError, match="learning_rate"):
        edge_of_stability_data([], [], [], [], 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        edge_of_stability_data([0, 1], [1.0], [], [], 0.1)
    with pytest.raises(ValueError, match="converged"):
        edge_of_stability_data([], [], [0], [1.0], 0.1, converged=[True, True])


def test_dashboard_intro_names_only_controls_that_exist(ex):
    assert assert_intro_names_only_controls(ex), "the intro names no control"

"""The dashboard's "Edge of stability" tab in Chromium: Start trains live, the plot matches the core, Stop.

One page load, opened the way a visitor opens it (no cookie injected). The numbers the
page plots are checked against curvlab core calls made here on the same problem: the
first loss and the first λ_max (at the initialization, before any step) must agree;
later points follow a float32 trajectory, so only their consistency is checked (finite,
steps in order, measurements every ``λ every`` steps, the 2/η line at 2/η for the slider).
"""

from __future__ import annotations

import math
import re

import jax.numpy as jnp
import numpy as np
import pytest

import curvlab as cl
from curvlab.widgets.sharpness import digits_mse_problem

pytestmark = pytest.mark.browser

TRAIN_TIMEOUT_MS = 240_000  # the kernel may still be compiling the training step when Start is pressed


def trace(data: list[dict], name: str) -> dict:
    for t in data:
        if t["name"] == name:
            return t
    raise AssertionError(f"no trace {name!r} in {[t['name'] for t in data]}")


def test_sharpness_tab_trains_live_and_matches_the_core(open_page):
    dp = open_page()
    scope = dp.select_tab("sharpness", "Edge of stability")
    eta = dp.slider_value(scope, "learning-rate")
    every = int(dp.slider_value(scope, "eval-every"))
    button = dp.page.locator(f"{scope} .curvlab-control-start-button").first
    assert "Start" in button.inner_text()
    button.click()
    dp.page.wait_for_function(  # live points arrive while training runs
        """(s) => { const el = document.querySelector(s + ' .js-plotly-plot');
            if (!el || !el.data) return false;
            const t = el.data.find(d => d.name === 'λ_max');
            return !!(t && t.y && t.y.length >= 4); }""",
        arg=scope,
        timeout=TRAIN_TIMEOUT_MS,
    )
    assert "Stop" in button.inner_text()
    live = dp.plot_data(scope)
    button.click()  # Stop
    dp.page.wait_for_function(
        """(s) => { const b = document.querySelector(s + ' .curvlab-control-start-button');
            const ro = document.querySelector(s + ' .curvlab-readout');
            return b && b.innerText.includes('Start') && ro && ro.innerText.includes('stopped'); }""",
        arg=scope,
        timeout=TRAIN_TIMEOUT_MS,
    )
    dp.wait_settled(scope)
    final = dp.plot_data(scope)
    text = dp.readout(scope)
    steps = np.asarray(trace(final, "loss")["x"], float)
    np.testing.assert_array_equal(steps, np.arange(steps.size))  # the final drawing has every step

    for data in (live, final):
        loss, lam, line = trace(data, "loss"), trace(data, "λ_max"), trace(data, "2/η")
        steps, losses = np.asarray(loss["x"], float), np.asarray(loss["y"], float)
        lam_x, lam_y = np.asarray(lam["x"], float), np.asarray(lam["y"], float)
        assert losses.size >= 1 and np.all(np.isfinite(losses)) and np.all(losses > 0)
        assert steps[0] == 0 and np.all(np.diff(steps) > 0)  # a live redraw may thin out the loss points
        assert lam_y.size >= 4 and np.all(np.isfinite(lam_y)) and np.all(lam_y > 0)
        assert np.all(np.diff(lam_x) > 0) and lam_x[-1] <= steps[-1] + 1
        np.testing.assert_allclose(np.asarray(line["y"], float), [2 / eta, 2 / eta], rtol=5e-3)
        unconverged = np.asarray(trace(data, "λ_max (not converged)")["x"] or [], float)
        measured = np.sort(np.concatenate([lam_x, unconverged]))
        inner = measured[:-1]  # the last measurement of a stopped run is at its final step
        np.testing.assert_array_equal(inner, every * np.arange(inner.size))
    # the readout's 2/η agrees with the plotted line
    shown = float(re.search(r"2/η = ([0-9.]+)", text).group(1))
    assert shown == pytest.approx(trace(final, "2/η")["y"][0], rel=1e-3)

    # the core on the same problem: the loss and λ_max at the initialization
    p = digits_mse_problem((32, 32), 1797, dtype=jnp.float32)
    loss0 = float(p.loss(p.x0, p.batch))
    res = cl.eigsh(cl.hessian_operator(p.loss, p.x0, p.batch), k=1, which="LA", rtol=1e-5)
    assert res.status.name == "CONVERGED"
    assert trace(final, "loss")["y"][0] == pytest.approx(loss0, rel=1e-4)
    assert trace(final, "λ_max")["y"][0] == pytest.approx(float(res.eigenvalues[0]), rel=2e-3)
    assert math.isfinite(trace(final, "λ_max")["y"][-1])
    assert dp.console_errors == [], f"console errors: {dp.console_errors}"
    dp.close()

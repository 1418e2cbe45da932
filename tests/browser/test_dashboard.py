"""The Voila dashboard in headless Chromium: every tab renders, sliders update plot and numbers.

Expected numbers are computed here with curvlab core calls (same problem, same
settings as the explorer's defaults) and compared with what the page shows.
The kernel computes in float32 and the readouts are rounded (4-6 significant
digits), hence the relative tolerances. First-render time and slider latency
are recorded in ``benchmarks/results/browser_timings.json`` (not asserted).
"""

from __future__ import annotations

import math
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import curvlab as cl
from curvlab import problems

pytestmark = pytest.mark.browser

NUM = r"[-+−]?(?:\d+\.?\d*|\.\d+)(?:e[-+−]?\d+)?"


def numbers(text: str) -> list[float]:
    return [float(s.replace("−", "-")) for s in re.findall(NUM, text)]


def readout_row(text: str, label: str) -> str:
    """The line of a readout table whose label cell starts with ``label``."""
    for line in text.splitlines():
        if line.strip().startswith(label):
            return line
    raise AssertionError(f"no readout row {label!r} in:\n{text}")


def trace(data: list[dict], name: str) -> dict:
    for t in data:
        if t["name"] == name:
            return t
    raise AssertionError(f"no trace {name!r} in {[t['name'] for t in data]}")


def seed_f(xy):
    x, y = xy[0], xy[1]
    return x**2 * y + jnp.sin(y)


def assert_no_console_errors(dp):
    assert dp.console_errors == [], f"console errors: {dp.console_errors}"


@pytest.fixture(scope="module")
def page(open_page, timings):
    """One dashboard page shared by the per-tab tests (module scope keeps the suite short)."""
    dp = open_page()
    timings["first_render_s"] = round(dp.first_render_s, 3)
    timings.setdefault("slider_latency_s", {})
    return dp


def assert_fills_width_and_titles_are_clear(dp, scope):
    """The plot takes its container's width, and no title overlaps the legend or a polar tick label."""
    dp.page.wait_for_function(  # a figure drawn in a tab built on selection is re-measured (one round trip)
        """(s) => { const el = document.querySelector(s + ' .js-plotly-plot');
            return !!(el && el._fullLayout
                      && Math.abs(el._fullLayout.width - el.getBoundingClientRect().width) < 2); }""",
        arg=scope,
        timeout=30_000,
    )
    boxes = dp.page.eval_on_selector(
        f"{scope} .js-plotly-plot",
        """(el) => {
            const box = (n) => {
                const b = n.getBoundingClientRect();
                return [b.left, b.top, b.right, b.bottom];
            };
            const all = (sel) => Array.from(el.querySelectorAll(sel)).map(box);
            const others = all('g.legend').concat(all('.angularaxistick text'));
            return {titles: all('.gtitle, g.annotation'), others: others};
        }""",
    )
    assert boxes["titles"]
    for t in boxes["titles"]:
        for o in boxes["others"]:
            overlap = t[0] < o[2] and o[0] < t[2] and t[1] < o[3] and o[1] < t[3]
            assert not overlap, f"title box {t} overlaps {o}"


def move_and_time(dp, scope, control, timings, key, moves=3):
    """Press ArrowRight ``moves`` times; record the median latency; return the final slider value."""
    lat = []
    value = None
    for _ in range(moves):
        value, dt = dp.press_slider(scope, control)
        lat.append(dt)
    timings["slider_latency_s"][key] = {
        "median": round(statistics.median(lat), 4),
        "all": [round(t, 4) for t in lat],
    }
    return value


def test_curvature_tab(page, timings):
    dp = page
    scope = dp.select_tab("curvature", "Curvature")
    assert_fills_width_and_titles_are_clear(dp, scope)
    x0 = trace(dp.plot_data(scope), "x")["x"][0]
    x = move_and_time(dp, scope, "x", timings, "curvature.x")
    assert x == pytest.approx(x0 + 0.03, abs=1e-6)
    dp.wait_trace(scope, "x", "x", [x])
    point = jnp.asarray([x, 0.5])
    v = jnp.asarray([1.0, 0.0])  # angle 0
    curv = float(cl.directional_curvature(seed_f, point, v))
    hv = np.asarray(cl.hvp(seed_f, point, v))
    text = dp.readout(scope)
    assert numbers(readout_row(text, "vᵀHv"))[-1] == pytest.approx(curv, rel=1e-3)
    assert numbers(readout_row(text, "Hv"))[:2] == pytest.approx(hv.tolist(), rel=1e-3, abs=1e-6)
    r = dp.page.eval_on_selector(  # polar trace: r holds |curvature|
        f"{scope} .js-plotly-plot",
        "(el) => Array.from(el.data.find(t => t.name === 'current v').r)",
    )
    assert r == pytest.approx([abs(curv)], rel=1e-4)
    assert_no_console_errors(dp)


def test_finite_difference_tab(page, timings):
    dp = page
    scope = dp.select_tab("finite-difference", "Finite differences")
    x = move_and_time(dp, scope, "x", timings, "finite_difference.x")
    y = dp.slider_value(scope, "y")
    th = math.radians(dp.slider_value(scope, "angle"))
    p = jnp.asarray([x, y])
    v = jnp.asarray([math.cos(th), math.sin(th)])
    hv_norm = float(jnp.linalg.norm(cl.hvp(seed_f, p, v)))
    text = dp.readout(scope)
    row = readout_row(text, "point")
    assert re.search(r"‖Hv‖ = (\S+)", row), row
    shown = float(re.search(r"‖Hv‖ = (\S+)", row).group(1).replace("−", "-"))
    assert shown == pytest.approx(hv_norm, rel=2e-3)
    # the default step of the central scheme, as the core chooses it for float32
    p32, v32 = p.astype(jnp.float32), v.astype(jnp.float32)
    eps = float(cl.fd_default_eps(p32, v32, "central"))
    dp.wait_trace(scope, "default ε (central)", "x", [eps], rel=1e-3)
    assert_no_console_errors(dp)


def test_spectrum_tab(page, timings):
    dp = page
    scope = dp.select_tab("spectrum", "Spectrum")
    assert_fills_width_and_titles_are_clear(dp, scope)
    lam = move_and_time(dp, scope, "damping", timings, "spectrum.damping")
    assert lam == pytest.approx(0.03, abs=1e-9)

    q = problems.quadratic(eigenvalues=problems.strakos(100, 1e3), key=jax.random.key(100))
    exact = np.linalg.eigvalsh(np.asarray(q.matrix, dtype=np.float64)) + lam
    text = dp.readout(scope)
    shown = numbers(readout_row(text, "exact λ").split("max", 1)[1])
    assert shown == pytest.approx([exact[0], exact[-1]], rel=1e-4)
    hist = dp.wait_trace(scope, "exact spectrum", "x", exact.tolist(), rel=1e-4, abs_=1e-5)
    assert sorted(hist) == pytest.approx(exact.tolist(), rel=1e-4, abs=1e-5)
    assert_no_console_errors(dp)


def test_cg_tab(page, timings):
    dp = page
    scope = dp.select_tab("cg", "Conjugate gradient")
    lam = move_and_time(dp, scope, "damping", timings, "cg.damping")
    assert lam == pytest.approx(0.3, abs=1e-9)
    q = problems.quadratic(condition_number=1e3, n=200, key=jax.random.key(0))
    A = np.asarray(q.matrix, dtype=np.float64)
    w = np.linalg.eigvalsh((A + A.T) / 2) + lam
    text = dp.readout(scope)
    assert numbers(readout_row(text, "effective κ"))[-1] == pytest.approx(w[-1] / w[0], rel=2e-3)
    # CG on the same damped system (curvlab core) converges; the page shows an iteration count
    res = cl.cg(cl.DenseOperator(jnp.asarray(A)).damped(lam), jnp.asarray(q.b), rtol=1e-8)
    assert int(res.num_iterations) > 0
    assert numbers(readout_row(text, "iterations"))[0] > 0
    assert_no_console_errors(dp)


def test_hessian_free_tab(page, timings):
    dp = page
    scope = dp.select_tab("hessian-free", "Hessian-free")
    before = dp.readout(scope)
    start = time.perf_counter()
    dp.page.locator(f"{scope} .curvlab-control-start-button").first.click()
    dp.page.wait_for_function(
        """([scope, before]) => {
            const ro = document.querySelector(scope + ' .curvlab-readout');
            return ro && ro.innerText !== before && ro.querySelector('table') !== null;
        }""",
        arg=[scope, before],
        timeout=180_000,
    )
    timings["hessian_free_first_result_s"] = round(time.perf_counter() - start, 3)
    data = dp.plot_data(scope)
    ys = [y for t in data if t["y"] for y in t["y"] if isinstance(y, (int, float))]
    assert ys and all(math.isfinite(y) for y in ys)
    assert_no_console_errors(dp)


def test_bad_formula_shows_error_and_page_keeps_working(page, timings):
    dp = page
    scope = dp.select_tab("curvature", "Curvature")
    dp.page.select_option(f"{scope} .curvlab-control-problem select", label="custom formula")
    dp.page.wait_for_function(
        "(s) => document.querySelector(s + ' .curvlab-readout').innerText.includes('0.5')", arg=scope
    )
    box = dp.page.locator(f"{scope} .curvlab-control-formula input").first
    box.fill("x^^2 + (y")
    box.press("Enter")
    dp.page.locator(f"{scope} .curvlab-control-apply").first.click()
    dp.page.wait_for_selector(f"{scope} .curvlab-error", state="visible")
    assert "rror" in dp.error_text(scope)
    # a valid but ruinously expensive formula (47-high power towers: XLA compile time grows with the
    # chain) is refused by the cost budget with a message, before anything is compiled
    tower = "*".join("(" + "^".join([v] * 47) + ")" for v in "xy")
    box.fill(tower)
    start = time.perf_counter()
    box.press("Enter")
    dp.page.locator(f"{scope} .curvlab-control-apply").first.click()
    dp.page.wait_for_function(
        "(s) => { const e = document.querySelector(s + ' .curvlab-error');"
        " return e && e.offsetParent !== null && /power|tower/i.test(e.innerText); }",
        arg=scope,
    )
    timings["power_tower_formula_message_s"] = round(time.perf_counter() - start, 3)
    assert "tower" in dp.error_text(scope).lower() or "power" in dp.error_text(scope).lower()
    # back to a good function: the error goes and a slider updates the plot again
    dp.page.select_option(f"{scope} .curvlab-control-problem select", label="x²y + sin(y) (seed example)")
    dp.page.wait_for_selector(f"{scope} .curvlab-error", state="hidden")
    x, _ = dp.press_slider(scope, "x")
    dp.wait_trace(scope, "x", "x", [x])
    assert_no_console_errors(dp)


def test_two_pages_at_once_and_closed_pages_free_their_kernel(open_page, dashboard_server, timings):
    a = open_page()
    b = open_page()
    timings["second_and_third_page_first_render_s"] = [round(a.first_render_s, 3), round(b.first_render_s, 3)]
    ka, kb = a.kernel_id(), b.kernel_id()
    assert ka != kb
    assert dashboard_server.kernel_alive(ka) and dashboard_server.kernel_alive(kb)
    for dp in (a, b):  # both pages respond on their own kernel
        scope = ".curvlab-tab-curvature .curvlab-explorer"
        x, _ = dp.press_slider(scope, "x")
        dp.wait_trace(scope, "x", "x", [x])
    pids_before = set(dashboard_server.kernel_pids())
    a.close()
    deadline = time.monotonic() + 10  # the beacon: seconds, not the 600 s idle cull of this server
    while dashboard_server.kernel_alive(ka) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not dashboard_server.kernel_alive(ka), "the closed page's kernel is still running"
    assert dashboard_server.kernel_alive(kb), "closing one page must not stop another page's kernel"
    deadline = time.monotonic() + 10
    while (
        len(set(dashboard_server.kernel_pids()) & pids_before) >= len(pids_before)
        and time.monotonic() < deadline
    ):
        time.sleep(0.25)
    assert len(set(dashboard_server.kernel_pids()) & pids_before) == len(pids_before) - 1, (
        "kernel process left"
    )
    # and page b still works
    scope = ".curvlab-tab-curvature .curvlab-explorer"
    x, _ = b.press_slider(scope, "x")
    b.wait_trace(scope, "x", "x", [x])
    b.close()
    deadline = time.monotonic() + 10
    while dashboard_server.kernel_alive(kb) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not dashboard_server.kernel_alive(kb)
    assert_no_console_errors(a)
    assert_no_console_errors(b)

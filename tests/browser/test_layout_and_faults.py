"""Layout, slow work and faults of the Voila dashboard, as a visitor's Chromium shows them.

One server (the session's), one page, each tab visited once (Finite differences once per
dtype), in this order:

* **layout**: at 1440 px and after a resize to 1024 px, the plot's SVG is as wide as its
  container (nothing clipped on the right); the bounding boxes of the figure title, the
  legend, the subplot titles and every axis title (``xtitle``, ``y2title``, ...) are pairwise
  disjoint; the tick labels of one axis do not overlap each other; no control label is cut
  (``scrollWidth <= clientWidth``); the Curvature contour is drawn to equal scale;
* **slow work**: a Spectrum change that recomputes marks the explorer ``curvlab-busy``
  and its status line says "computing…" until the result arrives;
* **faults**: the kernel websocket closed and refused (what a stopped or restarted server
  does; the page's websocket is routed through Playwright) shows "The connection to the
  computing kernel was lost … server cannot be reached" with a Reload button, which loads a
  fresh page; then (last) killing the page's kernel process (the server restarts it, without
  the page's widgets) shows the message within a few seconds.

Screenshots of every tab at both widths go to ``$CURVLAB_SCREENSHOTS`` when it is set.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

from curvlab.app.dashboard import TABS

DTYPES = ("float32", "float64")  # visited in both where the tab has a dtype control
WIDTHS = (1440, 1024)

_GEOMETRY_JS = """(scope) => {
  const root = document.querySelector(scope + ' .js-plotly-plot');
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; };
  const named = [];
  root.querySelectorAll('text.gtitle, g.legend, g.annotation, text[class$="title"]').forEach((el) => {
    const b = box(el);
    if (b.x1 - b.x0 < 1 || b.y1 - b.y0 < 1) return;  // an empty title
    const what = (el.getAttribute('class') || '') + ' "' + (el.textContent || '').slice(0, 30) + '"';
    named.push({what, ...b});
  });
  const ticks = {};
  root.querySelectorAll('g[class$="tick"] > text').forEach((el) => {
    const b = box(el);
    if (b.x1 - b.x0 < 1) return;
    const sub = el.closest('g[class*="subplot"], g.polar, g.cartesianlayer > g');
    const key = (sub ? sub.getAttribute('class') : '') + '/' + el.parentNode.getAttribute('class');
    (ticks[key] ??= []).push({what: el.textContent, ...b});
  });
  const labels = Array.from(document.querySelectorAll(
      scope + ' .widget-label, ' + scope + ' .widget-label-basic, ' + scope + ' .widget-checkbox label'))
    .filter((e) => e.offsetParent !== null && e.textContent.trim())
    .map((e) => ({text: e.textContent, sw: e.scrollWidth, cw: e.clientWidth}));
  const svg = root.querySelector('.main-svg').getBoundingClientRect();
  const cont = root.parentElement.getBoundingClientRect();
  return {named, ticks, labels, svg: [svg.left, svg.right], container: [cont.left, cont.right]};
}"""


def _intersect(a, b, slack=0.5) -> bool:
    return (
        a["x0"] + slack < b["x1"] and b["x0"] + slack < a["x1"]
        and a["y0"] + slack < b["y1"] and b["y0"] + slack < a["y1"]
    )  # fmt: skip


def glyph_box(b, pad=0.2):
    """A text's box without the font's ascent/descent padding (``pad`` of its height above and below).

    The box of an SVG ``<text>`` is its em box: a tick label touches its neighbour's box on a
    log axis with minor labels ("10⁻¹" under a small "2") while the glyphs are apart.
    """
    h = b["y1"] - b["y0"]
    return {**b, "y0": b["y0"] + pad * h, "y1": b["y1"] - pad * h}


def overlaps(boxes) -> list[tuple[str, str]]:
    return [(a["what"], b["what"]) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if _intersect(a, b)]


@pytest.fixture(scope="module")
def page(open_page):
    dp = open_page(goto=False)
    dp.page.set_viewport_size({"width": WIDTHS[0], "height": 1000})
    # the kernel websocket runs through Playwright, so a test can cut it as a stopped server would
    dp.server_lost = False
    dp.sockets = []

    def route(ws):
        if dp.server_lost:
            ws.close(code=1011, reason="server gone")
            return
        ws.connect_to_server()
        dp.sockets.append(ws)

    dp.page.route_web_socket(re.compile(r"/api/kernels/[^/]+/channels"), route)
    dp.goto()
    return dp


def wait_reflowed(dp, scope) -> None:
    """Wait until the plot's SVG is as wide as its container (plotly resizes after a window resize)."""
    dp.page.wait_for_function(
        """(s) => { const el = document.querySelector(s + ' .js-plotly-plot');
            const svg = el && el.querySelector('.main-svg');
            return !!(svg && Math.abs(svg.getBoundingClientRect().width
                                      - el.parentElement.getBoundingClientRect().width) < 2); }""",
        arg=scope,
        timeout=30_000,
    )


def check_geometry(dp, scope, where: str) -> dict:
    g = dp.page.evaluate(_GEOMETRY_JS, scope)
    problems = []
    if g["svg"][1] > g["container"][1] + 1:
        problems.append(f"plot clipped: svg right edge {g['svg'][1]:.0f} > container {g['container'][1]:.0f}")
    problems += [f"{a} overlaps {b}" for a, b in overlaps(g["named"])]
    for axis, ticks in g["ticks"].items():
        glyphs = [glyph_box(t) for t in ticks]
        problems += [f"tick labels of {axis} overlap: {a} / {b}" for a, b in overlaps(glyphs)]
    problems += [f"label cut: {lab['text']!r}" for lab in g["labels"] if lab["sw"] > lab["cw"] + 1]
    assert not problems, f"{where}:\n" + "\n".join(problems)
    return g


def test_every_tab_lays_out_at_two_widths(page):
    dp = page
    shots = os.environ.get("CURVLAB_SCREENSHOTS")
    visits = []
    for spec in TABS:
        dp.page.set_viewport_size({"width": WIDTHS[0], "height": 1000})
        scope = dp.select_tab(spec.key, spec.title)
        has_dtype = dp.page.locator(f"{scope} .curvlab-control-dtype button").count() > 0
        for dtype in DTYPES if has_dtype else (None,):
            visits.append((spec.key, dtype))
            check_tab(dp, scope, spec.key, spec.title, dtype, shots)
    assert ("finite-difference", "float64") in visits
    assert dp.console_errors == [], dp.console_errors


def check_tab(dp, scope, key, title, dtype, shots) -> None:
    """Check one tab (in one dtype) at both widths; screenshots to ``shots`` when given."""
    dp.page.set_viewport_size({"width": WIDTHS[0], "height": 1000})
    if dtype is not None:
        buttons = dp.page.locator(f"{scope} .curvlab-control-dtype button", has_text=dtype)
        if "mod-active" not in (buttons.first.get_attribute("class") or ""):
            buttons.first.click()
            dp.page.wait_for_function(
                "([s, d]) => document.querySelector(s + ' .curvlab-readout').innerText.includes(d)",
                arg=[scope, dtype],
            )
    dp.wait_settled(scope)
    for width in WIDTHS:
        dp.page.set_viewport_size({"width": width, "height": 1000})
        wait_reflowed(dp, scope)
        time.sleep(0.3)  # plotly redraws titles and legend after the resize
        g = check_geometry(dp, scope, f"{title} ({dtype or 'default'}) at {width} px")
        if key == "curvature":
            check_equal_scale(dp, scope)
        assert g["named"], f"{title}: no titles found (selectors out of date?)"
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            dp.page.screenshot(path=str(Path(shots) / f"{key}-{dtype or 'default'}-{width}.png"))


def check_equal_scale(dp, scope) -> None:
    """The contour's x and y units have the same length on screen."""
    px = dp.page.eval_on_selector(
        f"{scope} .js-plotly-plot",
        """(el) => { const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis;
            return [xa._length / (xa.range[1] - xa.range[0]), ya._length / (ya.range[1] - ya.range[0])]; }""",
    )
    assert px[0] == pytest.approx(px[1], rel=0.02), f"x and y pixels per unit differ: {px}"


def test_slow_work_shows_computing_and_dims(page):
    dp = page
    dp.page.set_viewport_size({"width": WIDTHS[0], "height": 1000})
    scope = dp.select_tab("spectrum", "Spectrum")
    dp.wait_settled(scope)
    # record every busy state the explorer goes through (however short), then change a control
    dp.page.evaluate(
        """(s) => { const ex = document.querySelector(s); window.__curvlabBusy = [];
            new MutationObserver(() => { if (ex.classList.contains('curvlab-busy'))
                window.__curvlabBusy.push(ex.querySelector('.curvlab-status').textContent); })
              .observe(ex, {attributes: true, attributeFilter: ['class']}); }""",
        scope,
    )
    dp.page.locator(f"{scope} .curvlab-control-reorthogonalize input").first.click()
    dp.page.wait_for_function("() => window.__curvlabBusy.length > 0", timeout=60_000)
    dp.page.wait_for_function(
        "(s) => !document.querySelector(s).classList.contains('curvlab-busy')", arg=scope, timeout=120_000
    )
    seen = dp.page.evaluate("() => window.__curvlabBusy")
    assert any("computing" in s for s in seen), seen
    # the CSS that dims the figure while busy is on the page
    assert dp.page.evaluate(
        """(s) => { const ex = document.querySelector(s);
            ex.classList.add('curvlab-busy', 'curvlab-compiling');
            const o = getComputedStyle(ex.querySelector('.curvlab-figure')).opacity;
            const v = getComputedStyle(ex.querySelector('.curvlab-status')).visibility;
            ex.classList.remove('curvlab-busy', 'curvlab-compiling'); return [Number(o), v]; }""",
        scope,
    ) == [0.45, "visible"]


def test_lost_server_shows_reload(page):
    """The kernel websocket closes and cannot reconnect (a stopped server): the page says so."""
    dp = page
    assert not dp.page.locator(".curvlab-connection-lost").count()
    dp.server_lost = True
    for ws in dp.sockets:
        ws.close(code=1011, reason="server gone")
    box = dp.page.wait_for_selector(".curvlab-connection-lost", timeout=30_000)
    assert "The connection to the computing kernel was lost" in box.inner_text()
    assert "server cannot be reached" in box.inner_text()
    dp.server_lost = False
    with dp.page.expect_event("framenavigated", timeout=30_000):
        dp.page.locator(".curvlab-connection-lost button.curvlab-reload").click()
    sel = ".curvlab-tab-curvature .curvlab-explorer .js-plotly-plot .main-svg"
    dp.page.wait_for_selector(sel, timeout=180_000)  # a fresh page with a fresh kernel
    assert not dp.page.locator(".curvlab-connection-lost").count()


def test_killed_kernel_shows_reload(page):
    import psutil

    dp = page
    kernel_id = dp.kernel_id()
    pids = []
    for pid in dp.server.kernel_pids():
        try:
            if any(kernel_id in part for part in psutil.Process(pid).cmdline()):
                pids.append(pid)
        except psutil.Error:
            continue
    assert len(pids) == 1, f"kernel {kernel_id} not found among {dp.server.kernel_pids()}"
    assert not dp.page.locator(".curvlab-connection-lost").count()
    os.kill(pids[0], signal.SIGKILL)
    box = dp.page.wait_for_selector(".curvlab-connection-lost", timeout=20_000)
    assert "The connection to the computing kernel was lost" in box.inner_text()
    button = dp.page.locator(".curvlab-connection-lost button.curvlab-reload")
    assert button.is_visible() and button.inner_text() == "Reload"
    with dp.page.expect_event("framenavigated", timeout=30_000):
        button.click()

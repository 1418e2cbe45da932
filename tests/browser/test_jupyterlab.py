"""The explorers in JupyterLab 4 and Notebook 7, as a user runs them: open a notebook by URL, Run All,
move a slider.

Regression test of issue 13 item 1 ("JupyterLab draws wrong plots"): the SpectrumExplorer's
Ritz-value, exact-eigenvalue and SLQ-density traces reached the browser with x and no y. Cause:
plotly's front-end model applies every ``restyle``/``update`` message to its copy of the figure
without deserializing it, so the ``"_undefined_"`` placeholders of a batched update (traces a
property was not edited on) replaced real values; a view created from that state afterwards (a
figure inside a container, displayed after its first render) lost those traces' ``y``. See
:func:`curvlab.widgets._base.send_batch`.

One server per front end (JupyterLab: three page loads; Notebook 7: one), started as the
test's own user (``--allow-root`` when the effective user is root), no cookie or header
injected: the page gets in with the server's token in the URL, as a user pasting the printed
URL does. Each page load starts from a fresh kernel and a pristine copy of the notebook (the
fault was timing dependent, so the page is loaded several times). The numbers expected are
those the Python side computes: the same explorer, built in a separate process with the
notebook's settings (float64), dumps its figure's trace data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.browser.conftest import _NON_LOCAL, REPO, free_port, http_status, in_ci

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = "05-lanczos-and-spectra.ipynb"
TOKEN = "curvlab-test-token"
#: front end -> (server module, URL path of a notebook, page loads)
FRONTENDS = {
    "jupyterlab": ("jupyterlab", "/lab/tree/{nb}?token={token}&reset", 3),
    "notebook7": ("notebook", "/notebooks/{nb}?token={token}", 1),
}
RUN_ALL_TIMEOUT_MS = 300_000  # the notebook runs Lanczos, SLQ and an MLP Hessian before the explorer
SCOPE = ".curvlab-explorer.curvlab-spectrum"

# What the Python side holds: the explorer of the notebook's last cell (jax_enable_x64 is set in
# its first cell), at its defaults and after one ArrowRight on "Lanczos steps".
_EXPECTED_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from curvlab.widgets import SpectrumExplorer

def dump(fig):
    out = []
    for t in fig.data:
        arr = lambda a: None if a is None else np.asarray(a, dtype=float).tolist()
        out.append({"name": t.name, "type": t.type, "x": arr(t.x), "y": arr(t.y)})
    return out

ex = SpectrumExplorer()
first, start = dump(ex.figure), ex.num_steps.value
moved = {}
for v in range(start + 1, start + 25):  # a key press moves one step, a short mouse drag a few
    ex.num_steps.value = v
    moved[str(v)] = dump(ex.figure)
json.dump({"default": first, "num_steps": start, "moved": moved}, sys.stdout)
"""


def _kernel_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class LabServer:
    def __init__(self, proc, port, root, log_path):
        self.proc, self.port, self.root, self.log_path = proc, port, root, log_path
        self.base = f"http://127.0.0.1:{port}"

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"{self.base}{path}?token={TOKEN}", method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - local URL
            body = resp.read()
        return json.loads(body) if body else None

    def fresh_notebook(self) -> None:
        """Shut every session/kernel down and put back a pristine copy of the notebook."""
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}")
        for k in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{k['id']}")
        shutil.copy(REPO / "notebooks" / NOTEBOOK, self.root / NOTEBOOK)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def expected():
    """Trace data of the Python-side explorer (computed in a subprocess: its own JAX config)."""
    proc = subprocess.run(
        [sys.executable, "-c", _EXPECTED_SCRIPT],
        capture_output=True,
        text=True,
        env=_kernel_env(),
        cwd=str(REPO),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module", params=sorted(FRONTENDS))
def lab_server(request, tmp_path_factory, chromium_executable):
    module, url, loads = FRONTENDS[request.param]
    try:
        __import__(module)
    except ImportError as err:
        if in_ci():
            pytest.fail(f"CI=true and {module} is not installed: {err}")
        pytest.skip(f"{module} is not installed: {err}")
    tmp = tmp_path_factory.mktemp(request.param)
    root = tmp / "notebooks"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        module,
        "--no-browser",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.token={TOKEN}",
        f"--ServerApp.root_dir={root}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # the test's own user is root (containers, CI images)
    env = _kernel_env()
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp / "workspaces")  # never the user's saved layout
    log_path = tmp / "lab.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp))
    server = LabServer(proc, port, root, log_path)
    server.frontend, server.url, server.page_loads = request.param, url, loads
    try:
        deadline = time.monotonic() + 120
        while http_status(f"{server.base}/api/status?token={TOKEN}") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{module} did not start (exit {proc.poll()}):\n{server.log()}")
            time.sleep(0.5)
        yield server
    finally:
        try:
            if proc.poll() is None:
                server.fresh_notebook()
        except Exception:  # noqa: BLE001 - the server is stopped below anyway
            pass
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


_READ_TRACES = """(el) => el.data.map(t => {
    const conv = (a) => (a === undefined || a === null) ? null : Array.from(a);
    return {name: t.name ?? null, type: t.type ?? null, x: conv(t.x), y: conv(t.y)};
})"""


def _mismatches(shown: list[dict], want: list[dict]) -> list[str]:
    """Differences between the traces in the browser and the Python side's (empty: equal)."""
    if [t["name"] for t in shown] != [t["name"] for t in want]:
        return [f"trace names {[t['name'] for t in shown]} != {[t['name'] for t in want]}"]
    out = []
    for s, w in zip(shown, want, strict=True):
        for axis in ("x", "y"):
            if w[axis] is None:
                continue
            if s[axis] is None:
                out.append(f"{s['name']!r}: no {axis} in the browser (Python has {len(w[axis])} values)")
                continue
            a, b = np.asarray(s[axis], dtype=float), np.asarray(w[axis], dtype=float)
            if a.shape != b.shape:
                out.append(f"{s['name']!r}: {axis} has {a.size} values, Python {b.size}")
            elif not np.allclose(a, b, rtol=1e-7, atol=1e-9 * max(1.0, float(np.max(np.abs(b), initial=0)))):
                out.append(f"{s['name']!r}: {axis} differs by up to {float(np.max(np.abs(a - b))):.3g}")
        if s["type"] == "scatter" and s["x"] is not None and (s["y"] is None or len(s["y"]) != len(s["x"])):
            out.append(f"{s['name']!r}: {len(s['x'])} x values, {None if s['y'] is None else len(s['y'])} y")
    return out


def _wait_traces(page, want, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        shown = page.eval_on_selector(f"{SCOPE} .js-plotly-plot", _READ_TRACES)
        bad = _mismatches(shown, want)
        if not bad:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: the plot in the browser is not what Python computed:\n  " + "\n  ".join(bad)
            )
        time.sleep(0.5)


def _kernel_idle(server) -> bool:
    try:
        return any(k.get("execution_state") == "idle" for k in server.api("GET", "/api/kernels"))
    except OSError:
        return False


def _run_all(page, server) -> None:
    """Run > Run All Cells, once the page's kernel is idle; again if no cell started within 30 s."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    deadline = time.monotonic() + 120
    while not _kernel_idle(server):
        assert time.monotonic() < deadline, "the notebook's kernel did not start"
        time.sleep(0.5)
    # the page's own kernel connection: both front ends draw the execution indicator
    page.wait_for_selector(
        ".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached", timeout=120_000
    )
    started = (
        "() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[[0-9*]/.test(e.textContent))"
    )
    for _ in range(3):
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(started, timeout=30_000)
            return
        except Exception:  # noqa: BLE001 - the request was dropped: try again
            page.keyboard.press("Escape")
    raise AssertionError("Run All Cells started no cell")


def _move_slider(page, handle, start: int) -> int:
    """Move a slider one step with ArrowRight; where the front end swallows the key (Notebook 7
    does), drag the handle a few pixels to the right with the mouse, as a user would."""
    readout = f"{SCOPE} .curvlab-control-num-steps .widget-readout"
    changed = "([sel, v]) => Number(document.querySelector(sel)?.textContent) !== v"
    handle.scroll_into_view_if_needed()
    handle.focus()
    handle.press("ArrowRight")
    try:
        page.wait_for_function(changed, arg=[readout, start], timeout=5_000)
    except Exception:  # noqa: BLE001 - the key did not reach the slider: drag instead
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 6, y, steps=3)
        page.mouse.up()
        page.wait_for_function(changed, arg=[readout, start], timeout=30_000)
    return int(float(page.locator(readout).first.text_content()))


def test_spectrum_explorer_plots_what_python_computed(lab_server, browser, expected):
    """Each SpectrumExplorer trace has its y, as long as x and equal to Python's; again after a slider move"""
    for load in range(1, lab_server.page_loads + 1):
        lab_server.fresh_notebook()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        context.route(_NON_LOCAL, lambda route: route.abort())
        page = context.new_page()
        console: list[str] = []
        page.on(
            "console",
            lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        try:
            path = lab_server.url.format(nb=NOTEBOOK, token=TOKEN)
            page.goto(f"{lab_server.base}{path}", timeout=120_000)
            _run_all(page, lab_server)
            page.wait_for_selector(
                f"{SCOPE} .js-plotly-plot .main-svg", state="attached", timeout=RUN_ALL_TIMEOUT_MS
            )
            _wait_traces(page, expected["default"], 30, f"page load {load}, after Run All")
            handle = page.locator(f"{SCOPE} .curvlab-control-num-steps .noUi-handle").first
            value = _move_slider(page, handle, expected["num_steps"])
            assert str(value) in expected["moved"], f"slider moved to {value}, expected at most +24"
            _wait_traces(page, expected["moved"][str(value)], 60, f"page load {load}, after a slider move")
        except Exception as err:
            shot = lab_server.root.parent / f"failure-load{load}.png"
            try:
                page.screenshot(path=str(shot), full_page=False)
            except Exception:  # noqa: BLE001
                pass
            raise AssertionError(
                f"{lab_server.frontend}: {err}\nscreenshot: {shot}\nconsole:\n"
                + "\n".join(console[-20:])
                + f"\nserver log:\n{lab_server.log()}"
            ) from err
        finally:
            context.close()

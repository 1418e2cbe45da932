"""The explorers in JupyterLab 4, as a user runs them: open a notebook by URL, Run All, move a slider.

Regression test of issue 13 item 1 ("JupyterLab draws wrong plots"): the SpectrumExplorer's
Ritz-value, exact-eigenvalue and SLQ-density traces reached the browser with x and no y. Cause:
plotly's front-end model applies every ``restyle``/``update`` message to its copy of the figure
without deserializing it, so the ``"_undefined_"`` placeholders of a batched update (traces a
property was not edited on) replaced real values; a view created from that state afterwards (a
figure inside a container, displayed after its first render) lost those traces' ``y``. See
:func:`curvlab.widgets._base.send_batch`.

One JupyterLab server per module, started as the test's own user (``--allow-root`` when the
effective user is root), no cookie or header injected: the page gets in with the server's
token in the URL, as a user pasting the printed URL does. Each page load starts from a fresh
kernel and a pristine copy of the notebook (the fault was timing dependent, so the page is
loaded several times). The numbers expected are those the Python side computes: the same
explorer, built in a separate process with the notebook's settings (float64), dumps its
figure's trace data.
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

from tests.browser.conftest import _NON_LOCAL, LAUNCH_ARGS, REPO, free_port, http_status, in_ci

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK = "05-lanczos-and-spectra.ipynb"
TOKEN = "curvlab-test-token"
PAGE_LOADS = 3
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
first = dump(ex.figure)
ex.num_steps.value = ex.num_steps.value + 1
json.dump({"default": first, "num_steps": ex.num_steps.value, "moved": dump(ex.figure)}, sys.stdout)
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


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory, chromium_executable):
    try:
        import jupyterlab  # noqa: F401
    except ImportError as err:
        if in_ci():
            pytest.fail(f"CI=true and jupyterlab is not installed: {err}")
        pytest.skip(f"jupyterlab is not installed: {err}")
    tmp = tmp_path_factory.mktemp("jupyterlab")
    root = tmp / "notebooks"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
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
    try:
        deadline = time.monotonic() + 120
        while http_status(f"{server.base}/api/status?token={TOKEN}") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start (exit {proc.poll()}):\n{server.log()}")
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


@pytest.fixture(scope="module")
def lab_browser(chromium_executable):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        if in_ci():
            pytest.fail(f"playwright is not installed: {err}")
        pytest.skip(f"playwright is not installed: {err}")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_executable, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


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
                f"{what}: the plot in JupyterLab is not what Python computed:\n  " + "\n  ".join(bad)
            )
        time.sleep(0.5)


def _run_all(page) -> None:
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
    # the kernel must be up before Run All, else the request is dropped
    page.wait_for_selector(
        ".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached", timeout=120_000
    )
    page.locator(".jp-NotebookPanel .jp-Cell").first.click()
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first.click()


def test_spectrum_explorer_plots_what_python_computed(lab_server, lab_browser, expected):
    """Each SpectrumExplorer trace has its y, as long as x and equal to Python's; again after a slider move"""
    for load in range(1, PAGE_LOADS + 1):
        lab_server.fresh_notebook()
        context = lab_browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        context.route(_NON_LOCAL, lambda route: route.abort())
        page = context.new_page()
        console: list[str] = []
        page.on(
            "console",
            lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        try:
            page.goto(f"{lab_server.base}/lab/tree/{NOTEBOOK}?token={TOKEN}&reset", timeout=120_000)
            _run_all(page)
            page.wait_for_selector(
                f"{SCOPE} .js-plotly-plot .main-svg", state="attached", timeout=RUN_ALL_TIMEOUT_MS
            )
            _wait_traces(page, expected["default"], 30, f"page load {load}, after Run All")
            handle = page.locator(f"{SCOPE} .curvlab-control-num-steps .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            page.wait_for_function(
                "([sel, v]) => Number(document.querySelector(sel)?.textContent) === v",
                arg=[f"{SCOPE} .curvlab-control-num-steps .widget-readout", expected["num_steps"]],
                timeout=30_000,
            )
            _wait_traces(page, expected["moved"], 60, f"page load {load}, after a Lanczos-steps slider move")
        except Exception as err:
            shot = lab_server.root.parent / f"failure-load{load}.png"
            try:
                page.screenshot(path=str(shot), full_page=False)
            except Exception:  # noqa: BLE001
                pass
            raise AssertionError(
                f"{err}\nscreenshot: {shot}\nconsole:\n"
                + "\n".join(console[-20:])
                + f"\nserver log:\n{lab_server.log()}"
            ) from err
        finally:
            context.close()

"""Fixtures of the browser tests: one ``curvlab dashboard`` server and one headless Chromium per session.

* Chromium is Debian's (``/usr/bin/chromium`` or ``$CURVLAB_CHROMIUM``), never a
  Playwright download. Missing Chromium skips the tests with a clear message,
  except in CI (``CI=true``) where it fails them.
* The server is ``python -m curvlab.app.cli dashboard --port N`` on a free port (so
  each xdist worker can run its own), ready when ``/voila/static/voila.js``
  answers; it is stopped with SIGTERM at the end and must exit.
* Every browser context aborts non-local requests (Voila asks a CDN for Font
  Awesome) and is otherwise a visitor's: no cookie or header is injected (the
  ``_xsrf`` cookie that the page's shutdown beacon sends back comes from the server).
* :class:`DashboardPage` wraps one page: console errors, tab selection, plot
  data, readouts and slider moves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
NAV_TIMEOUT_MS = 180_000  # the page waits for the notebook to execute (JIT compilation included)
UPDATE_TIMEOUT_MS = 60_000
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def chromium_path() -> str | None:
    for cand in (os.environ.get("CURVLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URL
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


def kernel_pids(server_pid: int) -> list[int]:
    """PIDs of the ipykernel processes started by the Voila server (descendants of ``server_pid``)."""
    import psutil

    try:
        root = psutil.Process(server_pid)
        kids = root.children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in kids:
        try:
            if any("ipykernel" in part for part in p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def rss_mib(pids) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


class DashboardServer:
    """A running ``curvlab dashboard`` subprocess."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc, self.port, self.log_path = proc, port, log_path
        self.url = f"http://127.0.0.1:{port}/"

    def voila_pid(self) -> int:
        """PID of the Voila process (the child of the ``curvlab`` process)."""
        import psutil

        for child in psutil.Process(self.proc.pid).children():
            return child.pid
        raise RuntimeError("curvlab dashboard has no Voila child process")

    def kernel_pids(self) -> list[int]:
        return kernel_pids(self.proc.pid)

    def kernel_alive(self, kernel_id: str) -> bool:
        status = http_status(f"{self.url}api/kernels/{kernel_id}")
        if status not in (200, 404):
            raise RuntimeError(f"GET /api/kernels/{kernel_id} answered {status}")
        return status == 200

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


def start_server(tmp_dir: Path, *, port: int | None = None, extra_args=(), timeout: float = 120.0):
    """Start ``curvlab dashboard`` on a free port and wait until it serves ``voila.js``."""
    port = port or free_port()
    log_path = tmp_dir / f"dashboard-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, "-m", "curvlab.app.cli", "dashboard", "--port", str(port), *extra_args]
    notebook = os.environ.get("CURVLAB_BROWSER_NOTEBOOK")  # developer hook: serve another notebook
    if notebook:
        cmd += ["--notebook", notebook]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    server = DashboardServer(proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"curvlab dashboard exited with {proc.returncode}:\n{server.log()}")
        if http_status(f"{server.url}voila/static/voila.js", timeout=2) == 200:
            return server
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError(f"curvlab dashboard did not answer within {timeout} s:\n{server.log()}")


def stop_server(server: DashboardServer, timeout: float = 30.0) -> int | None:
    """SIGTERM the server; return its exit status (``None`` if it had to be killed)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            return server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            return None
    return server.proc.returncode


# ----------------------------------------------------------------------------- pages


_NON_LOCAL = re.compile(r"^(?!(https?|wss?)://(127\.0\.0\.1|localhost)([:/]|$)|data:|blob:|about:)")


def _is_local(url: str) -> bool:
    host = urlparse(url).hostname
    return url.startswith(("data:", "blob:", "about:")) or host in ("127.0.0.1", "localhost")


class DashboardPage:
    """One dashboard page in the browser, with helpers to drive and read it."""

    def __init__(self, page, server: DashboardServer):
        self.page, self.server = page, server
        self.console_errors: list[str] = []
        self.blocked: list[str] = []
        self.first_render_s: float | None = None
        page.on("console", self._on_console)
        page.on("pageerror", lambda err: self.console_errors.append(f"pageerror: {err}"))

    def _on_console(self, msg) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "") or ""
        text = msg.text
        # requests we aborted on purpose (CDN fonts) surface as "Failed to load resource"
        if "Failed to load resource" in text and (not _is_local(url) or url in self.blocked):
            return
        if any(b in text for b in self.blocked):
            return
        self.console_errors.append(f"{text} ({url})")

    def goto(self) -> float:
        """Open the dashboard; return seconds from navigation until the first tab's plot and slider show."""
        start = time.perf_counter()
        self.page.goto(self.server.url, timeout=NAV_TIMEOUT_MS, wait_until="commit")
        sel = ".curvlab-tab-curvature .curvlab-explorer"
        self.page.wait_for_selector(f"{sel} .js-plotly-plot .main-svg", timeout=NAV_TIMEOUT_MS)
        self.page.wait_for_selector(f"{sel} .noUi-handle", timeout=NAV_TIMEOUT_MS)
        self.first_render_s = time.perf_counter() - start
        return self.first_render_s

    def kernel_id(self) -> str:
        cfg = self.page.evaluate("() => document.getElementById('jupyter-config-data').textContent")
        return json.loads(cfg)["kernelId"]

    def select_tab(self, key: str, title: str) -> str:
        """Click the tab titled ``title``; wait for its explorer's plot; return the CSS scope of the tab."""
        self.page.locator(".curvlab-tabs .lm-TabBar-tab", has_text=title).first.click()
        scope = f".curvlab-tab-{key} .curvlab-explorer"
        self.page.wait_for_selector(f"{scope} .js-plotly-plot .main-svg", timeout=NAV_TIMEOUT_MS)
        return scope

    def plot_data(self, scope: str) -> list[dict]:
        """Traces of the plot in ``scope``: name, type and x/y/z as plain lists (typed arrays converted)."""
        return self.page.eval_on_selector(
            f"{scope} .js-plotly-plot",
            """(el) => {
                const conv = (a) => {
                    if (a === undefined || a === null) return null;
                    if (ArrayBuffer.isView(a)) return Array.from(a);
                    if (Array.isArray(a)) return a.map(r => ArrayBuffer.isView(r) ? Array.from(r)
                                                             : (Array.isArray(r) ? r.slice() : r));
                    if (typeof a === 'object' && a.bdata !== undefined) return {bdata: a.bdata};
                    return a;
                };
                return el.data.map(t => ({name: t.name ?? null, type: t.type ?? null,
                                          x: conv(t.x), y: conv(t.y), z: conv(t.z)}));
            }""",
        )

    def readout(self, scope: str) -> str:
        return self.page.inner_text(f"{scope} .curvlab-readout")

    def error_text(self, scope: str) -> str:
        loc = self.page.locator(f"{scope} .curvlab-error")
        return loc.inner_text() if loc.count() and loc.first.is_visible() else ""

    def slider_value(self, scope: str, control: str) -> float:
        """The value a slider shows in its readout (U+2212 minus signs handled)."""
        loc = self.page.locator(f"{scope} .curvlab-control-{control} .widget-readout").first
        text = loc.input_value() if loc.evaluate("e => e.tagName") == "INPUT" else loc.inner_text()
        return float(text.strip().replace("\u2212", "-"))

    def press_slider(self, scope: str, control: str, key: str = "ArrowRight") -> tuple[float, float]:
        """Move a slider one step with the keyboard; wait until the plot data and the readout change.

        Returns ``(new slider value, seconds from key press to the updated plot and readout)``.
        """
        before_data = json.dumps(self.plot_data(scope))
        before_readout = self.readout(scope)
        handle = self.page.locator(f"{scope} .curvlab-control-{control} .noUi-handle").first
        handle.focus()
        start = time.perf_counter()
        handle.press(key)
        self.page.wait_for_function(
            """([scope, before, readout]) => {
                const el = document.querySelector(scope + ' .js-plotly-plot');
                const ro = document.querySelector(scope + ' .curvlab-readout');
                if (!el || !el.data || !ro) return false;
                const conv = (a) => ArrayBuffer.isView(a) ? Array.from(a)
                    : (Array.isArray(a) ? a.map(r => ArrayBuffer.isView(r) ? Array.from(r) : r) : a);
                const now = JSON.stringify(el.data.map(t => ({name: t.name ?? null, type: t.type ?? null,
                    x: conv(t.x) ?? null, y: conv(t.y) ?? null, z: conv(t.z) ?? null})));
                return now !== before && ro.innerText !== readout;
            }""",
            arg=[scope, before_data, before_readout],
            timeout=UPDATE_TIMEOUT_MS,
            polling="raf",
        )
        elapsed = time.perf_counter() - start
        self.wait_settled(scope)
        return self.slider_value(scope, control), elapsed

    def wait_trace(self, scope: str, name: str, axis: str, expected, *, rel=1e-6, abs_=1e-9, timeout=30.0):
        """Poll until trace ``name``'s ``axis`` values equal ``expected`` (within tolerance); return them.

        Raises AssertionError with the last values seen if the page never shows the expected numbers.
        """
        import numpy as np

        deadline = time.monotonic() + timeout
        seen = None
        while True:
            for t in self.plot_data(scope):
                if t["name"] == name:
                    seen = t[axis]
            ok = (
                seen is not None
                and len(seen) == len(expected)
                and np.allclose(np.asarray(seen, float), np.asarray(expected, float), rtol=rel, atol=abs_)
            )
            if ok:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {name!r}.{axis} shows {seen}, expected {list(expected)}")
            time.sleep(0.2)

    def wait_settled(self, scope: str, quiet: float = 0.4, timeout: float = 60.0) -> None:
        """Wait until the plot data and the readout of ``scope`` stop changing for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            now = (json.dumps(self.plot_data(scope)), self.readout(scope))
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{scope} kept changing for {timeout} s")

    def close(self) -> None:
        """Close with ``beforeunload`` (sends Voila's kernel-shutdown beacon) and wait until closed."""
        if self.page.is_closed():
            return
        with self.page.expect_event("close", timeout=30_000):
            self.page.close(run_before_unload=True)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def chromium_executable():
    path = chromium_path()
    if path is None:
        msg = (
            "Chromium not found at /usr/bin/chromium (install Debian's package: apt-get install chromium, "
            "or set CURVLAB_CHROMIUM); never use 'playwright install' here"
        )
        if in_ci():
            pytest.fail(f"CI=true and {msg}")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def browser(chromium_executable):
    """One headless Chromium per test module (Playwright's sync API keeps an event loop running in
    this thread while it is open, so it must not outlive the module: later tests use asyncio)."""
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


@pytest.fixture(scope="session")
def dashboard_server(tmp_path_factory, chromium_executable):
    # long culling: a closed page's kernel must go through the page's own shutdown beacon, so the
    # culler cannot hide a failing beacon (it did: every beacon got 403 '_xsrf' missing)
    server = start_server(
        tmp_path_factory.mktemp("dashboard"),
        extra_args=["--cull-idle-timeout", "600", "--cull-interval", "60"],
    )
    yield server
    stop_server(server)


def new_context(browser, server: DashboardServer):
    """A visitor's browser context for ``server``: non-local requests aborted, nothing injected."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UPDATE_TIMEOUT_MS)
    blocked: list[str] = []

    def abort(route):
        blocked.append(route.request.url)
        route.abort()

    # only non-local URLs are intercepted (a regex is matched by the driver, no round trip for the rest)
    context.route(_NON_LOCAL, abort)
    context.curvlab_blocked = blocked
    return context


@pytest.fixture(scope="module")
def open_page(browser, dashboard_server):
    """Factory: open a new dashboard page (own context); everything is closed after the module."""
    contexts = []

    def _open(goto: bool = True) -> DashboardPage:
        context = new_context(browser, dashboard_server)
        contexts.append(context)
        dp = DashboardPage(context.new_page(), dashboard_server)
        dp.blocked = context.curvlab_blocked
        if goto:
            dp.goto()
        return dp

    yield _open
    for c in contexts:
        for p in c.pages:
            if not p.is_closed():
                try:
                    with p.expect_event("close", timeout=10_000):
                        p.close(run_before_unload=True)
                except Exception:  # noqa: BLE001 - best effort; the server culls leftovers
                    pass
        c.close()


@pytest.fixture(scope="session")
def timings():
    """Collects timings; written to benchmarks/results/browser_timings.json at the end of the session."""
    data: dict = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine_cpus": os.cpu_count()}
    yield data
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "browser_timings.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

"""Load test of the Voila dashboard: N visitors (1, 4, 8, 16) arriving 2 s apart.

For each N a fresh ``curvlab dashboard`` server is started (default settings: one pre-heated
kernel). Visitors arrive ``--arrival`` seconds apart. The last ``--browsers`` of them (default 1)
are headless Chromium pages: first render from navigation until the first tab's plot and slider
show, timed inside the page, and slider latency from key press until plot and readout changed.
The others are scripted visitors (``tests/browser/visitor_client.py``): the same requests a page
makes (page, kernel websocket, every widget state, slider updates), none of a browser's drawing,
which a real class does on its own machines; for them "first render" is the server's part
(page and widget states delivered) and slider latency the time until the new readout and figure
arrived. Everyone moves the slider at the same time. Kernels and their total RSS (psutil) are
sampled with everyone on the page and while ``--linger`` seconds pass after the last page closed.
CPU seconds per visitor are split into kernels + Voila server and the browsers (which run on this
machine too, unlike a real class's). Prints a table and writes ``benchmarks/results/dashboard_load.json``.

    .venv/bin/python benchmarks/load_dashboard.py [--visitors 1 4 8 16] [--moves 5] [--arrival 2] \\
        [--linger 30] [--browsers 1] [--move-period 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "dashboard_load.json"


sys.path.insert(0, str(REPO))  # tests.browser: the server helpers and the scripted visitor


def _helpers():
    """The browser-test helpers (server start/stop, page driver) from tests/browser/conftest.py."""
    spec = importlib.util.spec_from_file_location(
        "_curvlab_browser", REPO / "tests" / "browser" / "conftest.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def find_chromium(H) -> str | None:
    """Debian's chromium for Playwright, or ``None`` with a message on stderr."""
    chromium = H.chromium_path()
    if chromium is None:
        print("chromium not found (/usr/bin/chromium); install Debian's chromium package", file=sys.stderr)
    return chromium


_RENDER_PROBE = """(() => {
  const sel = ".curvlab-tab-curvature .curvlab-explorer";
  const timer = setInterval(() => {
    const plot = document.querySelector(sel + " .js-plotly-plot .main-svg");
    if (plot && document.querySelector(sel + " .noUi-handle")) {
      window.__curvlabRendered = performance.now() / 1000;  // seconds since this page's navigation began
      clearInterval(timer);
    }
  }, 50);
})();"""


def _sample(server, H) -> tuple[int, float]:
    pids = server.kernel_pids()
    return len(pids), H.rss_mib(pids)


def _cpu_seconds(pids) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (gone ones count zero)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _chromium_pids() -> list[int]:
    """PIDs of the headless Chromium processes this benchmark drives (descendants of this process)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in p.name().lower():
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def _scripted(url: str, arrive_at: float, go, moves: int, period: float, out: dict) -> None:
    """One scripted visitor (thread): arrive, load the page and widget states, wait for ``go``,
    move the first tab's ``x`` slider ``moves`` times, one every ``period`` seconds from a random
    phase (``period = 0``: back to back), wait for ``out['leave']``, leave."""
    import random

    from tests.browser.visitor_client import ScriptedVisitor

    time.sleep(max(0.0, arrive_at - time.monotonic()))
    v = ScriptedVisitor(url)
    try:
        out["ready_s"] = v.open()
        out["kernel_id"] = v.kernel_id
        slider = v.models("FloatSliderModel", "curvlab-control-x")[0]
        readouts = v.models("HTMLModel", "curvlab-readout")
        figures = v.models("AnyModel", "curvlab-figure")
        out["opened"].set()
        go.wait()
        lat = []
        next_at = time.monotonic() + random.uniform(0, period)
        for _ in range(moves):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            lat.append(v.move_slider(slider, readouts, figures[:1]))
        out["latencies_s"] = lat
        out["moved"].set()
        out["leave"].wait()
    except Exception as exc:  # noqa: BLE001 - reported in the results
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["opened"].set()
        out["moved"].set()
    finally:
        v.close()


def run(
    n: int, moves: int, H, browser, *, arrival_s: float, linger_s: float, browsers: int, move_period_s: float
) -> dict:
    """``n`` visitors arriving ``arrival_s`` apart; each renders, moves a slider ``moves`` times, leaves.

    The last ``browsers`` arrivals are headless Chromium pages (first render measured in the page:
    ``performance.now()`` when the first tab's plot and slider exist; slider moves from key press
    until plot and readout changed). The others are :class:`tests.browser.visitor_client.ScriptedVisitor`
    threads doing what a page asks of the server (page, kernel websocket, widget states, slider
    updates) without a browser's work, which a real class's visitors do on their own machines:
    their "render" is the server's part of it (page and every widget state delivered), their slider
    latency the time until the new readout and figure arrived. They move one step every
    ``move_period_s`` seconds each (random phases: a class of ``n`` makes ``n / move_period_s``
    moves a second), while the browser pages press their slider key ``moves`` times; the kernels'
    and server's CPU over that phase, per move, is what one slider step costs the server.
    Kernels and their RSS are sampled at the peak (everyone on the page) and ``linger_s`` after the
    last page closed (the server keeps its one pre-heated kernel for the next visitor).
    """
    import threading

    server = H.start_server(Path(tempfile.mkdtemp(prefix="curvlab-load-")))
    try:
        time.sleep(2.0)  # let the pre-heated kernel start like a server that has been up a moment
        idle_kernels, idle_rss = _sample(server, H)
        kernel_cpu0 = _cpu_seconds(server.kernel_pids())
        server_cpu0 = _cpu_seconds([server.proc.pid])
        chromium_cpu0 = _cpu_seconds(_chromium_pids())
        sel = ".curvlab-tab-curvature .curvlab-explorer"
        go, leave = threading.Event(), threading.Event()
        t0 = time.monotonic()
        visitors, threads, contexts, pages = [], [], [], []
        for i in range(n):
            if i >= n - browsers:
                time.sleep(max(0.0, t0 + i * arrival_s - time.monotonic()))
                ctx = H.new_context(browser, server)
                ctx.add_init_script(_RENDER_PROBE)
                dp = H.DashboardPage(ctx.new_page(), server)
                dp.page.goto(server.url, timeout=H.NAV_TIMEOUT_MS, wait_until="commit")
                contexts.append(ctx)
                pages.append(dp)
                visitors.append({"kind": "browser", "page": dp})
            else:
                out = {
                    "kind": "scripted",
                    "opened": threading.Event(),
                    "moved": threading.Event(),
                    "leave": leave,
                }
                th = threading.Thread(
                    target=_scripted,
                    args=(server.url, t0 + i * arrival_s, go, moves, move_period_s, out),
                    daemon=True,
                )
                th.start()
                threads.append(th)
                visitors.append(out)
        for v in visitors:
            if v["kind"] == "browser":
                v["page"].page.wait_for_function(
                    "window.__curvlabRendered !== undefined", timeout=H.NAV_TIMEOUT_MS
                )
                v["render_s"] = v["page"].page.evaluate("window.__curvlabRendered")
            else:
                v["opened"].wait(H.NAV_TIMEOUT_MS / 1000)
                v["render_s"] = v.get("ready_s")
        peak_kernels, peak_rss = _sample(server, H)
        move_cpu0 = _cpu_seconds(server.kernel_pids()) + _cpu_seconds([server.proc.pid])
        go.set()  # every visitor moves its slider now, the scripted ones concurrently with the pages
        for v in visitors:
            if v["kind"] == "browser":
                v["latencies_s"] = [v["page"].press_slider(sel, "x")[1] for _ in range(moves)]
        for v in visitors:
            if v["kind"] == "scripted":
                v["moved"].wait(H.NAV_TIMEOUT_MS / 1000)
        move_cpu = _cpu_seconds(server.kernel_pids()) + _cpu_seconds([server.proc.pid]) - move_cpu0
        errors = sum(len(dp.console_errors) for dp in pages)
        failures = [v["error"] for v in visitors if v.get("error")]
        # CPU spent serving the n visitors: their kernels (start, notebook, slider moves; the pool's
        # refill included), the Voila server process, and the browsers (on this machine too).
        kernel_cpu = _cpu_seconds(server.kernel_pids()) - kernel_cpu0
        server_cpu = _cpu_seconds([server.proc.pid]) - server_cpu0
        chromium_cpu = _cpu_seconds(_chromium_pids()) - chromium_cpu0
        leave.set()
        for ctx in contexts:
            for p in ctx.pages:
                with p.expect_event("close", timeout=30_000):
                    p.close(run_before_unload=True)
            ctx.close()
        for th in threads:
            th.join(30)
        left = time.monotonic()
        freed_after = None
        while time.monotonic() - left < linger_s:
            time.sleep(1.0)
            k, _ = _sample(server, H)
            if freed_after is None and k <= idle_kernels:
                freed_after = time.monotonic() - left
        after_kernels, after_rss = _sample(server, H)

        def med(xs):
            xs = [x for x in xs if x is not None]
            return round(statistics.median(xs), 3) if xs else None

        renders = [v["render_s"] for v in visitors if v.get("render_s") is not None]
        moves_all = [t for v in visitors for t in v.get("latencies_s", [])]
        by_kind = {}
        for kind in ("scripted", "browser"):
            vs = [v for v in visitors if v["kind"] == kind]
            if vs:
                by_kind[kind] = {
                    "visitors": len(vs),
                    "first_render_s": [
                        None if v.get("render_s") is None else round(v["render_s"], 2) for v in vs
                    ],
                    "first_render_median_s": med([v.get("render_s") for v in vs]),
                    "slider_latency_median_s": med([t for v in vs for t in v.get("latencies_s", [])]),
                }
        n_browsers = sum(v["kind"] == "browser" for v in visitors)
        return {
            "visitors": n,
            "browsers": n_browsers,
            "arrival_s": arrival_s,
            "interactive": n - len(failures),
            "failures": failures,
            "first_render_s": [round(t, 2) for t in renders],
            "first_render_median_s": round(statistics.median(renders), 2),
            "first_render_max_s": round(max(renders), 2),
            "slider_latency_median_s": med(moves_all),
            "slider_latency_p90_s": round(sorted(moves_all)[int(0.9 * (len(moves_all) - 1))], 3)
            if moves_all
            else None,
            "move_period_s": move_period_s,
            "server_cpu_ms_per_move": round(1000 * move_cpu / len(moves_all), 1) if moves_all else None,
            "by_kind": by_kind,
            "idle_kernels": idle_kernels,
            "idle_kernel_rss_mib": round(idle_rss, 1),
            "peak_kernels": peak_kernels,
            "peak_kernel_rss_mib": round(peak_rss, 1),
            "rss_per_visitor_mib": round((peak_rss - idle_rss) / n, 1) if n else None,
            f"kernels_{int(linger_s)}s_after": after_kernels,
            f"kernel_rss_{int(linger_s)}s_after_mib": round(after_rss, 1),
            "visitor_kernels_gone_after_s": None if freed_after is None else round(freed_after, 1),
            "cpu_s_per_visitor": {
                "kernels": round(kernel_cpu / n, 2),
                "voila_server": round(server_cpu / n, 2),
                "browsers": round(chromium_cpu / n_browsers, 2) if n_browsers else 0.0,
            },
            "console_errors": errors,
        }
    finally:
        H.stop_server(server)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visitors", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--arrival", type=float, default=2.0, help="seconds between two visitors' arrivals")
    ap.add_argument("--linger", type=float, default=30.0, help="seconds to watch kernels after")
    ap.add_argument("--moves", type=int, default=5, help="slider moves per page (median reported)")
    ap.add_argument(
        "--move-period",
        type=float,
        default=1.0,
        help="seconds between two slider moves of one scripted visitor (0: back to back)",
    )
    ap.add_argument(
        "--browsers",
        type=int,
        default=1,
        help="how many visitors (the last to arrive) are headless Chromium pages; the others "
        "are scripted visitors (page, websocket, widget states, slider updates; no browser "
        "work). --browsers 16 puts every visitor's browser on this machine",
    )
    args = ap.parse_args(argv)
    H = _helpers()
    chromium = find_chromium(H)
    if chromium is None:
        return 2
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=H.LAUNCH_ARGS)
        for n in args.visitors:
            rows.append(
                run(
                    n,
                    args.moves,
                    H,
                    browser,
                    arrival_s=args.arrival,
                    linger_s=args.linger,
                    browsers=min(args.browsers, n),
                    move_period_s=args.move_period,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
        browser.close()
    print()
    head = (
        "N",
        "browsers",
        "interactive",
        "render median/max (s)",
        "browser render (s)",
        "slider median/p90 (s)",
        "browser slider (s)",
        "CPU ms/move",
        "kernels peak",
        "RSS peak (MiB)",
        "MiB/visitor",
        f"kernels {int(args.linger)} s after",
        "freed after (s)",
        "CPU s/visitor kernel+server/browser",
    )
    print("  ".join(f"{h:>{max(6, len(h))}}" for h in head))
    for r in rows:
        br = r["by_kind"].get("browser", {})
        cells = (
            r["visitors"],
            r["browsers"],
            r["interactive"],
            f"{r['first_render_median_s']:.1f}/{r['first_render_max_s']:.1f}",
            br.get("first_render_median_s"),
            f"{r['slider_latency_median_s']:.3f}/{r['slider_latency_p90_s']:.3f}",
            br.get("slider_latency_median_s"),
            r["server_cpu_ms_per_move"],
            r["peak_kernels"],
            f"{r['peak_kernel_rss_mib']:.0f}",
            r["rss_per_visitor_mib"],
            r[f"kernels_{int(args.linger)}s_after"],
            r["visitor_kernels_gone_after_s"],
            "{kernels:.1f}+{voila_server:.1f}/{browsers:.1f}".format(**r["cpu_s_per_visitor"]),
        )
        print("  ".join(f"{str(c):>{max(6, len(h))}}" for c, h in zip(cells, head, strict=True)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "recorded_at": time.strftime("%FT%T"),
    }
    OUT.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

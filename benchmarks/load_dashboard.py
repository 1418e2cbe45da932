"""Load test of the Voila dashboard: N concurrent pages in headless Chromium (N = 1, 2, 4 by default).

For each N a fresh ``curvlab dashboard`` server is started (default settings: one pre-heated
kernel), N pages are opened at once, and for each page we measure the first render (navigation
until the first tab's plot and slider show) and the median latency of slider moves (key press
until plot and readout changed). The total RSS of the kernel processes is read with psutil.
Prints a table and writes ``benchmarks/results/dashboard_load.json``.

    .venv/bin/python benchmarks/load_dashboard.py [--sessions 1 2 4] [--moves 5]
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


def run(n: int, moves: int, H, browser) -> dict:
    server = H.start_server(Path(tempfile.mkdtemp(prefix="curvlab-load-")))
    try:
        time.sleep(2.0)  # let the pre-heated kernel start like a server that has been up a moment
        contexts, pages, starts = [], [], []
        for _ in range(n):
            ctx = H.new_context(browser, server)
            dp = H.DashboardPage(ctx.new_page(), server)
            dp.blocked = ctx.curvlab_blocked
            contexts.append(ctx)
            pages.append(dp)
        for dp in pages:  # navigate all pages at once
            starts.append(time.perf_counter())
            dp.page.goto(server.url, timeout=H.NAV_TIMEOUT_MS, wait_until="commit")
        sel = ".curvlab-tab-curvature .curvlab-explorer"
        renders = []
        for dp, t0 in zip(pages, starts, strict=True):
            dp.page.wait_for_selector(f"{sel} .js-plotly-plot .main-svg", timeout=H.NAV_TIMEOUT_MS)
            dp.page.wait_for_selector(f"{sel} .noUi-handle", timeout=H.NAV_TIMEOUT_MS)
            renders.append(time.perf_counter() - t0)
        latencies = []
        for dp in pages:
            lat = [dp.press_slider(sel, "x")[1] for _ in range(moves)]
            latencies.append(statistics.median(lat))
        pids = server.kernel_pids()
        rss = H.rss_mib(pids)
        errors = sum(len(dp.console_errors) for dp in pages)
        for ctx in contexts:
            for p in ctx.pages:
                with p.expect_event("close", timeout=30_000):
                    p.close(run_before_unload=True)
            ctx.close()
        return {
            "sessions": n,
            "first_render_s": [round(t, 2) for t in renders],
            "first_render_median_s": round(statistics.median(renders), 2),
            "slider_latency_median_s": round(statistics.median(latencies), 3),
            "slider_latency_per_page_s": [round(t, 3) for t in latencies],
            "kernels": len(pids),
            "kernel_rss_total_mib": round(rss, 1),
            "kernel_rss_per_kernel_mib": round(rss / max(1, len(pids)), 1),
            "console_errors": errors,
        }
    finally:
        H.stop_server(server)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--moves", type=int, default=5, help="slider moves per page (median reported)")
    args = ap.parse_args(argv)
    H = _helpers()
    chromium = find_chromium(H)
    if chromium is None:
        return 2
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=H.LAUNCH_ARGS)
        for n in args.sessions:
            rows.append(run(n, args.moves, H, browser))
            print(json.dumps(rows[-1]), flush=True)
        browser.close()
    print()
    head = ("N", "first render median (s)", "slider median (s)", "kernels", "kernel RSS (MiB)")
    print(f"{head[0]:>3} {head[1]:>24} {head[2]:>18} {head[3]:>8} {head[4]:>17}")
    for r in rows:
        print(
            f"{r['sessions']:>3} {r['first_render_median_s']:>24.2f} {r['slider_latency_median_s']:>18.3f} "
            f"{r['kernels']:>8} {r['kernel_rss_total_mib']:>17.1f}"
        )
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

"""Load test of the Voila dashboard: N visitors (1, 4, 8, 16) arriving 2 s apart, in headless Chromium.

For each N a fresh ``curvlab dashboard`` server is started (default settings: one pre-heated
kernel). Visitors arrive ``--arrival`` seconds apart; for each we measure the first render (from its
navigation until the first tab's plot and slider show, timed inside the page) and the latency of
slider moves (key press until plot and readout changed). Kernels and their total RSS (psutil) are
sampled with everyone on the page and while ``--linger`` seconds pass after the last page closed.
CPU seconds per visitor are split into kernels + Voila server and the browsers (which run on this
machine too, unlike a real class's). Prints a table and writes ``benchmarks/results/dashboard_load.json``.

    .venv/bin/python benchmarks/load_dashboard.py [--visitors 1 4 8 16] [--moves 5] [--arrival 2] \\
        [--linger 30]
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


def run(n: int, moves: int, H, browser, *, arrival_s: float, linger_s: float) -> dict:
    """``n`` visitors arriving ``arrival_s`` apart; each renders, moves a slider ``moves`` times, leaves.

    First render is measured in the page itself (``performance.now()`` when the first tab's plot and
    slider exist), so visitors are timed independently of the order in which we look at them.
    Kernels and their RSS are sampled at the peak (everyone on the page) and ``linger_s`` after the
    last page closed (the server keeps its one pre-heated kernel for the next visitor).
    """
    server = H.start_server(Path(tempfile.mkdtemp(prefix="curvlab-load-")))
    try:
        time.sleep(2.0)  # let the pre-heated kernel start like a server that has been up a moment
        idle_kernels, idle_rss = _sample(server, H)
        kernel_cpu0 = _cpu_seconds(server.kernel_pids())
        server_cpu0 = _cpu_seconds([server.proc.pid])
        chromium_cpu0 = _cpu_seconds(_chromium_pids())
        sel = ".curvlab-tab-curvature .curvlab-explorer"
        contexts, pages = [], []
        for i in range(n):
            if i:
                time.sleep(arrival_s)
            ctx = H.new_context(browser, server)
            ctx.add_init_script(_RENDER_PROBE)
            dp = H.DashboardPage(ctx.new_page(), server)
            dp.page.goto(server.url, timeout=H.NAV_TIMEOUT_MS, wait_until="commit")
            contexts.append(ctx)
            pages.append(dp)
        renders = []
        for dp in pages:
            dp.page.wait_for_function("window.__curvlabRendered !== undefined", timeout=H.NAV_TIMEOUT_MS)
            renders.append(dp.page.evaluate("window.__curvlabRendered"))
        peak_kernels, peak_rss = _sample(server, H)
        latencies, all_moves = [], []
        for dp in pages:  # every visitor interactive: each page's slider answers
            lat = [dp.press_slider(sel, "x")[1] for _ in range(moves)]
            latencies.append(statistics.median(lat))
            all_moves += lat
        errors = sum(len(dp.console_errors) for dp in pages)
        # CPU spent serving the n visitors: their kernels (start, notebook, slider moves; the pool's
        # refill included), the Voila server process, and the browsers (on this machine too).
        kernel_cpu = _cpu_seconds(server.kernel_pids()) - kernel_cpu0
        server_cpu = _cpu_seconds([server.proc.pid]) - server_cpu0
        chromium_cpu = _cpu_seconds(_chromium_pids()) - chromium_cpu0
        for ctx in contexts:
            for p in ctx.pages:
                with p.expect_event("close", timeout=30_000):
                    p.close(run_before_unload=True)
            ctx.close()
        left = time.monotonic()
        freed_after = None
        while time.monotonic() - left < linger_s:
            time.sleep(1.0)
            k, _ = _sample(server, H)
            if freed_after is None and k <= idle_kernels:
                freed_after = time.monotonic() - left
        after_kernels, after_rss = _sample(server, H)
        return {
            "visitors": n,
            "arrival_s": arrival_s,
            "first_render_s": [round(t, 2) for t in renders],
            "first_render_median_s": round(statistics.median(renders), 2),
            "first_render_max_s": round(max(renders), 2),
            "slider_latency_median_s": round(statistics.median(all_moves), 3),
            "slider_latency_per_visitor_s": [round(t, 3) for t in latencies],
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
                "browsers": round(chromium_cpu / n, 2),
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
            rows.append(run(n, args.moves, H, browser, arrival_s=args.arrival, linger_s=args.linger))
            print(json.dumps(rows[-1]), flush=True)
        browser.close()
    print()
    head = ("N", "render median/max (s)", "slider median (s)", "kernels peak", "RSS peak (MiB)",
            "MiB/visitor", f"kernels {int(args.linger)} s after", "freed after (s)",
            "CPU s/visitor kernel+server/browser")
    print("  ".join(f"{h:>{max(6, len(h))}}" for h in head))
    for r in rows:
        cells = (
            r["visitors"], f"{r['first_render_median_s']:.1f}/{r['first_render_max_s']:.1f}",
            f"{r['slider_latency_median_s']:.3f}", r["peak_kernels"], f"{r['peak_kernel_rss_mib']:.0f}",
            r["rss_per_visitor_mib"], r[f"kernels_{int(args.linger)}s_after"],
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

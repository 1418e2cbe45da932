"""Slider -> plot latency of every explorer tab of the Voila dashboard, in headless Chromium.

One ``curvlab dashboard`` server, one page. For each (tab, control, setting) the slider is moved
``--moves`` times with the keyboard (alternately right and left, so it stays in range) and we
record the seconds from the key press until the plot data *and* the readout changed in the
browser (the first visible update; parts an explorer computes in the background may arrive
later). The spectrum tab is measured with and without the Jacobi preconditioner and for the
Lanczos-steps slider. Prints a table and writes ``benchmarks/results/slider_latency.json``.

    .venv/bin/python benchmarks/slider_latency.py [--moves 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "slider_latency.json"
sys.path.insert(0, str(REPO / "benchmarks"))

from load_dashboard import _helpers, find_chromium  # noqa: E402  (the browser-test helpers)

#: (tab key, tab title, control, preconditioner checkbox state or None, row label)
CASES = [
    ("curvature", "Curvature", "x", None, "curvature: x"),
    ("finite-difference", "Finite differences", "x", None, "finite differences: x"),
    ("spectrum", "Spectrum", "damping", False, "spectrum: damping"),
    ("spectrum", "Spectrum", "num-steps", False, "spectrum: Lanczos steps"),
    ("spectrum", "Spectrum", "damping", True, "spectrum: damping, Jacobi preconditioner"),
    ("cg", "Conjugate gradient", "damping", None, "CG: damping"),
]


def _set_checkbox(dp, scope: str, control: str, value: bool) -> None:
    box = dp.page.locator(f"{scope} .curvlab-control-{control} input[type=checkbox]").first
    if box.is_checked() != value:
        box.click()
        dp.wait_settled(scope)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=9, help="slider moves per case (median reported)")
    args = ap.parse_args(argv)
    H = _helpers()
    chromium = find_chromium(H)
    if chromium is None:
        return 2
    from playwright.sync_api import sync_playwright

    rows = []
    server = H.start_server(Path(tempfile.mkdtemp(prefix="curvlab-latency-")))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=H.LAUNCH_ARGS)
            ctx = H.new_context(browser, server)
            dp = H.DashboardPage(ctx.new_page(), server)
            dp.blocked = ctx.curvlab_blocked
            print(f"first render {dp.goto():.2f} s", flush=True)
            for key, title, control, precond, label in CASES:
                scope = dp.select_tab(key, title)
                dp.wait_settled(scope)
                if precond is not None:
                    _set_checkbox(dp, scope, "preconditioned", precond)
                lat = []
                for i in range(args.moves):
                    lat.append(
                        dp.press_slider(scope, control, "ArrowRight" if i % 2 == 0 else "ArrowLeft")[1]
                    )
                rows.append(
                    {
                        "case": label,
                        "median_s": round(statistics.median(lat), 4),
                        "all_s": [round(t, 4) for t in lat],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            errors = list(dp.console_errors)
            ctx.close()
            browser.close()
    finally:
        H.stop_server(server)
    print()
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  median (s)")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['median_s']:.3f}")
    meta = {
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "recorded_at": time.strftime("%FT%T"),
        "moves": args.moves,
        "console_errors": errors,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

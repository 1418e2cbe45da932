"""The README's API tour runs as written."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_api_tour_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("## API tour", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    checks = (
        "\nassert top.status.name == 'CONVERGED', top.message"
        "\nassert sol.converged, sol.message"
        "\nassert float(abs(res.x - 1).max()) < 1e-4, res.message"
        "\nassert abs(float(dens.grid[1] - dens.grid[0]) * float(dens.density.sum()) - 1) < 1e-2"
    )
    out = subprocess.run(
        [sys.executable, "-c", code + checks], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]

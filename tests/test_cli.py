"""The ``curvlab`` console script (argument parsing, serving) and the dashboard builder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from curvlab.app import cli, dashboard

REPO = Path(__file__).resolve().parents[1]


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


# ------------------------------------------------------------------ parsing


def test_dashboard_defaults_and_options():
    a = parse("dashboard")
    assert (a.command, a.port, a.open, a.preheat, a.pool_size, a.notebook) == (
        "dashboard",
        8866,
        False,
        True,
        1,
        None,
    )
    a = parse("dashboard", "--port", "9001", "--open", "--no-preheat", "--cull-idle-timeout", "30")
    assert (a.port, a.open, a.preheat, a.cull_idle_timeout) == (9001, True, False, 30)


@pytest.mark.parametrize("bad", ["0", "70000", "http", "-1"])
def test_dashboard_rejects_bad_port(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse("dashboard", "--port", bad)
    assert exc.value.code == 2
    assert "port" in capsys.readouterr().err


def test_lab_is_an_alias_of_notebooks():
    assert parse("lab").func is parse("notebooks").func
    assert parse("lab", "--dir", "x").dir == "x"


def test_command_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        parse()
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "argv", [["--help"], ["dashboard", "--help"], ["diagnose", "--help"], ["lab", "--help"]]
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: curvlab")


def test_voila_command_binds_localhost_and_culls():
    cmd = cli.voila_command("nb.ipynb", port=9100)
    assert cmd[:4] == [sys.executable, "-m", "curvlab.app._voila_server", "nb.ipynb"]
    for flag in (
        "--Voila.ip=127.0.0.1",
        "--Voila.port=9100",
        "--Voila.port_retries=0",
        "--no-browser",
        "--preheat_kernel=True",
        f"--MappingKernelManager.cull_idle_timeout={cli.CULL_IDLE_TIMEOUT}",
        f"--MappingKernelManager.cull_interval={cli.CULL_INTERVAL}",
    ):
        assert flag in cmd
    assert "--preheat_kernel=False" in cli.voila_command("nb.ipynb", preheat=False)
    with pytest.raises(ValueError, match="port"):
        cli.voila_command("nb.ipynb", port=0)


def test_diagnose_passes_options(monkeypatch, tmp_path, capsys):
    import curvlab.app._script as diagnostics

    calls = []
    monkeypatch.setattr(diagnostics, "diagnose_script", lambda spec, out, **kw: calls.append((spec, out, kw)))
    out = str(tmp_path / "r.html")
    assert cli.main(["diagnose", "model.py:make", "--out", out, "-k", "3", "--curvature", "ggn"]) == 0
    assert calls == [("model.py:make", out, {"k": 3, "curvature": "ggn"})]
    calls.clear()
    assert cli.main(["diagnose", "model.py", "--out", out]) == 0
    assert calls == [("model.py", out, {})]  # unset options: the script's own values apply


def test_diagnose_reports_errors(monkeypatch, tmp_path, capsys):
    import curvlab.app._script as diagnostics

    def boom(spec, out, **kw):
        raise ValueError("model.py provides no params")

    monkeypatch.setattr(diagnostics, "diagnose_script", boom)
    assert cli.main(["diagnose", "model.py", "--out", str(tmp_path / "r.html")]) == 1
    assert "provides no params" in capsys.readouterr().err


def test_notebooks_without_directory(capsys, tmp_path):
    assert cli.main(["notebooks", "--dir", str(tmp_path / "nope")]) == 2
    assert "notebooks" in capsys.readouterr().err


def test_lab_command_allows_root_and_passes_options_through():
    cmd = cli.lab_command("nb", port=9999, extra=["--no-browser"], as_root=True)
    assert cmd[-2:] == ["--allow-root", "--no-browser"] and "--ServerApp.port=9999" in cmd
    assert "--allow-root" not in cli.lab_command("nb", as_root=False)
    assert cli.lab_command("nb", extra=["--allow-root"], as_root=True).count("--allow-root") == 1
    args = parse("notebooks", "--port", "9000", "--", "--no-browser", "--ServerApp.token=abc")
    assert args.jupyter_args[-2:] == ["--no-browser", "--ServerApp.token=abc"]


@pytest.mark.slow
def test_notebooks_starts_jupyterlab_as_this_user(tmp_path):
    """``curvlab notebooks`` as the test's own user (root in containers and CI) serves JupyterLab."""
    port = _free_port()
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "curvlab.app.cli", "notebooks", "--port", str(port), "--", "--no-browser"]
    cmd += ["--ServerApp.token=curvlab-test", f"--ServerApp.runtime_dir={tmp_path / 'rt'}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
        try:
            deadline = time.monotonic() + 120
            url = f"http://127.0.0.1:{port}/api/status?token=curvlab-test"
            while _status(url) != 200:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "JupyterLab did not answer: " + log.read_text()
                time.sleep(0.25)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_notebooks_dir_found_in_checkout():
    assert cli.find_notebooks_dir() == REPO / "notebooks"


# ------------------------------------------------------------------ the notebook


def test_apps_notebook_is_the_generated_one():
    """apps/dashboard.ipynb (Binder's target) is exactly what the CLI serves; regenerate with
    ``python -m curvlab.app.dashboard apps/dashboard.ipynb``."""
    assert (REPO / "apps" / "dashboard.ipynb").read_text(encoding="utf-8") == dashboard.notebook_text()


def test_write_notebook(tmp_path):
    path = dashboard.write_notebook(tmp_path)
    nb = json.loads(path.read_text())
    assert path.name == "dashboard.ipynb"
    assert nb["nbformat"] == 4
    assert "build_dashboard()" in nb["cells"][0]["source"]


# ------------------------------------------------------------------ the dashboard object


class _Fake:
    built: list[str] = []

    def __init__(self, key):
        import ipywidgets

        self.widget = ipywidgets.HTML(key)
        _Fake.built.append(key)


def _factories(fail=()):
    def make(key):
        def f():
            if key in fail:
                raise RuntimeError(f"cannot build {key}")
            return _Fake(key).widget

        return f

    return {t.key: make(t.key) for t in dashboard.TABS}


def test_dashboard_builds_first_tab_then_on_selection():
    _Fake.built = []
    dash = dashboard.build_dashboard(
        display=False, background_delay=None, speed_up=False, factories=_factories()
    )
    assert [t.key for t in dashboard.TABS] == list(dash.explorers) + [t.key for t in dashboard.TABS[1:]]
    assert _Fake.built == [dashboard.TABS[0].key]
    assert len(dash.tab.children) == len(dashboard.TABS) == 6
    assert dash.tab.titles == tuple(t.title for t in dashboard.TABS)
    assert "curvlab-dashboard-ready" not in dash._dom_classes
    dash.tab.selected_index = 2
    assert _Fake.built == [dashboard.TABS[0].key, dashboard.TABS[2].key]
    page = dash.tab.children[2]
    assert page.children[1] is dash.explorers[dashboard.TABS[2].key]
    dash.build_all()
    assert sorted(_Fake.built) == sorted(t.key for t in dashboard.TABS)
    assert "curvlab-dashboard-ready" in dash._dom_classes


def test_dashboard_shows_a_build_error_in_its_tab():
    key = dashboard.TABS[1].key
    dash = dashboard.build_dashboard(
        display=False, background_delay=None, speed_up=False, factories=_factories(fail={key})
    )
    dash.tab.selected_index = 1
    box = dash.tab.children[1].children[1]
    assert "cannot build" in box.value and "curvlab-error" in box._dom_classes
    assert dash.explorers[key] is None


def test_sync_figure_state_copies_later_edits():
    import ipywidgets
    import plotly.graph_objects as go

    fig = go.FigureWidget()
    fig.add_scatter(y=[1, 2, 3])
    box = ipywidgets.VBox([ipywidgets.HTML("x"), fig])
    assert fig._widget_data == []  # add_traces went out as a one-off message only
    assert dashboard.sync_figure_state(box) == 1
    assert list(fig._widget_data[0]["y"]) == [1, 2, 3]


def test_rfc3987_import_is_deferred_but_works():
    code = (
        "import sys\n"
        "from curvlab.app.dashboard import _defer_rfc3987_syntax\n"
        "assert _defer_rfc3987_syntax()\n"
        "import jsonschema\n"
        "assert 'lark' not in sys.modules, 'rfc3987_syntax was imported eagerly'\n"
        "from jsonschema import Draft7Validator, FormatChecker\n"
        "v = Draft7Validator({'format': 'iri'}, format_checker=FormatChecker())\n"
        "assert v.is_valid('http://example.com/a')\n"
        "assert not v.is_valid('not an iri')\n"
        "print('ok')\n"
    )
    pytest.importorskip("rfc3987_syntax")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_patch_plotly_esm_rejects_absolute_urls():
    with pytest.raises(ValueError, match="url_path"):
        dashboard.patch_plotly_esm("/etc/passwd")
    assert dashboard.patch_plotly_esm("") is False


# ------------------------------------------------------------------ serving


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.mark.slow
def test_dashboard_serves_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    log = tmp_path / "log.txt"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "curvlab.app.cli", "dashboard", "--port", str(port), "--no-preheat"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            base = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 120
            while _status(base + "voila/static/voila.js") != 200:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "dashboard did not answer: " + log.read_text()
                time.sleep(0.25)
            # plotly's front end is served as a file, only that file
            assert _status(base + "voila/files/_curvlab/plotly-widgetbundle.js") == 200
            assert _status(base + "voila/files/dashboard.ipynb") in (403, 404)
            deadline = time.monotonic() + 10
            while f"curvlab dashboard: {base}" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert f"curvlab dashboard: {base}" in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
    assert rc == 0, log.read_text()
    assert _status(f"http://127.0.0.1:{port}/voila/static/voila.js") == 0  # Voila is gone too


@pytest.mark.slow
def test_dashboard_fails_on_busy_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "curvlab.app.cli", "dashboard", "--port", str(port), "--no-preheat"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode != 0
    assert "is port" in out.stderr


def test_pooled_kernel_handed_to_a_page_counts_as_active(monkeypatch):
    """A kernel that idled in Voila's pool must not be culled before its page connects."""
    import asyncio
    import datetime
    import types

    import voila.app

    from curvlab.app import _voila_server

    old = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    kernel = types.SimpleNamespace(last_activity=old)

    class FakePoolManager:
        def __contains__(self, kernel_id):
            return kernel_id == "k1"

        def get_kernel(self, kernel_id):
            return kernel

        async def get_rendered_notebook(self, notebook_name, **kwargs):
            return "task", ["cells"], "k1"

    monkeypatch.setattr(voila.app, "voila_kernel_manager_factory", lambda *a, **k: FakePoolManager)
    _voila_server._patch_kernel_manager()
    manager = voila.app.voila_kernel_manager_factory()()
    assert asyncio.run(manager.get_rendered_notebook("dashboard.ipynb")) == ("task", ["cells"], "k1")
    assert kernel.last_activity > old


def test_kernel_whose_page_disconnected_is_reclaimed(monkeypatch):
    """A kernel left without a websocket for RECLAIM_AFTER_S is shut down; a reconnect saves it."""
    import asyncio

    import voila.app

    from curvlab.app import _voila_server

    class FakeManager:
        def __init__(self):
            self._kernel_connections = {"k1": 0, "k2": 0}
            self.shut = []
            self.log = __import__("logging").getLogger("test")

        def __contains__(self, kernel_id):
            return kernel_id in self._kernel_connections

        def notify_connect(self, kernel_id):
            self._kernel_connections[kernel_id] += 1

        def notify_disconnect(self, kernel_id):
            self._kernel_connections[kernel_id] -= 1

        async def shutdown_kernel(self, kernel_id):
            self.shut.append(kernel_id)
            del self._kernel_connections[kernel_id]

    monkeypatch.setenv(_voila_server.RECLAIM_AFTER_ENV, "0.05")
    monkeypatch.setattr(voila.app, "voila_kernel_manager_factory", lambda *a, **k: FakeManager)
    _voila_server._patch_kernel_manager()
    manager = voila.app.voila_kernel_manager_factory()()

    async def scenario():
        for k in ("k1", "k2"):
            manager.notify_connect(k)
        manager.notify_disconnect("k1")  # k1's page closed for good
        manager.notify_disconnect("k2")  # k2's page drops its websocket ...
        await asyncio.sleep(0.01)
        manager.notify_connect("k2")  # ... and comes back within the grace period
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert manager.shut == ["k1"]
    assert manager._kernel_connections == {"k2": 1}


def test_binary_websocket_headers_are_read_in_both_framings_with_bounded_work():
    """Voila's header reader assumed the v1 framing; a legacy-framed message (what jupyter_server
    sends a client without subprotocol) read as a count near 10^17 and froze the server."""
    from jupyter_server.services.kernels.connection.base import (
        serialize_binary_message,
        serialize_msg_to_ws_v1,
    )

    from curvlab.app._voila_server import read_binary_header

    header = {"msg_id": "m1", "msg_type": "comm_msg", "session": "s", "username": "", "version": "5.3"}
    msg = {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": {"data": {}},
        "channel": "iopub",
        "buffers": [b"\x00\x01" * 500, memoryview(b"xyz")],
    }
    legacy = serialize_binary_message(dict(msg))
    assert read_binary_header(legacy) == header
    parts = [json.dumps(p).encode() for p in (header, {}, {}, {"data": {}})]
    v1 = serialize_msg_to_ws_v1([*parts, b"\x00" * 64], "iopub")
    assert read_binary_header(v1) == header
    # execute_input is recognised in either framing (Voila drops those messages)
    hidden = dict(msg, header=dict(header, msg_type="execute_input"))
    assert read_binary_header(serialize_binary_message(hidden))["msg_type"] == "execute_input"
    # hostile or truncated input: no header (counts are checked against the length before any loop)
    for bad in (
        b"",
        b"\x00" * 3,
        b"\xff" * 64,
        legacy[:10],
        v1[:20],
        b"\x00\x00\x00\x02" + b"\x7f" * 4096,
        (10**17).to_bytes(8, "little") + b"\x00" * 100,
    ):
        assert read_binary_header(bad) is None

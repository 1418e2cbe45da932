"""The dashboard server as a visitor meets it, over plain HTTP (no browser, nothing injected).

Each test starts its own ``curvlab dashboard`` with the settings under test: Host check,
the page's ``_xsrf`` cookie and shutdown, reclaiming kernels whose page never connects, and
the ``--max-kernels`` busy page.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.parse

import pytest

from tests.browser.conftest import start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def request(server, method="GET", path="/", headers=None, body=None, timeout=180):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read().decode(errors="replace")
    finally:
        conn.close()


def wait_for(predicate, timeout, step=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("server"),
        extra_args=["--no-preheat", "--max-kernels", "1", "--cull-idle-timeout", "6", "--cull-interval", "1"],
    )
    yield srv
    stop_server(srv)


def test_foreign_host_is_refused(server):
    """What a DNS-rebinding page sends (Host and Origin both foreign) gets 403 on every dynamic
    endpoint, the kernel websocket included (static files such as voila.js stay public)."""
    evil = {"Host": "evil.example", "Origin": "http://evil.example"}
    status, _, page = request(server)  # a local visitor's page, for a real kernel id
    assert status == 200
    kernel_id = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page).group(1)
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
    for path, extra in (
        ("/", {}),
        (f"/api/kernels/{kernel_id}", {}),
        (f"/api/kernels/{kernel_id}/channels", upgrade),
    ):
        assert request(server, path=path, headers={**evil, **extra})[0] == 403, path
    assert request(server, path=f"/api/kernels/{kernel_id}")[0] == 200
    local = {"Host": f"localhost:{server.port}"}
    assert request(server, path=f"/api/kernels/{kernel_id}", headers=local)[0] == 200
    assert wait_for(lambda: not server.kernel_alive(kernel_id), 30)  # never connected: reclaimed


def test_page_sets_xsrf_cookie_shutdown_works_and_busy_page_past_the_limit(server):
    assert wait_for(lambda: not server.kernel_pids(), 30)
    status, headers, page = request(server)
    assert status == 200
    cookie = re.search(r"_xsrf=([^;]+)", headers.get("set-cookie", ""))
    assert cookie, f"the page sets no _xsrf cookie: {headers.get('set-cookie')!r}"
    kernel_id = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page).group(1)
    assert server.kernel_alive(kernel_id)
    # a second visitor while the one allowed kernel is in use: the busy page, no new kernel
    status, headers, busy = request(server)
    assert status == 503 and "busy" in busy and headers.get("retry-after") == "10"
    assert len(server.kernel_pids()) == 1
    # the page's beacon: form field _xsrf = the cookie's value, as Voila's page sends it
    body = urllib.parse.urlencode({"_xsrf": cookie.group(1)})
    status, _, _ = request(
        server,
        "POST",
        f"/voila/api/shutdown/{kernel_id}",
        headers={"Cookie": f"_xsrf={cookie.group(1)}", "Content-Type": "application/x-www-form-urlencoded"},
        body=body,
    )
    assert status == 204
    assert wait_for(lambda: not server.kernel_alive(kernel_id), 5)


def test_kernel_of_a_page_that_never_connects_is_reclaimed(server):
    assert wait_for(lambda: not server.kernel_pids(), 30)
    status, _, page = request(server)  # a plain GET: the notebook runs, no websocket ever connects
    assert status == 200
    kernel_id = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page).group(1)
    assert server.kernel_alive(kernel_id)
    # reclaimed after the idle timeout (6 s here; 60 s by default), not 10 minutes
    assert wait_for(lambda: not server.kernel_alive(kernel_id), 30)
    assert wait_for(lambda: not server.kernel_pids(), 10)


def test_a_legacy_protocol_visitor_gets_widget_states_and_cannot_stall_the_server(server):
    """jupyter_server serves the kernel websocket without a subprotocol too (4-byte big-endian
    framing of binary messages). Voila read every binary header as the v1 framing, so the widget
    states (a binary message) sent to such a client froze the server's event loop and grew it by
    ~30 MB/s. Here the states arrive, a slider update answers, and the server keeps serving."""
    import psutil

    from tests.browser.visitor_client import ScriptedVisitor

    assert wait_for(lambda: not server.kernel_pids(), 30)
    visitor = ScriptedVisitor(server.url, timeout=120)
    try:
        visitor.open()
        names = {s["model_name"] for s in visitor.states.values()}
        assert {"TabModel", "FloatSliderModel", "AnyModel"} <= names, names
        rss_before = psutil.Process(server.voila_pid()).memory_info().rss
        [slider] = visitor.models("FloatSliderModel", "curvlab-control-x")
        readouts = visitor.models("HTMLModel", "curvlab-readout")
        figures = visitor.models("AnyModel", "curvlab-figure")
        assert readouts and figures
        visitor.move_slider(slider, readouts, figures)  # raises TimeoutError if nothing comes back
        assert request(server, path="/voila/static/voila.js", timeout=10)[0] == 200  # still serving
        grown = psutil.Process(server.voila_pid()).memory_info().rss - rss_before
        assert grown < 200 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB"
    finally:
        kernel_id = visitor.kernel_id
        visitor.close()
    # its websocket closed and nothing came back: reclaimed (10 s by default)
    assert wait_for(lambda: not server.kernel_alive(kernel_id), 40)

"""A scripted dashboard visitor: what a Voila page asks of the server, without a browser.

:class:`ScriptedVisitor` does over HTTP and the kernel websocket what Voila's front end does for
a visitor: ``GET /`` (the notebook runs, or a pre-heated kernel's result comes back), connect to
the page's kernel, ask for every widget's state (the ``jupyter.widget.control`` comm's
``request_states``), move a slider (a ``comm_msg`` update of its model, as the front end sends on
a key press) and wait until the kernel has sent the new readout and plot, then leave (close the
websocket, as a closed tab does). It speaks the default (legacy) websocket framing, which
jupyter_server serves alongside ``v1.kernel.websocket.jupyter.org``.

Used by ``tests/browser/test_server.py`` and ``benchmarks/load_dashboard.py`` (many visitors on
one machine: the browsers' own work, which a real class does on its own machines, stays out).
"""

from __future__ import annotations

import datetime
import http.cookiejar
import json
import re
import time
import urllib.request
import uuid

WIDGET_PROTOCOL = "2.1.0"
CONTROL_PROTOCOL = "1.0.0"


def _decode(opcode: int, data: bytes) -> dict:
    if opcode == 2:  # binary: legacy framing (4-byte big-endian count, offsets, JSON, buffers)
        from jupyter_server.services.kernels.connection.base import deserialize_binary_message

        return deserialize_binary_message(data)
    return json.loads(data)


class ScriptedVisitor:
    """One visitor of the dashboard at ``url``; every wait is bounded by ``timeout`` seconds."""

    def __init__(self, url: str, *, timeout: float = 180.0):
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self.session = uuid.uuid4().hex
        self.kernel_id: str | None = None
        self.ws = None
        self.states: dict = {}
        self.status: int | None = None

    # -- protocol
    def _send(self, msg_type: str, content: dict, metadata: dict | None = None) -> str:
        msg_id = uuid.uuid4().hex
        now = datetime.datetime.now(datetime.UTC).isoformat()
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self.session,
            "username": "",
            "version": "5.3",
            "date": now,
        }
        self.ws.send(
            json.dumps(
                {
                    "header": header,
                    "parent_header": {},
                    "metadata": metadata or {},
                    "content": content,
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        return msg_id

    def _recv(self, deadline: float) -> dict:
        import websocket

        self.ws.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError(f"no message from kernel {self.kernel_id} in time") from exc
        return _decode(opcode, data)

    # -- a visit
    def open(self) -> float:
        """Load the page and fetch every widget state; seconds from the request until both arrived."""
        import websocket

        start = time.perf_counter()
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(self.url, timeout=self.timeout) as r:
            self.status = r.status
            html = r.read().decode(errors="replace")
        found = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', html)
        if found is None:
            raise RuntimeError(f"no kernel id in the page (HTTP {self.status}): {html[:300]!r}")
        self.kernel_id = found.group(1)
        cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
        host = self.url.split("//", 1)[1].rstrip("/")
        self.ws = websocket.create_connection(
            f"ws://{host}/api/kernels/{self.kernel_id}/channels?session_id={self.session}",
            header=[f"Cookie: {cookie}"],
            timeout=self.timeout,
        )
        comm_id = uuid.uuid4().hex
        self._send(
            "comm_open",
            {"comm_id": comm_id, "target_name": "jupyter.widget.control", "data": {}},
            {"version": CONTROL_PROTOCOL},
        )
        self._send(
            "comm_msg",
            {"comm_id": comm_id, "data": {"method": "request_states"}},
            {"version": CONTROL_PROTOCOL},
        )
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv(deadline)
            content = msg.get("content", {})
            if msg["header"]["msg_type"] == "comm_msg" and content.get("comm_id") == comm_id:
                self.states = content["data"]["states"]
                return time.perf_counter() - start

    def models(self, model_name: str, dom_class: str) -> list[str]:
        """Ids of the models ``model_name`` whose ``_dom_classes`` include ``dom_class``, in state order."""
        return [
            mid
            for mid, s in self.states.items()
            if s["model_name"] == model_name and dom_class in s["state"].get("_dom_classes", ())
        ]

    def move_slider(self, slider_id: str, readout_ids, figure_ids=()) -> float:
        """Move the slider one step (up, or down at its maximum) as a key press does.

        Returns seconds from sending the update until a readout (any of ``readout_ids``) changed
        and, when ``figure_ids`` are given, one of those figures received an update too.
        """
        state = self.states[slider_id]["state"]
        step = state.get("step") or 1
        value = state["value"] + step if state["value"] + step <= state["max"] else state["value"] - step
        readouts, figures = set(readout_ids), set(figure_ids)
        start = time.perf_counter()
        self._send(
            "comm_msg",
            {
                "comm_id": slider_id,
                "data": {"method": "update", "state": {"value": value}, "buffer_paths": []},
            },
            {"version": WIDGET_PROTOCOL},
        )
        state["value"] = value
        seen_readout, seen_figure = False, not figures
        deadline = time.monotonic() + self.timeout
        while not (seen_readout and seen_figure):
            msg = self._recv(deadline)
            if msg["header"]["msg_type"] != "comm_msg":
                continue
            comm = msg["content"].get("comm_id")
            data = msg["content"].get("data", {})
            if data.get("method") not in ("update", "custom"):
                continue
            if comm in readouts and "value" in data.get("state", {}):
                seen_readout = True
            elif comm in figures:
                seen_figure = True
        return time.perf_counter() - start

    def close(self) -> None:
        """Leave: close the websocket (what a closed tab does; no shutdown request is sent)."""
        if self.ws is not None:
            try:
                self.ws.close()
            finally:
                self.ws = None

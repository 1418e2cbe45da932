"""Run Voila with curvlab's server fixes: ``python -m curvlab.app._voila_server ARGS``.

1. **Pooled kernels at hand-out** (below), and **kernels of closed pages reclaimed**: a kernel
   whose page's websocket closed and did not come back within :data:`RECLAIM_AFTER_S` seconds
   is shut down, whether or not the page's shutdown beacon arrived.
2. **The page's ``_xsrf`` cookie.** Voila's page sends its shutdown beacon with the ``_xsrf``
   cookie's value, but Voila never sets that cookie, so in a visitor's browser every shutdown
   failed with ``403 '_xsrf' argument missing`` and closed pages kept their kernels until the
   idle cull. The page response now sets the cookie (tornado's ``xsrf_token``), so the beacon
   passes the ordinary XSRF check.
3. **Host check.** Voila sets ``allow_remote_access=True``; here it is off, so requests whose
   ``Host`` is not a loopback address, ``localhost`` or a name given with ``--allow-host`` get
   403 (DNS rebinding).
4. **A bounded number of kernels.** Past ``max_kernels`` page kernels a new visitor gets a
   small "busy, retry in a moment" page (HTTP 503, reloads itself) instead of a new kernel.
5. **Faults are visible.** Voila's page shows nothing when its kernel dies (the server
   restarts it without the page's widgets: broken-link icons, a frozen readout) or when the
   server goes away. The page handler adds :data:`FAULT_SCRIPT` to the page's ``<head>``: it
   waits for Voila's front end (``window.jupyterapp``, its widget manager's
   ``KernelConnection``) and, when the kernel's status becomes ``restarting`` /
   ``autorestarting`` / ``dead`` or its websocket stays disconnected for
   :data:`DISCONNECT_GRACE_MS`, covers the page with "The connection to the computing kernel
   was lost" and a *Reload* button (``.curvlab-connection-lost``).

Settings come from the environment (set by ``curvlab dashboard``): ``CURVLAB_ALLOWED_HOSTS``
(comma-separated names) and ``CURVLAB_MAX_KERNELS``.

Pooled kernels:

Voila keeps pooled kernels safe from the idle culler only while they sit in the pool. A kernel
that waited in the pool longer than ``cull_idle_timeout`` is handed to a new page still marked
idle since its start, and the culler may shut it down in the seconds before the page's websocket
connects: the page then never renders (seen in the browser tests, "Culling 'idle' kernel ... with
0 connections" right after "Using pre-heated kernel"). Handing a kernel to a page counts as
activity here, so it gets a full ``cull_idle_timeout`` for the page to connect.
"""

from __future__ import annotations

import os

#: Seconds a kernel may stay without a websocket after its page's last one closed before it is
#: shut down (``CURVLAB_RECLAIM_AFTER_S``). Covers pages whose shutdown beacon never arrived.
RECLAIM_AFTER_ENV = "CURVLAB_RECLAIM_AFTER_S"
RECLAIM_AFTER_S = 10.0


def _reclaim_after() -> float:
    try:
        value = float(os.environ.get(RECLAIM_AFTER_ENV, RECLAIM_AFTER_S))
    except ValueError:
        return RECLAIM_AFTER_S
    return value if value > 0 else RECLAIM_AFTER_S


def _patch_kernel_manager() -> None:
    """Wrap Voila's kernel-manager factory: pooled kernels at hand-out, reclaim on disconnect."""
    import asyncio
    import time

    import voila.app
    from jupyter_server._tz import utcnow

    factory = voila.app.voila_kernel_manager_factory
    if getattr(factory, "_curvlab_patched", False):
        return
    reclaim_after = _reclaim_after()

    def patched_factory(*args, **kwargs):
        base = factory(*args, **kwargs)

        class CurvlabKernelManager(base):
            """Voila's manager, plus: a kernel whose page's websocket closed and did not come back
            within ``reclaim_after`` seconds is shut down (a page's shutdown beacon can be lost:
            one of four closing pages kept its kernel in the load benchmark)."""

            def _curvlab_disconnected(self) -> dict:
                return self.__dict__.setdefault("_curvlab_disconnected_at", {})

            def notify_connect(self, kernel_id):
                super().notify_connect(kernel_id)
                self._curvlab_disconnected().pop(kernel_id, None)

            def notify_disconnect(self, kernel_id):
                super().notify_disconnect(kernel_id)
                if self._kernel_connections.get(kernel_id, 1) > 0:
                    return
                self._curvlab_disconnected()[kernel_id] = time.monotonic()
                try:
                    loop = asyncio.get_event_loop()
                except RuntimeError:  # pragma: no cover - no loop: leave it to the culler
                    return
                loop.call_later(
                    reclaim_after, lambda: asyncio.ensure_future(self._curvlab_reclaim(kernel_id))
                )

            async def _curvlab_reclaim(self, kernel_id):
                since = self._curvlab_disconnected().get(kernel_id)
                if since is None or time.monotonic() - since < reclaim_after * 0.99:
                    return  # reconnected (or disconnected again later: that call's timer decides)
                self._curvlab_disconnected().pop(kernel_id, None)
                if kernel_id not in self or self._kernel_connections.get(kernel_id, 0) > 0:
                    return
                self.log.info("Reclaiming kernel %s: no page connected for %.0f s", kernel_id, reclaim_after)
                try:
                    await self.shutdown_kernel(kernel_id)
                except Exception as exc:  # noqa: BLE001 - already gone (beacon won the race)
                    self.log.debug("reclaim of %s: %s", kernel_id, exc)

            if hasattr(base, "get_rendered_notebook"):  # pooled kernels (preheating on)

                async def get_rendered_notebook(self, notebook_name, *a, **kw):
                    result = await super().get_rendered_notebook(notebook_name, *a, **kw)
                    kernel_id = result[2]
                    if kernel_id in self:
                        self.get_kernel(kernel_id).last_activity = utcnow()
                    return result

        return CurvlabKernelManager

    patched_factory._curvlab_patched = True
    voila.app.voila_kernel_manager_factory = patched_factory


def _parts(ws_msg: bytes, width: int, byteorder: str) -> list[bytes] | None:
    """Split a framed message: a part count, that many offsets (``width`` bytes each), the parts.

    ``None`` unless the count, the offsets and the length agree (offsets increasing, inside the
    message, the first one just past the offset table).
    """
    if len(ws_msg) < width:
        return None
    count = int.from_bytes(ws_msg[:width], byteorder)
    if not 1 <= count <= len(ws_msg) // width - 1:
        return None
    table_end = width * (count + 1)
    offsets = [int.from_bytes(ws_msg[width * (i + 1) : width * (i + 2)], byteorder) for i in range(count)]
    if (
        offsets[0] != table_end
        or any(b < a for a, b in zip(offsets, offsets[1:]))
        or offsets[-1] > len(ws_msg)
    ):
        return None
    return [ws_msg[a:b] for a, b in zip(offsets, [*offsets[1:], len(ws_msg)])]


def read_binary_header(ws_msg: bytes) -> dict | None:
    """The Jupyter message header of a binary kernel-websocket message, in either framing.

    ``v1.kernel.websocket.jupyter.org``: an 8-byte little-endian count of offsets, then the parts
    channel, header, parent header, metadata, content, buffers. Legacy (no subprotocol): a 4-byte
    big-endian count, then the whole message as JSON, then its buffers. Work is bounded by the
    message's length; ``None`` when neither framing fits.

    >>> import json, struct
    >>> js = json.dumps({"header": {"msg_type": "comm_msg"}}).encode()
    >>> legacy = struct.pack("!II", 2, 12) + struct.pack("!I", 12 + len(js)) + js + b"buf"
    >>> read_binary_header(legacy)
    {'msg_type': 'comm_msg'}
    >>> read_binary_header(b"\\xff" * 64) is None
    True
    """
    import json

    if not isinstance(ws_msg, (bytes, bytearray, memoryview)):
        return None
    ws_msg = bytes(ws_msg)
    v1 = _parts(ws_msg, 8, "little")
    if v1 is not None and len(v1) >= 2:
        try:
            header = json.loads(v1[1].decode("utf-8"))
            if isinstance(header, dict):
                return header
        except (UnicodeDecodeError, ValueError):
            pass
    legacy = _parts(ws_msg, 4, "big")
    if legacy is not None:
        try:
            msg = json.loads(legacy[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        header = msg.get("header") if isinstance(msg, dict) else None
        return header if isinstance(header, dict) else None
    return None


def _patch_websocket_header() -> None:
    """Voila's kernel websocket handler reads binary headers with :func:`read_binary_header`."""
    import voila.tornado.kernel_websocket_handler as kwh

    kwh.read_header_from_binary_message = read_binary_header


ALLOWED_HOSTS_ENV = "CURVLAB_ALLOWED_HOSTS"
MAX_KERNELS_ENV = "CURVLAB_MAX_KERNELS"

BUSY_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{retry}">
<title>curvlab: busy</title></head>
<body style="font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;color:#333">
<h1>The dashboard is busy</h1>
<p>All {limit} places are taken right now. This page will try again in {retry} seconds;
you can also <a href="">reload it</a> yourself.</p>
</body></html>
"""


def local_hostnames() -> list[str]:
    """Host names accepted besides loopback addresses: ``localhost`` and ``CURVLAB_ALLOWED_HOSTS``."""
    extra = [h.strip().lower() for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()]
    return ["localhost", *extra]


def _patch_settings() -> None:
    import voila.app

    cls = voila.app.Voila
    if getattr(cls.init_settings, "_curvlab_patched", False):
        return
    original = cls.init_settings

    def init_settings(self):
        settings = original(self)
        settings["allow_remote_access"] = False
        settings["local_hostnames"] = local_hostnames()
        return settings

    init_settings._curvlab_patched = True
    cls.init_settings = init_settings


#: Milliseconds the kernel's websocket may stay disconnected before the page says so.
DISCONNECT_GRACE_MS = 3000

FAULT_SCRIPT = """<script>/* curvlab: show a lost kernel or server instead of a silently frozen page */
(function () {
  "use strict";
  var shown = false, timer = null, unloading = false;
  window.addEventListener("beforeunload", function () { unloading = true; });
  function show(detail) {
    if (shown || unloading || !document.body) return;
    shown = true;
    var box = document.createElement("div");
    box.className = "curvlab-connection-lost";
    box.setAttribute("role", "alertdialog");
    box.setAttribute("aria-live", "assertive");
    box.style.cssText = "position:fixed;inset:0;z-index:10000;display:flex;align-items:center;" +
      "justify-content:center;background:rgba(255,255,255,0.75);font-family:system-ui,sans-serif";
    var card = document.createElement("div");
    card.style.cssText = "max-width:34em;padding:20px 24px;background:#fff;border:2px solid #c62828;" +
      "border-radius:8px;box-shadow:0 4px 18px rgba(0,0,0,0.25);color:#222;font-size:15px";
    var title = document.createElement("div");
    title.style.cssText = "font-weight:bold;color:#c62828;font-size:17px;margin-bottom:8px";
    title.textContent = "The connection to the computing kernel was lost";
    var text = document.createElement("p");
    text.className = "curvlab-connection-lost-detail";
    text.textContent = detail + " The controls on this page no longer compute anything. " +
      "Reload the page to start a fresh session.";
    var button = document.createElement("button");
    button.className = "curvlab-reload";
    button.type = "button";
    button.textContent = "Reload";
    button.style.cssText = "font-size:15px;padding:6px 18px;cursor:pointer";
    button.onclick = function () { window.location.reload(); };
    card.appendChild(title); card.appendChild(text); card.appendChild(button);
    box.appendChild(card);
    document.body.appendChild(box);
    document.body.classList.add("curvlab-kernel-lost");
    button.focus();
  }
  function watch(kernel) {
    kernel.statusChanged.connect(function (_, status) {
      if (status === "restarting" || status === "autorestarting") {
        show("The computing kernel stopped (it was restarted without this page's state).");
      } else if (status === "dead") {
        show("The computing kernel stopped.");
      }
    });
    kernel.connectionStatusChanged.connect(function (_, status) {
      if (status === "connected") {
        if (timer !== null) { clearTimeout(timer); timer = null; }
      } else if (timer === null) {
        timer = setTimeout(function () {
          show("The dashboard server cannot be reached (it may have stopped or restarted).");
        }, __GRACE__);
      }
    });
  }
  var tries = 0;
  (function poll() {
    var app = window.jupyterapp;
    if (app && app.widgetManagerPromise) {
      app.widgetManagerPromise.promise.then(function (manager) {
        if (manager && manager.kernel) watch(manager.kernel);
      });
      return;
    }
    if (++tries < 2400) setTimeout(poll, 250);
  })();
})();
</script>""".replace("__GRACE__", str(DISCONNECT_GRACE_MS))


def _inject_fault_script(handler) -> None:
    """Make ``handler.write`` add :data:`FAULT_SCRIPT` before the page's first ``</head>``."""
    original_write = handler.write
    state = {"done": False}

    def write(chunk):
        if not state["done"] and isinstance(chunk, str) and "</head>" in chunk:
            state["done"] = True
            chunk = chunk.replace("</head>", FAULT_SCRIPT + "</head>", 1)
        return original_write(chunk)

    handler.write = write


def _patch_page_handler() -> None:
    from voila.tornado.handler import TornadoVoilaHandler

    if getattr(TornadoVoilaHandler, "_curvlab_patched", False):
        return
    original_get = TornadoVoilaHandler.get
    limit = int(os.environ.get(MAX_KERNELS_ENV, "0") or 0)

    async def get(self, path=None):
        self.xsrf_token  # noqa: B018 - sets the _xsrf cookie that the page's shutdown beacon sends back
        _inject_fault_script(self)
        if limit > 0:
            manager = self.kernel_manager
            pool = getattr(manager, "get_pool_size", lambda _: 0)
            try:
                pooled = int(pool(getattr(self, "notebook_path", None) or path or ""))
            except Exception:  # noqa: BLE001 - a Voila without pools
                pooled = 0
            if len(manager.list_kernel_ids()) - pooled >= limit:
                self.set_status(503)
                self.set_header("Retry-After", "10")
                self.set_header("Cache-Control", "no-store")
                self.finish(BUSY_PAGE.format(limit=limit, retry=10))
                return
        return await original_get(self, path)

    get.__wrapped__ = original_get.__wrapped__ if hasattr(original_get, "__wrapped__") else original_get
    TornadoVoilaHandler.get = get
    TornadoVoilaHandler._curvlab_patched = True


def main() -> None:
    _patch_kernel_manager()
    _patch_settings()
    _patch_page_handler()
    _patch_websocket_header()
    import voila.app

    voila.app.main()


if __name__ == "__main__":
    main()

"""Run Voila with curvlab's server fixes: ``python -m curvlab.app._voila_server ARGS``.

1. **Pooled kernels at hand-out** (below).
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


def _patch_pool_handout() -> None:
    import voila.app
    from jupyter_server._tz import utcnow

    factory = voila.app.voila_kernel_manager_factory
    if getattr(factory, "_curvlab_patched", False):
        return

    def patched_factory(*args, **kwargs):
        base = factory(*args, **kwargs)
        if not hasattr(base, "get_rendered_notebook"):  # preheating off: nothing to fix
            return base

        class CurvlabVoilaKernelManager(base):
            async def get_rendered_notebook(self, notebook_name, *a, **kw):
                result = await super().get_rendered_notebook(notebook_name, *a, **kw)
                kernel_id = result[2]
                if kernel_id in self:
                    self.get_kernel(kernel_id).last_activity = utcnow()
                return result

        return CurvlabVoilaKernelManager

    patched_factory._curvlab_patched = True
    voila.app.voila_kernel_manager_factory = patched_factory


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


def _patch_page_handler() -> None:
    from voila.tornado.handler import TornadoVoilaHandler

    if getattr(TornadoVoilaHandler, "_curvlab_patched", False):
        return
    original_get = TornadoVoilaHandler.get
    limit = int(os.environ.get(MAX_KERNELS_ENV, "0") or 0)

    async def get(self, path=None):
        self.xsrf_token  # noqa: B018 - sets the _xsrf cookie that the page's shutdown beacon sends back
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
    _patch_pool_handout()
    _patch_settings()
    _patch_page_handler()
    import voila.app

    voila.app.main()


if __name__ == "__main__":
    main()

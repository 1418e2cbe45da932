"""Run Voila with one fix to its pre-heated kernel pool: ``python -m curvlab.app._voila_server ARGS``.

Voila keeps pooled kernels safe from the idle culler only while they sit in the pool. A kernel
that waited in the pool longer than ``cull_idle_timeout`` is handed to a new page still marked
idle since its start, and the culler may shut it down in the seconds before the page's websocket
connects: the page then never renders (seen in the browser tests, "Culling 'idle' kernel ... with
0 connections" right after "Using pre-heated kernel"). Handing a kernel to a page counts as
activity here, so it gets a full ``cull_idle_timeout`` for the page to connect.
"""

from __future__ import annotations


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


def main() -> None:
    _patch_pool_handout()
    import voila.app

    voila.app.main()


if __name__ == "__main__":
    main()

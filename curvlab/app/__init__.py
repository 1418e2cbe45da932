"""The Voila dashboard, the ``curvlab`` command and the Voila server (needs the ``apps`` extra).

:mod:`curvlab.app.dashboard` builds the tabbed dashboard and :mod:`curvlab.app.cli` is the
console script.
"""

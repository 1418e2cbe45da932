"""``curvlab diagnose SCRIPT[:object]``: load the problem a user's script defines and diagnose it."""

from __future__ import annotations

import os
import runpy

from curvlab._diagnostics import CurvatureReport, diagnose
from curvlab.viz import save_report

_SETUP_NAMES = ("make_problem", "get_problem", "setup")
_OPTIONAL_NAMES = ("batch_size", "model_fn", "output_loss_fn", "per_example_loss_fn", "curvature")


def _load_spec(path_spec: str) -> tuple[dict, str]:
    path, _, obj = str(path_spec).partition(":")
    if len(path) == 1 and obj and (obj.startswith("\\") or obj.startswith("/")):  # Windows drive letter
        path, _, obj = path_spec.rpartition(":") if path_spec.count(":") > 1 else (path_spec, "", "")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"script {path!r} not found")
    namespace = runpy.run_path(path, run_name="__curvlab_diagnose__")
    if obj:
        if obj not in namespace:
            raise ValueError(f"{path} defines no name {obj!r}")
        target = namespace[obj]
        if callable(target):
            target = target()
        if isinstance(target, dict):
            return dict(target), path
        if isinstance(target, (tuple, list)) and len(target) == 3:
            return dict(zip(("loss_fn", "params", "data"), target, strict=True)), path
        raise TypeError(
            f"{path}:{obj} must be (or return) a dict with keys loss_fn, params, data or a tuple "
            f"(loss_fn, params, data); got {type(target).__name__}"
        )
    if all(name in namespace for name in ("loss_fn", "params", "data")):
        return {
            k: namespace[k] for k in ("loss_fn", "params", "data") + _OPTIONAL_NAMES if k in namespace
        }, path
    for name in _SETUP_NAMES:
        if callable(namespace.get(name)):
            return _load_spec(f"{path}:{name}")
    missing = [n for n in ("loss_fn", "params", "data") if n not in namespace]
    raise ValueError(
        f"{path} defines no {', '.join(missing)}. Define loss_fn(params, batch), params and data at top "
        f"level, or a function returning them (named one of {', '.join(_SETUP_NAMES)}, or any name given "
        "as SCRIPT:function)"
    )


def diagnose_script(path_spec: str, out: str | os.PathLike | None = None, **options) -> CurvatureReport:
    """Run :func:`diagnose` on the problem a Python script defines; print a summary; write the report.

    Parameters
    ----------
    path_spec : str
        ``"script.py"`` or ``"script.py:name"``. The script is run with
        ``runpy`` (its ``if __name__ == "__main__"`` block does not run). Without
        ``:name`` it must define ``loss_fn``, ``params`` and ``data`` (and may
        define ``batch_size``, ``model_fn``, ``output_loss_fn``,
        ``per_example_loss_fn``, ``curvature``), or a function ``make_problem``
        returning them. ``name`` may be a dict, a ``(loss_fn, params, data)``
        tuple, or a function returning either.
    out : path, optional
        ``.html`` (self-contained page) or ``.json``.
    **options
        Passed to :func:`diagnose`; they override the script's values.
    """
    if out is not None:
        suffix = os.path.splitext(os.fspath(out))[1].lower()
        if suffix not in (".html", ".htm", ".json"):
            raise ValueError(f"out must end in .html or .json, got {os.fspath(out)!r}")
    spec, path = _load_spec(path_spec)
    missing = [n for n in ("loss_fn", "params", "data") if n not in spec]
    if missing:
        raise ValueError(f"{path_spec} provides no {', '.join(missing)}")
    unknown = set(spec) - {"loss_fn", "params", "data", *_OPTIONAL_NAMES}
    kwargs = {k: spec[k] for k in _OPTIONAL_NAMES if k in spec}
    for k in sorted(unknown):
        kwargs[k] = spec[k]
    kwargs.update({k: v for k, v in options.items() if v is not None})
    report = diagnose(spec["loss_fn"], spec["params"], spec["data"], **kwargs)
    print(report.summary())
    if out is not None:
        save_report(report, out)
        print(f"report written to {os.fspath(out)}")
    return report

"""The ``curvlab`` console script.

Sub-commands
------------
``curvlab dashboard [--port 8866] [--open] [--no-preheat]``
    Serve the Voila dashboard (the explorers in tabs) on 127.0.0.1 and
    print its URL once it answers. Idle kernels of closed pages are culled.
``curvlab notebooks`` (alias ``curvlab lab``)
    Open JupyterLab on the teaching notebooks.
``curvlab diagnose SCRIPT[:object] --out report.html``
    Curvature report of a model defined in a script (see
    :func:`curvlab.app._script.diagnose_script`).

Importing this module has no side effects; everything heavy is imported
inside the command that needs it.

Examples
--------
>>> args = build_parser().parse_args(["dashboard", "--port", "9000", "--no-preheat"])
>>> (args.command, args.port, args.preheat, args.open)
('dashboard', 9000, False, False)
>>> voila_command("nb.ipynb", port=9000, preheat=False)[-3:]  # doctest: +NORMALIZE_WHITESPACE
['--preheat_kernel=False', '--MappingKernelManager.cull_idle_timeout=60',
 '--MappingKernelManager.cull_interval=10']
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "main",
    "build_parser",
    "diagnose_options",
    "voila_command",
    "lab_command",
    "find_notebooks_dir",
    "default_max_kernels",
    "wait_for_http",
]

DEFAULT_PORT = 8866
#: A kernel with no connected page and no activity for this long is shut down (kernels with an
#: open page are never culled: ``cull_connected`` stays off). Closed pages normally free their
#: kernel at once through the shutdown beacon; this reclaims kernels whose page never connected.
CULL_IDLE_TIMEOUT = 60
CULL_INTERVAL = 10
#: JupyterLab extensions never loaded in a dashboard page (they need JupyterLab's shell).
VOILA_EXTENSION_DENYLIST = ("@jupyter-notebook/lab-extension",)
#: Memory assumed per dashboard kernel when fitting ``--max-kernels`` to the machine (measured
#: 260-960 MiB RSS per kernel, about 490 MiB typical).
KERNEL_MEMORY_BYTES = 600 * 2**20


def default_max_kernels(total_memory: int | None = None) -> int:
    """Page kernels allowed at once: half the machine's memory at :data:`KERNEL_MEMORY_BYTES` each.

    Between 2 and 64; 16 when the memory size cannot be read.
    """
    if total_memory is None:
        try:
            total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 16
    return max(2, min(64, int(0.5 * total_memory // KERNEL_MEMORY_BYTES)))


# ------------------------------------------------------------------------- helpers


def _repo_root() -> Path | None:
    """The repository checkout curvlab runs from (editable install), or ``None``."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "curvlab").is_dir() else None


def find_notebooks_dir() -> Path | None:
    """``notebooks/`` of the repository checkout, or ``None`` when curvlab is installed from a wheel."""
    root = _repo_root()
    if root is not None and (root / "notebooks").is_dir():
        return root / "notebooks"
    return None


def voila_command(
    notebook: str | os.PathLike,
    *,
    port: int = DEFAULT_PORT,
    preheat: bool = True,
    pool_size: int = 1,
    cull_idle_timeout: int = CULL_IDLE_TIMEOUT,
    cull_interval: int = CULL_INTERVAL,
    python: str | None = None,
) -> list[str]:
    """The ``voila`` command line that serves ``notebook`` on ``127.0.0.1:port``.

    ``--Voila.ip`` (``--ip`` is silently ignored by Voila), ``--Voila.port_retries=0``
    (fail on a busy port instead of moving to the next one), no browser, code hidden,
    a pool of ``pool_size`` pre-executed kernels when ``preheat``, and culling of
    kernels that have no page and no activity for ``cull_idle_timeout`` seconds.
    """
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
    if cull_idle_timeout <= 0 or cull_interval <= 0:
        raise ValueError("cull_idle_timeout and cull_interval must be positive")
    cmd = [
        python or sys.executable,
        "-m",
        "curvlab.app._voila_server",  # Voila, with pooled kernels protected from the culler at hand-out
        str(notebook),
        "--no-browser",
        "--Voila.ip=127.0.0.1",
        f"--Voila.port={port}",
        "--Voila.port_retries=0",
        "--strip_sources=True",
        "--theme=light",
        # JupyterLab-UI extensions that break a Voila page if installed beside it (Notebook 7's
        # lab extension fails to load there: "The getter for the shared module is not a function")
        f"--VoilaConfiguration.extension_denylist={list(VOILA_EXTENSION_DENYLIST)!r}",
    ]
    if preheat:
        cmd += ["--preheat_kernel=True", f"--pool_size={pool_size}"]
    else:
        cmd += ["--preheat_kernel=False"]
    cmd += [
        f"--MappingKernelManager.cull_idle_timeout={cull_idle_timeout}",
        f"--MappingKernelManager.cull_interval={cull_interval}",
    ]
    return cmd


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def lab_command(
    notebook_dir: str | os.PathLike,
    *,
    port: int | None = None,
    python: str | None = None,
    extra: Sequence[str] = (),
    as_root: bool | None = None,
):
    """The ``jupyter lab`` command line that opens JupyterLab on ``notebook_dir``.

    ``--allow-root`` is added when the effective user is root (containers, Binder-like
    images), since JupyterLab refuses to start as root without it; ``extra`` are passed
    through to JupyterLab unchanged (``curvlab notebooks -- --no-browser``).
    """
    cmd = [python or sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebook_dir}"]
    if port is not None:
        cmd.append(f"--ServerApp.port={port}")
    if (_running_as_root() if as_root is None else as_root) and "--allow-root" not in extra:
        cmd.append("--allow-root")
    cmd.extend(extra)
    return cmd


def wait_for_http(url: str, *, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``url`` until it answers 200 (True), ``timeout`` passes or ``proc`` exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local URL
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    return False


def _child_preexec():  # pragma: no cover - runs in the child
    """Die with the parent (Linux): a killed ``curvlab`` never leaves Voila running."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_forwarding_signals(cmd: list[str], *, ready_url: str | None, on_ready, env=None) -> int:
    """Run ``cmd``; forward SIGINT/SIGTERM to it as SIGTERM; call ``on_ready`` once ``ready_url`` answers."""
    preexec = _child_preexec if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(cmd, env=env, preexec_fn=preexec)  # noqa: PLW1509
    stopping = False

    def forward(signum, frame):
        nonlocal stopping
        stopping = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready_url is not None and wait_for_http(ready_url, timeout=120, proc=proc) and not stopping:
            on_ready()
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        return 0 if stopping else rc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------ commands


def _serve_plotly_bundle(workdir: Path) -> tuple[list[str], dict]:
    """Copy plotly's widget bundle next to the notebook; Voila args + env that serve and use it."""
    from curvlab.app.dashboard import PLOTLY_BUNDLE_ENV, plotly_bundle_path

    try:
        src = plotly_bundle_path()
    except ImportError:
        return [], {}
    if not src.is_file():
        return [], {}
    (workdir / "_curvlab").mkdir(exist_ok=True)
    shutil.copyfile(src, workdir / "_curvlab" / "plotly-widgetbundle.js")
    args = ["--VoilaConfiguration.file_allowlist=['_curvlab/plotly-widgetbundle[.]js']"]
    return args, {PLOTLY_BUNDLE_ENV: "voila/files/_curvlab/plotly-widgetbundle.js"}


def _cmd_dashboard(args) -> int:
    from curvlab.app.dashboard import write_notebook

    workdir = Path(tempfile.mkdtemp(prefix="curvlab-dashboard-"))
    try:
        notebook = Path(args.notebook) if args.notebook else write_notebook(workdir / "dashboard.ipynb")
        if not notebook.is_file():
            print(f"curvlab dashboard: notebook {notebook} not found", file=sys.stderr)
            return 2
        cmd = voila_command(
            notebook,
            port=args.port,
            preheat=args.preheat,
            pool_size=args.pool_size,
            cull_idle_timeout=args.cull_idle_timeout,
            cull_interval=args.cull_interval,
        )
        env = dict(os.environ)
        from curvlab.app._voila_server import ALLOWED_HOSTS_ENV, MAX_KERNELS_ENV

        env[MAX_KERNELS_ENV] = str(args.max_kernels)
        env[ALLOWED_HOSTS_ENV] = ",".join(args.allow_host or ())
        if not args.notebook:  # the bundle must sit under the notebook's directory
            extra, extra_env = _serve_plotly_bundle(workdir)
            cmd += extra
            env.update(extra_env)
        url = f"http://127.0.0.1:{args.port}/"

        def ready():
            print(f"curvlab dashboard: {url}", flush=True)
            if args.open:
                import webbrowser

                webbrowser.open(url)

        print(f"Starting the curvlab dashboard on {url} (Ctrl-C to stop) ...", flush=True)
        rc = _run_forwarding_signals(cmd, ready_url=f"{url}voila/static/voila.js", on_ready=ready, env=env)
        if rc:
            print(
                f"curvlab dashboard: Voila exited with status {rc} (is port {args.port} free?)",
                file=sys.stderr,
            )
        return rc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _cmd_notebooks(args) -> int:
    nb_dir = Path(args.dir) if args.dir else find_notebooks_dir()
    if nb_dir is None or not nb_dir.is_dir():
        print(
            "curvlab notebooks: no notebooks/ directory found (run it from a curvlab checkout, "
            "or pass --dir PATH)",
            file=sys.stderr,
        )
        return 2
    extra = list(args.jupyter_args or ())
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = lab_command(nb_dir, port=args.port, extra=extra)
    return _run_forwarding_signals(cmd, ready_url=None, on_ready=None)


def diagnose_options(args) -> dict:
    """Keyword options for ``diagnose_script`` from parsed ``diagnose`` arguments (unset ones omitted,
    so that the script's own values apply).

    Examples
    --------
    >>> diagnose_options(build_parser().parse_args(["diagnose", "m.py", "--out", "r.html", "-k", "3"]))
    {'k': 3}
    """
    options = {}
    for name in ("k", "curvature", "num_probes", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.seed is not None:
        import jax

        options["key"] = jax.random.key(args.seed)
    return options


def _cmd_diagnose(args) -> int:
    try:
        from curvlab.app._script import diagnose_script
    except ImportError as err:
        print(f"curvlab diagnose: {err}", file=sys.stderr)
        return 2
    try:
        # diagnose_script prints its summary table and where it wrote the report
        diagnose_script(args.script, args.out, **diagnose_options(args))
    except (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError, SyntaxError) as err:
        print(f"curvlab diagnose: {err}", file=sys.stderr)
        return 1
    return 0


# -------------------------------------------------------------------------- parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not an integer") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {port}: must be in 1..65535")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``curvlab`` argument parser (sub-commands ``dashboard``, ``notebooks``/``lab``, ``diagnose``)."""
    parser = argparse.ArgumentParser(
        prog="curvlab",
        description="curvlab: see and use the curvature of differentiable functions (JAX).",
        epilog="Run 'curvlab COMMAND --help' for the options of a command.",
    )
    from curvlab import __version__

    parser.add_argument("--version", action="version", version=f"curvlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "dashboard",
        help="serve the interactive Voila dashboard on 127.0.0.1",
        description="Serve the curvlab Voila dashboard (spectrum, curvature, CG, finite differences, "
        "Hessian-free) on 127.0.0.1 and print its URL. Each browser page gets its own kernel; kernels "
        "of closed pages are shut down. Stop with Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    p.add_argument("--open", action="store_true", help="open the dashboard in a web browser once it is up")
    p.add_argument(
        "--no-preheat",
        dest="preheat",
        action="store_false",
        help="do not keep a pre-executed kernel ready (saves one idle kernel's memory; slower first page)",
    )
    p.add_argument(
        "--pool-size",
        type=_positive_int,
        default=1,
        help="number of pre-executed kernels kept ready (default 1)",
    )
    p.add_argument(
        "--cull-idle-timeout",
        type=_positive_int,
        default=CULL_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="shut down a kernel whose page is closed after this many idle seconds "
        f"(a safety net for lost shutdown requests; default {CULL_IDLE_TIMEOUT})",
    )
    p.add_argument(
        "--cull-interval",
        type=_positive_int,
        default=CULL_INTERVAL,
        metavar="SECONDS",
        help=f"how often to look for such kernels (default {CULL_INTERVAL})",
    )
    p.add_argument(
        "--max-kernels",
        type=_positive_int,
        default=default_max_kernels(),
        metavar="N",
        help="most pages served at once; later visitors see a 'busy, retry in a moment' page "
        f"(default {default_max_kernels()}: fitted to this machine's memory)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests whose Host header is NAME (a deployment's domain); by default "
        "only loopback addresses and localhost are accepted. Repeatable",
    )
    p.add_argument(
        "--notebook",
        default=None,
        metavar="PATH",
        help="serve this notebook instead of the built-in dashboard (same server settings)",
    )
    p.set_defaults(func=_cmd_dashboard)

    for name in ("notebooks", "lab"):
        p = sub.add_parser(
            name,
            help="open JupyterLab on the teaching notebooks"
            + (" (alias of 'notebooks')" if name == "lab" else ""),
            description="Open JupyterLab on the repository's notebooks/ directory. Options after '--' "
            "go to JupyterLab unchanged (e.g. curvlab notebooks -- --no-browser). As root, --allow-root "
            "is passed for you.",
        )
        p.add_argument("--dir", default=None, help="notebook directory (default: the checkout's notebooks/)")
        p.add_argument("--port", type=_port, default=None, help="port for JupyterLab (default: Jupyter's)")
        p.add_argument(
            "jupyter_args",
            nargs=argparse.REMAINDER,
            metavar="-- JUPYTERLAB_OPTION",
            help="options passed to JupyterLab unchanged, after '--' (e.g. --allow-root, --no-browser)",
        )
        p.set_defaults(func=_cmd_notebooks)

    p = sub.add_parser(
        "diagnose",
        help="write a curvature report (HTML) for a model defined in a script",
        description="Load SCRIPT (a Python file; ':object' names the object to diagnose in it), compute "
        "its curvature report (top/bottom Hessian eigenvalues, trace, spectral density) and write it as "
        "HTML. See curvlab.app._script.diagnose_script.",
    )
    p.add_argument("script", metavar="SCRIPT[:object]", help="path to a Python script, optionally ':object'")
    p.add_argument("--out", required=True, help="path of the HTML report to write")
    p.add_argument(
        "-k", "--k", type=_positive_int, default=None, help="number of extreme eigenvalues (default: 5)"
    )
    p.add_argument(
        "--curvature",
        choices=("hessian", "ggn", "fisher", "kfac", "ekfac", "fisher_mc"),
        default=None,
        help="curvature matrix (default: the script's, else hessian)",
    )
    p.add_argument(
        "--num-probes", type=_positive_int, default=None, help="probes of the stochastic estimates"
    )
    p.add_argument("--batch-size", type=_positive_int, default=None, help="examples per curvature batch")
    p.add_argument("--seed", type=int, default=None, help="random seed of the stochastic estimates")
    p.set_defaults(func=_cmd_diagnose)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curvlab`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

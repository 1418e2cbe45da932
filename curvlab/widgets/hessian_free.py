"""HessianFreeExplorer: train a network with Hessian-free optimization, live, beside Adam and SGD.

Press **Start**: a background thread runs :func:`curvlab.hessian_free`
(Martens 2010) on a digits model (an MLP classifier or a deep autoencoder) and
the optimizer's ``callback`` redraws the figure after every iteration: the
loss per iteration and against wall time, the damping :math:`\\lambda` and the
reduction ratio :math:`\\rho` that drives it, and the CG iterations of every
step. Then Adam and SGD (optax) train the same model from the same start for
the same wall time. **Stop** is honored within one iteration; the kernel stays
responsive because the training runs in a thread.

The controls only take effect at the next Start (the figure does not retrain
on every slider move). :meth:`HessianFreeExplorer.compute` runs the same
training synchronously and returns the histories, for tests and scripts.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import ipywidgets as widgets
import jax
import numpy as np
import plotly.graph_objects as go

from curvlab import problems, viz
from curvlab._hessian_free import HFConfig, hessian_free
from curvlab.widgets._base import Explorer, batched, css_class
from curvlab.widgets._worker import BackgroundWorker

__all__ = ["HessianFreeExplorer", "HFExplorerResult", "MODELS", "BASELINE_LEARNING_RATES"]

MODELS = {"mlp": "MLP classifier on digits", "autoencoder": "deep autoencoder on digits"}
CURVATURES = {"ggn": "Gauss-Newton (GGN)", "hessian": "Hessian"}
PRECONDITIONERS = {"none": "none", "martens": "Martens (Fisher diagonal)"}
#: (Adam, SGD) learning rates per model, tuned once by hand on these problems.
BASELINE_LEARNING_RATES = {"mlp": (1e-2, 0.5), "autoencoder": (3e-3, 0.05)}
_MAX_BASELINE_STEPS = 200_000


class HFExplorerResult(NamedTuple):
    """A finished (or stopped) training run.

    Attributes
    ----------
    model, curvature, preconditioner : str
    history : dict of numpy arrays
        :attr:`curvlab.OptimizeResult.history` (entry 0 the start; ``loss``,
        ``time``, ``damping``, ``rho``, ``cg_iterations``, ``grad_norm``, ``num_hvps``, ...).
    baselines : dict
        ``{"Adam": (times, losses), "SGD": (times, losses)}`` over the same wall time as HF
        (empty when baselines are off or the run was stopped).
    num_iterations : int
    status, message : str
        :class:`curvlab.Status` name and the result's message.
    stopped : bool
        True when the Stop button (or ``stop_event``) ended the run.
    """

    model: str
    curvature: str
    preconditioner: str
    history: dict
    baselines: dict
    num_iterations: int
    status: str
    message: str
    stopped: bool


class HessianFreeExplorer(Explorer):
    """Live Hessian-free training with damping, ρ and CG diagnostics, against Adam and SGD.

    Parameters
    ----------
    num_examples : int
        Training examples (full batch) for both models.

    Controls (attributes)
    ---------------------
    model, damping, cg_maxiter, preconditioner, curvature, maxiter, baselines
    (settings, read at Start); start_button (ToggleButton Start/Stop),
    progress (IntProgress of HF iterations).
    """

    def __init__(self, *, num_examples: int = 512):
        super().__init__()
        self._num_examples = int(num_examples)
        self._problems: dict[str, problems.Problem] = {}
        self._worker = BackgroundWorker("curvlab-hessian-free")
        self._stop = threading.Event()
        self._live: dict[str, list] = {}
        self._resetting = False
        self._draw_lock = threading.RLock()  # the thread and the kernel both redraw

        self.model = widgets.Dropdown(
            options=[(v, k) for k, v in MODELS.items()], value="mlp", description="model"
        )
        self.damping = widgets.FloatLogSlider(
            value=1.0, base=10, min=-4, max=2, step=0.25, description="initial λ", readout_format=".2g"
        )
        self.cg_maxiter = widgets.IntSlider(value=50, min=5, max=250, step=5, description="CG max iter")
        self.preconditioner = widgets.Dropdown(
            options=[(v, k) for k, v in PRECONDITIONERS.items()], value="none", description="preconditioner"
        )
        self.curvature = widgets.Dropdown(
            options=[(v, k) for k, v in CURVATURES.items()], value="ggn", description="curvature"
        )
        self.maxiter = widgets.IntSlider(value=30, min=1, max=200, step=1, description="iterations")
        self.baselines = widgets.Checkbox(value=True, description="Adam/SGD baselines")
        self.start_button = widgets.ToggleButton(
            value=False, description="Start", icon="play", button_style="success"
        )
        self.progress = widgets.IntProgress(value=0, min=0, max=self.maxiter.value, description="HF iter")
        self.start_button.add_class(f"curvlab-control-{css_class('start_button')}")
        self.progress.add_class(f"curvlab-control-{css_class('progress')}")
        self.start_button.observe(self._on_toggle, names="value")

        controls = {
            "model": self.model,
            "damping": self.damping,
            "cg_maxiter": self.cg_maxiter,
            "preconditioner": self.preconditioner,
            "curvature": self.curvature,
            "maxiter": self.maxiter,
            "baselines": self.baselines,
        }
        row = widgets.HBox(
            [*controls.values(), self.start_button, self.progress],
            layout=widgets.Layout(flex_flow="row wrap"),
        )
        row.add_class("curvlab-controls")
        figure = go.FigureWidget()
        self._setup(controls, figure, layout_children=[row, self.error, self.readout, figure])

    # -- no live recompute: settings apply at the next Start ------------------------------
    def refresh(self):
        """Redraw the last run (or the empty figure); training starts only with Start or :meth:`compute`."""
        self.num_refreshes += 1
        try:
            self._render_batched(self.last_result)
        except Exception as err:  # noqa: BLE001 - shown to the user, never raised
            self.last_error = err
            self.show_error(err)
            return None
        self.last_error = None
        return self.last_result

    # -- problems -----------------------------------------------------------------------
    def _problem(self, model: str) -> problems.Problem:
        if model not in self._problems:
            if model == "mlp":
                self._problems[model] = problems.mlp(num_examples=self._num_examples)
            else:
                self._problems[model] = problems.autoencoder(num_examples=self._num_examples)
        return self._problems[model]

    # -- training ----------------------------------------------------------------------------
    def compute(
        self,
        *,
        model: str,
        damping: float,
        cg_maxiter: int,
        preconditioner: str,
        curvature: str,
        maxiter: int,
        baselines: bool = True,
    ) -> HFExplorerResult:
        """Train synchronously with these settings and return the histories (HF, then the baselines)."""
        return self._train(
            dict(
                model=model,
                damping=damping,
                cg_maxiter=cg_maxiter,
                preconditioner=preconditioner,
                curvature=curvature,
                maxiter=maxiter,
                baselines=baselines,
            )
        )

    def _train(
        self,
        settings: dict,
        *,
        on_iteration: Callable | None = None,
        stop: threading.Event | None = None,
    ) -> HFExplorerResult:
        model = settings["model"]
        if model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
        if settings["curvature"] not in CURVATURES:
            raise ValueError(f"curvature must be one of {list(CURVATURES)}, got {settings['curvature']!r}")
        if settings["preconditioner"] not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner must be one of {list(PRECONDITIONERS)}, got {settings['preconditioner']!r}"
            )
        damping = float(settings["damping"])
        if not (math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0, got {settings['damping']}")
        maxiter, cg_maxiter = int(settings["maxiter"]), int(settings["cg_maxiter"])
        if maxiter < 1:
            raise ValueError(f"maxiter must be >= 1, got {maxiter}")
        if cg_maxiter < 1:
            raise ValueError(f"cg_maxiter must be >= 1, got {cg_maxiter}")
        prob = self._problem(model)
        kwargs = dict(
            curvature=settings["curvature"],
            damping=damping,
            cg_maxiter=cg_maxiter,
            preconditioner=None if settings["preconditioner"] == "none" else "martens",
        )
        # compile first (one iteration), so that the timed run and the baselines compare compute, not XLA
        hessian_free(prob, config=HFConfig(maxiter=1, **kwargs))

        def callback(info):
            if on_iteration is not None:
                on_iteration(info)
            return stop is not None and stop.is_set()

        res = hessian_free(prob, config=HFConfig(maxiter=maxiter, **kwargs), callback=callback)
        stopped = stop is not None and stop.is_set()
        base = {}
        if settings.get("baselines", True) and not stopped:
            budget = float(res.history["time"][-1])
            adam_lr, sgd_lr = BASELINE_LEARNING_RATES[model]
            import optax

            for name, opt in (("Adam", optax.adam(adam_lr)), ("SGD", optax.sgd(sgd_lr))):
                base[name] = _run_baseline(prob, opt, budget, stop)
                if stop is not None and stop.is_set():
                    stopped = True
                    break
        return HFExplorerResult(
            model=model,
            curvature=settings["curvature"],
            preconditioner=settings["preconditioner"],
            history=res.history,
            baselines=base,
            num_iterations=res.num_iterations,
            status=res.status.name,
            message=res.message,
            stopped=stopped,
        )

    # -- start / stop -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while training runs in the background."""
        return self._worker.busy

    def start(self) -> None:
        """Start training in a background thread with the current settings (the Start button)."""
        if self.running:
            return
        settings = self.values()
        self._stop.clear()
        self._live = {k: [] for k in ("iteration", "loss", "time", "damping", "rho", "cg_iterations")}
        self.progress.max = int(settings["maxiter"])
        self.progress.value = 0
        self.clear_error()
        self.readout.value = "compiling (first iteration) …"
        self._set_button(True)
        # the thread redraws as it goes (under the draw lock): nothing to deliver afterwards
        self._worker.submit(lambda: self._thread_main(settings), lambda result, error: None)

    def stop(self, timeout: float | None = None) -> None:
        """Ask the training to stop after the current iteration; wait up to ``timeout`` seconds."""
        self._stop.set()
        if timeout is not None:
            self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the training to finish; True when it has."""
        return self._worker.wait(timeout)

    def _on_toggle(self, change) -> None:
        if self._resetting:
            return
        if change["new"]:
            self.start()
        else:
            self.stop()

    def _set_button(self, running: bool) -> None:
        self._resetting = True
        try:
            self.start_button.value = running
            self.start_button.description = "Stop" if running else "Start"
            self.start_button.icon = "stop" if running else "play"
            self.start_button.button_style = "danger" if running else "success"
        finally:
            self._resetting = False

    def _thread_main(self, settings: dict) -> None:
        try:
            result = self._train(settings, on_iteration=self._on_iteration, stop=self._stop)
            self.last_result = result
            self.last_error = None
            self._render_batched(result)
        except Exception as err:  # noqa: BLE001 - shown to the user, never raised in the thread
            self.last_error = err
            self.show_error(err)
        finally:
            self._set_button(False)

    def _on_iteration(self, info) -> None:
        for key, values in self._live.items():
            values.append(float(getattr(info, key)))
        self.progress.value = min(int(info.iteration), self.progress.max)
        self.readout.value = (
            f"iteration {info.iteration}: loss {info.loss:.5g}, λ = {info.damping:.3g}, ρ = {info.rho:.3g}, "
            f"{info.cg_iterations} CG iterations, {info.num_hvps} curvature products, {info.time:.2f} s"
        )
        try:
            with batched(self.figure):  # not batch_update: its placeholders corrupt later views
                self._draw(self._live, {})
        except Exception:  # noqa: BLE001, S110 - a failed redraw must not stop the training
            pass

    # -- render ----------------------------------------------------------------------------------
    def _render(self, result: HFExplorerResult | None) -> None:
        if result is None:
            self._draw({}, {}, title="Hessian-free training: choose settings and press Start")
            self.readout.value = "Press <b>Start</b> to train (the controls apply at the next Start)."
            return
        title = (
            f"HF on {MODELS[result.model]}: {CURVATURES[result.curvature]}, "
            f"preconditioner: {result.preconditioner}"
        )
        self._draw(result.history, result.baselines, title=title)
        h = result.history
        hf = (
            f"loss {h['loss'][0]:.5g} → <b>{h['loss'][-1]:.5g}</b> in {result.num_iterations} iterations, "
            f"{h['time'][-1]:.2f} s, {int(h['num_hvps'][-1])} curvature products"
        )
        rows = [("HF", hf)]
        for name, (_, losses) in result.baselines.items():
            rows.append((name, f"loss → <b>{losses[-1]:.5g}</b> in {len(losses) - 1} steps (same wall time)"))
        rows.append(("status", ("stopped: " if result.stopped else "") + result.message))
        body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
        self.readout.value = f"<table class='curvlab-readout'>{body}</table>"

    def _draw(self, history: dict, baselines: dict, *, title: str | None = None) -> None:
        fig = self.figure
        data = viz.hf_data(history, baselines)
        with self._draw_lock:
            if [t.name for t in fig.data] != list(data):
                viz.update_figure(fig, viz.hf_training_figure(history, baselines, title=title))
            else:
                for trace, props in zip(fig.data, data.values(), strict=True):
                    trace.update(props)
                if title is not None:
                    fig.layout.title.text = title


def _run_baseline(prob: problems.Problem, opt, budget: float, stop: threading.Event | None):
    """Full-batch first-order training for ``budget`` seconds: ``(times, losses)`` from the start."""
    import optax

    loss = prob.loss
    batch = prob.batch

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    params, state = prob.x0, opt.init(prob.x0)
    jax.block_until_ready(step(params, state))  # compile outside the timed loop
    times, losses = [], []
    t0 = time.perf_counter()
    for _ in range(_MAX_BASELINE_STEPS):
        elapsed = time.perf_counter() - t0
        new_params, new_state, value = step(params, state)
        times.append(elapsed)  # the loss of ``params``, reached at ``elapsed``
        losses.append(float(value))
        params, state = new_params, new_state
        if elapsed >= budget or (stop is not None and stop.is_set()):
            break
    return np.asarray(times), np.asarray(losses)

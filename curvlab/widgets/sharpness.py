"""SharpnessExplorer: progressive sharpening and the edge of stability, live.

Press **Start**: a background thread trains a small tanh MLP on scikit-learn's
digits with full-batch gradient descent :math:`\\theta_{t+1} = \\theta_t - \\eta
\\nabla L(\\theta_t)` at the learning rate :math:`\\eta` of the slider, and every
few steps measures the *sharpness* :math:`\\lambda_{\\max}(\\nabla^2 L(\\theta_t))`
with :func:`curvlab.eigsh` (``k=1``, ``which="LA"``, warm-started from the previous
top eigenvector, so a measurement costs a handful of Hessian-vector products). The
figure plots the loss beside :math:`\\lambda_{\\max}` and the line :math:`2/\\eta`.

Why :math:`2/\\eta`: on a quadratic with curvature :math:`\\lambda` a gradient step
multiplies the error along that eigenvector by :math:`1 - \\eta\\lambda`, which
exceeds 1 in magnitude once :math:`\\lambda > 2/\\eta`. Cohen et al. (2021) observed
that during full-batch training the sharpness rises (progressive sharpening) until it
reaches :math:`2/\\eta` and then hovers there (the edge of stability) while the loss
keeps falling, non-monotonically over short spans.

The training problem (:func:`digits_mse_problem`) follows their setting, which shows
the effect within seconds on a small CPU: squared error on one-hot labels and inputs
standardized per pixel. With the cross-entropy of :func:`curvlab.problems.mlp` the
digits are fit within seconds and the sharpness then *falls* (64 → 32 → 10 on 512
digits, η = 0.2: λ_max 2.6 → 0.03 in 29k steps), and on raw pixels the top eigenvalue is
dominated by the mean image (33 at the start for the same network with squared error)
and rises only slowly (to 28 in 56k steps at η = 0.05).

The controls apply at the next Start. :meth:`SharpnessExplorer.compute` runs the same
training synchronously and returns the histories (tests, notebooks).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import ipywidgets as widgets
import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go

from curvlab import problems, viz
from curvlab._curvature import hessian_operator
from curvlab._eigsh import eigsh
from curvlab._status import Status
from curvlab.viz._sharpness import EOS_TRACES, edge_of_stability_data, edge_of_stability_figure
from curvlab.widgets._training import TrainingExplorer

__all__ = ["SharpnessExplorer", "SharpnessResult", "digits_mse_problem", "MAX_EVAL_EVERY"]

#: Largest ``eval_every`` (the length of the loss buffer of one jitted segment).
MAX_EVAL_EVERY = 100
#: Matvec budget of one sharpness measurement (beyond it the status is MAX_ITERATIONS).
MAX_MATVECS = 300
#: A run counts as diverged when the loss is not finite or exceeds this multiple of the first loss.
DIVERGENCE_FACTOR = 1e4
_LIVE_POINTS = 600  # a live redraw sends at most about this many loss points (the final one sends all)


def digits_mse_problem(
    hidden: tuple[int, ...] = (32, 32),
    num_examples: int = 1797,
    *,
    standardize: bool = True,
    key: jax.Array | None = None,
    dtype=jnp.float32,
) -> problems.Problem:
    """tanh MLP on digits, squared error :math:`L = \\frac{1}{2N}\\sum_i \\lVert f(x_i) - e_{y_i}\\rVert^2`.

    The network and its start are those of :func:`curvlab.problems.mlp` (64 → hidden → 10,
    tanh); the targets are one-hot vectors :math:`e_{y_i}`, and with ``standardize`` every
    pixel is shifted and scaled to mean 0, variance 1 over the examples (constant pixels
    are only shifted). ``batch = (inputs, one_hot_targets)``.
    """
    base = problems.mlp(hidden=hidden, num_examples=num_examples, key=key, dtype=dtype)
    inputs, labels = base.batch
    X = np.asarray(inputs, dtype=np.float64)
    if standardize:
        sd = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    X = jnp.asarray(X, inputs.dtype)
    Y = jax.nn.one_hot(labels, 10, dtype=inputs.dtype)
    model_fn = base.model_fn

    def output_loss_fn(outputs, targets):
        return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))

    def loss(params, batch):
        return output_loss_fn(model_fn(params, batch[0]), batch[1])

    batch = (X, Y)
    sizes = "\\to".join(str(s) for s in (64, *hidden, 10))
    return problems.Problem(
        name="mlp-mse",
        f=lambda p: loss(p, batch),
        x0=base.x0,
        latex=f"\\text{{tanh MLP }} {sizes}\\text{{, squared error on digits}}",
        model_fn=model_fn,
        output_loss_fn=output_loss_fn,
        loss=loss,
        batch=batch,
    )


class _Segment(NamedTuple):
    params: object
    losses: jax.Array  # (MAX_EVAL_EVERY,) L(θ_t) before each step, NaN past ``count``
    end_loss: jax.Array  # L at the returned params
    sharpness: jax.Array  # λ_max at the params the segment started from
    vector: jax.Array
    residual: jax.Array
    status: jax.Array
    num_matvecs: jax.Array


@functools.partial(jax.jit, static_argnums=(0,))
def _segment(loss, params, batch, v0, eta, count, rtol) -> _Segment:
    """λ_max at ``params`` (eigsh from ``v0``), then ``count`` gradient steps: one compiled call."""
    res = eigsh(
        hessian_operator(loss, params, batch), k=1, which="LA", rtol=rtol, v0=v0, max_matvecs=MAX_MATVECS
    )
    value_and_grad = jax.value_and_grad(loss)

    def step(i, carry):
        p, buf = carry
        value, grad = value_and_grad(p, batch)
        p = jax.tree_util.tree_map(lambda a, g: a - eta * g, p, grad)
        return p, buf.at[i].set(value)

    buf = jnp.full((MAX_EVAL_EVERY,), jnp.nan, res.eigenvalues.dtype)
    params, buf = jax.lax.fori_loop(0, count, step, (params, buf))
    return _Segment(
        params,
        buf,
        loss(params, batch),
        res.eigenvalues[0],
        res.eigenvectors[:, 0],
        res.residual_norms[0],
        res.status,
        res.num_matvecs,
    )


class SharpnessResult(NamedTuple):
    """A finished (stopped or diverged) gradient-descent run with its sharpness measurements.

    Attributes
    ----------
    steps, losses : numpy arrays
        Step :math:`t = 0, 1, \\dots, T` and the full-batch loss :math:`L(\\theta_t)`.
    sharpness_steps, sharpness : numpy arrays
        Steps of the measurements (0, ``eval_every``, ..., and :math:`T`) and
        :math:`\\lambda_{\\max}` there (Rayleigh quotient of eigsh's unit Ritz vector).
    residual_norms : numpy array
        eigsh's true residuals :math:`\\lVert H y - \\theta y\\rVert` of each measurement.
    converged : numpy array of bool
        Whether each measurement met ``rtol`` (its eigsh status was ``CONVERGED``).
    eigsh_status : tuple of str
        :class:`curvlab.Status` names of the measurements.
    num_matvecs : int
        Hessian-vector products spent on all measurements.
    learning_rate, threshold : float
        :math:`\\eta` and :math:`2/\\eta`.
    num_steps : int
        Gradient steps taken (:math:`T`).
    stopped, diverged : bool
        Ended by Stop (or ``stop_event``); ended because the loss blew up.
    message : str
        One line on how the run ended.
    seconds : float
        Wall time of the run (compilation excluded).
    """

    steps: np.ndarray
    losses: np.ndarray
    sharpness_steps: np.ndarray
    sharpness: np.ndarray
    residual_norms: np.ndarray
    converged: np.ndarray
    eigsh_status: tuple
    num_matvecs: int
    learning_rate: float
    threshold: float
    num_steps: int
    stopped: bool
    diverged: bool
    message: str
    seconds: float


class SharpnessExplorer(TrainingExplorer):
    """Live full-batch gradient descent with λ_max of the Hessian against 2/η (edge of stability).

    Parameters
    ----------
    hidden, num_examples, dtype, key :
        The network and data of :func:`digits_mse_problem` (default: 64 → 32 → 32 → 10 on all
        1797 digits, float32).
    rtol : float
        Relative residual tolerance of each eigsh measurement.
    precompile : bool
        Compile the training segment in the background at construction (the readout says
        "compiling…" meanwhile; a Start waits for it).

    Controls (attributes)
    ---------------------
    learning_rate (η, log slider), num_steps (max steps), eval_every (steps between λ_max
    measurements): settings, read at Start; start_button (ToggleButton Start/Stop),
    progress (IntProgress of steps). Start/stop, the training thread and the live redraws
    are :class:`~curvlab.widgets._training.TrainingExplorer`'s.
    """

    progress_label = "steps"
    progress_control = "num_steps"

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (32, 32),
        num_examples: int = 1797,
        dtype=jnp.float32,
        key: jax.Array | None = None,
        rtol: float = 1e-3,
        precompile: bool = True,
    ):
        super().__init__("curvlab-sharpness")
        rtol = float(rtol)
        if not (math.isfinite(rtol) and rtol > 0):
            raise ValueError(f"rtol must be a finite number > 0, got {rtol}")
        self.problem = digits_mse_problem(hidden, num_examples, key=key, dtype=dtype)
        self.rtol = rtol
        self._dtype = jnp.dtype(self.problem.batch[0].dtype)
        self._v_start = jax.random.normal(jax.random.key(1), (self.problem.dim,), self._dtype)

        self.learning_rate = widgets.FloatLogSlider(
            value=10**-0.5, base=10, min=-2, max=0, step=0.05, description="η", readout_format=".3g"
        )
        self.num_steps = widgets.IntSlider(value=3000, min=100, max=20000, step=100, description="max steps")
        self.eval_every = widgets.IntSlider(
            value=10, min=1, max=MAX_EVAL_EVERY, step=1, description="λ every"
        )
        controls = {
            "learning_rate": self.learning_rate,
            "num_steps": self.num_steps,
            "eval_every": self.eval_every,
        }
        self._setup_training(controls, go.FigureWidget())
        if precompile:
            self._precompile(
                lambda: jax.block_until_ready(self._run_segment(self.problem.x0, self._v_start, 0.1, 1)),
                _COMPILING,
            )

    def _start_message(self) -> str:
        return "training …" if self._compiled.is_set() else _COMPILING

    def _ready_message(self) -> str:
        return _PRESS_START

    def _run_segment(self, params, v0, eta: float, count: int) -> _Segment:
        p = self.problem
        return _segment(
            p.loss,
            params,
            p.batch,
            v0,
            jnp.asarray(eta, self._dtype),
            jnp.asarray(count, jnp.int32),
            jnp.asarray(self.rtol, self._dtype),
        )

    # -- training ------------------------------------------------------------------------
    def compute(self, *, learning_rate: float, num_steps: int, eval_every: int) -> SharpnessResult:
        """Train synchronously with these settings; return losses and sharpness measurements."""
        return self._train(dict(learning_rate=learning_rate, num_steps=num_steps, eval_every=eval_every))

    @staticmethod
    def _check(settings: dict) -> tuple[float, int, int]:
        eta = float(settings["learning_rate"])
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {settings['learning_rate']}")
        num_steps, every = settings["num_steps"], settings["eval_every"]
        for name, value in (("num_steps", num_steps), ("eval_every", every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not 1 <= every <= MAX_EVAL_EVERY:
            raise ValueError(f"eval_every must be in [1, {MAX_EVAL_EVERY}], got {every}")
        return eta, int(num_steps), int(every)

    def _train(
        self,
        settings: dict,
        *,
        on_progress: Callable[[dict], None] | None = None,
        stop: threading.Event | None = None,
    ) -> SharpnessResult:
        """The run: segments of ``eval_every`` steps, each after one λ_max measurement.

        ``on_progress`` gets ``{"h": histories, "t": step, "eta", "num_steps", "matvecs"}``
        after every segment.
        """
        eta, num_steps, every = self._check(settings)
        self._compiled.wait()
        h = {k: [] for k in ("steps", "losses", "sharpness_steps", "sharpness", "residuals", "status")}
        params, v, t, matvecs = self.problem.x0, self._v_start, 0, 0
        diverged = stopped = False
        start = time.perf_counter()
        while True:
            count = min(every, num_steps - t)
            seg = self._run_segment(params, v, eta, count)
            losses = np.asarray(seg.losses[:count], dtype=float)
            h["sharpness_steps"].append(t)
            h["sharpness"].append(float(seg.sharpness))
            h["residuals"].append(float(seg.residual))
            h["status"].append(Status(int(seg.status)).name)
            matvecs += int(seg.num_matvecs)
            h["steps"].extend(range(t, t + count))
            h["losses"].extend(losses.tolist())
            v = seg.vector if bool(jnp.all(jnp.isfinite(seg.vector))) else self._v_start
            params, t = seg.params, t + count
            first = h["losses"][0] if h["losses"] else float(seg.end_loss)
            bad = [
                x
                for x in (*losses, float(seg.end_loss))
                if not math.isfinite(x) or x > DIVERGENCE_FACTOR * first
            ]
            if bad:
                diverged = True
                break
            if on_progress is not None:
                on_progress({"h": h, "t": t, "eta": eta, "num_steps": num_steps, "matvecs": matvecs})
            if stop is not None and stop.is_set():
                stopped = True
                break
            if t >= num_steps:
                break
        if not diverged:  # the last point: loss and sharpness at θ_T
            seg = self._run_segment(params, v, eta, 0)
            h["steps"].append(t)
            h["losses"].append(float(seg.end_loss))
            h["sharpness_steps"].append(t)
            h["sharpness"].append(float(seg.sharpness))
            h["residuals"].append(float(seg.residual))
            h["status"].append(Status(int(seg.status)).name)
            matvecs += int(seg.num_matvecs)
        seconds = time.perf_counter() - start
        status = tuple(h["status"])
        lam = np.asarray(h["sharpness"], dtype=float)
        threshold = 2.0 / eta
        if diverged:
            message = (
                f"diverged before step {t}: the loss blew up (λ_max was {lam[-1]:.4g} against 2/η = "
                f"{threshold:.4g}); lower η"
            )
        else:
            late = lam[len(lam) // 2 :]
            message = (
                f"{'stopped after' if stopped else 'ran'} {t} steps; λ_max {lam[0]:.4g} → {lam[-1]:.4g}, "
                f"max {np.nanmax(lam):.4g} (2/η = {threshold:.4g}); second half: median "
                f"{np.nanmedian(late) / threshold:.3f} × 2/η"
            )
        unconverged = sum(s != "CONVERGED" for s in status)
        if unconverged:
            message += f"; {unconverged} of {len(status)} λ_max measurements did not converge"
        return SharpnessResult(
            steps=np.asarray(h["steps"], dtype=np.int64),
            losses=np.asarray(h["losses"], dtype=float),
            sharpness_steps=np.asarray(h["sharpness_steps"], dtype=np.int64),
            sharpness=lam,
            residual_norms=np.asarray(h["residuals"], dtype=float),
            converged=np.asarray([s == "CONVERGED" for s in status], dtype=bool),
            eigsh_status=status,
            num_matvecs=matvecs,
            learning_rate=eta,
            threshold=threshold,
            num_steps=t,
            stopped=stopped,
            diverged=diverged,
            message=message,
            seconds=seconds,
        )

    # -- live progress (the training thread) ------------------------------------------------
    def _num_done(self, result: SharpnessResult) -> int:
        return result.num_steps

    def _on_progress(self, info: dict) -> None:
        if not self._redraw_due():
            return
        h, eta, t = info["h"], info["eta"], info["t"]
        self.progress.value = min(t, self.progress.max)
        lam, status = h["sharpness"][-1], h["status"][-1]
        note = "" if status == "CONVERGED" else f" <b>eigsh: {status}</b>"
        self.readout.value = (
            f"step {t} of {info['num_steps']}: loss {h['losses'][-1]:.4g}, λ_max = <b>{lam:.4g}</b> "
            f"({lam * eta / 2:.3f} × 2/η), 2/η = {2 / eta:.4g}{note}"
        )
        stride = max(1, math.ceil(len(h["steps"]) / _LIVE_POINTS))
        keep = slice(None, None, stride)
        steps, losses = h["steps"][keep], h["losses"][keep]
        if steps and steps[-1] != h["steps"][-1]:
            steps, losses = [*steps, h["steps"][-1]], [*losses, h["losses"][-1]]
        self._redraw_live(
            lambda: self._draw(
                steps,
                losses,
                h["sharpness_steps"],
                h["sharpness"],
                eta,
                [s == "CONVERGED" for s in h["status"]],
                title=f"Full-batch gradient descent, η = {eta:.3g} (2/η = {2 / eta:.4g}): training …",
            )
        )

    # -- render ---------------------------------------------------------------------------
    def _render(self, result: SharpnessResult | None) -> None:
        if result is None:
            self._draw(
                [],
                [],
                [],
                [],
                float(self.learning_rate.value),
                [],
                title="Gradient descent on digits: choose η and press Start",
            )
            if self._compiled.is_set():  # else the readout says what compiles
                self.readout.value = self._ready_message()
            return
        title = f"Full-batch gradient descent, η = {result.learning_rate:.3g} (2/η = {result.threshold:.4g})"
        self._draw(
            result.steps,
            result.losses,
            result.sharpness_steps,
            result.sharpness,
            result.learning_rate,
            result.converged,
            title=title,
        )
        rows = [
            ("steps", f"{result.num_steps} in {result.seconds:.1f} s"),
            ("loss", f"{result.losses[0]:.4g} → <b>{result.losses[-1]:.4g}</b>"),
            (
                "λ_max",
                f"{result.sharpness[0]:.4g} → <b>{result.sharpness[-1]:.4g}</b> "
                f"(max {np.nanmax(result.sharpness):.4g}); 2/η = {result.threshold:.4g}",
            ),
            (
                "eigsh",
                f"{int(result.converged.sum())} of {result.converged.size} measurements converged "
                f"(rtol {self.rtol:g}), {result.num_matvecs} Hessian-vector products",
            ),
            (
                "status",
                ("<b>" if result.diverged else "") + result.message + ("</b>" if result.diverged else ""),
            ),
        ]
        body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
        self.readout.value = f"<table class='curvlab-readout'>{body}</table>"

    def _draw(self, steps, losses, sharpness_steps, sharpness, eta, converged, *, title=None) -> None:
        fig = self.figure
        with self._draw_lock:
            if [t.name for t in fig.data] != list(EOS_TRACES):
                viz.update_figure(
                    fig,
                    edge_of_stability_figure(
                        steps, losses, sharpness_steps, sharpness, eta, converged=converged, title=title
                    ),
                )
                return
            data = edge_of_stability_data(steps, losses, sharpness_steps, sharpness, eta, converged=converged)
            for trace, name in zip(fig.data, EOS_TRACES, strict=True):
                trace.update(data[name])
            if title is not None:
                fig.layout.title.text = title


_COMPILING = "compiling the training step (first time only) …"
_PRESS_START = (
    "Press <b>Start</b> to train (the controls apply at the next Start); watch λ_max climb to the "
    "dashed 2/η line."
)

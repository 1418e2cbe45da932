"""Base of the explorers that train a model live: Start/Stop, a progress bar, a background thread.

A :class:`TrainingExplorer` does not recompute when a control moves: its controls are
settings read at the next **Start** (a control change only redraws the last run, so a
display option such as an x-axis choice applies at once). **Start** runs the training on
the explorer's :class:`~curvlab.widgets._worker.BackgroundWorker` thread, so the kernel
stays responsive; the thread redraws the figure as it goes, under one draw lock shared
with the kernel's redraws, and **Stop** is honoured at the next progress report. Every
error (bad settings, a failed compile, a failed run) is shown in the error area; none
reaches the kernel.

A subclass

1. calls ``super().__init__(worker_name)``, builds its setting controls and calls
   :meth:`TrainingExplorer._setup_training` (the Start/Stop button :attr:`start_button`
   and the progress bar :attr:`progress` join the controls' row);
2. implements ``_train(settings, *, on_progress=None, stop=None)``: the whole run,
   synchronously, calling ``on_progress(info)`` as it goes and ending early once ``stop``
   (a :class:`threading.Event`) is set; ``compute(**controls)`` returns
   ``_train(controls)``, and ``_render`` draws its result (or ``None``: no run yet);
3. implements ``_on_progress(info)`` (the live progress bar, readout and, through
   :meth:`TrainingExplorer._redraw_live`, figure) and ``_num_done(result)`` (the progress
   bar's final value);
4. may override ``_check(settings)`` (raise before the thread starts: the error shows at
   once), ``_new_live(settings)`` (live buffers, kept in ``self._live`` during a run),
   ``_start_message()`` and ``_ready_message()``, and compile at construction with
   :meth:`TrainingExplorer._precompile`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from curvlab.widgets._base import Explorer, batched, css_class
from curvlab.widgets._worker import BackgroundWorker

__all__ = ["TrainingExplorer", "REDRAW_SECONDS"]

#: Throttled live redraws (:meth:`TrainingExplorer._redraw_due`) come at most this often
#: (the websocket and plotly set the pace).
REDRAW_SECONDS = 0.5


class TrainingExplorer(Explorer):
    """An explorer whose figure shows a training run started with Start and ended by Stop or its end.

    Attributes
    ----------
    start_button : ipywidgets.ToggleButton
        "Start" (pressed: starts :meth:`start`) / "Stop" while a run is on (pressed: :meth:`stop`).
    progress : ipywidgets.IntProgress
        Progress of the run, up to the value of the control named by :attr:`progress_control`.
    compile_seconds : float or None
        Wall time of the construction-time compile (``None`` until one succeeded, or without one).
    """

    #: Description of the progress bar.
    progress_label: str = "steps"
    #: Name of the control whose value is the length of a run (the progress bar's maximum).
    progress_control: str = ""

    def __init__(self, worker_name: str, **kwargs):
        super().__init__(**kwargs)
        self._worker = BackgroundWorker(worker_name)
        self._stop = threading.Event()
        self._compiled = threading.Event()  # cleared while a construction-time compile is pending
        self._compiled.set()
        self._compile_job: Callable[[], None] | None = None
        self._compiling = False
        self._training = False
        self._live: dict[str, Any] = {}
        self._resetting = False
        self._draw_lock = threading.RLock()  # the training thread and the kernel both redraw
        self._last_draw = -math.inf
        self._draw_seconds = 0.0
        self.compile_seconds: float | None = None
        self.start_button = widgets.ToggleButton(
            value=False, description="Start", icon="play", button_style="success"
        )
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description=self.progress_label)
        self.start_button.add_class(f"curvlab-control-{css_class('start_button')}")
        self.progress.add_class(f"curvlab-control-{css_class('progress')}")
        self.start_button.observe(self._on_toggle, names="value")

    def _setup_training(self, controls: dict[str, widgets.Widget], figure) -> None:
        """:meth:`Explorer._setup` with the Start/Stop button and the progress bar after the controls."""
        self.progress.max = max(1, int(controls[self.progress_control].value))
        row = widgets.HBox(
            [*controls.values(), self.start_button, self.progress],
            layout=widgets.Layout(flex_flow="row wrap"),
        )
        row.add_class("curvlab-controls")
        self._setup(controls, figure, layout_children=[row, self.error, self.readout, figure])

    # -- subclass contract -----------------------------------------------------------------
    def _train(
        self, settings: dict, *, on_progress: Callable | None = None, stop: threading.Event | None = None
    ):
        """The whole run with ``settings`` (override; see the module docstring)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _on_progress(self, info) -> None:
        """Show one progress report of a run started with Start (override; on the training thread)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _num_done(self, result) -> int:
        """The progress bar's value at the end of the run ``result`` (override)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _check(self, settings: dict) -> Any:
        """Raise ``ValueError``/``TypeError`` for settings a run would reject (default: accept all)."""

    def _new_live(self, settings: dict) -> dict:
        """The live buffers of a new run (``self._live`` while it runs; default: empty)."""
        return {}

    def _start_message(self) -> str:
        """The readout when Start is pressed."""
        return "training \u2026"

    def _ready_message(self) -> str:
        """The readout once the construction-time compile is done (if no run started meanwhile)."""
        return "Press <b>Start</b> to train (the controls apply at the next Start)."

    # -- no live recompute: settings apply at the next Start -------------------------------
    def refresh(self):
        """Redraw the last run (or the empty figure); training starts only with Start or ``compute``.

        During a run nothing is redrawn: the training thread's next redraw reads the controls.
        """
        self._dirty = False
        self.num_refreshes += 1
        if self._training:
            return self.last_result
        try:
            with self._draw_lock:
                self._render_batched(self.last_result)
        except Exception as err:  # noqa: BLE001 - shown to the user, never raised
            self.last_error = err
            self.show_error(err)
            return None
        self.last_error = None
        return self.last_result

    # -- construction-time compile ---------------------------------------------------------
    def _precompile(self, job: Callable[[], None], message: str) -> None:
        """Run ``job`` (compiling what a first Start needs) on the worker thread; ``message`` meanwhile.

        :attr:`compiling` is True until it ends; a Start pressed meanwhile runs right after it
        (and runs ``job`` itself first if the Start's job replaced the queued compile), and
        ``_train`` may wait for it with ``self._compiled.wait()``. A failure is shown in the
        error area.
        """
        self._compile_job = job
        self._compiling = True
        self._compiled.clear()
        self.readout.value = message
        self._worker.submit(self._compile, self._precompiled)

    def _compile(self) -> None:
        """The pending construction-time compile, once (on the worker thread)."""
        if self._compiled.is_set() or self._compile_job is None:
            return
        t0 = time.perf_counter()
        try:
            self._compile_job()
            self.compile_seconds = time.perf_counter() - t0
        finally:
            self._compiling = False
            self._compiled.set()

    def _precompiled(self, result, error) -> None:
        if error is not None:
            self.last_error = error
            self.show_error(error)
        if not self._training and self.last_result is None:
            self.readout.value = self._ready_message()

    @property
    def compiling(self) -> bool:
        """True while the construction-time compile runs."""
        return self._compiling

    # -- start / stop ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the background thread compiles or trains."""
        return self._worker.busy

    @property
    def running_training(self) -> bool:
        """True while a training started with Start runs (or waits for the compile)."""
        return self._training

    def start(self) -> None:
        """Start training in a background thread with the current settings (the Start button).

        Bad settings raise here, before the thread starts. Pressed while the construction-time
        compile runs, the training runs right after it; pressed during a run, nothing happens.
        """
        if self._training:
            return
        settings = self.values()
        self._check(settings)
        self._training = True
        try:
            self._stop.clear()
            self._live = self._new_live(settings)
            self.progress.max = max(1, int(settings[self.progress_control]))
            self.progress.value = 0
            self._last_draw = -math.inf  # the first report of a run is drawn
            self.clear_error()
            self.readout.value = self._start_message()
            self._set_button(True)
            # the thread redraws as it goes (under the draw lock): nothing to deliver afterwards
            self._worker.submit(lambda: self._thread_main(settings), lambda result, error: None)
        except BaseException:
            self._training = False
            self._set_button(False)
            raise

    def stop(self, timeout: float | None = None) -> None:
        """Ask the training to stop at its next progress report; wait up to ``timeout`` seconds."""
        self._stop.set()
        if timeout is not None:
            self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the compilation and training to finish; True when done."""
        return self._worker.wait(timeout)

    def _on_toggle(self, change) -> None:
        if self._resetting:
            return
        if change["new"]:
            try:
                self.start()
            except Exception as err:  # noqa: BLE001 - shown to the user
                self.last_error = err
                self.show_error(err)
                self._set_button(False)
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
            self._compile()  # only if this Start replaced the queued construction-time compile
            result = self._train(settings, on_progress=self._on_progress, stop=self._stop)
            self.last_result = result
            self.last_error = None
            with self._draw_lock:
                self._render_batched(result)
            self.progress.value = min(self._num_done(result), self.progress.max)
        except Exception as err:  # noqa: BLE001 - shown to the user, never raised in the thread
            self.last_error = err
            self.show_error(err)
        finally:
            self._live = {}
            self._training = False
            self._set_button(False)

    # -- live redraws ----------------------------------------------------------------------
    def _redraw_due(self) -> bool:
        """Whether a throttled live redraw is due: at most one per :data:`REDRAW_SECONDS`, and
        never more often than every 4 times the last redraw's duration (a busy browser or
        kernel gets fewer, not queued, redraws). True marks the redraw as done now."""
        now = time.perf_counter()
        if now - self._last_draw < max(REDRAW_SECONDS, 4 * self._draw_seconds):
            return False
        self._last_draw = now
        return True

    def _redraw_live(self, draw: Callable[[], None]) -> None:
        """``draw()`` as one batch of figure edits under the draw lock; a failure never stops the run."""
        t0 = time.perf_counter()
        try:
            with self._draw_lock, batched(self.figure):  # not batch_update: its placeholders corrupt views
                draw()
        except Exception:  # noqa: BLE001, S110 - a failed redraw must not stop the training
            pass
        self._draw_seconds = time.perf_counter() - t0

"""TrainingExplorer (the base of SharpnessExplorer and HessianFreeExplorer) on a toy run, no JAX.

The toy's training takes one step per permit of a semaphore, so a test decides exactly how
far a run gets before Stop; the thread never outlives a test (every test waits for it).
"""

import threading
from typing import NamedTuple

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

import ipywidgets as W  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from curvlab.widgets._training import REDRAW_SECONDS, TrainingExplorer  # noqa: E402
from tests.widget_helpers import HANG_GUARD_S as TIMEOUT  # noqa: E402
from tests.widget_helpers import arr, assert_a_failed_run_is_shown, assert_untrained, trace, wait_for  # noqa: E402


class ToyResult(NamedTuple):
    ys: list
    stopped: bool


class Toy(TrainingExplorer):
    """Run ``num_steps`` steps of y_t = scale / 2^t; each step waits for a permit of ``self.steps``."""

    progress_label = "toy steps"
    progress_control = "num_steps"

    def __init__(self, precompile_job=None):
        super().__init__("curvlab-test-training")
        self.num_steps = W.IntSlider(value=5, min=1, max=1000, description="steps to run")
        self.scale = W.FloatSlider(value=1.0, min=-1.0, max=2.0, description="scale")
        self.steps = threading.Semaphore(10**6)
        self.events, self.seen, self.renders = [], [], []
        figure = go.FigureWidget(go.Figure([go.Scatter(x=[], y=[], name="y")]))
        self._setup_training({"num_steps": self.num_steps, "scale": self.scale}, figure)
        if precompile_job is not None:
            self._precompile(precompile_job, "compiling the toy …")

    def compute(self, *, num_steps, scale):
        return self._train(dict(num_steps=num_steps, scale=scale))

    def _check(self, settings):
        if not settings["scale"] > 0:
            raise ValueError(f"scale must be > 0, got {settings['scale']}")

    def _train(self, settings, *, on_progress=None, stop=None):
        self._check(settings)
        self._compiled.wait()
        self.events.append("train")
        ys = []
        for t in range(settings["num_steps"]):
            assert self.steps.acquire(timeout=TIMEOUT)
            ys.append(settings["scale"] * 0.5**t)
            if on_progress is not None:
                on_progress({"t": t + 1, "ys": list(ys)})
            if stop is not None and stop.is_set():
                return ToyResult(ys, True)
        return ToyResult(ys, False)

    def _on_progress(self, info):
        self.seen.append(info["t"])
        self.progress.value = info["t"]
        ys = info["ys"]
        self._redraw_live(lambda: self.figure.data[0].update(x=list(range(len(ys))), y=ys))

    def _num_done(self, result):
        return len(result.ys)

    def _render(self, result):
        self.renders.append(result)
        if result is None:
            if self._compiled.is_set():
                self.readout.value = self._ready_message()
            return
        self.figure.data[0].update(x=list(range(len(result.ys))), y=result.ys)
        self.readout.value = f"{'stopped after' if result.stopped else 'ran'} {len(result.ys)} steps"


def test_layout_and_state_before_a_run():
    ex = Toy()
    assert_untrained(ex, ("num_steps", "scale"))  # the button and the bar are not settings
    row = ex.children[0]
    assert ex.start_button in row.children and ex.progress in row.children
    assert "curvlab-control-start-button" in ex.start_button._dom_classes
    assert "curvlab-control-progress" in ex.progress._dom_classes
    assert ex.progress.description == "toy steps" and ex.progress.max == 5
    assert ex.start_button.description == "Start" and not ex.running and not ex.compiling
    assert ex.compile_seconds is None and ex.last_result is None and ex.renders == [None]
    assert "Press <b>Start</b>" in ex.readout.value
    ex.scale.value = 0.5  # a setting only redraws the last run: nothing trains
    assert ex.renders == [None, None] and ex.events == [] and not ex.running


def test_start_progress_stop_and_the_final_drawing():
    ex = Toy()
    ex.num_steps.value = 100
    ex.steps = threading.Semaphore(0)
    ex.start_button.value = True
    assert ex.start_button.description == "Stop" and ex.start_button.button_style == "danger"
    assert ex.running and ex.running_training and ex.progress.max == 100 and ex.readout.value == "training …"
    ex.steps.release(2)
    wait_for(lambda: ex.seen == [1, 2])
    # during the run: a second Start does nothing, a control change does not redraw
    ex.start()
    renders = len(ex.renders)
    ex.scale.value = 2.0
    assert len(ex.renders) == renders and ex.events == ["train"]
    wait_for(lambda: list(trace(ex, "y").y) == [1.0, 0.5])  # the live drawing
    ex.start_button.value = False  # Stop: honoured at the next progress report
    ex.steps.release(1)
    assert ex.wait(TIMEOUT)
    r = ex.last_result
    assert r == ToyResult([1.0, 0.5, 0.25], True) and ex.seen == [1, 2, 3]
    assert not ex.running and not ex.running_training and ex.last_error is None and ex.error.value == ""
    assert ex.start_button.description == "Start" and not ex.start_button.value
    assert ex.start_button.button_style == "success" and ex.progress.value == 3
    assert arr(trace(ex, "y").y).tolist() == [1.0, 0.5, 0.25] and ex.readout.value == "stopped after 3 steps"
    assert ex._live == {}
    # a full run with the new settings
    ex.num_steps.value = 4
    ex.steps.release(4)
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert ex.last_result == ToyResult([2.0, 1.0, 0.5, 0.25], False) and ex.progress.value == 4
    assert ex.readout.value == "ran 4 steps" and ex.events == ["train", "train"]


def test_bad_settings_are_shown_at_start_and_the_button_resets():
    ex = Toy()
    ex.scale.value = -1.0
    ex.start_button.value = True
    assert "scale must be &gt; 0" in ex.error.value and ex.error.layout.display is None
    assert isinstance(ex.last_error, ValueError)
    assert not ex.start_button.value and ex.start_button.description == "Start"
    assert not ex.running and not ex.running_training and ex.events == []
    with pytest.raises(ValueError, match="scale"):
        ex.start()
    assert not ex.running_training
    ex.scale.value = 1.0
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert ex.error.value == "" and ex.last_result.ys[0] == 1.0


def test_a_failed_run_is_shown_and_the_next_run_clears_it(monkeypatch):
    ex = Toy()
    assert_a_failed_run_is_shown(ex, monkeypatch)
    assert "RuntimeError: forced training failure" in ex.error.value
    assert not ex.start_button.value and not ex.running_training and ex.last_result is None
    ex.start_button.value = True
    assert ex.wait(TIMEOUT)
    assert ex.error.value == "" and ex.last_result == ToyResult([1.0, 0.5, 0.25, 0.125, 0.0625], False)


def test_precompile_says_so_then_is_ready():
    gate = threading.Event()
    ex = Toy(precompile_job=lambda: gate.wait(TIMEOUT))
    assert ex.compiling and ex.running and ex.readout.value == "compiling the toy …"
    ex.scale.value = 0.5  # a redraw keeps the compile message
    assert ex.readout.value == "compiling the toy …"
    gate.set()
    assert ex.wait(TIMEOUT)
    assert not ex.compiling and ex.compile_seconds is not None and ex.compile_seconds >= 0
    assert "Press <b>Start</b>" in ex.readout.value and ex.error.value == ""


def test_a_failed_precompile_is_shown_not_swallowed():
    def boom():
        raise RuntimeError("forced compile failure")

    ex = Toy(precompile_job=boom)
    assert ex.wait(TIMEOUT)
    assert "forced compile failure" in ex.error.value and not ex.compiling
    assert ex.compile_seconds is None and "Press <b>Start</b>" in ex.readout.value
    ex.start_button.value = True  # training still works (and does not wait forever)
    assert ex.wait(TIMEOUT) and ex.last_result.ys[0] == 1.0 and ex.error.value == ""


def test_a_start_that_replaced_the_queued_compile_compiles_first():
    """The worker keeps only the newest waiting job: a Start submitted before the compile job
    began replaces it; the training job then runs the compile itself, once, before training."""
    ex = Toy()
    started, hold = threading.Event(), threading.Event()

    def busy():
        started.set()
        assert hold.wait(TIMEOUT)

    ex._worker.submit(busy, lambda result, error: None)
    assert started.wait(TIMEOUT)  # the worker runs a job: the next submits wait, the newest wins
    ex._precompile(lambda: ex.events.append("compile"), "compiling the toy …")  # queued
    ex.start()  # replaces the queued compile
    hold.set()
    assert ex.wait(TIMEOUT)
    assert ex.events == ["compile", "train"] and not ex.compiling and ex.compile_seconds is not None
    assert ex.last_result.ys[0] == 1.0 and ex.error.value == ""


def test_live_redraws_are_throttled_and_never_raise():
    ex = Toy()
    assert ex._redraw_due() and not ex._redraw_due()  # the second comes within REDRAW_SECONDS
    ex._last_draw -= 2 * REDRAW_SECONDS
    assert ex._redraw_due()

    def broken():
        raise RuntimeError("a redraw fails")

    ex._redraw_live(broken)  # swallowed: a failed redraw must not stop the training
    assert ex.figure._in_batch_mode is False and ex.error.value == ""

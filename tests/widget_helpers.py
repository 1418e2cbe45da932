"""Shared helpers of the explorer tests (tests/test_widget_*.py): traces, waits, the dashboard intros."""

from __future__ import annotations

import re
import time

import numpy as np

#: A hang guard for background training (compilation included), never a timing assertion.
HANG_GUARD_S = 300.0


def trace(fig, name: str):
    """The one trace called ``name`` of ``fig`` (a figure, or an explorer's ``.figure``)."""
    fig = getattr(fig, "figure", fig)
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def arr(values) -> np.ndarray:
    """A trace property (tuple, list or array) as a float array."""
    return np.asarray(values, dtype=float)


def wait_for(predicate, timeout: float = HANG_GUARD_S) -> None:
    """Poll ``predicate()`` until it is true; ``AssertionError`` after ``timeout`` seconds (a hang guard)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


def tab_intro(explorer_name: str) -> str:
    """The intro text of the dashboard tab showing the explorer class ``explorer_name``."""
    from curvlab.app.dashboard import TABS

    return next(t.intro for t in TABS if t.explorer == explorer_name)


def named_controls(intro: str) -> list[str]:
    """The control names an intro writes in bold (``<b>…</b>`` not ending in ':')."""
    return [m for m in re.findall(r"<b>(.*?)</b>", intro) if not m.rstrip().endswith(":")]


def descriptions(widget) -> set[str]:
    """Every non-empty ``description`` in ``widget`` and its children, recursively."""
    out, stack = set(), [widget]
    while stack:
        w = stack.pop()
        if w.has_trait("description") and w.description:
            out.add(w.description)
        stack.extend(getattr(w, "children", ()))
    return out


def assert_intro_names_only_controls(explorer) -> list[str]:
    """Assert that the dashboard intro of ``explorer``'s tab names (in bold) only controls it shows.

    Returns the names, for the caller's own checks of what the intro must name.
    """
    names = named_controls(tab_intro(type(explorer).__name__))
    shown = descriptions(explorer)
    assert set(names) <= shown, set(names) - shown
    return names


def assert_a_failed_run_is_shown(explorer, monkeypatch, timeout: float = HANG_GUARD_S) -> None:
    """Press Start on a training explorer whose ``_train`` raises: the message shows in the error
    area and the button is back at Start. Undoes ``monkeypatch`` (the real ``_train`` returns)."""

    def boom(settings, **kwargs):
        raise RuntimeError("forced training failure")

    monkeypatch.setattr(explorer, "_train", boom)
    explorer.start_button.value = True
    assert explorer.wait(timeout)
    assert not explorer.running and explorer.start_button.description == "Start"
    assert "forced training failure" in explorer.error.value
    monkeypatch.undo()


def assert_untrained(explorer, settings) -> None:
    """A training explorer before any run: ``settings`` are exactly its controls (attributes too),
    the button says Start, the progress bar is at 0, nothing runs, no result, no error, and the
    readout asks for Start."""
    assert set(explorer.values()) == set(settings)
    for name in settings:
        assert explorer.controls[name] is getattr(explorer, name)
    assert explorer.start_button.description == "Start" and not explorer.start_button.value
    assert explorer.progress.value == 0 and not explorer.running
    assert explorer.last_result is None and explorer.error.value == ""
    assert "Start" in explorer.readout.value

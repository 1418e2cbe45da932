"""Base class of the curvlab explorers: controls -> ``compute`` -> figure.

An explorer is an :class:`ipywidgets.VBox` holding named controls, one
:class:`plotly.graph_objects.FigureWidget`, a readout line and an error area.
A subclass

1. builds its controls and its figure (from a pure builder in
   :mod:`curvlab.viz`), stores each control as an attribute, and calls
   ``self._setup(controls, figure)``;
2. implements ``compute(self, **controls)``: a plain function of the control
   values (no widget access), returning a ``NamedTuple`` of numbers that all
   come from curvlab core calls, so that it can be tested without a browser;
3. implements ``_render(self, result)``: writes ``result`` into ``self.figure``
   (assigning trace/layout properties) and ``self.readout``.

The base wires every control's ``value`` to :meth:`Explorer.refresh`, which runs
``compute`` then ``_render`` inside ``figure.batch_update()`` and catches every
exception: the message goes to ``self.error`` (shown in red), the figure keeps
its last good state, and the kernel carries on. A later successful refresh
clears the error.

Refresh scheduling (how fast slider drags are handled)
-----------------------------------------------------
The kernel handles widget messages one at a time, so a fast drag sends a queue
of slider values; rendering each of them would make the plot lag behind the
hand. The base therefore distinguishes two origins of a change:

* a change made **in Python** (``explorer.angle.value = 30``, in a test or a
  notebook cell) refreshes **synchronously**: when the assignment returns,
  ``last_result`` and the figure reflect the new value;
* a change sent **by the browser** (ipywidgets sets the trait while holding
  ``_property_lock``) only marks the explorer dirty and schedules one refresh
  with ``loop.call_soon`` on the kernel's asyncio loop. Every browser message
  handled before that callback runs just updates a value, and the single
  refresh reads the newest values: intermediate slider positions are skipped,
  the last one is always rendered. Without a running event loop (plain Python)
  the refresh is synchronous.

Use ``with explorer.hold_refresh(): ...`` to change several controls (or slider
ranges) with a single refresh at the end, and override
``_control_changed(name, change)`` to adjust other controls when one changes
(it runs before the refresh, and changes it makes trigger no extra refresh).

Slow work is visible
--------------------
While a refresh runs (and while a :class:`~curvlab.widgets._worker.BackgroundWorker`
registered with :meth:`Explorer.watch_worker` has work), the explorer carries the CSS
class ``curvlab-busy``: its status line (``curvlab-status``) says "computing…" and the
figure is dimmed. Both appear only after :data:`BUSY_DELAY_S` (a CSS transition delay),
so fast slider moves never flicker. A refresh that compiles something for the first time
(a subclass names it in :meth:`Explorer.first_compile`, e.g. the MLP model) says so at
once: "compiling the MLP, about N s the first time", N being the time that first refresh
took when last measured (kept in ``$CURVLAB_CACHE_DIR/compile_seconds.json``, default
``~/.cache/curvlab``), or the subclass's guess before any measurement. The kernel sends
these state changes before it starts computing, so the browser shows them while the
kernel is busy.

Labels are never cut: every control's description gets its natural width
(``description_width="initial"``), a checkbox drops its indent, and the description is
also the control's tooltip.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import html
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

try:
    import anywidget  # noqa: F401  (plotly's FigureWidget needs it)
    import ipywidgets
    import plotly.graph_objects as go
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"curvlab.widgets needs ipywidgets, plotly and anywidget ({_err}); install them with: "
        "pip install curvlab[viz]"
    ) from _err

__all__ = [
    "Explorer",
    "css_class",
    "send_batch",
    "sync_widget_state",
    "BUSY_DELAY_S",
    "EXPLORER_CSS",
    "SYNC_QUIET_S",
]

#: Seconds a refresh must run before its "computing…" line shows and its figure dims.
BUSY_DELAY_S = 0.3

#: The explorers' style sheet (a ``<style>`` element in a hidden HTML widget of each explorer).
EXPLORER_CSS = f"""
.curvlab-explorer {{ width: 100%; }}
.curvlab-explorer .curvlab-figure {{ width: 100%; min-width: 0; transition: opacity 0.15s; }}
.curvlab-explorer .curvlab-figure .js-plotly-plot {{ width: 100%; }}
.curvlab-explorer.curvlab-busy .curvlab-figure {{ opacity: 0.45; transition: opacity 0.2s {BUSY_DELAY_S}s; }}
.curvlab-explorer.curvlab-compiling .curvlab-figure {{ opacity: 0.45; transition: none; }}
.curvlab-explorer .curvlab-status {{ min-height: 1.5em; margin: 2px 0; color: #795500; visibility: hidden; }}
.curvlab-explorer.curvlab-busy .curvlab-status {{
  visibility: visible; transition: visibility 0s {BUSY_DELAY_S}s; }}
.curvlab-explorer.curvlab-compiling .curvlab-status {{ visibility: visible; transition: none; }}
.curvlab-explorer .widget-toggle-buttons {{ align-items: center; }}
"""

#: Guessed seconds of a first compile before one was measured.
DEFAULT_COMPILE_GUESS_S = 30.0


def compile_seconds_path() -> Path:
    """File of the measured first-compile times: ``$CURVLAB_CACHE_DIR`` or ``$XDG_CACHE_HOME/curvlab``."""
    env = os.environ.get("CURVLAB_CACHE_DIR")
    if env:
        base = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "curvlab"
    return base / "compile_seconds.json"


def _read_compile_seconds() -> dict[str, float]:
    try:
        data = json.loads(compile_seconds_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _write_compile_seconds(key: str, seconds: float) -> None:
    """Store one measurement (best effort: a read-only cache directory only loses the estimate)."""
    data = _read_compile_seconds()
    data[key] = round(float(seconds), 2)
    path = compile_seconds_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)


def _flatten_layout(layout: dict, prefix: str = "") -> dict[str, Any]:
    """``{"legend": {"x": 1}}`` -> ``{"legend.x": 1}`` (plotly property paths)."""
    out: dict[str, Any] = {}
    for key, value in layout.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_layout(value, path + "."))
        else:
            out[path] = value
    return out


#: First compiles done in this process (keys of :meth:`Explorer.first_compile`).
_COMPILED: set[str] = set()


def fit_label(widget) -> None:
    """Give ``widget``'s description its natural width and make it the tooltip (labels never cut).

    A description left at ipywidgets' default width (80 px) is cut with an ellipsis
    ("Lanczos s…"); a checkbox's label sits in a 300 px box behind a 80 px indent.
    """
    description = getattr(widget, "description", "") if widget.has_trait("description") else ""
    if not description:
        return
    style = getattr(widget, "style", None)
    if style is not None and style.has_trait("description_width") and not style.description_width:
        style.description_width = "initial"
    if widget.has_trait("tooltip") and not widget.tooltip:
        widget.tooltip = description
    if isinstance(widget, ipywidgets.Checkbox):
        widget.indent = False
        if not widget.layout.width:
            widget.layout.width = "auto"
    if isinstance(widget, ipywidgets.Dropdown) and not widget.layout.width:
        widget.layout.width = "auto"  # as wide as its longest option: the chosen one is never cut


def css_class(name: str) -> str:
    """``"FiniteDifference"`` / ``"finite_difference"`` -> ``"finite-difference"`` (for CSS classes)."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name)
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


_ABSENT = object()


def _stored_value(trace: dict, path: str):
    """The value at dotted ``path`` in a trace's stored properties, or ``_ABSENT``."""
    for part in path.split("."):
        if not isinstance(trace, dict) or part not in trace:
            return _ABSENT
        trace = trace[part]
    return trace


def send_batch(fig: go.FigureWidget) -> None:
    """Apply and send the edits queued in ``fig``'s batch mode as one message, with no placeholder.

    plotly's ``batch_update`` sends all queued trace edits as one ``update`` message whose
    ``style_data`` lists, for every property edited on *some* trace, one value per trace, with
    ``Undefined`` (``"_undefined_"`` on the wire) for the traces that property was not edited on.
    plotly's front-end *model* (plotly 6/7, anywidget) applies every ``restyle``/``update``
    message to its copy of the figure (``_widget_data``) **without deserializing it**, so the
    placeholder is stored as the string ``"_undefined_"`` in place of the trace's real value;
    every view created from that state later (a figure inside a container displayed after the
    edits: JupyterLab, Notebook 7, a Voila tab) deserializes it to ``undefined``: the trace
    loses its ``y`` (markers at y = index, a flat line). Views alive when the message arrives
    deserialize it first and are right, hence a timing-dependent fault.

    Here the edits are applied to the figure group by group (traces grouped by the set of
    properties edited on them), and sent as **one** ``update`` message (one redraw in the
    browser; a message per group cost a plotly redraw each, ~4 per slider step) in which every
    value is a real one: a property edited on some traces carries, for the others, their stored
    value, or ``null`` where the trace type has no such property or it was never set (plotly.js:
    the default). Property paths with an index (``"a[0]"``) fall back to a message per group.
    The figure's Python state ends up the same as after ``batch_update``. Then
    :func:`sync_widget_state` makes the synced state the figure's current state, once the figure
    has had no edits for :data:`SYNC_QUIET_S` seconds when an event loop runs (a kernel: a slider
    drag sends that state once, not at every step), at once otherwise.
    """
    from plotly.basedatatypes import BaseFigure

    trace_edits = {i: dict(edits) for i, edits in fig._batch_trace_edits.items() if edits}
    layout_edits = dict(fig._batch_layout_edits)
    fig._batch_trace_edits.clear()
    fig._batch_layout_edits.clear()
    groups: dict[tuple, list[int]] = {}
    for i in sorted(trace_edits):
        groups.setdefault(tuple(sorted(trace_edits[i])), []).append(i)
    if not groups:
        if layout_edits:
            fig.plotly_update(restyle_data={}, relayout_data=layout_edits, trace_indexes=[])
        _schedule_sync(fig)
        return
    if len(groups) == 1 or any("[" in p for props in groups for p in props):
        for props, indexes in groups.items():
            restyle = {p: [trace_edits[i][p] for i in indexes] for p in props}
            fig.plotly_update(restyle_data=restyle, relayout_data=layout_edits, trace_indexes=indexes)
            layout_edits = {}
        _schedule_sync(fig)
        return
    changed_traces: dict[int, set] = {}
    relayout_changes: dict = {}
    for props, indexes in groups.items():
        restyle = {p: [trace_edits[i][p] for i in indexes] for p in props}
        changes, layout_changes, _ = fig._perform_plotly_update(
            restyle_data=restyle, relayout_data=layout_edits, trace_indexes=indexes
        )
        relayout_changes.update(layout_changes or {})
        layout_edits = {}
        for p in changes:
            for i in indexes:
                changed_traces.setdefault(i, set()).add(p)
    if changed_traces or relayout_changes:
        indexes = sorted(changed_traces)
        props = sorted(set().union(*changed_traces.values())) if changed_traces else []
        restyle = {}
        for p in props:
            values = []
            for i in indexes:
                if p in trace_edits[i]:
                    values.append(trace_edits[i][p])
                elif BaseFigure._is_key_path_compatible(p, fig.data[i]):
                    v = _stored_value(fig._data[i], p)
                    values.append(None if v is _ABSENT else v)
                else:
                    values.append(None)
            restyle[p] = values
        fig._send_update_msg(restyle_data=restyle, relayout_data=relayout_changes, trace_indexes=indexes)
        if restyle:
            fig._dispatch_trace_change_callbacks(restyle, indexes)
        if relayout_changes:
            fig._dispatch_layout_change_callbacks(relayout_changes)
    _schedule_sync(fig)


@contextlib.contextmanager
def batched(fig: go.FigureWidget):
    """``fig.batch_update()`` that sends its edits with :func:`send_batch` (no placeholders).

    Inside a caller's batch the edits join that batch; if the body raises, the partial edits
    are dropped, so the figure keeps its last good state.
    """
    if fig._in_batch_mode:
        yield fig
        return
    fig._in_batch_mode = True
    try:
        yield fig
    except BaseException:
        fig._batch_trace_edits.clear()
        fig._batch_layout_edits.clear()
        raise
    finally:
        fig._in_batch_mode = False
    send_batch(fig)


#: Seconds without edits before a figure's synced state is refreshed (see :func:`send_batch`).
SYNC_QUIET_S = 0.3


def _schedule_sync(fig: go.FigureWidget) -> None:
    """:func:`sync_widget_state` after :data:`SYNC_QUIET_S` seconds without edits, or now without a loop.

    The synced state is the whole figure (136 KB of JSON on the Curvature tab); it was sent after
    every slider step, and is now sent once per burst of edits, after the step's own messages.
    Views alive meanwhile draw from the edit messages; the synced state only serves views created
    later. A loop that ends before the delay (``asyncio.run`` in a script) leaves it unsent.
    """
    handle = fig.__dict__.get("_curvlab_sync_handle")
    if handle is not None:
        handle.cancel()
        fig.__dict__["_curvlab_sync_handle"] = None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        sync_widget_state(fig)
        return

    def sync():
        fig.__dict__["_curvlab_sync_handle"] = None
        sync_widget_state(fig)

    fig.__dict__["_curvlab_sync_handle"] = loop.call_later(SYNC_QUIET_S, sync)


def sync_widget_state(fig: go.FigureWidget) -> None:
    """Set ``fig``'s synced ``_widget_data``/``_widget_layout`` to its current data and layout.

    A ``FigureWidget`` refreshes them only when displayed directly; an explorer displays it
    inside a container, so without this its front-end model would rebuild the figure from the
    one-off edit messages alone, and a view created later (a page or output that connects
    after the edits, a message that arrived before plotly's front end was listening) would
    draw a stale or empty figure. The front-end views ignore these traits (they draw from the
    edit messages), so this costs one state message and no redraw.
    """
    import copy

    fig._widget_layout = copy.deepcopy(fig._layout_obj._props)
    fig._widget_data = copy.deepcopy(fig._data)


class Explorer(ipywidgets.VBox):
    """Controls + one plotly ``FigureWidget`` + readout + error area.

    Attributes (set by :meth:`_setup`)
    ----------------------------------
    figure : plotly.graph_objects.FigureWidget
    error : ipywidgets.HTML
        Empty and hidden when the last refresh succeeded; otherwise a readable
        message in red.
    readout : ipywidgets.HTML
        The numbers shown under the controls (subclasses set ``readout.value``).
    status : ipywidgets.HTML
        "computing…" / "compiling …" while work runs (see *Slow work is visible*).
    busy : bool
        Whether a refresh or a watched background worker is running.
    controls : dict[str, ipywidgets.Widget]
        The controls by name; each is also an attribute of the explorer.
    last_result : NamedTuple or None
        The result of the last successful ``compute``.
    last_error : Exception or None
        The exception of the last refresh, ``None`` if it succeeded.
    last_refresh_seconds : float
        Wall time of the last refresh (compute + render).
    num_refreshes : int
        Number of refreshes run (successful or not).

    CSS classes: ``curvlab-explorer`` and ``curvlab-<css_name>`` on the
    explorer (``css_name`` defaults to the kebab-cased class name without
    "Explorer", e.g. ``curvlab-finite-difference``), ``curvlab-control-<name>``
    on each control, ``curvlab-figure``, ``curvlab-readout`` and
    ``curvlab-error`` on the figure, readout and error area, ``curvlab-status`` on the
    status line; ``curvlab-busy`` (and ``curvlab-compiling`` during a first compile) on the
    explorer while it works.
    """

    #: Suffix of the per-explorer CSS class; ``None`` derives it from the class name.
    css_name: str | None = None

    #: Layout properties applied after every render (legend placement, spacing: what keeps
    #: titles, legends and axis titles apart in this explorer's figure at any width).
    figure_layout: dict = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.controls: dict[str, ipywidgets.Widget] = {}
        self.figure: go.FigureWidget | None = None
        self.error = ipywidgets.HTML(value="", layout=ipywidgets.Layout(display="none"))
        self.error.add_class("curvlab-error")
        self.readout = ipywidgets.HTML(value="")
        self.readout.add_class("curvlab-readout")
        self.status = ipywidgets.HTML(value="")
        self.status.add_class("curvlab-status")
        self._style = ipywidgets.HTML(
            value=f"<style>{EXPLORER_CSS}</style>", layout=ipywidgets.Layout(display="none")
        )
        self._style.add_class("curvlab-style")
        self._refreshing = False
        self._watched: list = []
        self._busy_shown: tuple[bool, bool] = (False, False)
        self.last_result = None
        self.last_error: Exception | None = None
        self.last_refresh_seconds = 0.0
        self.num_refreshes = 0
        self._hold_depth = 0
        self._dirty = False
        self._flush_scheduled = False
        self._control_names: dict[int, str] = {}

    # ------------------------------------------------------------------ setup

    def _setup(
        self,
        controls: dict[str, ipywidgets.Widget],
        figure: go.FigureWidget,
        layout_children: list | None = None,
    ) -> None:
        """Register the controls and the figure, lay them out, and run the first refresh.

        Parameters
        ----------
        controls : dict
            Name -> widget. Names are the keyword arguments of ``compute``
            (for widgets that have a ``value``); each widget is also set as an
            attribute of the explorer under its name (if not already). Widgets
            without ``value`` (buttons) are registered for layout and CSS only.
        figure : go.FigureWidget
            The figure ``_render`` updates.
        layout_children : list, optional
            The explorer's children; default: the controls in a wrapping row,
            then the error area, the readout and the figure.
        """
        if not isinstance(figure, go.FigureWidget):
            raise TypeError(
                f"figure must be a plotly.graph_objects.FigureWidget, got {type(figure).__name__}"
            )
        for name, widget in controls.items():
            if not name.isidentifier():
                raise ValueError(f"control name {name!r} must be a Python identifier")
            if hasattr(type(self), name):
                raise ValueError(f"control name {name!r} clashes with an attribute of {type(self).__name__}")
            existing = self.__dict__.get(name)
            if existing is not None and existing is not widget:
                raise ValueError(f"attribute {name!r} is already set to a different object")
            setattr(self, name, widget)
            widget.add_class(f"curvlab-control-{css_class(name)}")
            fit_label(widget)
        self.controls = dict(controls)
        self._control_names = {id(w): n for n, w in controls.items()}
        self.figure = figure
        with contextlib.suppress(AttributeError):
            figure.add_class("curvlab-figure")
        if figure.layout.width is None:  # follow the container's width, also when the window is resized
            figure.layout.autosize = True
            figure._config = {**(figure._config or {}), "responsive": True}
        self._trace_edits_seen: collections.deque = collections.deque(maxlen=64)
        figure.observe(self._on_trace_deltas, names="_js2py_traceDeltas")
        self.add_class("curvlab-explorer")
        self.add_class(f"curvlab-{self.css_name or css_class(type(self).__name__.removesuffix('Explorer'))}")
        if layout_children is None:
            row = ipywidgets.HBox(list(controls.values()), layout=ipywidgets.Layout(flex_flow="row wrap"))
            row.add_class("curvlab-controls")
            layout_children = [row, self.error, self.readout, figure]
        layout_children = list(layout_children)
        if self.status not in layout_children:
            at = layout_children.index(self.error) + 1 if self.error in layout_children else 0
            layout_children.insert(at, self.status)
        if self._style not in layout_children:
            layout_children.append(self._style)
        self.children = tuple(layout_children)
        for widget in controls.values():
            if widget.has_trait("value"):
                widget.observe(self._on_control_change, names="value")
        self.refresh()  # first refresh: compiles the jitted functions (warm-up)

    def _on_trace_deltas(self, change) -> None:
        """A view drew the figure: ask it to measure its container again (``autosize`` relayout).

        A figure drawn before its container is laid out (a dashboard tab built when first
        selected) gets plotly's default width of 700 px and keeps it until a relayout; with
        ``autosize`` a relayout measures the container again and the figure fills the page.
        After drawing the figure, a view reports its trace defaults with the id of the last
        trace edit: the first report, or one with an id already reported (another view drawing
        the same state), means a view has just drawn it; replies to edits carry new ids.
        """
        msg = change.get("new")
        if not msg:
            return
        edit_id = msg.get("trace_edit_id")
        drawn = not self._trace_edits_seen or edit_id in self._trace_edits_seen
        self._trace_edits_seen.append(edit_id)
        if drawn:
            with contextlib.suppress(Exception):  # plotly's private API: never break the explorer
                self.figure._send_relayout_msg({"autosize": True})

    # --------------------------------------------------------------- contract

    def compute(self, **controls: Any):  # pragma: no cover - abstract
        """Numbers for the given control values (a plain function; override)."""
        raise NotImplementedError

    def _render(self, result) -> None:  # pragma: no cover - abstract
        """Write ``result`` into ``self.figure`` and ``self.readout`` (override)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state

    def values(self) -> dict[str, Any]:
        """Current control values by name (controls that have a ``value``)."""
        return {name: w.value for name, w in self.controls.items() if w.has_trait("value")}

    def first_compile(self, **controls: Any) -> tuple[str, str, float] | None:
        """What a refresh with these control values compiles for the first time, if anything.

        Override to return ``(key, what, guess_s)``: ``key`` names the compile (unique across
        explorers, e.g. ``"curvature/mlp/float32"``), ``what`` is shown as "compiling <what>"
        and ``guess_s`` is the estimate before any measurement. Default: ``None``.
        """
        return None

    @staticmethod
    def compile_estimate(key: str) -> float | None:
        """Seconds the first refresh that compiled ``key`` took when last measured (``None`` if never)."""
        return _read_compile_seconds().get(key)

    def status_message(self, values: dict[str, Any]) -> tuple[str, str | None]:
        """The status line for a refresh with ``values``: ``(text, compile key or None)``."""
        try:
            first = self.first_compile(**values)
        except Exception:  # noqa: BLE001 - a broken hook only loses the message
            first = None
        if first is None or first[0] in _COMPILED:
            return "computing\u2026", None
        key, what, guess = first
        estimate = self.compile_estimate(key)
        seconds = max(1, round(guess if estimate is None else estimate))
        return f"compiling {what}, about {seconds} s the first time\u2026", key

    @property
    def busy(self) -> bool:
        """Whether a refresh runs or a watched worker has work."""
        return self._refreshing or any(w.busy for w in self._watched)

    def watch_worker(self, worker, message: str = "computing\u2026") -> None:
        """Show the busy state while ``worker`` (a ``BackgroundWorker``) has work, with ``message``."""
        self._watched.append(worker)

        def changed(busy: bool) -> None:
            if busy and not self._refreshing:
                self._set_status(message)
            self._show_busy()

        worker.add_listener(changed)

    def _set_status(self, text: str) -> None:
        value = f"<i>{html.escape(text)}</i>"
        if self.status.value != value:
            self.status.value = value

    def _show_busy(self, compiling: bool = False) -> None:
        """Sync the CSS classes with :attr:`busy` (only changes are sent to the browser)."""
        state = (self.busy, compiling and self._refreshing)
        if state == self._busy_shown:
            return
        self._busy_shown = state
        for cls, on in (("curvlab-busy", state[0]), ("curvlab-compiling", state[1])):
            if on:
                self.add_class(cls)
            else:
                self.remove_class(cls)

    def refresh(self):
        """``compute(**values())`` then ``_render``; errors go to :attr:`error`, never raise.

        Returns the result, or ``None`` if compute or render failed (the figure
        then keeps its last good state). The explorer shows its busy state meanwhile.
        """
        self._dirty = False
        self.num_refreshes += 1
        start = time.perf_counter()
        values = self.values()
        text, compile_key = self.status_message(values)
        outer = self._refreshing
        self._refreshing = True
        self._set_status(text)
        self._show_busy(compiling=compile_key is not None)
        try:
            result = self.compute(**values)
            self._render_batched(result)
        except Exception as err:  # noqa: BLE001 - shown to the user, never propagated
            self.last_error = err
            self.show_error(err)
            return None
        finally:
            self.last_refresh_seconds = time.perf_counter() - start
            self._refreshing = outer
            if not outer:
                self._show_busy()
        if compile_key is not None:
            _COMPILED.add(compile_key)
            _write_compile_seconds(compile_key, self.last_refresh_seconds)
        self.last_result = result
        self.last_error = None
        self.clear_error()
        return result

    def _render_batched(self, result) -> None:
        """``_render`` with the figure in batch mode; its edits are sent as :func:`send_batch` does."""
        with batched(self.figure):
            self._render(result)
            self._apply_figure_layout()

    def _apply_figure_layout(self) -> None:
        """Apply :attr:`figure_layout` over whatever ``_render`` set (also inside a batch).

        In batch mode plotly records an edit only if it differs from the figure's state before
        the batch, so a builder's reset followed by the override would send the reset alone:
        the override's paths replace any queued edit of the same or a deeper path instead.
        """
        fig = self.figure
        flat = _flatten_layout(self.figure_layout)
        if not flat:
            return
        if not fig._in_batch_mode:
            fig.update_layout({path.replace(".", "_"): value for path, value in flat.items()})
            return
        edits = fig._batch_layout_edits
        for path, value in flat.items():
            queued = [k for k in edits if k == path or k.startswith(path + ".") or path.startswith(k + ".")]
            current = fig.layout[path]
            if isinstance(value, (list, tuple)) and current is not None:
                current, value = tuple(current), list(value)
                if current == tuple(value) and not queued:
                    continue
            elif not queued and current == value:
                continue
            for k in queued:
                if k == path or k.startswith(path + "."):
                    del edits[k]
            edits[path] = value

    def show_error(self, err: Exception | str) -> None:
        """Show ``err`` (an exception or a message) in red in the error area."""
        if isinstance(err, Exception):
            msg = str(err) or type(err).__name__
            if not isinstance(err, (ValueError, TypeError)):
                msg = f"{type(err).__name__}: {msg}"
        else:
            msg = str(err)
        self.error.value = f'<span style="color:#c62828"><b>Error:</b> {html.escape(msg)}</span>'
        self.error.layout.display = None

    def clear_error(self) -> None:
        """Empty and hide the error area."""
        if self.error.value:
            self.error.value = ""
        self.error.layout.display = "none"

    # ------------------------------------------------------------- scheduling

    @contextlib.contextmanager
    def hold_refresh(self):
        """Suppress refreshes inside the block; refresh once at its end if anything changed."""
        self._hold_depth += 1
        try:
            yield self
        finally:
            self._hold_depth -= 1
            if self._hold_depth == 0 and self._dirty:
                self.refresh()

    def _control_changed(self, name: str, change) -> None:
        """Hook run on every control change, before the refresh (default: nothing).

        Override to adjust other controls (slider ranges, enabled/visible
        state) when one changes; changes made here do not trigger refreshes
        of their own: the one refresh that follows sees them all.
        """

    def _on_control_change(self, change) -> None:
        self._dirty = True
        if self._hold_depth:
            return
        owner = change.get("owner")
        name = self._control_names.get(id(owner), "")
        self._hold_depth += 1
        try:
            self._control_changed(name, change)
        except Exception as err:  # noqa: BLE001 - a broken hook must not kill the kernel
            self.last_error = err
            self.show_error(err)
        finally:
            self._hold_depth -= 1
        from_browser = bool(getattr(owner, "_property_lock", None))
        if from_browser:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    loop.call_soon(self._flush)
                return
        self.refresh()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._dirty and not self._hold_depth:
            self.refresh()

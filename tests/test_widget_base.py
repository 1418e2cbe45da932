"""curvlab.widgets._base.Explorer: compute -> render wiring, error area, scheduling."""

import asyncio
import subprocess
import sys

import ipywidgets as W
import plotly.graph_objects as go
import pytest

from curvlab.widgets import Explorer


class Toy(Explorer):
    """a -> line from (0, 0) to (1, a); a < 0 fails in compute, a > 4 fails in render."""

    def __init__(self):
        super().__init__()
        self.a = W.FloatSlider(value=1.0, min=-5, max=5)
        self.b = W.Dropdown(options=["p", "q"], value="p")
        self.go_button = W.Button(description="go")
        self.changed = []
        fig = go.FigureWidget(go.Figure([go.Scatter(x=[0, 1], y=[0, 0], name="line")]))
        self._setup({"a": self.a, "b": self.b, "go_button": self.go_button}, fig)

    def compute(self, a, b):
        if a < 0:
            raise RuntimeError("negative a")
        return (a, b)

    def _render(self, result):
        a, b = result
        self.figure.data[0].y = [0, a]
        if a > 4:
            raise ValueError("render failed")
        self.readout.value = f"a = {a}, b = {b}"

    def _control_changed(self, name, change):
        self.changed.append(name)
        if name == "b":
            self.a.value = 2.0  # must not trigger a refresh of its own


def test_first_refresh_at_construction_and_values():
    t = Toy()
    assert t.num_refreshes == 1 and t.last_result == (1.0, "p")
    assert t.values() == {"a": 1.0, "b": "p"}  # the button has no value
    assert tuple(t.figure.data[0].y) == (0, 1.0)
    assert t.readout.value == "a = 1.0, b = p"
    assert t.error.value == "" and t.error.layout.display == "none"
    assert isinstance(t.figure, go.FigureWidget)


def test_control_change_refreshes_synchronously():
    t = Toy()
    t.a.value = 3.0
    assert t.last_result == (3.0, "p") and tuple(t.figure.data[0].y) == (0, 3.0)
    t.b.value = "q"
    assert t.changed[-1] == "b" and t.last_result == (2.0, "q")  # hook ran first, one refresh saw both


def test_hook_changes_do_not_add_refreshes():
    t = Toy()
    n = t.num_refreshes
    t.b.value = "q"
    assert t.num_refreshes == n + 1


def test_compute_error_is_shown_not_raised_and_figure_kept():
    t = Toy()
    t.a.value = 2.0
    t.a.value = -1.0  # must not raise
    assert "negative a" in t.error.value and "RuntimeError" in t.error.value
    assert t.error.layout.display is None
    assert isinstance(t.last_error, RuntimeError)
    assert tuple(t.figure.data[0].y) == (0, 2.0) and t.last_result == (2.0, "p")
    t.a.value = 1.5  # recovers, error cleared
    assert t.error.value == "" and t.error.layout.display == "none" and t.last_error is None
    assert tuple(t.figure.data[0].y) == (0, 1.5)


def test_render_error_drops_partial_figure_edits():
    t = Toy()
    t.a.value = 4.5  # _render assigns y, then raises
    assert "render failed" in t.error.value and "ValueError" not in t.error.value
    assert tuple(t.figure.data[0].y) == (0, 1.0)
    assert t.refresh() is None


def test_error_message_is_escaped():
    t = Toy()
    t.show_error(ValueError("<script>alert(1)</script>"))
    assert "<script>" not in t.error.value and "&lt;script&gt;" in t.error.value


def test_refresh_returns_result():
    t = Toy()
    assert t.refresh() == (1.0, "p")
    assert t.last_refresh_seconds >= 0.0


def test_hold_refresh_coalesces():
    t = Toy()
    n = t.num_refreshes
    with t.hold_refresh():
        t.a.value = 2.0
        t.a.value = 3.0
        assert t.num_refreshes == n
    assert t.num_refreshes == n + 1 and t.last_result == (3.0, "p")
    with t.hold_refresh():
        pass
    assert t.num_refreshes == n + 1  # nothing changed: no refresh


def test_browser_changes_are_coalesced_on_the_event_loop():
    t = Toy()
    n = t.num_refreshes

    async def drag():
        for v in (1.1, 1.2, 1.3, 1.4):
            t.a.set_state({"value": v})  # what a comm message from the browser does
        assert t.num_refreshes == n  # deferred
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(drag())
    assert t.num_refreshes == n + 1 and t.last_result == (1.4, "p")


def test_css_classes():
    t = Toy()
    assert "curvlab-explorer" in t._dom_classes and "curvlab-toy" in t._dom_classes
    assert "curvlab-control-a" in t.a._dom_classes
    assert "curvlab-control-go-button" in t.go_button._dom_classes
    assert "curvlab-error" in t.error._dom_classes and "curvlab-readout" in t.readout._dom_classes
    assert t.figure in t.children


def test_setup_validates():
    class Clash(Explorer):
        def __init__(self, name):
            super().__init__()
            self._setup({name: W.FloatSlider()}, go.FigureWidget())

        def compute(self, **kw):
            return None

        def _render(self, result):
            pass

    with pytest.raises(ValueError, match="clashes"):
        Clash("keys")
    with pytest.raises(ValueError, match="identifier"):
        Clash("not a name")

    class NoFig(Clash):
        def __init__(self):
            Explorer.__init__(self)
            self._setup({"a": W.FloatSlider()}, go.Figure())

    with pytest.raises(TypeError, match="FigureWidget"):
        NoFig()


def test_lazy_exports():
    code = (
        "import sys\n"
        "import curvlab.widgets as w\n"
        "assert 'ipywidgets' not in sys.modules, 'package import pulled ipywidgets'\n"
        "w.Explorer\n"
        "assert 'curvlab.widgets._base' in sys.modules\n"
        "others = ['spectrum', 'curvature', 'cg_explorer', 'finite_difference', 'hessian_free']\n"
        "loaded = [m for m in others if 'curvlab.widgets.' + m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    import curvlab.widgets as w

    # later issues add explorers
    assert set(w.__all__) >= {
        "Explorer", "SpectrumExplorer", "CurvatureExplorer", "CGExplorer",
        "FiniteDifferenceExplorer", "HessianFreeExplorer",
    }  # fmt: skip
    with pytest.raises(AttributeError):
        w.NoSuchExplorer  # noqa: B018


# ----------------------------------------------------------------- slow work visible, labels


class Slow(Explorer):
    """model "big" compiles on first use (named by first_compile); records the busy state compute saw."""

    def __init__(self):
        super().__init__()
        self.model = W.Dropdown(options=["small", "big"], value="small", description="model of the network")
        self.flag = W.Checkbox(value=False, description="a rather long checkbox description")
        self.seen = []
        self._setup({"model": self.model, "flag": self.flag}, go.FigureWidget(go.Figure([go.Scatter(y=[0])])))

    def first_compile(self, model="small", **_):
        return ("test-slow/big", "the big model", 12.0) if model == "big" else None

    def compute(self, model, flag):
        self.seen.append((self.busy, list(self._dom_classes), self.status.value))
        return model

    def _render(self, result):
        self.readout.value = result


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    import curvlab.widgets._base as base

    monkeypatch.setenv("CURVLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(base, "_COMPILED", set())
    return tmp_path


def test_busy_state_during_refresh_and_cleared_after(cache_dir):
    t = Slow()
    busy, classes, status = t.seen[-1]
    assert busy and "curvlab-busy" in classes and "curvlab-compiling" not in classes
    assert "computing" in status
    assert not t.busy and "curvlab-busy" not in t._dom_classes
    assert t.status in t.children and "curvlab-status" in t.status._dom_classes
    # the style sheet that dims the figure and delays the line ships with the explorer
    style = [c for c in t.children if "curvlab-style" in c._dom_classes]
    assert len(style) == 1 and ".curvlab-busy .curvlab-figure" in style[0].value


def test_busy_state_cleared_after_a_failing_compute(cache_dir):
    t = Toy()
    t.a.value = -1.0
    assert t.last_error is not None and not t.busy and "curvlab-busy" not in t._dom_classes


def test_first_compile_message_and_measured_estimate(cache_dir):
    import curvlab.widgets._base as base

    t = Slow()
    t.model.value = "big"
    busy, classes, status = t.seen[-1]
    assert "curvlab-compiling" in classes
    assert "compiling the big model, about 12 s the first time" in status  # the guess: nothing measured
    measured = Explorer.compile_estimate("test-slow/big")
    assert measured is not None and measured == pytest.approx(t.last_refresh_seconds, abs=0.01)
    assert (cache_dir / "compile_seconds.json").is_file()
    t.model.value = "small"
    t.model.value = "big"  # compiled in this process: a plain "computing…"
    assert "computing" in t.seen[-1][2] and "curvlab-compiling" not in t.seen[-1][1]
    base._COMPILED.clear()  # a new kernel: the message now quotes the measured time
    base._write_compile_seconds("test-slow/big", 33.4)
    t.model.value = "small"
    t.model.value = "big"
    assert "about 33 s the first time" in t.seen[-1][2]


def test_labels_get_their_natural_width_and_a_tooltip(cache_dir):
    t = Slow()
    assert t.model.style.description_width == "initial"
    assert t.model.tooltip == "model of the network"
    assert t.model.layout.width == "auto"
    assert t.flag.indent is False and t.flag.layout.width == "auto"
    assert t.flag.tooltip == "a rather long checkbox description"


def test_figure_follows_its_container():
    t = Toy()
    assert t.figure.layout.autosize is True and t.figure.layout.width is None
    assert t.figure._config.get("responsive") is True


def test_figure_layout_applied_after_every_render():
    class Legend(Toy):
        figure_layout = {"legend": {"orientation": "v", "x": 1.02}}

        def _render(self, result):
            super()._render(result)
            self.figure.update_layout(legend_orientation="h")  # what a builder may reset

    t = Legend()
    t.a.value = 2.0
    assert t.figure.layout.legend.orientation == "v" and t.figure.layout.legend.x == 1.02


def test_watched_worker_shows_busy_until_idle():
    import threading

    from curvlab.widgets._worker import BackgroundWorker

    t = Toy()
    worker = BackgroundWorker("test-busy")
    t.watch_worker(worker, "computing the slow part…")
    release = threading.Event()

    async def run():
        loop = asyncio.get_running_loop()
        worker.submit(release.wait, lambda result, error: None, loop)
        assert t.busy and "curvlab-busy" in t._dom_classes
        assert "computing the slow part" in t.status.value
        release.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if "curvlab-busy" not in t._dom_classes:
                break

    asyncio.run(run())
    assert not t.busy and "curvlab-busy" not in t._dom_classes


def test_figure_layout_sends_nothing_when_already_applied():
    class Domains(Toy):
        figure_layout = {"xaxis": {"domain": [0.0, 0.4]}}

    t = Domains()
    assert tuple(t.figure.layout.xaxis.domain) == (0.0, 0.4)
    sent = []
    t.figure.plotly_update = lambda **kw: sent.append(kw.get("relayout_data"))
    t.a.value = 2.0
    assert sent and all(not r for r in sent)  # trace edits only: no layout edit re-sent


def test_dashboard_placeholder_quotes_the_measured_build_time(cache_dir):
    import curvlab.widgets._base as base
    from curvlab.app import dashboard

    key = dashboard.TABS[1].key
    base._write_compile_seconds(f"dashboard/{key}", 21.6)
    shown = []

    def factory():
        shown.append(dash.tab.children[1].children[1].value)  # what the visitor sees while it builds
        return W.HTML("built")

    dash = dashboard.build_dashboard(
        display=False,
        speed_up=False,
        factories={dashboard.TABS[0].key: lambda: W.HTML("first"), key: factory},
    )
    dash.tab.selected_index = 1
    assert shown and "about 22 s" in shown[0] and "Loading" in shown[0]
    assert "curvlab-loading" in dash.tab.children[2].children[1]._dom_classes


def test_send_batch_sends_one_update_with_only_real_values():
    """Edits on traces of different kinds go out as one ``update`` (one plotly redraw in the
    browser), with no ``Undefined`` placeholder; replaying the message on the state a front end
    had before (as plotly's front-end model does, without deserializing) gives the Python state."""
    import copy

    import numpy as np
    import plotly.graph_objects as go
    from plotly.basedatatypes import Undefined

    from curvlab.widgets._base import batched

    fig = go.FigureWidget(
        [
            go.Scatter(x=[0, 1], y=[0, 1], name="a", customdata=[5, 6]),
            go.Scatter(x=[0, 1], y=[2, 3], name="b"),
            go.Scatterpolar(r=[1, 2], theta=[0, 90], name="c"),
            go.Scatter(x=[9], y=[9], name="untouched"),
        ]
    )
    before = copy.deepcopy(fig._data)
    sent = []
    fig._send_update_msg = lambda **kw: sent.append(copy.deepcopy(kw))
    with batched(fig):
        fig.data[0].x = [1, 2]
        fig.data[0].y = [3, 4]
        fig.data[1].y = [7, 8]
        fig.data[2].r = np.array([4.0, 5.0])
        fig.layout.title.text = "t"
    assert len(sent) == 1
    msg = sent[0]
    assert msg["trace_indexes"] == [0, 1, 2]
    assert msg["relayout_data"] == {"title.text": "t"}
    style = msg["restyle_data"]
    assert set(style) == {"x", "y", "r"}
    flat = [v for vals in style.values() for v in vals]
    assert not any(v is Undefined for v in flat)
    assert style["x"][1] == [0, 1]  # trace b's x was not edited: its stored value goes along
    assert style["r"][0] is None and style["x"][2] is None  # no such property on that trace type
    # replay as the front-end model does: set each listed property (null deletes it)
    replay = copy.deepcopy(before)
    for p, vals in style.items():
        for i, v in zip(msg["trace_indexes"], vals, strict=True):
            if v is None:
                replay[i].pop(p, None)
            else:
                replay[i][p] = v
    for got, want in zip(replay, fig._data, strict=True):
        assert set(got) == set(want)
        for k in want:
            assert (
                np.array_equal(np.asarray(got[k]), np.asarray(want[k])) if k != "type" else got[k] == want[k]
            )
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[1].y) == [7, 8] and list(fig.data[2].r) == [4, 5]
    assert list(fig.data[0].customdata) == [5, 6]  # untouched properties stay


def test_synced_state_follows_edits_once_the_figure_is_quiet(monkeypatch):
    """Without an event loop the synced state is refreshed with every batch; in a kernel (a running
    loop) once, SYNC_QUIET_S after the last of a burst of edits (a slider drag)."""
    import plotly.graph_objects as go

    import curvlab.widgets._base as base

    monkeypatch.setattr(base, "SYNC_QUIET_S", 1.0)
    fig = go.FigureWidget([go.Scatter(x=[0, 1], y=[0, 1]), go.Scatterpolar(r=[1], theta=[0])])
    with base.batched(fig):
        fig.data[0].y = [5, 6]
    assert list(fig._widget_data[0]["y"]) == [5, 6]  # no loop: at once
    sent = []
    fig.observe(lambda change: sent.append(change["name"]), names=["_widget_data"])

    async def drag():
        for k in range(5):
            with base.batched(fig):
                fig.data[0].y = [k, k + 1]
                fig.data[1].r = [k]
            await asyncio.sleep(0)
        assert sent == [] and list(fig._widget_data[0]["y"]) == [5, 6]  # not at every step
        for _ in range(100):
            await asyncio.sleep(0.1)
            if sent:
                break

    asyncio.run(drag())
    assert sent == ["_widget_data"]  # once, after the burst
    assert list(fig._widget_data[0]["y"]) == [4, 5] and list(fig._widget_data[1]["r"]) == [4]

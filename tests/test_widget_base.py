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

    assert set(w.__all__) == {
        "Explorer", "SpectrumExplorer", "CurvatureExplorer", "CGExplorer",
        "FiniteDifferenceExplorer", "HessianFreeExplorer",
    }  # fmt: skip
    with pytest.raises(AttributeError):
        w.NoSuchExplorer  # noqa: B018

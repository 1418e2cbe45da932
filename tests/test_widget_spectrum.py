"""SpectrumExplorer: set controls in Python, check the figure against the math (no browser)."""

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from curvlab import (  # noqa: E402
    DenseOperator,
    DiagonalOperator,
    SpectrumCache,
    ghost_mask,
    lanczos,
    problems,
    spectral_density,
    viz,
)
from curvlab.problems import strakos  # noqa: E402
from curvlab.widgets import spectrum as spectrum_module  # noqa: E402
from curvlab.widgets.spectrum import SpectrumExplorer  # noqa: E402
from tests.reference import CountingOperator
from tests.widget_helpers import arr, trace

#: the explorer's Lanczos start vector and SLQ probes (documented in SpectrumExplorer.operator)
LANCZOS_KEY, SLQ_KEY = jax.random.key(0), jax.random.key(1)

CONTROLS = (
    "problem",
    "kappa",
    "n",
    "num_steps",
    "num_probes",
    "damping",
    "preconditioned",
    "reorthogonalize",
)


@pytest.fixture(scope="module")
def explorer():
    ex = SpectrumExplorer()
    assert ex.error.value == "", ex.error.value
    return ex


@pytest.fixture
def ex(explorer):
    """The shared explorer reset to a small Strakoš quadratic (n = 50, κ = 1e3)."""
    with explorer.hold_refresh():
        explorer.problem.value = "strakos"
        explorer.kappa.value = 1e3
        explorer.n.value = 50
        explorer.num_steps.value = 40
        explorer.num_probes.value = 10
        explorer.damping.value = 0.0
        explorer.preconditioned.value = False
        explorer.reorthogonalize.value = True
    explorer.refresh()
    assert explorer.error.value == ""
    return explorer


def points(tr):
    """``(x, y)`` of a marker trace."""
    return arr(tr.x), arr(tr.y)


def Counted(n=100, kappa=1e3):
    """The Strakoš quadratic the explorer builds, as a custom operator whose products are counted."""
    return CountingOperator(problems.quadratic(eigenvalues=strakos(n, kappa), key=jax.random.key(n)).matrix)


def test_constructs_with_defaults_and_exposes_controls(explorer):
    for name in CONTROLS:
        assert explorer.controls[name] is getattr(explorer, name)
    assert set(explorer.values()) == set(CONTROLS)
    names = [t.name for t in explorer.figure.data]
    for expected in ("Ritz values", "ghost copies", "exact eigenvalues", "SLQ density", "exact spectrum"):
        assert expected in names
    assert "λ<sub>max</sub>" in explorer.readout.value
    # the default shows a quadratic whose extreme eigenvalues Lanczos finds
    r = explorer.last_result
    assert r.exact_eigenvalues is not None
    np.testing.assert_allclose(r.lambda_max, r.exact_eigenvalues[-1], rtol=1e-8)


def test_exact_spectrum_is_the_prescribed_one_shifted_by_damping(ex):
    prescribed = strakos(50, 1e3)
    for lam in (0.0, 2.5, 7.25):
        ex.damping.value = lam
        r = ex.last_result
        np.testing.assert_allclose(r.exact_eigenvalues, prescribed + lam, rtol=1e-10, atol=1e-9)
        rug = points(trace(ex.figure, "exact eigenvalues"))[1]
        np.testing.assert_allclose(np.sort(rug), prescribed + lam, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(
            np.sort(arr(trace(ex.figure, "exact spectrum").x)), prescribed + lam, rtol=1e-10
        )


def test_damping_shifts_ritz_values_and_density_by_lambda(ex):
    r0 = ex.last_result
    ritz0 = points(trace(ex.figure, "Ritz values"))[1]
    lam = 3.5
    ex.damping.value = lam
    r1 = ex.last_result
    ritz1 = points(trace(ex.figure, "Ritz values"))[1]
    scale = r0.lambda_max
    # same start vector: the Krylov space is shift invariant, every Ritz value moves by λ
    np.testing.assert_allclose(r1.lambda_min - r0.lambda_min, lam, atol=1e-8 * scale)
    np.testing.assert_allclose(r1.lambda_max - r0.lambda_max, lam, atol=1e-8 * scale)
    np.testing.assert_allclose(ritz1 - ritz0, lam, atol=1e-7 * scale)

    # the SLQ density moves with it: its mean (trace / n estimate) shifts by λ
    def mean(r):
        x, y = r.grid, r.density
        return np.trapezoid(x * y, x) / np.trapezoid(y, x)

    np.testing.assert_allclose(mean(r1) - mean(r0), lam, atol=1e-3 * scale)
    np.testing.assert_allclose(np.trapezoid(r1.density, r1.grid), 1.0, atol=1e-6)
    assert "damping λ = 3.5" in ex.figure.layout.title.text


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_damping_moves_reuse_the_undamped_runs_and_match_a_fresh_computation(reorthogonalize):
    """A damping move shifts the runs on A by λ (no product): the numbers of runs on A + λI."""
    n, steps, probes = 100, 40, 7  # the run breaks down only at step n > steps: shifts apply
    c = Counted(n)
    explorer = SpectrumExplorer(operator=c.op)
    kw = dict(problem="custom", kappa=1e3, n=n, num_steps=steps, num_probes=probes)
    kw.update(preconditioned=False, reorthogonalize=reorthogonalize)
    explorer.compute(damping=0.0, **kw)
    A = c.A
    for lam in (0.37, 4.2):
        r, n_mv = c.matvecs(lambda lam=lam: explorer.compute(damping=lam, **kw))
        # reorthogonalized: nothing recomputed; without: a Lanczos run of the 60-step bucket on A + λI
        assert n_mv == (0 if reorthogonalize else 60)
        op = DenseOperator(jnp.asarray(A + lam * np.eye(n)))
        sd = spectral_density(op, num_probes=10, num_steps=50, key=SLQ_KEY)  # 10 probes drawn for 7
        scale = float(np.max(np.abs(A))) + lam
        np.testing.assert_allclose(r.grid, arr(sd.grid), rtol=0, atol=1e-13 * scale)
        per_probe = arr(sd.per_probe_density)[:probes]
        d = per_probe.mean(axis=0)
        np.testing.assert_allclose(r.density, d, rtol=0, atol=1e-10 * d.max())
        s = per_probe.std(axis=0, ddof=1) / np.sqrt(probes)
        np.testing.assert_allclose(r.density_stderr, s, rtol=0, atol=1e-10 * d.max())
        np.testing.assert_allclose(r.exact_eigenvalues, strakos(n, 1e3) + lam, rtol=1e-12)
        lres = lanczos(op, 60, key=LANCZOS_KEY, reorthogonalize=reorthogonalize, history=True)
        ref = arr(lres.ritz_history)[:steps, :steps]
        assert np.array_equal(np.isnan(r.ritz_history), np.isnan(ref))
        if reorthogonalize:
            np.testing.assert_allclose(r.ritz_history, ref, rtol=0, atol=1e-12 * scale)
            assert np.array_equal(r.ghosts, ghost_mask(ref, exact_eigenvalues=r.exact_eigenvalues))
        else:
            # without reorthogonalization the run on A + λI is redone; its converged extremes
            # are still λ_i(A) + λ
            np.testing.assert_allclose(r.lambda_max, 1e3 + lam, rtol=1e-10)


def test_ritz_values_interlace_and_figure_matches_result(ex):
    r = ex.last_result
    assert r.ritz_history.shape == (40, 40)
    e = r.exact_eigenvalues
    finite = r.ritz_history[np.isfinite(r.ritz_history)]
    assert finite.size == 40 * 41 // 2
    # Cauchy interlacing: Ritz values lie inside the spectrum
    assert finite.min() >= e[0] - 1e-9 * e[-1] and finite.max() <= e[-1] + 1e-9 * e[-1]
    steps, values = points(trace(ex.figure, "Ritz values"))
    np.testing.assert_allclose(np.sort(values), np.sort(finite))
    assert steps.max() == 40
    ex.num_steps.value = 12
    assert ex.last_result.ritz_history.shape == (12, 12)
    assert points(trace(ex.figure, "Ritz values"))[0].max() == 12
    # fewer steps: the extreme Ritz values are less converged (never past the exact ones)
    assert ex.last_result.lambda_max <= r.lambda_max + 1e-9 * e[-1]


def test_lanczos_steps_truncation_is_exact(ex):
    """k steps shown from a longer run equal a k-step run: compare with a direct lanczos call."""
    ex.num_steps.value = 17
    r = ex.last_result
    direct = lanczos(ex.operator("strakos", 1e3, 50), 17, key=LANCZOS_KEY)
    np.testing.assert_allclose(r.ritz_history, np.asarray(direct.ritz_history), rtol=1e-9, atol=1e-9)


def test_ghosts_appear_without_reorthogonalization_only(ex):
    ex.n.value = 100
    ex.num_steps.value = 80
    on = ex.last_result
    assert on.num_copies_max == 1
    assert len(trace(ex.figure, "ghost copies").y) == 0
    assert "ghosts" not in ex.readout.value
    ex.reorthogonalize.value = False
    off = ex.last_result
    assert off.num_copies_max >= 2
    ghosts = arr(trace(ex.figure, "ghost copies").y)
    assert ghosts.size > 0
    # the ghosts are copies of converged eigenvalues: each sits on an exact eigenvalue
    e = off.exact_eigenvalues
    dist = np.min(np.abs(ghosts[:, None] - e[None, :]), axis=1)
    assert np.all(dist <= 1e-6 * e[-1])
    assert "ghosts" in ex.readout.value
    # the mask is the core's (float64: its default tolerance)
    assert ghost_mask(off.ritz_history, exact_eigenvalues=e).sum() == ghosts.size == off.ghosts.sum()


def test_preconditioned_spectrum_is_jacobi_scaled(ex):
    ex.damping.value = 1.0
    plain = ex.last_result
    ex.preconditioned.value = True
    r = ex.last_result
    e = r.exact_eigenvalues
    # D^{-1/2} (A + λI) D^{-1/2} has unit diagonal: its eigenvalues sum to n
    np.testing.assert_allclose(e.sum(), 50.0, rtol=1e-10)
    assert e[0] > 0
    assert r.lambda_max <= e[-1] * (1 + 1e-9) and r.lambda_min >= e[0] * (1 - 1e-9)
    assert not np.allclose(e, plain.exact_eigenvalues)
    assert "Jacobi" in ex.figure.layout.title.text


def test_kappa_changes_the_spectrum(ex):
    ex.kappa.value = 1e4
    np.testing.assert_allclose(ex.last_result.exact_eigenvalues, strakos(50, 1e4), rtol=1e-10)
    r = ex.last_result
    np.testing.assert_allclose(r.lambda_max, 1e4, rtol=1e-10)
    # Ritz values interlace, so the estimate never exceeds the true condition number
    assert 1.0 < r.kappa <= 1e4 * (1 + 1e-10)
    ex.problem.value = "geometric"
    np.testing.assert_allclose(ex.last_result.exact_eigenvalues, np.geomspace(1, 1e4, 50), rtol=1e-10)


def test_probes_change_the_density_band(ex):
    ex.num_probes.value = 1
    r1 = ex.last_result
    assert np.all(np.isnan(r1.density_stderr))
    ex.num_probes.value = 7
    r7 = ex.last_result
    assert r7.num_probes == 7 and np.all(np.isfinite(r7.density_stderr))
    upper = arr(trace(ex.figure, "density + stderr").y)
    np.testing.assert_allclose(upper, r7.density + r7.density_stderr)
    assert "7 probes" in ex.figure.layout.annotations[1].text


def test_mlp_hessian_spectrum(ex):
    ex.problem.value = "mlp"
    assert ex.error.value == "", ex.error.value
    r = ex.last_result
    assert r.n == 460 and ex.kappa.disabled and ex.n.disabled
    e = r.exact_eigenvalues
    assert e[0] < 0 < e[-1]  # the Hessian at initialization is indefinite
    np.testing.assert_allclose(r.lambda_max, e[-1], rtol=1e-6)
    assert np.isnan(r.kappa) and "indefinite" in ex.readout.value
    ex.damping.value = 0.5
    np.testing.assert_allclose(ex.last_result.lambda_max, e[-1] + 0.5, rtol=1e-6)
    np.testing.assert_allclose(ex.last_result.exact_eigenvalues, e + 0.5, atol=1e-10)


def test_custom_operator():
    d = np.linspace(1.0, 30.0, 30)
    ex = SpectrumExplorer(operator=DiagonalOperator(jnp.asarray(d)))
    assert ex.problem.value == "custom" and ex.error.value == ""
    np.testing.assert_allclose(ex.last_result.exact_eigenvalues, d)
    ex.damping.value = 2.0
    np.testing.assert_allclose(ex.last_result.exact_eigenvalues, d + 2.0)
    np.testing.assert_allclose(ex.last_result.lambda_max, 32.0, rtol=1e-10)


def test_compute_rejects_bad_values(ex):
    base = ex.values()
    for name, bad in (("num_steps", 0), ("num_probes", 0), ("damping", float("nan")), ("problem", "nope")):
        with pytest.raises(ValueError, match=name if name != "problem" else "problem"):
            ex.compute(**{**base, name: bad})


def test_errors_go_to_the_error_area(ex, monkeypatch):
    before = arr(trace(ex.figure, "Ritz values").y)

    def boom(**controls):
        raise ValueError("forced failure")

    monkeypatch.setattr(ex, "compute", boom)
    ex.damping.value = 1.0
    assert "forced failure" in ex.error.value
    np.testing.assert_array_equal(arr(trace(ex.figure, "Ritz values").y), before)
    monkeypatch.undo()
    ex.damping.value = 2.0
    assert ex.error.value == ""


# --- one Lanczos run serves every step count; runs cached per damping with the preconditioner ---


def jacobi_b(A, lam):
    """D^{-1/2} (A + λI) D^{-1/2}, D = |diag(A) + λ| (dense, independent of the explorer)."""
    s = 1.0 / np.sqrt(np.abs(np.diag(A) + lam))
    return s[:, None] * (A + lam * np.eye(A.shape[0])) * s[None, :]


def test_step_moves_are_prefixes_of_one_run():
    c = Counted(150)
    explorer = SpectrumExplorer(operator=c.op)
    kw = dict(problem="custom", kappa=1e2, n=150, num_probes=5, damping=0.0)
    kw.update(preconditioned=False, reorthogonalize=True)
    first = explorer.compute(num_steps=30, **kw)  # one 60-step Lanczos run, SLQ of 50 steps
    op = DenseOperator(jnp.asarray(c.A))
    # past 60 steps: one run of 200 steps (it stops at the invariant subspace, step n = 150) serves the rest
    for k, new_matvecs in ((26, 0), (45, 0), (60, 0), (61, 150), (150, 0), (200, 0), (61, 0), (30, 0)):
        r, n_mv = c.matvecs(lambda k=k: explorer.compute(num_steps=k, **kw))
        assert n_mv == new_matvecs, k
        direct = lanczos(op, k, key=LANCZOS_KEY)
        m = r.num_steps  # the steps taken: k, or n where the run stops
        assert m == min(k, 150) == direct.num_steps
        np.testing.assert_allclose(r.ritz_history, arr(direct.ritz_history)[:m, :m], rtol=1e-9, atol=1e-9)
    # the same 30 steps from the 60-step run and from the 200-step run
    np.testing.assert_allclose(
        explorer.compute(num_steps=30, **kw).ritz_history, first.ritz_history, rtol=1e-12
    )


def test_preconditioned_runs_are_kept_per_damping_and_match_the_math():
    n, steps, probes = 100, 40, 7
    c = Counted(n)
    explorer = SpectrumExplorer(operator=c.op)
    kw = dict(problem="custom", kappa=1e3, n=n, num_steps=steps, num_probes=probes)
    kw.update(preconditioned=True, reorthogonalize=True)
    r1 = explorer.compute(damping=0.4, **kw)
    explorer.compute(damping=0.8, **kw)
    again, n_mv = c.matvecs(lambda: explorer.compute(damping=0.4, **kw))  # moving back: no product
    assert n_mv == 0
    np.testing.assert_array_equal(again.exact_eigenvalues, r1.exact_eigenvalues)
    np.testing.assert_array_equal(again.ritz_history, r1.ritz_history)
    np.testing.assert_array_equal(again.density, r1.density)
    # the numbers are those of B = D^{-1/2} (A + λI) D^{-1/2} computed directly
    B = jacobi_b(c.A, 0.4)
    np.testing.assert_allclose(r1.exact_eigenvalues, np.linalg.eigvalsh(B), rtol=1e-12, atol=1e-13)
    opB = DenseOperator(jnp.asarray(B))
    ref = lanczos(opB, steps, key=LANCZOS_KEY, reorthogonalize=True)
    np.testing.assert_allclose(r1.ritz_history, arr(ref.ritz_history), rtol=1e-9, atol=1e-9)
    sd = spectral_density(opB, num_probes=10, num_steps=50, key=SLQ_KEY)
    np.testing.assert_allclose(r1.grid, arr(sd.grid), rtol=1e-9, atol=1e-12)
    d = arr(sd.per_probe_density)[:probes].mean(axis=0)
    np.testing.assert_allclose(r1.density, d, rtol=0, atol=1e-8 * d.max())


# --- slow parts in the background after browser moves ---


def small_explorer(**controls):
    ex = SpectrumExplorer()
    with ex.hold_refresh():
        ex.n.value = 50
        ex.num_steps.value = 30
        for name, value in controls.items():
            getattr(ex, name).value = value
    assert ex.pending == () and ex.error.value == ""
    return ex


async def browser_move(ex, control, value):
    """What a slider message from the browser does; returns once the first refresh ran."""
    n = ex.num_refreshes
    getattr(ex, control).set_state({"value": value})
    assert ex.num_refreshes == n  # scheduled on the event loop, not run yet
    for _ in range(100):
        await asyncio.sleep(0)
        if ex.num_refreshes > n:
            return
    raise AssertionError("the refresh did not run")


async def until_complete(ex, timeout=60.0):
    deadline = time.monotonic() + timeout
    while ex.pending:
        assert time.monotonic() < deadline, f"still pending: {ex.pending}"
        await asyncio.sleep(0.005)


def test_browser_move_shows_ritz_values_at_once_and_the_slow_parts_when_ready(monkeypatch):
    ex = small_explorer(preconditioned=True)
    monkeypatch.setattr(spectrum_module, "DEFER_SECONDS", -1.0)  # every SLQ run and eigh is slow
    seen = {}

    async def drag():
        await browser_move(ex, "damping", 0.7)
        first = seen["first"] = ex.last_result
        assert first.pending == ("density", "exact") == ex.pending
        assert first.density is None and first.grid is None and first.exact_eigenvalues is None
        # the slow traces keep their last numbers, dimmed and marked
        assert trace(ex.figure, "SLQ density").opacity == pytest.approx(spectrum_module.PENDING_OPACITY)
        assert trace(ex.figure, "exact spectrum").opacity == pytest.approx(
            0.45 * spectrum_module.PENDING_OPACITY
        )
        assert "computing" in ex.figure.layout.annotations[1].text and "computing" in ex.readout.value
        assert trace(ex.figure, "Ritz values").opacity == 1.0
        await until_complete(ex)

    asyncio.run(drag())
    r = ex.last_result
    assert r.pending == () and r.damping == 0.7
    np.testing.assert_array_equal(r.ritz_history, seen["first"].ritz_history)  # the Ritz values came first
    B = jacobi_b(np.asarray(ex.operator("strakos", 1e3, 50).to_dense()), 0.7)
    np.testing.assert_allclose(r.exact_eigenvalues, np.linalg.eigvalsh(B), rtol=1e-12, atol=1e-13)
    direct = ex.compute(**ex.values())  # the complete figure is what compute gives
    np.testing.assert_array_equal(r.density, direct.density)
    np.testing.assert_array_equal(r.exact_eigenvalues, direct.exact_eigenvalues)
    np.testing.assert_allclose(arr(trace(ex.figure, "SLQ density").y), r.density)
    np.testing.assert_allclose(np.sort(arr(trace(ex.figure, "exact spectrum").x)), r.exact_eigenvalues)
    assert (
        trace(ex.figure, "SLQ density").opacity == 1.0 and trace(ex.figure, "exact spectrum").opacity == 0.45
    )
    assert "computing" not in ex.figure.layout.annotations[1].text and "computing" not in ex.readout.value

    async def switch():  # another problem: the old problem's density is not kept while the new one computes
        await browser_move(ex, "n", 100)
        assert "density" in ex.pending and len(trace(ex.figure, "SLQ density").y) == 0
        await until_complete(ex)

    asyncio.run(switch())
    assert ex.last_result.n == 100 and len(trace(ex.figure, "SLQ density").y) == ex.last_result.grid.size


def test_stale_background_results_are_kept_but_not_shown(monkeypatch):
    c = Counted(50)
    ex = SpectrumExplorer(operator=c.op)
    with ex.hold_refresh():
        ex.num_steps.value = 30
        ex.preconditioned.value = True
    monkeypatch.setattr(spectrum_module, "DEFER_SECONDS", -1.0)
    # the background's SLQ runs wait for the gate: the first job is still running at the second move
    gate, started = threading.Event(), threading.Event()
    density = SpectrumCache.spectral_density

    def gated(self, **kw):
        if kw.get("compute", True) and threading.current_thread() is not threading.main_thread():
            started.set()
            assert gate.wait(60)
        return density(self, **kw)

    monkeypatch.setattr(SpectrumCache, "spectral_density", gated)

    async def drag():
        await browser_move(ex, "damping", 0.5)
        assert started.wait(60)
        await browser_move(ex, "damping", 0.9)
        assert ex.last_result.damping == 0.9 and ex.pending == ("density", "exact")
        n = ex.num_refreshes
        gate.set()  # the job of 0.5 finishes after the move to 0.9: stale, then the job of 0.9
        await until_complete(ex)
        assert ex.num_refreshes == n + 1 and ex.last_result.damping == 0.9

    asyncio.run(drag())
    B = jacobi_b(c.A, 0.9)
    np.testing.assert_allclose(ex.last_result.exact_eigenvalues, np.linalg.eigvalsh(B), rtol=1e-12)
    # the stale job's runs were kept: moving back to 0.5 computes nothing, and is complete
    _, n_mv = c.matvecs(lambda: setattr(ex.damping, "value", 0.5))
    assert n_mv == 0 and ex.pending == ()
    np.testing.assert_allclose(
        ex.last_result.exact_eigenvalues, np.linalg.eigvalsh(jacobi_b(c.A, 0.5)), rtol=1e-12, atol=1e-13
    )


def test_python_changes_and_direct_calls_never_defer(monkeypatch):
    ex = small_explorer(preconditioned=True)
    monkeypatch.setattr(spectrum_module, "DEFER_SECONDS", -1.0)

    async def cell():  # a notebook cell runs on the kernel's event loop
        ex.damping.value = 0.3
        assert ex.pending == () and ex.last_result.density is not None
        assert ex.last_result.exact_eigenvalues is not None

    asyncio.run(cell())
    r = ex.compute(**{**ex.values(), "damping": 0.6})
    assert r.pending == () and r.exact_eigenvalues is not None and r.density is not None


def test_fast_parts_are_not_deferred(monkeypatch):
    ex = small_explorer(preconditioned=True)  # every kind of slow part has run once
    monkeypatch.setattr(spectrum_module, "DEFER_SECONDS", 1e9)  # ... and counts as fast

    async def drag():
        await browser_move(ex, "damping", 0.25)
        assert ex.pending == () and ex.last_result.exact_eigenvalues is not None

    asyncio.run(drag())


def test_figure_fills_the_width_and_the_legend_stays_clear_of_the_titles(explorer, monkeypatch):
    layout = explorer.figure.layout
    assert layout.autosize is True and layout.width is None
    # legend under the x-axis titles, in the bottom margin; titles above the plot area
    assert layout.legend.orientation == "h" and layout.legend.yref == "container"
    assert layout.legend.y == 0 and layout.legend.yanchor == "bottom"
    assert layout.margin.b >= 50 + viz.LEGEND_STRIP
    assert layout.title.yref == "container" and layout.title.yanchor == "top"
    # a view that draws the figure is asked to measure its container (autosize relayout), once per drawing
    sent = []
    monkeypatch.setattr(
        explorer.figure, "_send_relayout_msg", lambda data, source_view_id=None: sent.append(data)
    )
    explorer._trace_edits_seen.clear()
    explorer.figure._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": 7}  # first drawing
    assert sent == [{"autosize": True}]
    explorer.figure._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": 8}  # reply to an edit
    assert sent == [{"autosize": True}]
    explorer.figure._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": 8}  # another view draws it
    assert sent == [{"autosize": True}] * 2

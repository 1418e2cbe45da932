"""SpectrumExplorer: set controls in Python, check the figure against the math (no browser)."""

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

import jax.numpy as jnp  # noqa: E402

from curvlab import viz  # noqa: E402
from curvlab._lanczos import lanczos  # noqa: E402
from curvlab._operators import DenseOperator, DiagonalOperator  # noqa: E402
from curvlab._spectral import spectral_density  # noqa: E402
from curvlab.problems import strakos  # noqa: E402
from curvlab.widgets import spectrum as spectrum_module  # noqa: E402
from curvlab.widgets.spectrum import LANCZOS_BUCKETS, SpectrumExplorer  # noqa: E402

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


def trace(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def arr(values):
    return np.asarray(values, dtype=float)


def points(tr):
    """``(x, y)`` of a marker trace."""
    return arr(tr.x), arr(tr.y)


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
def test_damping_moves_reuse_the_undamped_runs_and_match_a_fresh_computation(explorer, reorthogonalize):
    """A damping move shifts the cached Lanczos/SLQ runs on A by λ: same numbers as runs on A + λI."""
    n, steps, probes = 100, 40, 7  # the run breaks down only at step n > steps: the cache applies
    kw = dict(problem="strakos", kappa=1e3, n=n, num_steps=steps, num_probes=probes)
    kw.update(preconditioned=False, reorthogonalize=reorthogonalize)
    explorer.compute(damping=0.0, **kw)
    state = explorer._state("strakos", 1e3, n)
    cached = {key: id(run) for key, run in state.undamped.items()}
    # Lanczos runs take a bucket of steps (a longer cached run serves fewer); SLQ draws 10 probes for 7
    lanczos_keys = {key for key in cached if key[0] == "lanczos"}
    assert all(key[1] in LANCZOS_BUCKETS for key in lanczos_keys)
    assert any(key[2] == reorthogonalize for key in lanczos_keys)
    assert {key for key in cached if key[0] == "slq"} == {("slq", 10, 50)}
    A = state.dense
    for lam in (0.37, 4.2):
        r = explorer.compute(damping=lam, **kw)
        # nothing recomputed on A, nothing added
        assert {key: id(run) for key, run in state.undamped.items()} == cached
        op = DenseOperator(jnp.asarray(A + lam * np.eye(n)))
        sd = spectral_density(op, num_probes=10, num_steps=50, key=explorer._slq_key)
        scale = float(np.max(np.abs(A))) + lam
        np.testing.assert_allclose(r.grid, arr(sd.grid), rtol=0, atol=1e-13 * scale)
        per_probe = arr(sd.per_probe_density)[:probes]
        d = per_probe.mean(axis=0)
        np.testing.assert_allclose(r.density, d, rtol=0, atol=1e-10 * d.max())
        s = per_probe.std(axis=0, ddof=1) / np.sqrt(probes)
        np.testing.assert_allclose(r.density_stderr, s, rtol=0, atol=1e-10 * d.max())
        np.testing.assert_allclose(r.exact_eigenvalues, strakos(n, 1e3) + lam, rtol=1e-12)
        if reorthogonalize:
            lres = lanczos(op, 60, key=explorer._lanczos_key, reorthogonalize=True, history=True)
            ref = arr(lres.ritz_history)[:steps, :steps]
            assert np.array_equal(np.isnan(r.ritz_history), np.isnan(ref))
            np.testing.assert_allclose(r.ritz_history, ref, rtol=0, atol=1e-12 * scale)
            ghosts = viz.ghost_mask(ref, rtol=10 * np.finfo(np.float64).eps ** (2 / 3))
            assert np.array_equal(r.ghosts, ghosts)
        else:
            # without reorthogonalization rounding errors grow once orthogonality is lost, so the
            # Ritz history is recomputed on A + λI; its converged extremes are still λ_i(A) + λ
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
    from curvlab._lanczos import lanczos

    ex.num_steps.value = 17
    r = ex.last_result
    A = DenseOperator(jnp.asarray(ex._state("strakos", 1e3, 50).dense))
    direct = lanczos(A, 17, key=ex._lanczos_key)
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
    # the mask agrees with viz.ghost_mask (float64: its default tolerance)
    assert viz.ghost_mask(off.ritz_history).sum() == ghosts.size == off.ghosts.sum()


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


def test_ghost_marks_respect_the_true_multiplicity():
    """Near-equal Ritz values are ghosts only when they outnumber the exact eigenvalues there."""
    from curvlab.viz import ghost_mask
    from curvlab.widgets.spectrum import _drop_true_multiplicity

    rtol = 1e-6
    ritz = np.array([[1.0, 1.0, 1.0, 5.0], [1.0, 5.0, 5.0, 5.0]])
    raw = ghost_mask(ritz, rtol=rtol)
    assert raw[0, :2].all() and raw[1, 1:3].all()
    kept = _drop_true_multiplicity(ritz, raw, np.array([1.0, 1.0, 1.0, 5.0]), rtol)
    assert not kept[0].any()  # 1.0 has multiplicity 3: three Ritz values there are no ghosts
    assert kept[1, 1:3].all()  # three copies of the simple eigenvalue 5.0: two are ghosts


# --- one Lanczos run serves every step count; runs cached per damping with the preconditioner ---


def jacobi_b(A, lam):
    """D^{-1/2} (A + λI) D^{-1/2}, D = |diag(A) + λ| (dense, independent of the explorer)."""
    s = 1.0 / np.sqrt(np.abs(np.diag(A) + lam))
    return s[:, None] * (A + lam * np.eye(A.shape[0])) * s[None, :]


def test_step_moves_are_prefixes_of_one_cached_run(explorer):
    kw = dict(problem="geometric", kappa=1e2, n=150, num_probes=5, damping=0.0)
    kw.update(preconditioned=False, reorthogonalize=True)
    state = explorer._state("geometric", 1e2, 150)
    first = explorer.compute(num_steps=17, **kw)
    assert [key for key in state.undamped if key[0] == "lanczos"] == [("lanczos", 60, True)]
    explorer.compute(num_steps=61, **kw)  # past the first run: one run of 200 steps
    keys = [key for key in state.undamped if key[0] == "lanczos"]
    assert keys == [("lanczos", 60, True), ("lanczos", 200, True)]
    runs = {id(state.undamped[key]) for key in keys}
    op = DenseOperator(jnp.asarray(state.dense))
    for k in (2, 17, 60, 61, 150, 17):
        r = explorer.compute(num_steps=k, **kw)
        direct = lanczos(op, k, key=explorer._lanczos_key)
        np.testing.assert_allclose(r.ritz_history, arr(direct.ritz_history), rtol=1e-9, atol=1e-9)
    # no new Lanczos run (only SLQ runs for the SLQ step counts of 2 and 17 steps)
    assert {id(run) for key, run in state.undamped.items() if key[0] == "lanczos"} == runs
    # the same 17 steps from the 60-step run and from the 200-step run
    np.testing.assert_allclose(
        explorer.compute(num_steps=17, **kw).ritz_history, first.ritz_history, rtol=1e-12
    )


def test_preconditioned_runs_are_cached_per_damping_and_match_the_math(explorer):
    n, steps, probes = 100, 40, 7
    kw = dict(problem="strakos", kappa=1e3, n=n, num_steps=steps, num_probes=probes)
    kw.update(preconditioned=True, reorthogonalize=True)
    state = explorer._state("strakos", 1e3, n)
    A = state.dense
    r1 = explorer.compute(damping=0.4, **kw)
    explorer.compute(damping=0.8, **kw)
    entries = dict(state.damped)
    assert (0.4, True, None) in entries and (0.8, True, None) in entries
    again = explorer.compute(damping=0.4, **kw)  # moving back: everything from the cache
    assert dict(state.damped) == entries
    assert again.exact_eigenvalues is r1.exact_eigenvalues
    np.testing.assert_array_equal(again.ritz_history, r1.ritz_history)
    np.testing.assert_array_equal(again.density, r1.density)
    # the numbers are those of B = D^{-1/2} (A + λI) D^{-1/2} computed directly
    B = jacobi_b(A, 0.4)
    np.testing.assert_allclose(r1.exact_eigenvalues, np.linalg.eigvalsh(B), rtol=1e-12, atol=1e-13)
    opB = DenseOperator(jnp.asarray(B))
    ref = lanczos(opB, steps, key=explorer._lanczos_key, reorthogonalize=True)
    np.testing.assert_allclose(r1.ritz_history, arr(ref.ritz_history), rtol=1e-9, atol=1e-9)
    sd = spectral_density(opB, num_probes=10, num_steps=50, key=explorer._slq_key)
    np.testing.assert_allclose(r1.grid, arr(sd.grid), rtol=1e-9, atol=1e-12)
    d = arr(sd.per_probe_density)[:probes].mean(axis=0)
    np.testing.assert_allclose(r1.density, d, rtol=0, atol=1e-8 * d.max())


def test_eigvalsh_with_one_blas_thread_is_eigvalsh():
    from threadpoolctl import threadpool_info

    from curvlab.widgets.spectrum import _eigvalsh

    rng = np.random.default_rng(0)
    M = rng.standard_normal((60, 60))
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    np.testing.assert_allclose(_eigvalsh(M), np.linalg.eigvalsh((M + M.T) / 2), rtol=1e-13, atol=1e-13)
    assert [(i["filepath"], i["num_threads"]) for i in threadpool_info()] == before  # limit lifted


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
    B = jacobi_b(ex._state("strakos", 1e3, 50).dense, 0.7)
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


def test_stale_background_results_are_cached_but_not_shown(monkeypatch):
    ex = small_explorer(preconditioned=True)
    monkeypatch.setattr(spectrum_module, "DEFER_SECONDS", -1.0)
    jobs = []
    monkeypatch.setattr(ex._background, "submit", jobs.append)  # run the jobs by hand, in any order

    async def drag():
        await browser_move(ex, "damping", 0.5)
        await browser_move(ex, "damping", 0.9)
        assert len(jobs) == 2 and ex.last_result.damping == 0.9 and ex.pending == ("density", "exact")
        n = ex.num_refreshes
        jobs[0]()  # the job of 0.5 finishes after the move to 0.9: stale
        for _ in range(5):
            await asyncio.sleep(0)
        assert ex.num_refreshes == n and ex.last_result.damping == 0.9 and ex.pending
        jobs[1]()
        for _ in range(5):
            await asyncio.sleep(0)
        assert ex.num_refreshes == n + 1 and ex.pending == () and ex.last_result.damping == 0.9

    asyncio.run(drag())
    A = ex._state("strakos", 1e3, 50).dense
    np.testing.assert_allclose(
        ex.last_result.exact_eigenvalues, np.linalg.eigvalsh(jacobi_b(A, 0.9)), rtol=1e-12
    )
    # the stale job's runs went to the cache: moving back to 0.5 computes nothing and is complete
    entry = ex._state("strakos", 1e3, 50).damped[(0.5, True, None)]
    np.testing.assert_allclose(entry.exact, np.linalg.eigvalsh(jacobi_b(A, 0.5)), rtol=1e-12, atol=1e-13)
    ex.damping.value = 0.5
    assert ex.pending == () and ex.last_result.exact_eigenvalues is entry.exact
    assert len(jobs) == 2


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


def test_fast_parts_are_not_deferred():
    ex = small_explorer(preconditioned=True)
    ex._seconds = dict.fromkeys(ex._seconds, 0.0)  # every kind seen before, and fast

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

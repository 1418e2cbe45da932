"""Tests of curvlab._diagnostics: dataset-averaged curvature operators and the curvature report.

Every number is checked in float64 against a dense reference (``numpy.linalg.eigh``
of ``jax.hessian`` of the full-batch loss, or the dense GGN / empirical Fisher).
Expensive ``diagnose`` calls are module-scoped fixtures so that each compiles once.
"""

import json
import os
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab import viz
from curvlab._curvature import dataset_operator
from curvlab._diagnostics import (
    CurvatureReport,
    DensityStats,
    DiagnoseOptions,
    Extremes,
    GradientStats,
    _lanczos_extremes,
    assemble_report,
    block_reports,
    density_stats,
    diagnose,
    extreme_eigenvalues,
    gradient_stats,
    summary_table,
)
from curvlab._operators import DenseOperator, DiagonalOperator, FunctionOperator
from curvlab._spectral import Estimate
from curvlab.app._script import diagnose_script
from tests.reference import dense_fisher, dense_hessian, matrix_with_spectrum

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
PLAIN = runpy.run_path(os.path.join(EXAMPLES, "plain_jax_mlp.py"))
NNX = runpy.run_path(os.path.join(EXAMPLES, "flax_nnx_mlp.py"))
EQX = runpy.run_path(os.path.join(EXAMPLES, "equinox_mlp.py"))

# tight solver tolerance: eigenvalue errors are O(residual^2 / gap)
OPTS = dict(k=2, num_probes=8, num_steps=40, rtol=1e-10, progress=False)


def plain_problem(num_examples=70):
    return PLAIN["make_problem"](jnp.float64, num_examples=num_examples)


def full_batch_hessian(p):
    return dense_hessian(p["loss_fn"], p["params"], p["data"])


@pytest.fixture(scope="module")
def plain_report():
    p = plain_problem()  # 70 examples, batches of 16: four full batches and a remainder of 6
    n = 38
    report = diagnose(**p, **OPTS, trace_probes=3 * n + 3, damping=0.0)
    return p, report


# ---------------------------------------------------------------------------
# the dataset operator
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_examples, batch_size", [(64, 16), (70, 16), (70, 70), (70, 1000), (9, 2)])
def test_dataset_average_equals_full_batch_hessian(num_examples, batch_size):
    p = plain_problem(num_examples)
    p["batch_size"] = batch_size
    op = dataset_operator(p["loss_fn"], p["params"], p["data"], batch_size=batch_size)
    np.testing.assert_allclose(np.asarray(op.to_dense()), full_batch_hessian(p), rtol=1e-10, atol=1e-12)


def test_remainder_batch_is_weighted_not_averaged_equally():
    # uniform weights over batches would differ from the full-batch Hessian when the last batch is smaller
    p = plain_problem(70)
    X, Y = p["data"]
    batches = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 70, 16)]
    uniform = sum(dense_hessian(p["loss_fn"], p["params"], b) for b in batches) / len(batches)
    op = dataset_operator(p["loss_fn"], p["params"], batches)
    dense = np.asarray(op.to_dense())
    np.testing.assert_allclose(dense, full_batch_hessian(p), rtol=1e-10, atol=1e-12)
    assert np.abs(dense - uniform).max() > 1e-3


def _loader_forms(batches):
    class Loader:  # an object whose __iter__ restarts, like a NumPy / torch loader
        def __iter__(self):
            return iter([tuple(np.asarray(a) for a in b) for b in batches])

    def gen():
        yield from batches

    return {
        "list": list(batches),
        "generator function": gen,
        "lambda": lambda: iter(batches),
        "loader": Loader(),
    }


@pytest.mark.parametrize("form", ["list", "generator function", "lambda", "loader"])
def test_iterable_data_matches_array_data(form):
    p = plain_problem(70)
    X, Y = p["data"]
    batches = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 70, 16)]
    data = _loader_forms(batches)[form]
    a = dataset_operator(p["loss_fn"], p["params"], data)
    b = dataset_operator(p["loss_fn"], p["params"], p["data"], batch_size=16)
    np.testing.assert_allclose(np.asarray(a.to_dense()), np.asarray(b.to_dense()), rtol=1e-12, atol=1e-14)


def test_one_shot_generator_is_refused():
    p = plain_problem(32)
    X, Y = p["data"]
    gen = ((X[i : i + 8], Y[i : i + 8]) for i in range(0, 32, 8))
    with pytest.raises(TypeError, match="one-shot iterator"):
        dataset_operator(p["loss_fn"], p["params"], gen)
    with pytest.raises(TypeError, match="one-shot iterator"):
        dataset_operator(p["loss_fn"], p["params"], iter([(X, Y)]))


def _dense_ggn(model_fn, out_loss, params, x, y):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    J = jax.jacobian(lambda f: model_fn(unravel(f), x).ravel())(flat)
    z = model_fn(params, x)
    HL = jax.hessian(lambda o: out_loss(o.reshape(z.shape), y))(z.ravel())
    return np.asarray(J.T @ HL @ J)


@pytest.mark.parametrize("batch_size", [16, 32])
def test_ggn_dataset_operator_matches_dense(batch_size):
    p = plain_problem(70)
    X, Y = p["data"]
    op = dataset_operator(
        None,
        p["params"],
        p["data"],
        curvature="ggn",
        batch_size=batch_size,
        model_fn=p["model_fn"],
        output_loss_fn=p["output_loss_fn"],
    )
    ref = _dense_ggn(p["model_fn"], p["output_loss_fn"], p["params"], X, Y)
    np.testing.assert_allclose(np.asarray(op.to_dense()), ref, rtol=1e-10, atol=1e-12)
    assert np.linalg.eigvalsh(ref).min() > -1e-12  # PSD, unlike the Hessian here
    assert np.linalg.eigvalsh(full_batch_hessian(p)).min() < -0.1


def _per_example(params, batch):
    x, y = batch
    out = PLAIN["model_fn"](params, x)
    return 0.5 * jnp.sum((out - y) ** 2, axis=-1)


@pytest.mark.parametrize("explicit", [True, False])
def test_fisher_dataset_operator_matches_dense(explicit):
    p = plain_problem(70)
    X, Y = p["data"]
    flat, unravel = jax.flatten_util.ravel_pytree(p["params"])
    G = np.asarray(jax.jacobian(lambda f: _per_example(unravel(f), (X, Y)))(flat))
    ref = G.T @ G / X.shape[0]
    op = dataset_operator(
        p["loss_fn"],
        p["params"],
        p["data"],
        curvature="fisher",
        batch_size=16,
        per_example_loss_fn=_per_example if explicit else None,
    )
    np.testing.assert_allclose(np.asarray(op.to_dense()), ref, rtol=1e-10, atol=1e-12)


def test_checkpoint_gives_same_operator():
    p = plain_problem(40)
    a = dataset_operator(p["loss_fn"], p["params"], p["data"], batch_size=16, checkpoint=True)
    np.testing.assert_allclose(np.asarray(a.to_dense()), full_batch_hessian(p), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# the report, against dense references
# ---------------------------------------------------------------------------


def test_report_extreme_eigenvalues_match_eigh(plain_report):
    p, r = plain_report
    lam = np.linalg.eigvalsh(full_batch_hessian(p))
    assert isinstance(r, CurvatureReport)
    np.testing.assert_allclose(r.top_eigenvalues, lam[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(r.bottom_eigenvalues, lam[:2], rtol=1e-8)
    assert np.all(r.top_residuals < 1e-8) and np.all(r.bottom_residuals < 1e-8)
    assert r.num_params == 38 and r.num_examples == 70 and r.num_batches == 5


def test_report_trace_and_condition(plain_report):
    p, r = plain_report
    H = full_batch_hessian(p)
    # Hutch++ with a sketch of >= n vectors captures the whole range: exact up to rounding
    np.testing.assert_allclose(r.trace, np.trace(H), rtol=1e-8)
    assert r.trace_stderr < 1e-8
    assert np.isnan(r.condition_number)  # indefinite Hessian, no damping: no condition number


def test_condition_number_with_damping(plain_report):
    p, _ = plain_report
    lam = np.linalg.eigvalsh(full_batch_hessian(p))
    delta = 1.0 - lam[0]
    # same arguments as the fixture but the damping: reuses the compiled solvers
    r = diagnose(**p, **OPTS, trace_probes=3 * 38 + 3, damping=delta)
    np.testing.assert_allclose(r.condition_number, (lam[-1] + delta) / (lam[0] + delta), rtol=1e-8)


def test_gradient_curvature_and_loss(plain_report):
    p, r = plain_report
    H = full_batch_hessian(p)
    g = np.asarray(jax.flatten_util.ravel_pytree(jax.grad(p["loss_fn"])(p["params"], p["data"]))[0])
    np.testing.assert_allclose(r.gradient_curvature, g @ H @ g / (g @ g), rtol=1e-10)
    np.testing.assert_allclose(r.gradient_norm, np.linalg.norm(g), rtol=1e-10)
    np.testing.assert_allclose(r.loss, float(p["loss_fn"](p["params"], p["data"])), rtol=1e-12)


def test_per_block_top_eigenvalue_and_trace(plain_report):
    p, r = plain_report
    H = full_batch_hessian(p)
    assert [b.name for b in r.blocks] == ["['layer0']", "['layer1']"]
    start = 0
    for b in r.blocks:
        Hbb = H[start : start + b.size, start : start + b.size]
        np.testing.assert_allclose(b.top_eigenvalue, np.linalg.eigvalsh(Hbb)[-1], rtol=1e-8)
        np.testing.assert_allclose(b.trace, np.trace(Hbb), rtol=1e-8)
        start += b.size
    assert start == r.num_params


def test_negative_mass_estimates_fraction_of_negative_eigenvalues(plain_report):
    p, r = plain_report
    frac = np.mean(np.linalg.eigvalsh(full_batch_hessian(p)) < 0)
    # 8 Rademacher probes, n = 38 steps (exact quadrature per probe): the per-probe mass
    # z^T 1[H<0] z / n has standard deviation below 0.1 here, so the mean is within 0.15
    assert abs(r.negative_mass - frac) < 0.15
    assert 0 < r.negative_mass < 1


def test_density_integrates_to_one(plain_report):
    _, r = plain_report
    mass = np.trapezoid(r.density, r.density_grid)
    np.testing.assert_allclose(mass, 1.0, rtol=1e-6)
    assert r.density_stderr.shape == r.density.shape


def test_hvp_count(plain_report):
    _, r = plain_report
    # at least: gradient curvature (1) + the eigensolver + the trace budget + SLQ steps
    assert r.num_operator_products >= 1 + 4 + (3 * 38 + 3) + 8
    assert r.num_hvps == r.num_operator_products * r.num_batches


def test_iterable_and_array_reports_agree(plain_report):
    p, r = plain_report
    X, Y = p["data"]
    batches = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 70, 16)]
    q = dict(p, data=batches)
    del q["batch_size"]
    r2 = diagnose(**q, **OPTS, trace_probes=3 * 38 + 3)
    np.testing.assert_allclose(r2.top_eigenvalues, r.top_eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(r2.bottom_eigenvalues, r.bottom_eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(r2.trace, r.trace, rtol=1e-10)


def test_float32_report():
    p = PLAIN["make_problem"](jnp.float32, num_examples=70)
    to64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
    lam = np.linalg.eigvalsh(dense_hessian(p["loss_fn"], to64(p["params"]), to64(p["data"])))
    r = diagnose(**p, k=1, num_probes=4, num_steps=10, rtol=1e-5, per_block=False, progress=False)
    # float32: eigenvalues to a few units of 1e-5 relative (rtol=1e-5; data rounded to float32)
    np.testing.assert_allclose(r.top_eigenvalues[0], lam[-1], rtol=1e-4)
    np.testing.assert_allclose(r.bottom_eigenvalues[0], lam[0], rtol=1e-4)


# ---------------------------------------------------------------------------
# frameworks
# ---------------------------------------------------------------------------


def test_flax_nnx_state_and_module():
    from flax import nnx

    prob = NNX["make_problem"](jnp.float64)
    H = dense_hessian(prob["loss_fn"], prob["params"], prob["data"])
    lam = np.linalg.eigvalsh(H)
    r = diagnose(**prob, k=1, num_probes=4, num_steps=10, rtol=1e-10, per_block=False, progress=False)
    np.testing.assert_allclose(r.top_eigenvalues[0], lam[-1], rtol=1e-8)
    np.testing.assert_allclose(r.bottom_eigenvalues[0], lam[0], rtol=1e-8)
    # the module itself: split internally, same operator
    model = NNX["make_model"](jnp.float64)
    op = dataset_operator(NNX["module_loss"], model, prob["data"], batch_size=16)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-10, atol=1e-12)
    assert isinstance(model, nnx.Module)


def test_equinox_module_and_partition():
    import equinox as eqx

    prob = EQX["make_problem"](jnp.float64)
    model = prob["params"]
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    part_loss = lambda a, b: EQX["loss_fn"](eqx.combine(a, static), b)
    H = dense_hessian(part_loss, arrays, prob["data"])
    r = diagnose(**prob, k=1, num_probes=4, num_steps=10, rtol=1e-10, per_block=False, progress=False)
    lam = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(r.top_eigenvalues[0], lam[-1], rtol=1e-8)
    np.testing.assert_allclose(r.bottom_eigenvalues[0], lam[0], rtol=1e-8)
    op = dataset_operator(part_loss, arrays, prob["data"], batch_size=16)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="eqx.partition"):
        dataset_operator(lambda p, b: 0.0, {"w": jnp.zeros(2), "act": jnp.tanh}, prob["data"])


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------


def test_to_dict_is_json_serializable(plain_report):
    _, r = plain_report
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    for key in ("top_eigenvalues", "bottom_eigenvalues", "trace", "trace_stderr", "density"):
        assert key in d
    assert d["top_eigenvalues"] == pytest.approx(r.top_eigenvalues.tolist())
    assert d["condition_number"] is None  # NaN becomes null
    assert len(d["density"]["grid"]) == len(d["density"]["density"]) == r.density.size
    assert [b["name"] for b in d["blocks"]] == [b.name for b in r.blocks]


def test_figure_and_html(plain_report):
    _, r = plain_report
    fig = viz.report_figure(r)
    names = [t.name for t in fig.data]
    assert "density" in names and "top eigenvalues" in names and "block λmax" in names
    dens = next(t for t in fig.data if t.name == "density")
    np.testing.assert_allclose(np.asarray(dens.y), r.density)
    page = viz.report_html(r)
    assert page.startswith("<!DOCTYPE html>") and "plotly" in page.lower()
    assert page.count("Plotly.newPlot") >= 1 and "curvlab-report-json" in page
    assert "<script src=" not in page  # self-contained: plotly.js inlined


def test_summary_table_and_sharpness_figure(plain_report):
    _, r = plain_report
    text = summary_table(r)
    assert r.summary() == text
    assert "top eigenvalues" in text and "['layer0']" in text
    fig = viz.sharpness_figure([r, r.to_dict()], steps=[10, 20])
    assert list(fig.data[0].x) == [10, 20]
    np.testing.assert_allclose(fig.data[0].y, [r.top_eigenvalues[0]] * 2)
    with pytest.raises(ValueError, match="steps"):
        viz.sharpness_figure([r], steps=[1, 2])


def test_no_plotly_import():
    code = "import curvlab._diagnostics, sys; print('plotly' in sys.modules, 'ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------


def test_argument_errors():
    p = plain_problem(32)
    loss, params, data = p["loss_fn"], p["params"], p["data"]
    with pytest.raises(ValueError, match="curvature"):
        dataset_operator(loss, params, data, curvature="newton")
    with pytest.raises(ValueError, match="model_fn and output_loss_fn"):
        dataset_operator(loss, params, data, curvature="ggn")
    with pytest.raises(ValueError, match="batch_size"):
        dataset_operator(loss, params, data, batch_size=0)
    with pytest.raises(ValueError, match="no batches"):
        dataset_operator(loss, params, [])
    with pytest.raises(ValueError, match="leading"):
        dataset_operator(loss, params, (data[0], data[1][:5]), batch_size=8)
    with pytest.raises(ValueError, match="batch 1 has structure"):
        dataset_operator(loss, params, [data, {"x": data[0]}])
    with pytest.raises(ValueError, match="must return a scalar"):
        dataset_operator(lambda w, b: PLAIN["model_fn"](w, b[0]), params, data)
    with pytest.raises(ValueError, match="params and data match"):
        dataset_operator(loss, params, (data[0][:, :2], data[1]), batch_size=8)
    with pytest.raises(ValueError, match="k = 38"):
        diagnose(loss, params, data, k=38, progress=False)
    with pytest.raises(ValueError, match="damping"):
        diagnose(loss, params, data, damping=-1.0, progress=False)
    with pytest.raises(TypeError, match="num_probes"):
        diagnose(loss, params, data, num_probes=2.5, progress=False)


# ---------------------------------------------------------------------------
# scripts (the CLI's entry point)
# ---------------------------------------------------------------------------


def test_diagnose_script_writes_report(tmp_path, capsys):
    out = tmp_path / "report.html"
    r = diagnose_script(
        os.path.join(EXAMPLES, "plain_jax_mlp.py"),
        out,
        k=1,
        num_probes=4,
        num_steps=8,
        per_block=False,
        progress=False,
    )
    assert isinstance(r, CurvatureReport) and out.exists()
    assert "top eigenvalues" in capsys.readouterr().out
    assert "Plotly.newPlot" in out.read_text()
    viz.save_report(r, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["num_params"] == r.num_params


SCRIPT_OK = """
import jax.numpy as jnp
X = jnp.arange(12.0).reshape(6, 2) / 10
def loss_fn(w, batch):
    return jnp.mean((batch[0] @ w - batch[1]) ** 2)
def problem():
    return loss_fn, jnp.zeros(2), (X, jnp.ones(6))
"""


def test_diagnose_script_object_spec(tmp_path):
    path = tmp_path / "prob.py"
    path.write_text(SCRIPT_OK)
    r = diagnose_script(
        f"{path}:problem", None, k=1, num_probes=4, num_steps=2, per_block=False, progress=False
    )
    X = np.arange(12.0).reshape(6, 2) / 10
    np.testing.assert_allclose(r.top_eigenvalues[0], np.linalg.eigvalsh(2 * X.T @ X / 6)[-1], rtol=1e-8)


@pytest.mark.parametrize(
    "body, spec, exc, match",
    [
        ("x = 1\n", "", ValueError, "defines no loss_fn, params, data"),
        (SCRIPT_OK, ":nothing", ValueError, "defines no name 'nothing'"),
        (SCRIPT_OK, ":X", TypeError, "must be \\(or return\\)"),
        (
            "import jax.numpy as jnp\nloss_fn = lambda w, b: b[0] @ w\nparams = jnp.zeros(2)\n"
            "data = (jnp.ones((4, 2)), jnp.ones(4))\n",
            "",
            ValueError,
            "must return a scalar",
        ),
        (
            "import jax.numpy as jnp\nloss_fn = lambda w, b: jnp.mean(b[0] @ w)\nparams = jnp.zeros(3)\n"
            "data = (jnp.ones((4, 2)), jnp.ones(4))\n",
            "",
            ValueError,
            "Check that params and data match",
        ),
    ],
)
def test_diagnose_script_errors(tmp_path, body, spec, exc, match):
    path = tmp_path / "prob.py"
    path.write_text(body)
    with pytest.raises(exc, match=match):
        diagnose_script(f"{path}{spec}", None, progress=False)


def test_diagnose_script_bad_out_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"\.html or \.json"):
        diagnose_script(os.path.join(EXAMPLES, "plain_jax_mlp.py"), tmp_path / "r.txt")
    with pytest.raises(FileNotFoundError, match="not found"):
        diagnose_script(str(tmp_path / "nope.py"), None)


# ---------------------------------------------------------------------------
# the pieces diagnose orchestrates, one by one
# ---------------------------------------------------------------------------


def test_options_validate_fills_defaults_and_names_bad_arguments():
    opts = DiagnoseOptions(k=3, num_probes=2, max_matvecs=50).validate()
    assert opts.trace_probes == 4 and opts.block_max_matvecs == 50 and opts.damping == 0.0
    assert DiagnoseOptions(num_probes=12).validate().trace_probes == 12
    for field, value, error in [
        ("k", 0, ValueError),
        ("num_steps", 2.5, TypeError),
        ("trace_probes", 3, ValueError),
        ("max_matvecs", -1, ValueError),
        ("block_depth", 0, ValueError),
        ("chunk_size", 0, ValueError),
        ("damping", float("nan"), ValueError),
    ]:
        with pytest.raises(error, match=field):
            DiagnoseOptions(**{field: value}).validate()


def test_gradient_stats_against_dense_and_nonfinite_loss_refused():
    p = plain_problem(40)
    op = dataset_operator(p["loss_fn"], p["params"], p["data"], batch_size=16)
    H = full_batch_hessian(p)
    g = np.asarray(jax.flatten_util.ravel_pytree(jax.grad(p["loss_fn"])(p["params"], p["data"]))[0])
    st = gradient_stats(op)
    np.testing.assert_allclose(st.loss, float(p["loss_fn"](p["params"], p["data"])), rtol=1e-12)
    np.testing.assert_allclose(st.gradient_norm, np.linalg.norm(g), rtol=1e-12)
    np.testing.assert_allclose(st.gradient_curvature, g @ H @ g / (g @ g), rtol=1e-10)
    assert st.num_matvecs == 1
    bad = jax.tree_util.tree_map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), p["params"])
    with pytest.raises(ValueError, match="not finite at params"):
        gradient_stats(dataset_operator(p["loss_fn"], bad, p["data"], batch_size=16))


def test_extreme_eigenvalues_eigsh_and_dense_paths():
    A = DenseOperator(matrix_with_spectrum([-2.0, -1.0, 0.5, 1.0, 3.0, 3.0, 4.0, 6.0], seed=4))
    e = extreme_eigenvalues(A, 2, rtol=1e-10, max_matvecs=None, key=jax.random.key(0))
    np.testing.assert_allclose(e.top, [6.0, 4.0], rtol=1e-9)
    np.testing.assert_allclose(e.bottom, [-2.0, -1.0], rtol=1e-9)
    assert e.num_matvecs > 0 and np.all(e.top_residuals < 1e-8)
    d = extreme_eigenvalues(A, 4, rtol=1e-10, max_matvecs=None, key=jax.random.key(0))  # n = 2k: dense
    np.testing.assert_allclose(d.top, [6.0, 4.0, 3.0, 3.0], rtol=1e-12)  # repeated eigenvalue kept
    np.testing.assert_allclose(d.bottom, [-2.0, -1.0, 0.5, 1.0], rtol=1e-12)
    assert d.num_matvecs == 8 and d.message.startswith("exact")


def test_extreme_eigenvalues_fall_back_to_lanczos_when_eigsh_fails():
    A = DenseOperator(matrix_with_spectrum(np.linspace(1.0, 3.0, 30), seed=5))
    fails = FunctionOperator(lambda v: jnp.full_like(v, jnp.nan), 30)
    with pytest.raises(ValueError, match="non-finite products"):
        extreme_eigenvalues(fails, 2, rtol=1e-8, max_matvecs=None, key=jax.random.key(0))
    fb = _lanczos_extremes(A, 2, 30, jax.random.key(1), "eigsh failed (test)")
    np.testing.assert_allclose(fb.top, [3.0, np.linspace(1, 3, 30)[-2]], rtol=1e-10)
    np.testing.assert_allclose(fb.bottom, [1.0, np.linspace(1, 3, 30)[1]], rtol=1e-10)
    assert fb.num_matvecs == 30 and "Lanczos" in fb.message and np.all(fb.top_residuals < 1e-8)


def test_density_stats_mass_and_integral():
    A = DiagonalOperator(jnp.array([-1.0, -0.5, 1.0, 2.0, 3.0]))
    d = density_stats(A, num_probes=20, num_steps=5, key=jax.random.key(0), chunk_size=None)
    np.testing.assert_allclose(np.trapezoid(d.density, d.grid), 1.0, rtol=1e-6)
    # exact quadrature per probe (5 steps on n = 5): the mass is the mean of z^T 1[A<0] z / n
    assert abs(d.negative_mass - 0.4) < 0.2 and d.num_matvecs == 100


def test_block_reports_against_dense_blocks():
    p = plain_problem(40)
    op = dataset_operator(p["loss_fn"], p["params"], p["data"], batch_size=16)
    H = full_batch_hessian(p)
    lam = np.linalg.eigvalsh(H)
    ends = Extremes(lam[::-1][:1], np.zeros(1), lam[:1], np.zeros(1), 0, "")
    opts = DiagnoseOptions(trace_probes=3 * 38 + 3, rtol=1e-10).validate()
    blocks, msgs = block_reports(op, opts, ends, jax.random.key(0))
    start = 0
    for b in blocks:
        Hbb = H[start : start + b.size, start : start + b.size]
        np.testing.assert_allclose(b.top_eigenvalue, np.linalg.eigvalsh(Hbb)[-1], rtol=1e-8)
        np.testing.assert_allclose(b.trace, np.trace(Hbb), rtol=1e-8)
        assert f"block {b.name}" in msgs
        start += b.size
    assert start == 38 and len(blocks) == 2


def test_assemble_report_condition_number_and_counts():
    p = plain_problem(40)
    op = dataset_operator(p["loss_fn"], p["params"], p["data"], batch_size=16)
    grad = GradientStats(1.0, 2.0, 0.5, 1)
    ends = Extremes(np.array([4.0]), np.zeros(1), np.array([1.0]), np.zeros(1), 10, "ok")
    dens = DensityStats(np.linspace(0, 1, 3), np.ones(3), np.zeros(3), 0.0, 5, "ok")
    tr = Estimate(value=7.0, stderr=0.1, num_matvecs=4)
    args = (op, "hessian", DiagnoseOptions(damping=1.0).validate(), grad, ends, tr, dens, (), {})
    r = assemble_report(*args, num_operator_products=20, wall_time=0.5)
    assert r.condition_number == 5.0 / 2.0 and r.trace == 7.0 and r.loss == 1.0
    assert (r.num_examples, r.num_batches, r.num_hvps) == (40, 3, 60)
    indefinite = args[:4] + (ends._replace(bottom=np.array([-2.0])),) + args[5:]
    r = assemble_report(*indefinite, num_operator_products=20, wall_time=0.5)
    assert np.isnan(r.condition_number)  # lambda_min + damping <= 0: not defined


def test_fisher_report_of_softmax_regression_is_finite_and_matches_dense():
    # the case: eigsh stops on a non-finite value on this singular Fisher; the report must
    # still give the dense empirical Fisher's extremes, say how, and carry no NaN eigenvalue
    X = jax.random.normal(jax.random.key(0), (64, 5))
    y = jax.random.randint(jax.random.key(1), (64,), 0, 3)
    params = {"W": 0.1 * jax.random.normal(jax.random.key(2), (5, 3)), "b": jnp.zeros(3)}

    def pel(p, b):
        logp = jax.nn.log_softmax(b[0] @ p["W"] + p["b"][None, :])
        return -jnp.take_along_axis(logp, b[1][:, None], axis=1)[:, 0]

    loss = lambda p, b: jnp.mean(pel(p, b))
    opts = dict(k=2, num_probes=4, num_steps=10, progress=False)
    r = diagnose(loss, params, (X, y), curvature="fisher", per_example_loss_fn=pel, **opts)
    lam = np.linalg.eigvalsh(dense_fisher(pel, params, (X, y)))
    np.testing.assert_allclose(r.top_eigenvalues, lam[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(r.bottom_eigenvalues, lam[:2], atol=1e-10)
    d = r.to_dict()
    assert None not in d["top_eigenvalues"] + d["bottom_eigenvalues"] + d["top_residuals"]
    assert all(b["top_eigenvalue"] is not None for b in d["blocks"])


def test_concurrent_diagnose_calls_count_their_own_products():
    from concurrent.futures import ThreadPoolExecutor

    p = plain_problem(40)
    opts = dict(k=1, num_probes=2, num_steps=5, per_block=False, progress=False)
    alone = diagnose(**p, **opts).num_operator_products
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(diagnose, **p, **opts, trace_probes=t) for t in (4, 40)]
        counts = [f.result().num_operator_products for f in futures]
    assert counts[0] == alone and counts[1] == alone - 4 + 40


def test_diagnose_under_the_users_jit_says_what_cannot_be_traced():
    X, y = jnp.ones((8, 2)), jnp.ones(8)
    loss = lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2)
    with pytest.raises(ValueError, match=r"diagnose cannot run under jax.jit / vmap \(params is traced\)"):
        jax.jit(lambda w: diagnose(loss, w, (X, y), k=1, progress=False).trace)(jnp.zeros(2))


# ---------------------------------------------------------------------------
# spectral masses with uncertainty (issue 12) and approximate curvatures (issue 15)
# ---------------------------------------------------------------------------


def test_spectral_masses_known_spectrum_and_zero_cluster():
    # 5 clearly negative eigenvalues, a zero cluster of 45 (40 exact zeros, 5 rounding-size negatives
    # -1e-9), 10 positive: 17 distinct values, so 30 Lanczos steps integrate each probe exactly
    lam = np.r_[-np.linspace(1, 3, 5), np.zeros(40), -1e-9 * np.ones(5), np.linspace(1, 10, 10)]
    A = DenseOperator(matrix_with_spectrum(lam, seed=3))
    d = density_stats(A, num_probes=30, num_steps=30, key=jax.random.key(2), chunk_size=None, scale=10.0)
    assert d.mass_threshold == pytest.approx(1e-3 * 10.0) and d.mass_tol == 1e-3
    for value, err, truth in (
        (d.negative_mass, d.negative_mass_stderr, 5 / 60),
        (d.zero_mass, d.zero_mass_stderr, 45 / 60),
        (d.positive_mass, d.positive_mass_stderr, 10 / 60),
    ):
        assert 0 < err < 0.1 and abs(value - truth) < 4 * err
    np.testing.assert_allclose(d.negative_mass + d.zero_mass + d.positive_mass, 1.0, rtol=1e-12)
    # without the threshold the rounding-size negatives are counted as negative curvature
    d0 = density_stats(A, num_probes=30, num_steps=30, key=jax.random.key(2), chunk_size=None, mass_tol=0.0)
    assert d0.negative_mass > d.negative_mass + 2 * d.negative_mass_stderr
    # one probe: no standard error
    d1 = density_stats(A, num_probes=1, num_steps=30, key=jax.random.key(2), chunk_size=None)
    assert np.isnan(d1.negative_mass_stderr)
    with pytest.raises(ValueError, match="mass_tol"):
        DiagnoseOptions(mass_tol=1.5).validate()


def _ce(z, t):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), t[:, None], axis=1))


def _mlp(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"][None, :]) @ p["w2"]


def _mlp_problem():
    k = jax.random.split(jax.random.key(4), 3)
    p = {"b1": jnp.zeros(4), "w1": jax.random.normal(k[0], (3, 4)), "w2": jax.random.normal(k[1], (4, 3))}
    x = jax.random.normal(k[2], (9, 3))
    return p, (x, jnp.arange(9) % 3)


def test_diagnose_ekfac_compare_exact_and_report_text():
    from curvlab import ekfac_operator

    p, batch = _mlp_problem()
    opts = dict(k=2, num_probes=4, num_steps=10, rtol=1e-10, per_block=False, progress=False)
    r = diagnose(
        None, p, batch, curvature="ekfac", model_fn=_mlp, output_loss_fn=_ce, compare_exact=True, **opts
    )
    E = ekfac_operator(_mlp, _ce, p, batch)
    np.testing.assert_allclose(r.top_eigenvalues, np.asarray(E.eigenvalues())[:2], rtol=1e-8)
    G = np.asarray(
        dataset_operator(None, p, batch, curvature="ggn", model_fn=_mlp, output_loss_fn=_ce).to_dense()
    )
    exact = np.linalg.eigvalsh(G)[::-1][:2]
    np.testing.assert_allclose(r.approximation["exact_top_eigenvalues"], exact, rtol=1e-8)
    np.testing.assert_allclose(r.approximation["relative_errors"], np.abs(r.top_eigenvalues - exact) / exact)
    np.testing.assert_allclose(r.loss, float(_ce(_mlp(p, batch[0]), batch[1])), rtol=1e-12)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["approximation"]["exact"] == "ggn" and len(d["approximation"]["relative_errors"]) == 2
    m = d["spectral_masses"]
    assert m["tau"] == 1e-3 and set(m) == {"tau", "threshold", "negative", "zero", "positive"}
    assert m["negative"]["value"] == 0.0  # PSD: no mass below -tau s
    page = viz.report_html(r)
    assert "Spectral masses" in page and "zero cluster" in page and "curvlab-report-approximation" in page
    assert "spectral mass <" in r.summary() and "relative errors" in r.summary()
    with pytest.raises(ValueError, match="compare_exact"):
        diagnose(
            None, p, batch, curvature="ggn", model_fn=_mlp, output_loss_fn=_ce, compare_exact=True, **opts
        )


def test_diagnose_kfac_over_batches_and_fisher_mc():
    from curvlab import kfac_operator, softmax_cross_entropy

    p, batch = _mlp_problem()
    opts = dict(k=2, num_probes=3, num_steps=8, rtol=1e-10, per_block=False, progress=False)
    # mean reduction: the dataset average of per-batch factors is the full batch's K-FAC
    r = diagnose(None, p, batch, curvature="kfac", batch_size=4, model_fn=_mlp, output_loss_fn=_ce, **opts)
    K = kfac_operator(_mlp, _ce, p, batch)
    np.testing.assert_allclose(r.top_eigenvalues, np.asarray(K.eigenvalues())[:2], rtol=1e-8)
    assert r.num_batches == 3 and r.curvature == "kfac"
    mc = diagnose(
        None,
        p,
        batch,
        curvature="fisher_mc",
        model_fn=_mlp,
        output_loss_fn=softmax_cross_entropy,
        num_samples=2,
        **opts,
    )
    assert mc.curvature == "fisher_mc" and mc.top_eigenvalues[0] > 0 and mc.approximation is None

"""Benchmark: curvlab's second-order optimizers.

1. **Rosenbrock, scipy's tutorial problem.** 5-D Rosenbrock from
   ``x0 = [1.3, 0.7, 0.8, 1.9, 1.2]`` in float64: iterations and Hessian-vector products
   until :math:`\\|x - 1\\|_\\infty < 10^{-6}` for curvlab's ``newton_cg`` (each forcing term)
   and ``trust_region_newton``, next to scipy's ``Newton-CG``, ``trust-ncg`` and
   ``trust-krylov`` run in the same script (HVPs counted by wrapping ``hessp``; the
   "at target" columns stop counting at the first iterate within 1e-6, the "at exit"
   columns are each method's own termination with default tolerances tightened to 1e-8).
2. **Deep narrow autoencoder on digits** (Martens 2010's pathological-curvature setting,
   :func:`curvlab.problems.autoencoder`, 64-32-16-6-16-32-64, logistic outputs, all 1797
   digits, float32): Hessian-free (full-batch Gauss-Newton, without and with Martens'
   diagonal preconditioner) against Adam and SGD with
   momentum 0.9 (optax, mini-batches of 128), at equal wall-clock budget. The first-order
   learning rates are picked from a small grid with a fifth of the budget each, then the
   best is rerun with the full budget. Compilation is done before the clock starts for
   every method; the full training loss is evaluated off the clock. Prints the final
   training loss (binary cross-entropy, summed over pixels, mean over images) and the
   reconstruction error (squared error of the sigmoid outputs, same reduction).

Run::

    .venv/bin/python benchmarks/bench_optim.py --budget 60     # full run (~5 minutes)
    .venv/bin/python benchmarks/bench_optim.py --quick         # smoke run

Writes ``benchmarks/results/optim_rosenbrock.json``, ``benchmarks/results/hf_autoencoder.json``
and the figure ``benchmarks/results/hf_autoencoder.html`` (plotly).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curvlab import HFConfig, hessian_free, newton_cg, problems, trust_region_newton  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
X0_TUTORIAL = [1.3, 0.7, 0.8, 1.9, 1.2]
TARGET = 1e-6


# ---------------------------------------------------------------------------
# 1. Rosenbrock
# ---------------------------------------------------------------------------


def _curvlab_rosenbrock(name, opt, **kw):
    f = problems.rosenbrock(5).f
    x0 = jnp.asarray(X0_TUTORIAL)
    at_target = {}

    def cb(info):
        if not at_target and float(jnp.max(jnp.abs(info.x - 1.0))) < TARGET:
            at_target.update(iterations=info.iteration, hvps=info.num_hvps)

    opt(f, x0, gtol=1e-8, **kw)  # compile
    res = opt(f, x0, gtol=1e-8, callback=cb, **kw)
    return {
        "method": name,
        "iterations_at_target": at_target.get("iterations"),
        "hvps_at_target": at_target.get("hvps"),
        "iterations_at_exit": res.num_iterations,
        "hvps_at_exit": res.num_hvps,
        "final_error": float(jnp.max(jnp.abs(res.x - 1.0))),
        "status": res.status.name,
    }


def _scipy_rosenbrock(method):
    from scipy.optimize import minimize, rosen, rosen_der, rosen_hess_prod

    count = {"hvps": 0}
    at_target = {}
    state = {"it": 0}

    def hessp(x, p):
        count["hvps"] += 1
        return rosen_hess_prod(x, p)

    def cb(*a, **k):
        state["it"] += 1
        x = k["intermediate_result"].x if "intermediate_result" in k else a[0]
        if not at_target and np.max(np.abs(x - 1.0)) < TARGET:
            at_target.update(iterations=state["it"], hvps=count["hvps"])

    opts = {"xtol": 1e-8} if method == "Newton-CG" else {"gtol": 1e-8}
    res = minimize(rosen, X0_TUTORIAL, method=method, jac=rosen_der, hessp=hessp, options=opts, callback=cb)
    return {
        "method": f"scipy {method}",
        "iterations_at_target": at_target.get("iterations"),
        "hvps_at_target": at_target.get("hvps"),
        "iterations_at_exit": int(res.nit),
        "hvps_at_exit": int(count["hvps"]),
        "final_error": float(np.max(np.abs(res.x - 1.0))),
        "status": "success" if res.success else str(res.message),
    }


def bench_rosenbrock():
    jax.config.update("jax_enable_x64", True)
    rows = []
    for forcing in ("eisenstat_walker", "quadratic", "superlinear"):
        rows.append(_curvlab_rosenbrock(f"curvlab newton_cg ({forcing})", newton_cg, forcing=forcing))
    for forcing in ("eisenstat_walker", "quadratic", "superlinear"):
        rows.append(
            _curvlab_rosenbrock(
                f"curvlab trust_region_newton ({forcing})", trust_region_newton, forcing=forcing
            )
        )
    for method in ("Newton-CG", "trust-ncg", "trust-krylov"):
        rows.append(_scipy_rosenbrock(method))
    jax.config.update("jax_enable_x64", False)

    print("\n5-D Rosenbrock from", X0_TUTORIAL, f"to ||x - 1||_inf < {TARGET:g} (float64)")
    head = (
        f"{'method':42s} {'it@target':>9s} {'HVP@target':>10s} {'it@exit':>8s} {'HVP@exit':>9s} "
        f"{'final err':>10s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['method']:42s} {r['iterations_at_target']!s:>9s} {r['hvps_at_target']!s:>10s} "
            f"{r['iterations_at_exit']:>8d} {r['hvps_at_exit']:>9d} {r['final_error']:>10.2e}"
        )
    best = min(
        (r for r in rows if r["method"].startswith("curvlab")), key=lambda r: r["hvps_at_target"] or 1e9
    )
    print(f"best curvlab method: {best['method']} with {best['hvps_at_target']} HVPs (target <= 50)")
    return {"x0": X0_TUTORIAL, "target": TARGET, "rows": rows, "best_curvlab": best}


# ---------------------------------------------------------------------------
# 2. Autoencoder
# ---------------------------------------------------------------------------


def _recon_error(prob, params):
    X = prob.batch[0]
    out = jax.nn.sigmoid(prob.model_fn(params, X))
    return float(jnp.mean(jnp.sum((out - X) ** 2, axis=1)))


def run_hf(prob, budget, **kw):
    full_loss = jax.jit(prob.f)
    hessian_free(prob, config=HFConfig(maxiter=1, **kw))  # compile (cached for the timed run)
    full_loss(prob.x0).block_until_ready()
    curve = {"time": [0.0], "loss": [float(full_loss(prob.x0))]}

    def cb(info):
        curve["time"].append(info.time)
        curve["loss"].append(info.loss)  # full batch: the training loss itself
        return info.time >= budget

    res = hessian_free(prob, config=HFConfig(maxiter=100000, **kw), callback=cb)
    h = res.history
    return {
        "time": curve["time"],
        "loss": curve["loss"],
        "iterations": res.num_iterations,
        "num_hvps": res.num_hvps,
        "cg_iterations": h["cg_iterations"].tolist(),
        "damping": h["damping"].tolist(),
        "rho": [None if not np.isfinite(v) else float(v) for v in h["rho"]],
        "final_loss": float(full_loss(res.x)),
        "final_recon_error": _recon_error(prob, res.x),
    }


def run_first_order(prob, make_opt, budget, *, batch_size=128, steps_per_chunk=50, seed=0):
    import optax

    X = prob.batch[0]
    N = X.shape[0]
    opt = make_opt()
    loss = prob.loss
    full_loss = jax.jit(prob.f)

    @jax.jit
    def chunk(params, state, key):
        idx = jax.random.randint(key, (steps_per_chunk, batch_size), 0, N)

        def step(carry, i):
            p, s = carry
            b = (X[i], X[i])
            g = jax.grad(loss)(p, b)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None

        (params, state), _ = jax.lax.scan(step, (params, state), idx)
        return params, state

    params, state = prob.x0, opt.init(prob.x0)
    key = jax.random.key(seed)
    jax.block_until_ready(chunk(params, state, key))  # compile
    full_loss(params).block_until_ready()
    curve = {"time": [0.0], "loss": [float(full_loss(params))]}
    elapsed, steps = 0.0, 0
    while elapsed < budget:
        key, sub = jax.random.split(key)
        t = time.perf_counter()
        params, state = jax.block_until_ready(chunk(params, state, sub))
        elapsed += time.perf_counter() - t
        steps += steps_per_chunk
        val = float(full_loss(params))  # off the clock
        curve["time"].append(elapsed)
        curve["loss"].append(val if np.isfinite(val) else None)
        if not np.isfinite(val):
            break
    final = float(full_loss(params))
    return {
        "time": curve["time"],
        "loss": curve["loss"],
        "steps": steps,
        "final_loss": final if np.isfinite(final) else None,
        "final_recon_error": _recon_error(prob, params),
    }


def bench_autoencoder(budget, quick):
    import optax

    dtype = jnp.float32
    prob = problems.autoencoder(num_examples=512 if quick else 1797, dtype=dtype)
    out = {"budget_s": budget, "num_examples": int(prob.batch[0].shape[0]), "dtype": "float32", "methods": {}}
    print(
        f"\nautoencoder {prob.latex}, {out['num_examples']} digits, {prob.dim} parameters, "
        f"budget {budget:g} s/method"
    )

    hf_kw = dict(damping=1.0, cg_maxiter=250)
    out["hf_config"] = dict(hf_kw)
    out["methods"]["HF (GGN)"] = run_hf(prob, budget, **hf_kw)
    out["methods"]["HF (GGN, Martens precond.)"] = run_hf(prob, budget, preconditioner="martens", **hf_kw)

    grids = {
        "Adam": (lambda lr: optax.adam(lr), [1e-3, 3e-3, 1e-2, 3e-2] if not quick else [3e-3, 1e-2]),
        "SGD momentum 0.9": (
            lambda lr: optax.sgd(lr, momentum=0.9),
            [0.01, 0.03, 0.1, 0.3] if not quick else [0.03, 0.1],
        ),
    }
    for name, (make, lrs) in grids.items():
        scores = {}
        for lr in lrs:
            r = run_first_order(prob, functools.partial(make, lr), budget / 5)
            scores[lr] = r["final_loss"] if r["final_loss"] is not None else float("inf")
            print(f"  grid {name} lr={lr:g}: loss {scores[lr]:.4f} after {budget / 5:g} s")
        best_lr = min(scores, key=scores.get)
        r = run_first_order(prob, functools.partial(make, best_lr), budget)
        r["learning_rate"] = best_lr
        r["grid"] = {str(k): v for k, v in scores.items()}
        out["methods"][f"{name} (lr={best_lr:g})"] = r

    print(f"{'method':28s} {'train loss (BCE)':>17s} {'recon. error':>13s} {'iterations/steps':>17s}")
    for name, r in out["methods"].items():
        its = r.get("iterations", r.get("steps"))
        print(f"{name:28s} {r['final_loss']:>17.4f} {r['final_recon_error']:>13.4f} {its:>17d}")
    hf = min(r["final_loss"] for n, r in out["methods"].items() if n.startswith("HF"))
    adam = min(r["final_loss"] for n, r in out["methods"].items() if n.startswith("Adam"))
    adam_min = min(
        min(v for v in r["loss"] if v is not None) for n, r in out["methods"].items() if n.startswith("Adam")
    )
    out["adam_curve_min"] = adam_min
    out["hf_beats_adam"] = bool(hf < adam)
    print(
        f"best HF final loss below the best Adam run's final loss: {out['hf_beats_adam']} "
        f"({hf:.4f} vs {adam:.4f}; lowest loss Adam's noisy curve touched: {adam_min:.4f})"
    )
    return out


def write_figure(ae, path):
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, r in ae["methods"].items():
        fig.add_trace(go.Scatter(x=r["time"], y=r["loss"], mode="lines", name=name))
    fig.update_layout(
        title=f"Deep autoencoder on digits ({ae['num_examples']} images): training loss vs wall-clock time",
        xaxis_title="seconds (compilation and loss evaluation excluded)",
        yaxis_title="training loss (BCE per image)",
        yaxis_type="log",
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs="cdn")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=60.0, help="wall-clock seconds per autoencoder method")
    ap.add_argument("--quick", action="store_true", help="smoke run: small budget, data and grid")
    ap.add_argument("--skip-autoencoder", action="store_true")
    args = ap.parse_args(argv)
    budget = 5.0 if args.quick and args.budget == 60.0 else args.budget
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "platform": platform.platform(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }

    rb = bench_rosenbrock()
    rb["meta"] = meta
    (RESULTS / "optim_rosenbrock.json").write_text(json.dumps(rb, indent=2))
    if args.skip_autoencoder:
        return
    ae = bench_autoencoder(budget, args.quick)
    ae["meta"] = meta
    ae["command"] = " ".join(["benchmarks/bench_optim.py", *(argv if argv is not None else sys.argv[1:])])
    (RESULTS / "hf_autoencoder.json").write_text(json.dumps(ae, indent=2))
    write_figure(ae, RESULTS / "hf_autoencoder.html")
    print(
        f"wrote {RESULTS / 'optim_rosenbrock.json'}, {RESULTS / 'hf_autoencoder.json'}, "
        f"{RESULTS / 'hf_autoencoder.html'}"
    )


if __name__ == "__main__":
    main()

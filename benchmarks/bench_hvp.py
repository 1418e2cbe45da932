"""Benchmark: Hessian-vector products against the gradient and against PyTorch.

Measures, on MLP classifiers (softmax cross-entropy, tanh, float32, random data):

* the gradient (``jax.jit(jax.grad(loss))``), the reference for every ratio;
* one HVP per mode through the public :func:`curvlab._hvp` (``fwd_rev``,
  ``rev_fwd``, ``rev_rev``);
* repeated HVPs at one point: ``hvp_fn(..., linearize=True)`` and
  ``hessian_operator(..., linearize=True).prepare()`` called once inside a
  jitted loop of ``K`` products (time per product, the linearization amortized);
* finite-difference HVPs (:func:`curvlab.fd_hvp`, central and forward);
* PyTorch double backprop (``torch.autograd.grad(loss, create_graph=True)``
  then the gradient of ``g . v``), and PyTorch with the graph of ``g`` built
  once and retained across products (``retain_graph=True``);
* the fwd_rev HVP time against the parameter count (hidden widths 64...2048)
  and its log-log slope.

Timing: everything is compiled/warmed up first; each sample is the median of
``--repeats`` rounds, the methods interleaved within each round so that load
from other processes hits them alike; every JAX result is
``block_until_ready``-ed. PyTorch uses as many threads as JAX's CPU backend
(all the cores this process may run on).

Run::

    nice -n -5 .venv/bin/python benchmarks/bench_hvp.py            # full run
    .venv/bin/python benchmarks/bench_hvp.py --quick                # smoke run

Writes ``benchmarks/results/hvp.json`` (``--out`` to change). PyTorch is
optional (``pip install torch==2.13.0``); without it the torch columns are
skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

if "--single-thread" in sys.argv:  # must be set before JAX starts its CPU backend
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import curvlab  # noqa: E402
from curvlab._hvp import HVP_MODES  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - optional
    torch = None

TARGETS = {
    "fwd_rev_over_grad": 1.8,
    "linearized_over_grad": 1.1,
    "curvlab_over_torch_double_backprop": 0.5,
    "time_vs_params_slope": 1.05,
}


def num_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def init_mlp(key, sizes):
    params = []
    for k, (m, n) in zip(
        jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:], strict=True), strict=True
    ):
        params.append(
            {"W": jax.random.normal(k, (m, n), jnp.float32) / np.sqrt(m), "b": jnp.zeros(n, jnp.float32)}
        )
    return params


def mlp_loss(params, inputs, labels):
    h = inputs
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    logits = h @ params[-1]["W"] + params[-1]["b"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def make_problem(sizes, batch, seed=0):
    kp, kx, ky, kv = jax.random.split(jax.random.key(seed), 4)
    params = init_mlp(kp, sizes)
    X = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1], dtype=jnp.int32)
    leaves, tree = jax.tree_util.tree_flatten(params)
    vkeys = jax.random.split(kv, len(leaves))
    v = jax.tree_util.tree_unflatten(
        tree, [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(vkeys, leaves, strict=True)]
    )
    return params, X, y, v


def num_params(params) -> int:
    return int(sum(a.size for a in jax.tree_util.tree_leaves(params)))


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def block(out):
    jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, out)
    return out


def time_interleaved(fns: dict, repeats: int, inner: int = 1, warmup: int = 2) -> dict:
    """Median (and quartiles) seconds per call of each ``fn``; methods interleaved per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[k]()
            samples[k].append((time.perf_counter() - t0) / inner)
    out = {}
    for k, s in samples.items():
        q = np.percentile(s, [25, 50, 75])
        out[k] = {"median_s": float(q[1]), "q25_s": float(q[0]), "q75_s": float(q[2]), "n": len(s)}
    return out


# ---------------------------------------------------------------------------
# JAX and PyTorch measurements
# ---------------------------------------------------------------------------


def jax_methods(params, X, y, v, num_products: int):
    grad_fn = jax.jit(jax.grad(mlp_loss))
    fns = {"gradient": lambda: block(grad_fn(params, X, y))}
    for mode in HVP_MODES:
        fns[f"hvp_{mode}"] = lambda mode=mode: block(curvlab.hvp(mlp_loss, params, v, X, y, mode=mode))

    product = curvlab.hvp_fn(mlp_loss, params, X, y, linearize=True)
    fns["hvp_fn_linearized"] = lambda: block(product(v))

    op = curvlab.hessian_operator(mlp_loss, params, X, y, linearize=True)
    flat_v = op.ravel(v)

    @jax.jit
    def repeated(op, w):
        mv = op.prepare()  # linearize once

        def body(_, w):
            hw = mv(w)  # power iteration: each product needs the previous one
            return hw / jnp.linalg.norm(hw)

        return jax.lax.fori_loop(0, num_products, body, w)

    fns["operator_prepare_in_jit"] = lambda: block(repeated(op, flat_v))
    fns["fd_central"] = lambda: block(curvlab.fd_hvp(mlp_loss, params, v, X, y, scheme="central"))
    fns["fd_forward"] = lambda: block(curvlab.fd_hvp(mlp_loss, params, v, X, y, scheme="forward"))
    return fns


def torch_setup(params, X, y, v):
    tp = [{k: torch.tensor(np.asarray(layer[k]), requires_grad=True) for k in ("W", "b")} for layer in params]
    flat = [p for layer in tp for p in (layer["W"], layer["b"])]
    tv = [torch.tensor(np.asarray(layer[k])) for layer in v for k in ("W", "b")]
    tX, ty = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y), dtype=torch.long)

    def loss():
        h = tX
        for layer in tp[:-1]:
            h = torch.tanh(h @ layer["W"] + layer["b"])
        logits = h @ tp[-1]["W"] + tp[-1]["b"]
        return torch.nn.functional.cross_entropy(logits, ty)

    def gradient():
        return torch.autograd.grad(loss(), flat)

    def double_backprop():
        g = torch.autograd.grad(loss(), flat, create_graph=True)
        gv = sum((a * b).sum() for a, b in zip(g, tv, strict=True))
        return torch.autograd.grad(gv, flat)

    state = {}

    def retained():
        # g and its graph are built once (first call, in the warm-up) and reused
        if "gv" not in state:
            g = torch.autograd.grad(loss(), flat, create_graph=True)
            state["gv"] = sum((a * b).sum() for a, b in zip(g, tv, strict=True))
        return torch.autograd.grad(state["gv"], flat, retain_graph=True)

    return {"torch_gradient": gradient, "torch_double_backprop": double_backprop, "torch_retained": retained}


def check_agreement(params, X, y, v, torch_fns) -> dict:
    """Relative differences between the HVPs of every method (sanity check)."""
    ref_tree = curvlab.hvp(mlp_loss, params, v, X, y)
    ref = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(ref_tree)])
    out = {}

    def rel(hv):
        flat = np.concatenate([np.ravel(np.asarray(a)) for a in hv])
        return float(np.linalg.norm(flat - ref) / np.linalg.norm(ref))

    for mode in HVP_MODES[1:]:
        out[f"hvp_{mode}"] = rel(jax.tree_util.tree_leaves(curvlab.hvp(mlp_loss, params, v, X, y, mode=mode)))
    out["hvp_fn_linearized"] = rel(
        jax.tree_util.tree_leaves(curvlab.hvp_fn(mlp_loss, params, X, y, linearize=True)(v))
    )
    out["fd_central"] = rel(jax.tree_util.tree_leaves(curvlab.fd_hvp(mlp_loss, params, v, X, y)))
    if torch_fns:
        out["torch_double_backprop"] = rel([t.detach().numpy() for t in torch_fns["torch_double_backprop"]()])
    return out


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def bench_model(sizes, batch, repeats, num_products, use_torch):
    params, X, y, v = make_problem(sizes, batch)
    fns = jax_methods(params, X, y, v, num_products)
    tfns = torch_setup(params, X, y, v) if use_torch else {}
    agreement = check_agreement(params, X, y, v, tfns)
    allfns = dict(fns)
    allfns.update(tfns)
    t = time_interleaved(allfns, repeats)
    per_call = t["operator_prepare_in_jit"]
    t["operator_prepare_in_jit"] = {
        k: (x / num_products if k.endswith("_s") else x) for k, x in per_call.items()
    }
    g = t["gradient"]["median_s"]
    ratios = {k: val["median_s"] / g for k, val in t.items()}
    res = {
        "sizes": list(sizes),
        "batch": batch,
        "num_params": num_params(params),
        "times": t,
        "ratio_to_gradient": ratios,
        "relative_difference_to_fwd_rev": agreement,
        "operator_products_per_call": num_products,
    }
    if use_torch:
        best = min(t[f"hvp_{m}"]["median_s"] for m in HVP_MODES)
        res["curvlab_fwd_rev_over_torch_double_backprop"] = (
            t["hvp_fwd_rev"]["median_s"] / t["torch_double_backprop"]["median_s"]
        )
        res["curvlab_best_mode_over_torch_double_backprop"] = best / t["torch_double_backprop"]["median_s"]
        res["curvlab_linearized_over_torch_retained"] = (
            t["hvp_fn_linearized"]["median_s"] / t["torch_retained"]["median_s"]
        )
        res["torch_gradient_over_jax_gradient"] = t["torch_gradient"]["median_s"] / g
    return res


def bench_scaling(widths, batch, repeats):
    rows = []
    for w in widths:
        params, X, y, v = make_problem((784, w, w, 10), batch)
        grad_fn = jax.jit(jax.grad(mlp_loss))
        fns = {
            "gradient": lambda g=grad_fn, p=params, X=X, y=y: block(g(p, X, y)),
            "hvp_fwd_rev": lambda p=params, v=v, X=X, y=y: block(curvlab.hvp(mlp_loss, p, v, X, y)),
        }
        t = time_interleaved(fns, repeats)
        rows.append(
            {
                "width": w,
                "num_params": num_params(params),
                "hvp_s": t["hvp_fwd_rev"]["median_s"],
                "gradient_s": t["gradient"]["median_s"],
            }
        )
        print(f"  width {w:5d}  params {rows[-1]['num_params']:9d}  hvp {1e3 * rows[-1]['hvp_s']:9.2f} ms")
    p = np.log([r["num_params"] for r in rows])
    slope = float(np.polyfit(p, np.log([r["hvp_s"] for r in rows]), 1)[0])
    gslope = float(np.polyfit(p, np.log([r["gradient_s"] for r in rows]), 1)[0])
    upper = rows[len(rows) // 2 - 1 :]
    pu = np.log([r["num_params"] for r in upper])
    slope_upper = float(np.polyfit(pu, np.log([r["hvp_s"] for r in upper]), 1)[0])
    return {
        "rows": rows,
        "loglog_slope_hvp": slope,
        "loglog_slope_gradient": gslope,
        "loglog_slope_hvp_upper_half": slope_upper,
        "upper_half_widths": [r["width"] for r in upper],
    }


def print_model(res, use_torch):
    g = res["times"]["gradient"]["median_s"]
    print(f"\nMLP {'-'.join(map(str, res['sizes']))}, batch {res['batch']}, {res['num_params']} parameters")
    print(f"  {'method':28s} {'median ms':>10s} {'IQR ms':>15s} {'x gradient':>11s} {'rel diff':>9s}")
    for k, val in res["times"].items():
        iqr = f"{1e3 * val['q25_s']:.2f}-{1e3 * val['q75_s']:.2f}"
        diff = res["relative_difference_to_fwd_rev"].get(k)
        diff = f"{diff:9.1e}" if diff is not None else ""
        print(f"  {k:28s} {1e3 * val['median_s']:10.2f} {iqr:>15s} {val['median_s'] / g:11.2f} {diff}")
    if use_torch:
        print(
            "  curvlab fwd_rev / torch double backprop: "
            f"{res['curvlab_fwd_rev_over_torch_double_backprop']:.2f}; best mode: "
            f"{res['curvlab_best_mode_over_torch_double_backprop']:.2f}; "
            f"linearized / torch retained: {res['curvlab_linearized_over_torch_retained']:.2f}"
        )
    else:
        print("  (PyTorch not installed: torch columns skipped; pip install torch==2.13.0)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--single-thread",
        action="store_true",
        help="one thread for XLA and PyTorch (robust on a loaded machine)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hvp.json"))
    args = ap.parse_args(argv)

    use_torch = torch is not None and not args.no_torch
    threads = 1 if args.single_thread else num_threads()
    if use_torch:
        torch.set_num_threads(threads)
    batch = 64 if args.quick else 512
    repeats = args.repeats or (3 if args.quick else 15)
    models = [(784, 32, 32, 10)] if args.quick else [(784, 256, 256, 10), (784, 1024, 1024, 10)]
    widths = [16, 32, 64] if args.quick else [64, 128, 256, 512, 1024, 2048]
    num_products = 20

    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {threads} threads; "
        f"torch {torch.__version__ if torch is not None else 'absent'}"
        + (f" ({torch.get_num_threads()} threads)" if use_torch else "")
        + f"; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    results = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_threads": threads,
            "jax": jax.__version__,
            "backend": jax.devices()[0].platform,
            "torch": torch.__version__ if torch is not None else None,
            "torch_threads": torch.get_num_threads() if use_torch else None,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average_start": os.getloadavg(),
        },
        "config": {
            "batch": batch,
            "repeats": repeats,
            "dtype": "float32",
            "activation": "tanh",
            "single_thread": args.single_thread,
        },
        "command": " ".join([sys.executable, *sys.argv]),
        "targets": TARGETS,
        "models": [],
    }
    if not use_torch:
        results["note"] = "PyTorch not installed (or --no-torch): torch columns skipped"

    for sizes in models:
        res = bench_model(sizes, batch, repeats, num_products, use_torch)
        results["models"].append(res)
        print_model(res, use_torch)

    print(f"\nfwd_rev HVP time vs parameter count (784-w-w-10, batch {batch}):")
    sc = bench_scaling(widths, batch, max(3, repeats // 3))
    results["scaling"] = sc
    print(
        f"  log-log slope: HVP {sc['loglog_slope_hvp']:.3f} "
        f"(upper half {sc['loglog_slope_hvp_upper_half']:.3f}), "
        f"gradient {sc['loglog_slope_gradient']:.3f}"
    )

    checks = {}
    for res in results["models"]:
        name = "-".join(map(str, res["sizes"]))
        r = res["ratio_to_gradient"]
        checks[f"{name} fwd_rev/grad <= {TARGETS['fwd_rev_over_grad']}"] = r["hvp_fwd_rev"]
        checks[f"{name} linearized/grad <= {TARGETS['linearized_over_grad']}"] = r["hvp_fn_linearized"]
        if use_torch:
            checks[f"{name} curvlab/torch <= {TARGETS['curvlab_over_torch_double_backprop']}"] = res[
                "curvlab_fwd_rev_over_torch_double_backprop"
            ]
    checks[f"slope <= {TARGETS['time_vs_params_slope']}"] = sc["loglog_slope_hvp"]
    print("\ntargets:")
    summary = {}
    for k, val in checks.items():
        ok = val <= float(k.rsplit("<= ", 1)[1])
        summary[k] = {"value": val, "met": bool(ok)}
        print(f"  {k:45s} {val:7.3f}  {'met' if ok else 'MISSED'}")
    results["targets_summary"] = summary
    results["machine"]["load_average_end"] = os.getloadavg()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

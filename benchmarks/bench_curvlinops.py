"""Benchmark: curvlab against curvlinops (PyTorch) on twin models, side by side.

The same MLP (784-256-256-10, tanh) and small CNN (two 3x3 stride-2 convolutions,
tanh, a dense head; NCHW, OIHW kernels) in JAX and in PyTorch, with identical weights
and data (float32, softmax cross-entropy with the mean reduction). For each curvature

* Hessian, GGN, empirical Fisher: curvlab's operator against curvlinops'
  ``HessianLinearOperator``, ``GGNLinearOperator``, ``EFLinearOperator``;
* MC Fisher: ``mc_fisher_operator`` against ``FisherMCLinearOperator`` (other random
  labels, so they agree in expectation only: each is compared with the exact GGN, with
  1 sample and with many);
* K-FAC (exact output curvature = curvlinops' "type-2", and empirical) and EK-FAC:
  ``kfac_operator`` / ``ekfac_operator`` against ``KFACLinearOperator`` /
  ``EKFACLinearOperator`` (``kfac_approx="expand"``, weights and biases separate),

it reports (a) the relative difference of the two matvecs on the same random vector,
after mapping the parameter order and layout (a JAX dense weight is ``(in, out)``, a
torch ``Linear`` weight ``(out, in)``; with the mean cross-entropy every operator here
is on the same scale in both libraries, see README "Curvature conventions"), (b) the
matvec time, median over interleaved rounds (one curvlab and one curvlinops product per
round), and the per-round ratio curvlab / curvlinops, and (c) the K-FAC factors ``A``
(input covariance) and ``G`` (output-gradient covariance) of every layer against
curvlinops' (relative Frobenius difference).

curvlab's products are jitted ``fn(op, v)`` calls (the operator a pytree argument);
curvlinops' are ``op @ v`` on a flat torch tensor. Both libraries get the same number of
threads (``--single-thread``: one each, the robust setting on a loaded machine).

Needs the ``bench`` extra plus curvlinops (a separate virtual environment keeps the
test environment lean)::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 -e '.[bench]'
    .venv-bench/bin/python benchmarks/bench_curvlinops.py --quick --single-thread
    .venv-bench/bin/python benchmarks/bench_curvlinops.py --single-thread   # -> results/curvlinops.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

if "--single-thread" in sys.argv:  # must be set before JAX starts its CPU backend
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import curvlab

try:
    import curvlinops
    import torch
except ImportError as err:  # pragma: no cover - the bench extra is not installed
    raise SystemExit(
        f"bench_curvlinops.py needs torch and curvlinops ({err}); install the bench extra: "
        "python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 -e '.[bench]'"
    ) from err


# ---------------------------------------------------------------------------
# Twin models: JAX pytree + torch module with the same weights
# ---------------------------------------------------------------------------


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy, the plain function (K-FAC differentiates it)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


class Twin:
    """A JAX model and its torch twin; ``layers`` lists ``(kind, jax_key)`` in torch order."""

    def __init__(self, name, model_fn, params, torch_model, layers, batch):
        self.name, self.model_fn, self.params, self.torch_model = name, model_fn, params, torch_model
        self.layers, self.batch = layers, batch
        _, self.unravel = ravel_pytree(params)
        self.n = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))
        X, y = batch
        self.tX = torch.tensor(np.asarray(X))
        self.ty = torch.tensor(np.asarray(y), dtype=torch.long)
        self.tparams = {k: p for k, p in torch_model.named_parameters()}

    # parameter layout maps --------------------------------------------------
    def to_torch(self, flat) -> list:
        """A flat curvlab vector as the list of torch tensors in ``named_parameters`` order."""
        tree = self.unravel(jnp.asarray(flat))
        out = []
        for kind, key in self.layers:
            w, b = np.asarray(tree[key]["w"]), np.asarray(tree[key]["b"])
            out += [torch.tensor(w.T.copy() if kind == "dense" else w), torch.tensor(b)]
        return out

    def to_jax(self, tensors) -> np.ndarray:
        """The inverse map: torch tensors (list or flat) -> flat curvlab vector."""
        if isinstance(tensors, torch.Tensor):
            shapes = [p.shape for p in self.tparams.values()]
            sizes = [math.prod(s) for s in shapes]
            tensors = [t.reshape(s) for t, s in zip(torch.split(tensors, sizes), shapes)]
        tree = {}
        it = iter(tensors)
        for kind, key in self.layers:
            w, b = next(it).detach().numpy(), next(it).detach().numpy()
            tree[key] = {"w": w.T if kind == "dense" else w, "b": b}
        return np.asarray(ravel_pytree(tree)[0])

    def torch_flat(self, flat) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in self.to_torch(flat)])


def dense_init(key, m, n):
    return {"w": jax.random.normal(key, (m, n), jnp.float32) / math.sqrt(m), "b": 0.1 * jnp.ones(n)}


def make_mlp(sizes, batch, key) -> Twin:
    keys = jax.random.split(key, len(sizes) + 1)
    params = {f"l{i}": dense_init(k, m, n) for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}
    depth = len(sizes) - 1

    def model_fn(p, x):
        for i in range(depth - 1):
            x = jnp.tanh(x @ p[f"l{i}"]["w"] + p[f"l{i}"]["b"])
        return x @ p[f"l{depth - 1}"]["w"] + p[f"l{depth - 1}"]["b"]

    mods = []
    for i in range(depth):
        lin = torch.nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.asarray(params[f"l{i}"]["w"]).T.copy()))
            lin.bias.copy_(torch.tensor(np.asarray(params[f"l{i}"]["b"])))
        mods += [lin, torch.nn.Tanh()] if i < depth - 1 else [lin]
    X = jax.random.normal(keys[-1], (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, sizes[-1])
    layers = [("dense", f"l{i}") for i in range(depth)]
    name = "mlp " + "-".join(map(str, sizes))
    return Twin(name, model_fn, params, torch.nn.Sequential(*mods), layers, (X, y))


def make_cnn(side, c1, c2, batch, key) -> Twin:
    """conv 3x3 /2 (pad 1) -> tanh -> conv 3x3 /2 (pad 1) -> tanh -> flatten -> dense 10."""
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    s2 = (side + 1) // 2
    s4 = (s2 + 1) // 2
    params = {
        "c1": {"w": jax.random.normal(k1, (c1, 1, 3, 3), jnp.float32) / 3.0, "b": 0.1 * jnp.ones(c1)},
        "c2": {
            "w": jax.random.normal(k2, (c2, c1, 3, 3), jnp.float32) / (3.0 * math.sqrt(c1)),
            "b": 0.1 * jnp.ones(c2),
        },
        "d": dense_init(k3, c2 * s4 * s4, 10),
    }

    def conv(x, p):
        y = jax.lax.conv_general_dilated(
            x, p["w"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return y + p["b"][None, :, None, None]

    def model_fn(p, x):
        x = jnp.tanh(conv(x, p["c1"]))
        x = jnp.tanh(conv(x, p["c2"]))
        return x.reshape(x.shape[0], -1) @ p["d"]["w"] + p["d"]["b"]

    tc1 = torch.nn.Conv2d(1, c1, 3, stride=2, padding=1)
    tc2 = torch.nn.Conv2d(c1, c2, 3, stride=2, padding=1)
    td = torch.nn.Linear(c2 * s4 * s4, 10)
    with torch.no_grad():
        for mod, key in ((tc1, "c1"), (tc2, "c2")):
            mod.weight.copy_(torch.tensor(np.asarray(params[key]["w"])))
            mod.bias.copy_(torch.tensor(np.asarray(params[key]["b"])))
        td.weight.copy_(torch.tensor(np.asarray(params["d"]["w"]).T.copy()))
        td.bias.copy_(torch.tensor(np.asarray(params["d"]["b"])))
    tmodel = torch.nn.Sequential(tc1, torch.nn.Tanh(), tc2, torch.nn.Tanh(), torch.nn.Flatten(), td)
    X = jax.random.normal(k4, (batch, 1, side, side), jnp.float32)
    y = jax.random.randint(k5, (batch,), 0, 10)
    layers = [("conv", "c1"), ("conv", "c2"), ("dense", "d")]
    return Twin(f"cnn {side}x{side} {c1}-{c2}", model_fn, params, tmodel, layers, (X, y))


# ---------------------------------------------------------------------------
# The operators of both libraries
# ---------------------------------------------------------------------------


def curvlab_ops(tw: Twin, mc_samples: int) -> dict:
    """Zero-argument builders of curvlab's operators, by curvature name."""
    model_fn, params, batch = tw.model_fn, tw.params, tw.batch
    loss_fn = lambda p, b: cross_entropy(model_fn(p, b[0]), b[1])

    def per_example(p, b):
        logp = jax.nn.log_softmax(model_fn(p, b[0]), axis=-1)
        return -jnp.take_along_axis(logp, b[1][:, None], axis=-1)[:, 0]

    key = jax.random.key(3)
    sce = curvlab.softmax_cross_entropy
    return {
        "hessian": lambda: curvlab.hessian_operator(loss_fn, params, batch),
        "ggn": lambda: curvlab.ggn_operator(model_fn, sce, params, batch),
        "empirical_fisher": lambda: curvlab.fisher_operator(per_example, params, batch),
        "mc_fisher": lambda: curvlab.mc_fisher_operator(model_fn, sce, params, batch, num_samples=1, key=key),
        "mc_fisher_many": lambda: curvlab.mc_fisher_operator(
            model_fn, sce, params, batch, num_samples=mc_samples, key=key
        ),
        "kfac": lambda: curvlab.kfac_operator(model_fn, cross_entropy, params, batch),
        "kfac_empirical": lambda: curvlab.kfac_operator(
            model_fn, cross_entropy, params, batch, fisher_type="empirical"
        ),
        "ekfac": lambda: curvlab.ekfac_operator(model_fn, cross_entropy, params, batch),
    }


def curvlinops_ops(tw: Twin, mc_samples: int) -> dict:
    """Zero-argument builders of curvlinops' operators (its 3.x API: a module and a parameter list)."""
    model, params = tw.torch_model, list(tw.tparams.values())
    loss = torch.nn.CrossEntropyLoss(reduction="mean")
    data = [(tw.tX, tw.ty)]
    common = dict(check_deterministic=False)
    kfac = dict(kfac_approx="expand", separate_weight_and_bias=True, **common)
    cl = curvlinops
    return {
        "hessian": lambda: cl.HessianLinearOperator(model, loss, params, data, **common),
        "ggn": lambda: cl.GGNLinearOperator(model, loss, params, data, **common),
        "empirical_fisher": lambda: cl.EFLinearOperator(model, loss, params, data, **common),
        "mc_fisher": lambda: cl.FisherMCLinearOperator(model, loss, params, data, mc_samples=1, **common),
        "mc_fisher_many": lambda: cl.FisherMCLinearOperator(
            model, loss, params, data, mc_samples=mc_samples, **common
        ),
        "kfac": lambda: cl.KFACLinearOperator(model, loss, params, data, fisher_type="type-2", **kfac),
        "kfac_empirical": lambda: cl.KFACLinearOperator(
            model, loss, params, data, fisher_type="empirical", **kfac
        ),
        "ekfac": lambda: cl.EKFACLinearOperator(model, loss, params, data, fisher_type="type-2", **kfac),
    }


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def kfac_factors_curvlinops(op) -> list:
    """``(A, G)`` per layer of a curvlinops ``KFACLinearOperator``, in module order.

    curvlinops computes its factors lazily, at the first product (done before this is called).
    """
    if not op._gradient_covariances:
        op.compute_kronecker_factors()
    return [
        (op._input_covariances[name].numpy(), op._gradient_covariances[name].numpy())
        for name, pos in op._mapping.items()
        if "weight" in pos
    ]


def factor_agreement(cl_op, cv_op) -> list:
    rows = []
    for i, ((A, G), (tA, tG)) in enumerate(zip(cl_op.factors, kfac_factors_curvlinops(cv_op))):
        A, G = np.asarray(A), np.asarray(G)
        rows.append(
            {
                "layer": i,
                "A_shape": list(A.shape),
                "A_rel_diff": rel(A, tA) if A.shape == tA.shape else None,
                "G_rel_diff": rel(G, tG) if G.shape == tG.shape else None,
                "GxA_rel_diff": rel(np.kron(G, A), np.kron(tG, tA))
                if A.shape == tA.shape and G.shape == tG.shape and A.size * G.size <= 4e6
                else None,
            }
        )
    return rows


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def bench_twin(tw: Twin, rounds: int, mc_samples: int) -> dict:
    matvec = jax.jit(lambda op, v: op.matvec(v))
    v = jax.random.normal(jax.random.key(7), (tw.n,), jnp.float32)
    tv = tw.torch_flat(v)
    mine, theirs = curvlab_ops(tw, mc_samples), curvlinops_ops(tw, mc_samples)
    result, notes, built = {}, [], {}
    for name in mine:
        row = {}
        try:
            t0 = time.perf_counter()
            op = mine[name]()
            jax.block_until_ready(jax.tree_util.tree_leaves(op))
            row["curvlab_build_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            top = theirs[name]()
            tmv = tw.to_jax(top @ tv)  # K-FAC / EK-FAC factors are computed at this first product
            row["curvlinops_build_s"] = time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001 - report and go on
            notes.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
            continue
        mv = np.asarray(matvec(op, v))
        row["rel_diff"] = rel(mv, tmv)
        built[name] = (op, top, mv, tmv)
        result[name] = row
    # MC Fisher agrees in expectation only: compare each library's sample with its exact GGN
    if "ggn" in built:
        g_mine, g_theirs = built["ggn"][2], built["ggn"][3]
        for name in ("mc_fisher", "mc_fisher_many"):
            if name in built:
                result[name]["curvlab_rel_diff_to_ggn"] = rel(built[name][2], g_mine)
                result[name]["curvlinops_rel_diff_to_ggn"] = rel(built[name][3], g_theirs)
                result[name]["num_samples"] = 1 if name == "mc_fisher" else mc_samples
                result[name]["rel_diff_note"] = "different random labels: compare the *_to_ggn columns"
    # factors
    factors = {}
    for name in ("kfac", "kfac_empirical"):
        if name in built:
            try:
                factors[name] = factor_agreement(built[name][0], built[name][1])
            except Exception as err:  # noqa: BLE001
                notes.append(f"factors of {name}: {type(err).__name__}: {str(err)[:300]}")
    # timing: interleaved rounds, mc_fisher_many left out (its build dominates, not the product)
    timed = [k for k in built if k != "mc_fisher_many"]
    samples = {k: ([], []) for k in timed}
    for k in timed:  # warm-up
        op, top = built[k][:2]
        jax.block_until_ready(matvec(op, v))
        top @ tv
    for _ in range(rounds):
        for k in timed:
            op, top = built[k][:2]
            t0 = time.perf_counter()
            jax.block_until_ready(matvec(op, v))
            t1 = time.perf_counter()
            top @ tv
            t2 = time.perf_counter()
            samples[k][0].append(t1 - t0)
            samples[k][1].append(t2 - t1)
    for k in timed:
        a, b = samples[k]
        result[k]["curvlab_matvec_ms"] = 1e3 * float(np.median(a))
        result[k]["curvlinops_matvec_ms"] = 1e3 * float(np.median(b))
        result[k]["ratio_curvlab_over_curvlinops"] = float(np.median(np.asarray(a) / np.asarray(b)))
    return {
        "model": tw.name,
        "num_params": tw.n,
        "batch": int(tw.batch[0].shape[0]),
        "operators": result,
        "kfac_factors": factors,
        "notes": notes,
    }


def print_table(res: dict):
    print(f"\n== {res['model']}: {res['num_params']} parameters, batch {res['batch']}")
    print(f"{'operator':<18}{'rel diff':>10}{'curvlab ms':>12}{'curvlinops ms':>15}{'ratio':>8}")
    for k, r in res["operators"].items():
        d = f"{r['rel_diff']:.1e}" if "rel_diff" in r else "-"
        a = f"{r['curvlab_matvec_ms']:.2f}" if "curvlab_matvec_ms" in r else "-"
        b = f"{r['curvlinops_matvec_ms']:.2f}" if "curvlinops_matvec_ms" in r else "-"
        q = f"{r['ratio_curvlab_over_curvlinops']:.2f}" if "ratio_curvlab_over_curvlinops" in r else "-"
        print(f"{k:<18}{d:>10}{a:>12}{b:>15}{q:>8}")
        if "curvlab_rel_diff_to_ggn" in r:
            print(
                f"{'':<18}vs GGN, {r['num_samples']} sample(s): curvlab {r['curvlab_rel_diff_to_ggn']:.3f}, "
                f"curvlinops {r['curvlinops_rel_diff_to_ggn']:.3f}"
            )
    for name, rows in res["kfac_factors"].items():
        for row in rows:
            fmt = lambda x: "-" if x is None else f"{x:.1e}"
            print(
                f"  {name} layer {row['layer']} A {tuple(row['A_shape'])}: A {fmt(row['A_rel_diff'])}, "
                f"G {fmt(row['G_rel_diff'])}, G(x)A {fmt(row['GxA_rel_diff'])}"
            )
    for note in res["notes"]:
        print("  note:", note)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models and batch, fewer rounds")
    ap.add_argument("--single-thread", action="store_true", help="one thread for XLA and for torch")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    threads = 1 if args.single_thread else len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    rounds = args.rounds or (5 if args.quick else 15)
    key = jax.random.key(0)
    if args.quick:
        twins = [make_mlp((64, 32, 32, 10), 32, key), make_cnn(12, 4, 8, 16, key)]
        mc_samples = 200
    else:
        twins = [make_mlp((784, 256, 256, 10), 256, key), make_cnn(28, 16, 32, 128, key)]
        mc_samples = 100
    out = {
        "platform": platform.platform(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "curvlinops": getattr(curvlinops, "__version__", "?"),
        "threads": threads,
        "quick": args.quick,
        "rounds": rounds,
        "dtype": "float32",
        "models": [],
    }
    for tw in twins:
        res = bench_twin(tw, rounds, mc_samples)
        print_table(res)
        out["models"].append(res)
    default = "curvlinops_quick.json" if args.quick else "curvlinops.json"
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / default
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Benchmark: curvlab._cg vs jax.scipy.sparse.linalg.cg, time per iteration on the same operator.

Both solvers run a fixed number of iterations (tolerance 0), jit-compiled, on the same prepared
matvec (``op.prepare()``: for the Hessian, the gradient is linearized once). curvlab's CG also
records its history (residual norms, quadratic values, Lanczos coefficients) and checks for
negative curvature and non-finite numbers each step; the ratio measures that overhead.

Problems (float32):
- ``dense``: a dense SPD matrix, n = 2000, condition number 1e3;
- ``mlp_ggn``: Gauss-Newton matrix of a tanh MLP 784-256-256-10 (softmax cross-entropy, random
  inputs and labels, batch 512; 269,322 parameters), damped by 1e-2. (The Hessian itself is
  indefinite at a random initialization even with that damping, so CG would stop at once.)

Run: ``.venv/bin/python benchmarks/bench_cg.py [--repeats R]``; writes ``benchmarks/results/cg.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._cg import cg
from curvlab._curvature import ggn_operator
from curvlab._operators import DenseOperator


def _time_pair(f, g, *args, repeats):
    """Median and best wall time of ``f(*args)`` and ``g(*args)``, interleaved (fair under load)."""
    jax.block_until_ready(f(*args))  # compile + warm up
    jax.block_until_ready(g(*args))
    tf, tg = [], []
    for _ in range(repeats):
        for fn, acc in ((f, tf), (g, tg)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            acc.append(time.perf_counter() - t0)
    return (statistics.median(tf), min(tf)), (statistics.median(tg), min(tg))


def dense_problem(n=2000, kappa=1e3, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.geomspace(1.0, kappa, n)
    A = (q * lam) @ q.T
    A = (A + A.T) / 2
    b = rng.standard_normal(n)
    return DenseOperator(jnp.asarray(A, jnp.float32)), jnp.asarray(b, jnp.float32)


def mlp_problem(batch=512, sizes=(784, 256, 256, 10), damping=1e-2, seed=0):
    key = jax.random.key(seed)
    keys = jax.random.split(key, len(sizes) + 1)
    params = [
        {"W": jax.random.normal(k, (m, n), jnp.float32) / np.sqrt(m), "b": jnp.zeros(n, jnp.float32)}
        for k, m, n in zip(keys[:-2], sizes[:-1], sizes[1:], strict=True)
    ]
    X = jax.random.normal(keys[-2], (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(keys[-1], (batch,), 0, sizes[-1])

    def model(p, X):
        h = X
        for layer in p[:-1]:
            h = jnp.tanh(h @ layer["W"] + layer["b"])
        return h @ p[-1]["W"] + p[-1]["b"]

    def xent(logits, y):
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])

    # the Hessian at a random initialization is indefinite even damped by 1e-2 (CG stops with
    # NEGATIVE_CURVATURE at once), so the benchmark uses the Gauss-Newton matrix, PSD
    H = ggn_operator(model, xent, params, (X, y)).damped(damping)
    b = jax.random.normal(jax.random.key(seed + 1), (H.size,), jnp.float32)
    return H, b


def bench(name, op, b, iters, repeats):
    @jax.jit
    def ours(op, b):
        return cg(op, b, rtol=0.0, atol=0.0, maxiter=iters).x

    @jax.jit
    def theirs(op, b):
        return jax.scipy.sparse.linalg.cg(op.prepare(), b, tol=0.0, atol=0.0, maxiter=iters)[0]

    # same iterates: check they agree before timing
    res = cg(op, b, rtol=0.0, maxiter=iters)
    assert int(res.num_iterations) == iters, res.message
    x_ours, x_theirs = ours(op, b), theirs(op, b)
    rel_diff = float(jnp.linalg.norm(x_ours - x_theirs) / jnp.linalg.norm(x_theirs))
    (t_ours, t_ours_min), (t_theirs, t_theirs_min) = _time_pair(ours, theirs, op, b, repeats=repeats)
    row = {
        "problem": name,
        "n": int(op.size),
        "dtype": str(b.dtype),
        "iterations": iters,
        "curvlab_ms_per_iter": 1e3 * t_ours / iters,
        "jax_scipy_ms_per_iter": 1e3 * t_theirs / iters,
        "ratio_median": t_ours / t_theirs,
        "ratio_best": t_ours_min / t_theirs_min,
        "relative_difference_of_solutions": rel_diff,
        "repeats": repeats,
    }
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dense-iters", type=int, default=200)
    parser.add_argument("--mlp-iters", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=["dense_spd", "mlp_ggn"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cg.json"))
    args = parser.parse_args()

    problems = {"dense_spd": (dense_problem, args.dense_iters), "mlp_ggn": (mlp_problem, args.mlp_iters)}
    rows = [
        bench(name, *make(), iters, args.repeats)
        for name, (make, iters) in problems.items()
        if name in args.only
    ]
    header = (
        f"{'problem':<12} {'n':>8} {'iters':>6} {'curvlab ms/it':>14} {'jax.scipy ms/it':>16} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['problem']:<12} {r['n']:>8} {r['iterations']:>6} {r['curvlab_ms_per_iter']:>14.3f} "
            f"{r['jax_scipy_ms_per_iter']:>16.3f} {r['ratio_median']:>6.3f}"
        )
    out = {
        "benchmark": "cg_vs_jax_scipy",
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "target": "ratio <= 1.10",
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

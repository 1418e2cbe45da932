"""Benchmark of curvlab.diagnose on an MLP 784-1024-1024-10 (1.9M parameters), float32.

Measures, on random data:

* one ``diagnose`` call on 10 batches of 512 (wall time with compilation, HVP count,
  peak memory from ``resource.getrusage`` and, where the backend has them, JAX memory stats);
* the time of one dataset-operator product ``A v`` against the number of batches
  (2, 5, 10, 20 by default), which should be linear: the least-squares slope
  (seconds per batch) and intercept are printed.

Results go to ``benchmarks/results/diagnose.json``.

    python benchmarks/bench_diagnose.py            # the full benchmark
    python benchmarks/bench_diagnose.py --quick    # a smaller MLP and fewer batches
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from curvlab import dataset_operator, diagnose


def init_mlp(key, sizes):
    params = []
    for m, n in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        params.append({"w": jax.random.normal(sub, (m, n), jnp.float32) / np.sqrt(m), "b": jnp.zeros(n)})
    return params


def loss_fn(params, batch):
    x, y = batch
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
    logits = x @ params[-1]["w"] + params[-1]["b"][None, :]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def make_data(key, num_examples, din, classes):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (num_examples, din), jnp.float32), jax.random.randint(
        ky, (num_examples,), 0, classes
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def device_peak_mib():
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="MLP 784-256-256-10, batches of 128, sizes 1,2,4,8")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--sizes", type=str, default="2,5,10,20", help="numbers of batches for the scaling run")
    ap.add_argument("--reps", type=int, default=2, help="timed products per size in the scaling run")
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--num-probes", type=int, default=2)
    ap.add_argument("--num-steps", type=int, default=5)
    ap.add_argument("--trace-probes", type=int, default=4)
    ap.add_argument("--max-matvecs", type=int, default=None, help="eigsh matvec budget")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "diagnose.json"))
    args = ap.parse_args(argv)
    hidden = 256 if args.quick else 1024
    if args.quick:
        args.batch_size, args.batches, args.sizes = 128, 4, "1,2,4,8"
    sizes = (784, hidden, hidden, 10)
    params = init_mlp(jax.random.key(0), sizes)
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    print(f"MLP {sizes}: {n:,} parameters; devices {jax.devices()}")

    # 1. one diagnose call
    data = make_data(jax.random.key(1), args.batches * args.batch_size, sizes[0], sizes[-1])
    t0 = time.perf_counter()
    report = diagnose(
        loss_fn,
        params,
        data,
        batch_size=args.batch_size,
        k=args.k,
        num_probes=args.num_probes,
        num_steps=args.num_steps,
        trace_probes=args.trace_probes,
        max_matvecs=args.max_matvecs,
        per_block=False,
        progress=False,
    )
    wall = time.perf_counter() - t0
    print(report.summary())

    # 2. time of one product A v against the number of batches
    scaling = []
    for nb in [int(s) for s in args.sizes.split(",")]:
        d = make_data(jax.random.key(2), nb * args.batch_size, sizes[0], sizes[-1])
        op = dataset_operator(loss_fn, params, d, batch_size=args.batch_size)
        mv = jax.jit(lambda o, v: o.matvec(v))
        v = jnp.ones((n,), jnp.float32) / np.sqrt(n)
        mv(op, v).block_until_ready()  # compile + warm up
        t = time.perf_counter()
        for _ in range(args.reps):
            mv(op, v).block_until_ready()
        sec = (time.perf_counter() - t) / args.reps
        scaling.append({"num_batches": nb, "seconds_per_product": sec})
        print(f"  {nb:3d} batches: {sec:.3f} s per product A v")
    x = np.array([s["num_batches"] for s in scaling], float)
    y = np.array([s["seconds_per_product"] for s in scaling])
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (slope * x + intercept)) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-300)
    print(f"slope {slope:.4f} s per batch, intercept {intercept:.4f} s, R^2 {r2:.4f}")

    result = {
        "benchmark": "diagnose",
        "quick": args.quick,
        "model": f"MLP {'-'.join(map(str, sizes))}",
        "num_params": n,
        "dtype": "float32",
        "batches": args.batches,
        "batch_size": args.batch_size,
        "options": {
            "k": args.k,
            "num_probes": args.num_probes,
            "num_steps": args.num_steps,
            "trace_probes": args.trace_probes,
            "max_matvecs": args.max_matvecs,
            "per_block": False,
        },
        "diagnose_wall_time_s": wall,
        "num_operator_products": report.num_operator_products,
        "num_hvps": report.num_hvps,
        "seconds_per_hvp_incl_compile": wall / max(report.num_hvps, 1),
        "peak_rss_mib": peak_rss_mib(),
        "device_peak_mib": device_peak_mib(),
        "top_eigenvalues": report.to_dict()["top_eigenvalues"],
        "trace": report.trace,
        "scaling": scaling,
        "scaling_slope_s_per_batch": slope,
        "scaling_intercept_s": intercept,
        "scaling_r2": r2,
        "platform": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"peak RSS {result['peak_rss_mib']:.0f} MiB; written {args.out}")
    return result


if __name__ == "__main__":
    main()

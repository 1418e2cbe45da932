"""Benchmark: curvature products of real models, and sparse Hessian recovery against n.

Three parts, every number measured in this one process:

1. **Models** (MLP 784-256-256-10 with tanh, and a small CNN: two 3x3 convolutions
   and a dense head; softmax cross-entropy, float32, random data): one matvec of the
   Hessian, the GGN, K-FAC, EK-FAC and the inverse of damped K-FAC, against one
   gradient. Each product is a jitted ``fn(op, v)`` with the operator a pytree
   argument (so the parameters and batch are inputs, not constants); the Hessian and
   GGN products include their linearization (a forward pass), K-FAC / EK-FAC use their
   precomputed factors (their build time is reported apart). Time: median over
   interleaved rounds (every method once per round, so load from other processes hits
   them alike) and the per-round ratio to the gradient. Memory: the compiled
   executable's ``memory_analysis().temp_size_in_bytes`` (XLA's buffer assignment:
   deterministic, independent of load).
2. **Transformer** (a GPT-style language model, vocabulary 8192): the GGN product with
   the analytic softmax cross-entropy output Hessian (``curvlab.softmax_cross_entropy``,
   "lean") against the GGN through a plain cross-entropy function (differentiated twice)
   and against a gradient; the issue's goal is lean <= 3x a gradient in memory and time.
   Uses ``benchmarks/bench_lean_ggn.py`` when it provides ``make_transformer``; else a
   small plain-pytree GPT defined here.
3. **Sparse Hessians**: :func:`curvlab.sparse_hessian_operator` on a chain (tridiagonal;
   also written as a ``lax.scan`` over the links, n <= 1e4, whose detection unrolls the
   loop) and a 2-D PDE energy (5-point Laplacian + quartic) for n = 1e2 ... 1e5: HVPs used
   (colours), nnz, detection + colouring time, recovery time at a new point (warm,
   jitted), sparse matvec time against one HVP, and the error against ``jax.hessian``
   where n <= 2000.

Operators that do not exist yet in this checkout (``kfac_operator`` ...) are skipped
with a note. The same operators against curvlinops (PyTorch) on twin models are in
``benchmarks/bench_curvlinops.py``.

Run::

    .venv/bin/python benchmarks/bench_model_curvature.py            # -> results/model_curvature.json
    .venv/bin/python benchmarks/bench_model_curvature.py --quick    # smaller batch / n, fewer rounds
"""

from __future__ import annotations

import argparse
import json
import math
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

import curvlab  # noqa: E402

# ---------------------------------------------------------------------------
# Timing and memory helpers
# ---------------------------------------------------------------------------


def block(out):
    return jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, out
    )


def temp_bytes(jitted, *args) -> int | None:
    """XLA's temporary-buffer bytes of the compiled executable (deterministic peak-memory proxy)."""
    try:
        ma = jitted.lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - some backends have no memory analysis
        return None
    return None if ma is None else int(ma.temp_size_in_bytes)


def time_interleaved(calls: dict, rounds: int, inner: int = 3) -> dict:
    """Median seconds per call of each zero-argument callable, methods interleaved per round."""
    for fn in calls.values():
        block(fn())
    samples = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                out = fn()
            block(out)
            samples[k].append((time.perf_counter() - t0) / inner)
    return samples


def summarize(samples: dict, ref: str) -> dict:
    out = {}
    for k, s in samples.items():
        ratios = [a / b for a, b in zip(s, samples[ref])]
        out[k] = {"median_s": float(np.median(s)), "ratio_to_" + ref: float(np.median(ratios))}
    return out


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def cross_entropy(logits, labels):
    """Plain softmax cross-entropy (mean over examples); differentiated twice by the plain GGN."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def init_dense(key, m, n):
    return {"w": jax.random.normal(key, (m, n)) / math.sqrt(m), "b": jnp.zeros(n)}


def make_mlp(batch, key):
    sizes = (784, 256, 256, 10)
    keys = jax.random.split(key, len(sizes))
    params = [init_dense(k, m, n) for k, m, n in zip(keys, sizes[:-1], sizes[1:])]

    def model_fn(params, x):
        for layer in params[:-1]:
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    inputs = jax.random.normal(keys[-1], (batch, 784))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 10)
    return model_fn, params, (inputs, labels)


def make_cnn(batch, key):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    params = {
        "conv1": {"w": jax.random.normal(k1, (3, 3, 1, 16)) / 3.0, "b": jnp.zeros(16)},
        "conv2": {"w": jax.random.normal(k2, (3, 3, 16, 32)) / 12.0, "b": jnp.zeros(32)},
        "dense": init_dense(k3, 7 * 7 * 32, 10),
    }

    def conv(x, p, stride):
        y = jax.lax.conv_general_dilated(
            x, p["w"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + p["b"]

    def model_fn(params, x):
        x = jnp.tanh(conv(x, params["conv1"], 2))  # 14 x 14 x 16
        x = jnp.tanh(conv(x, params["conv2"], 2))  # 7 x 7 x 32
        x = x.reshape(x.shape[0], -1)
        return x @ params["dense"]["w"] + params["dense"]["b"]

    inputs = jax.random.normal(k4, (batch, 28, 28, 1))
    labels = jax.random.randint(k5, (batch,), 0, 10)
    return model_fn, params, (inputs, labels)


def num_params(params) -> int:
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))


def inverse_kfac(kfac, damping, notes):
    """``curvlab.inverse(kfac, method="exact", damping=...)``, else the operator's ``.inverse``."""
    try:
        return curvlab.inverse(kfac, method="exact", damping=damping)
    except TypeError as err:
        notes.append(f"curvlab.inverse(kfac, method='exact') failed ({err}); used KFACOperator.inverse")
        return kfac.inverse(damping)


def bench_model(name, model_fn, params, batch, rounds) -> dict:
    loss_fn = lambda p, b: cross_entropy(model_fn(p, b[0]), b[1])
    grad = jax.jit(jax.grad(loss_fn))
    matvec = jax.jit(lambda op, v: op.matvec(v))
    n = num_params(params)
    v = jax.random.normal(jax.random.key(7), (n,))
    calls = {"gradient": lambda: grad(params, batch)}
    memory = {"gradient": temp_bytes(grad, params, batch)}
    build_s, notes = {}, []
    ops = {
        "hessian": lambda: curvlab.hessian_operator(loss_fn, params, batch),
        "ggn": lambda: curvlab.ggn_operator(model_fn, cross_entropy, params, batch),
    }
    if hasattr(curvlab, "kfac_operator"):
        ops["kfac"] = lambda: curvlab.kfac_operator(model_fn, cross_entropy, params, batch)
    if hasattr(curvlab, "ekfac_operator"):
        ops["ekfac"] = lambda: curvlab.ekfac_operator(model_fn, cross_entropy, params, batch)
    if hasattr(curvlab, "kfac_operator") and hasattr(curvlab, "inverse"):
        ops["inverse_kfac"] = lambda: inverse_kfac(
            curvlab.kfac_operator(model_fn, cross_entropy, params, batch), 1e-2, notes
        )
    for k in ("kfac", "ekfac", "inverse"):
        if not hasattr(curvlab, k if k == "inverse" else k + "_operator"):
            notes.append(f"curvlab has no {k} in this checkout: skipped")
    for k, make in ops.items():
        try:
            t0 = time.perf_counter()
            op = make()
            block(jax.tree_util.tree_leaves(op))
            build_s[k] = time.perf_counter() - t0
            memory[k] = temp_bytes(matvec, op, v)
            calls[k] = lambda op=op: matvec(op, v)
        except Exception as err:  # noqa: BLE001 - report and go on
            notes.append(f"{k}: {type(err).__name__}: {str(err)[:200]}")
    times = summarize(time_interleaved(calls, rounds), "gradient")
    result = {"num_params": n, "batch": int(batch[0].shape[0]), "methods": {}, "notes": notes}
    for k in calls:
        m = memory.get(k)
        result["methods"][k] = {
            **times[k],
            "temp_bytes": m,
            "memory_ratio_to_gradient": None
            if m is None or not memory["gradient"]
            else m / memory["gradient"],
            "build_s": build_s.get(k),
        }
    print(f"\n== {name}: {n} parameters, batch {result['batch']}")
    print(f"{'method':<14}{'matvec ms':>11}{'x grad':>8}{'temp MiB':>10}{'x grad':>8}{'build s':>9}")
    for k, r in result["methods"].items():
        mem = "-" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.1f}"
        mr = "-" if r["memory_ratio_to_gradient"] is None else f"{r['memory_ratio_to_gradient']:.2f}"
        b = "-" if r["build_s"] is None else f"{r['build_s']:.2f}"
        print(f"{k:<14}{r['median_s'] * 1e3:>11.2f}{r['ratio_to_gradient']:>8.2f}{mem:>10}{mr:>8}{b:>9}")
    for note in notes:
        print("  note:", note)
    return result


# ---------------------------------------------------------------------------
# Transformer: lean GGN vs plain GGN vs gradient
# ---------------------------------------------------------------------------


def make_gpt(vocab, d, layers, heads, seq, batch, key):
    """A small GPT (pre-norm blocks, causal attention, tied-free unembedding) as a plain pytree."""
    keys = iter(jax.random.split(key, 6 + 4 * layers))
    nrm = lambda k, shape, s: jax.random.normal(k, shape) * s
    params = {
        "embed": nrm(next(keys), (vocab, d), 0.02),
        "pos": nrm(next(keys), (seq, d), 0.02),
        "blocks": [
            {
                "qkv": nrm(next(keys), (d, 3 * d), d**-0.5),
                "proj": nrm(next(keys), (d, d), d**-0.5),
                "up": nrm(next(keys), (d, 4 * d), d**-0.5),
                "down": nrm(next(keys), (4 * d, d), (4 * d) ** -0.5),
            }
            for _ in range(layers)
        ],
        "unembed": nrm(next(keys), (d, vocab), d**-0.5),
    }

    def norm(x):
        return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)

    def model_fn(params, tokens):
        T = tokens.shape[-1]
        x = params["embed"][tokens] + params["pos"][:T]
        mask = jnp.tril(jnp.ones((T, T), bool))
        for blk in params["blocks"]:
            q, k, v = jnp.split(norm(x) @ blk["qkv"], 3, axis=-1)
            split = lambda a: a.reshape(*a.shape[:-1], heads, d // heads).swapaxes(-2, -3)
            q, k, v = split(q), split(k), split(v)
            att = jnp.where(mask, q @ k.swapaxes(-1, -2) / math.sqrt(d // heads), -1e9)
            y = (jax.nn.softmax(att, axis=-1) @ v).swapaxes(-2, -3).reshape(x.shape)
            x = x + y @ blk["proj"]
            x = x + jax.nn.gelu(norm(x) @ blk["up"]) @ blk["down"]
        return norm(x) @ params["unembed"]

    tokens = jax.random.randint(next(keys), (batch, seq), 0, vocab)
    targets = jax.random.randint(next(keys), (batch, seq), 0, vocab)
    return model_fn, params, (tokens, targets)


def bench_transformer(quick, rounds) -> dict:
    notes = []
    cfg = dict(
        vocab=8192,
        d=64 if quick else 128,
        layers=2,
        heads=4,
        seq=32 if quick else 64,
        batch=2 if quick else 4,
    )
    try:  # the Flax NNX GPT of bench_lean_ggn.py (task D's benchmark), when flax and that file are there
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import bench_lean_ggn  # type: ignore
        from flax import nnx

        model = bench_lean_ggn.build_gpt(cfg["vocab"], cfg["d"], cfg["layers"], cfg["heads"], cfg["seq"])
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def model_fn(p, tokens):
            return nnx.merge(graphdef, p, rest)(tokens)

        k1, k2 = jax.random.split(jax.random.key(1))
        tokens = jax.random.randint(k1, (cfg["batch"], cfg["seq"]), 0, cfg["vocab"])
        batch = (tokens, jax.random.randint(k2, tokens.shape, 0, cfg["vocab"]))
        source = f"bench_lean_ggn.build_gpt (Flax NNX) {cfg}"
    except (ImportError, AttributeError, TypeError) as err:
        notes.append(f"bench_lean_ggn.build_gpt unavailable ({type(err).__name__}): plain-pytree GPT")
        model_fn, params, batch = make_gpt(**cfg, key=jax.random.key(0))
        source = f"make_gpt here {cfg}"
    n = num_params(params)
    loss_fn = lambda p, b: cross_entropy(model_fn(p, b[0]), b[1])
    grad = jax.jit(jax.grad(loss_fn))
    matvec = jax.jit(lambda op, v: op.matvec(v))
    v = jax.random.normal(jax.random.key(3), (n,))
    calls = {"gradient": lambda: grad(params, batch)}
    memory = {"gradient": temp_bytes(grad, params, batch)}
    plain = curvlab.ggn_operator(model_fn, cross_entropy, params, batch)
    calls["ggn_plain"] = lambda: matvec(plain, v)
    memory["ggn_plain"] = temp_bytes(matvec, plain, v)
    if hasattr(curvlab, "softmax_cross_entropy"):
        lean = curvlab.ggn_operator(model_fn, curvlab.softmax_cross_entropy, params, batch)
        calls["ggn_lean"] = lambda: matvec(lean, v)
        memory["ggn_lean"] = temp_bytes(matvec, lean, v)
        if jnp.linalg.norm(block(matvec(lean, v)) - block(matvec(plain, v))) > 1e-3 * jnp.linalg.norm(
            matvec(plain, v)
        ):
            notes.append("lean and plain GGN products differ by more than 1e-3 relative")
    else:
        notes.append("curvlab.softmax_cross_entropy not in this checkout: no lean GGN")
    times = summarize(time_interleaved(calls, rounds, inner=1), "gradient")
    res = {"source": source, "num_params": n, "tokens": int(np.size(batch[0])), "methods": {}, "notes": notes}
    print(f"\n== transformer ({source}): {n} parameters, {res['tokens']} tokens")
    print(f"{'method':<12}{'ms':>10}{'x grad':>8}{'temp MiB':>10}{'x grad':>8}")
    for k in calls:
        m = memory[k]
        mr = None if m is None or not memory["gradient"] else m / memory["gradient"]
        res["methods"][k] = {**times[k], "temp_bytes": m, "memory_ratio_to_gradient": mr}
        print(
            f"{k:<12}{times[k]['median_s'] * 1e3:>10.1f}{times[k]['ratio_to_gradient']:>8.2f}"
            f"{(m or 0) / 2**20:>10.1f}{(mr or float('nan')):>8.2f}"
        )
    if "ggn_lean" in res["methods"]:
        lean_r = res["methods"]["ggn_lean"]
        res["goal_met"] = bool(
            lean_r["ratio_to_gradient"] <= 3.0 and (lean_r["memory_ratio_to_gradient"] or 0.0) <= 3.0
        )
        print(f"  goal (lean <= 3x gradient in time and memory): {res['goal_met']}")
    for note in notes:
        print("  note:", note)
    return res


# ---------------------------------------------------------------------------
# Sparse Hessians against n
# ---------------------------------------------------------------------------


def chain(x):
    return jnp.sum((x[1:] - x[:-1]) ** 2 * (1.0 + x[1:] ** 2)) + jnp.sum(jnp.cos(x))


def chain_scan(x):
    """The chain energy with its links summed by ``lax.scan`` (detection unrolls the loop exactly)."""

    def link(acc, pair):
        a, b = pair
        return acc + (b - a) ** 2 * (1.0 + b**2), None

    return jax.lax.scan(link, 0.0, (x[:-1], x[1:]))[0] + jnp.sum(jnp.cos(x))


def pde_energy(x):
    m = math.isqrt(x.shape[0])
    u = x.reshape(m, m)
    up = jnp.pad(u, 1)
    lap = 4 * u - up[:-2, 1:-1] - up[2:, 1:-1] - up[1:-1, :-2] - up[1:-1, 2:]
    return 0.5 * jnp.sum(u * lap) + 0.25 * jnp.sum(u**4)


def bench_sparse(sizes, rounds) -> list:
    from curvlab._sparse_hessian import hessian_sparsity, star_coloring

    rows = []
    print("\n== sparse Hessian recovery")
    print(
        f"{'problem':<8}{'n':>8}{'HVPs':>6}{'nnz':>9}{'detect s':>10}{'colour s':>10}{'recover ms':>12}"
        f"{'sparse mv ms':>14}{'HVP ms':>9}{'max err':>10}"
    )
    for name, f in (("chain", chain), ("scan", chain_scan), ("pde2d", pde_energy)):
        for n in sizes:
            if name == "scan" and n > 10_000:  # unrolled detection: ~1.6 s per 1000 links
                continue
            if name == "pde2d":
                n = math.isqrt(n) ** 2
            x = jax.random.normal(jax.random.key(n), (n,))
            t0 = time.perf_counter()
            pattern, _ = hessian_sparsity(f, x)
            t1 = time.perf_counter()
            colors = star_coloring(pattern, n)
            t2 = time.perf_counter()
            op = curvlab.sparse_hessian_operator(f, x, pattern=pattern)
            x2 = x + 0.1
            hvp = curvlab.hvp_fn(f, x2)
            mv = jax.jit(lambda o, v: o @ v)
            v = jnp.ones(n, x.dtype)
            samples = time_interleaved(
                {
                    "recover": lambda op=op, x2=x2: op.at(x2).matrix.data,
                    "matvec": lambda op=op, v=v, mv=mv: mv(op, v),
                    "hvp": lambda hvp=hvp, v=v: hvp(v),
                },
                rounds,
                inner=1,
            )
            err = None
            if n <= 2000:
                H = jax.jit(jax.hessian(f))(x)
                err = float(jnp.max(jnp.abs(op.to_dense() - H)))
            row = {
                "problem": name,
                "n": n,
                "num_hvps": op.num_hvps,
                "colors": int(colors.max()) + 1,
                "nnz": op.nnz,
                "detect_s": t1 - t0,
                "color_s": t2 - t1,
                "recover_s": float(np.median(samples["recover"])),
                "sparse_matvec_s": float(np.median(samples["matvec"])),
                "hvp_s": float(np.median(samples["hvp"])),
                "max_abs_err_vs_dense": err,
                "dtype": str(x.dtype),
            }
            rows.append(row)
            print(
                f"{name:<8}{n:>8}{row['num_hvps']:>6}{row['nnz']:>9}"
                f"{row['detect_s']:>10.2f}{row['color_s']:>10.2f}"
                f"{row['recover_s'] * 1e3:>12.2f}{row['sparse_matvec_s'] * 1e3:>14.3f}"
                f"{row['hvp_s'] * 1e3:>9.3f}"
                f"{'-' if err is None else f'{err:.1e}':>10}"
            )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches and n, fewer rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model_curvature.json"))
    ap.add_argument("--parts", default="models,transformer,sparse")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    parts = set(args.parts.split(","))
    out = {
        "quick": args.quick,
        "rounds": rounds,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "notes": ["curvlinops (PyTorch) twins: benchmarks/bench_curvlinops.py, results/curvlinops.json"],
    }
    key = jax.random.key(0)
    if "models" in parts:
        batch = 128 if args.quick else 512
        out["mlp"] = bench_model("MLP 784-256-256-10", *make_mlp(batch, key), rounds)
        out["cnn"] = bench_model(
            "CNN 2x conv3x3 + dense", *make_cnn(batch // 4 if args.quick else 128, key), rounds
        )
    if "transformer" in parts:
        out["transformer"] = bench_transformer(args.quick, rounds)
    if "sparse" in parts:
        sizes = [100, 1000, 10000] if args.quick else [100, 1000, 10000, 100000]
        out["sparse"] = bench_sparse(sizes, rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

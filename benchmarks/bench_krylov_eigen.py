"""Benchmark curvlab's Lanczos / eigsh on the Hessian of an MLP, against scipy, matfree and power iteration.

Model: MLP 784-256-256-10 (tanh), softmax cross-entropy, batch 512 of random inputs and labels,
float32: n = 269,322 parameters. ``--quick`` uses 64-32-10 on a batch of 128 (2,410 parameters).

Measures
  * one HVP (jitted ``op.matvec``: forward-over-reverse, primal included) and one HVP inside a
    loop on the linearized gradient (``op.prepare()``, what every curvlab solver uses);
  * Lanczos, k = 60 steps, full reorthogonalization: time per step, as a multiple of either HVP;
  * matfree's ``tridiag_sym(60, reortho="full")`` with the same linearized product: time per step;
  * top-5 eigenpairs to relative residual 1e-6: curvlab ``eigsh`` vs ``scipy.sparse.linalg.eigsh``
    (ARPACK) on ``op.to_scipy()`` (a LinearOperator calling the jitted HVP); curvlab is run both
    with the linearized product (default) and with the very same jitted HVP as scipy
    (``linearize=False``); three interleaved rounds, medians and per-round ratios;
  * top-5 to 1e-5 with curvlab ``eigsh`` (error against the 1e-6 run);
  * top-1 eigenvalue to 1e-4 relative: curvlab ``eigsh(k=1, rtol=1e-4)`` (a residual below 1e-4 |theta|
    guarantees an eigenvalue within 1e-4 relative) vs a PyHessian-style power iteration written in
    JAX (stop when the Rayleigh quotient changes by < 1e-4 relative), same linearized product;
  * the same power iteration in PyTorch (``bench`` extra; skipped, with ``{"error": ...}``, without
    torch), as PyHessian's ``hessian.eigenvalues`` runs it on one batch: the gradient g is built once
    with ``create_graph=True`` and each HVP is a second backward pass, ``grad(g . v)`` =
    ``autograd.grad(g, params, grad_outputs=v, retain_graph=True)``; stop when
    |eig - prev| / (|prev| + 1e-6) < 1e-4, maxIter 1000, report ``prev`` (as PyHessian does). Same
    weights, data and start vector as the JAX problem, torch threads = ``os.cpu_count()``; time: median of
    3 runs after a 5-HVP warm-up, building the gradient graph included (as the JAX run includes its
    linearization). Also the
    median time of one torch HVP, built from scratch (forward, gradient with graph, second backward:
    compare with the jitted JAX HVP) and on the retained gradient graph (compare with the linearized one).

Block eigensolver (issue 12; ``eigsh``'s default ``block_size=None`` is block Lanczos):
  * top-5 to rtol 1e-5 (float32): block ``eigsh`` vs scipy ARPACK (tol 1e-5) on the same jitted HVP
    and vs single-vector ``eigsh(block_size=1)``, three interleaved rounds, per-round ratios;
  * HVPs per second: one linearized HVP at a time vs vmapped blocks of 4, 8 and 16;
  * multiplicity cases (float64, dense): eigenvalues found and matvecs, block / single / ARPACK.

Run::

    nice .venv/bin/python benchmarks/bench_krylov_eigen.py [--quick]

Writes ``benchmarks/results/krylov_eigen.json`` (``krylov_eigen_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curvlab._curvature import hessian_operator  # noqa: E402
from curvlab._eigsh import eigsh  # noqa: E402
from curvlab._lanczos import lanczos  # noqa: E402


def mlp_problem(sizes, batch, seed=0):
    key = jax.random.key(seed)
    params = []
    for din, dout in zip(sizes[:-1], sizes[1:], strict=True):
        key, k1 = jax.random.split(key)
        params.append(
            {"w": jax.random.normal(k1, (din, dout), jnp.float32) / np.sqrt(din), "b": jnp.zeros(dout)}
        )
    key, kx, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])

    def loss(params, x, y):
        h = x
        for layer in params[:-1]:
            h = jnp.tanh(h @ layer["w"] + layer["b"][None, :])
        logits = h @ params[-1]["w"] + params[-1]["b"][None, :]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return loss, params, x, y


def timed(fn, repeats=3):
    """Median wall time of ``fn()`` (result blocked on), after one warm-up call (compilation)."""
    out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


@jax.jit
def _hvp_call(op, v):
    return op.matvec(v)


def _products_in_loop(op, v, num_steps):
    """``num_steps`` sequential normalized products with the linearized HVP (Lanczos minus Gram-Schmidt)."""
    mv = op.prepare()

    def body(_, v):
        w = mv(v)
        return w / jnp.linalg.norm(w)

    return jax.lax.fori_loop(0, num_steps, body, v)


_products_in_loop = jax.jit(_products_in_loop, static_argnames=("num_steps",))


def _power_history(op, v0, num_iters):
    """Rayleigh quotients of power iteration, one per HVP."""
    mv = op.prepare()

    def body(v, _):
        hv = mv(v)
        return hv / jnp.linalg.norm(hv), jnp.vdot(v, hv)

    _, rq = jax.lax.scan(body, v0 / jnp.linalg.norm(v0), None, length=num_iters)
    return rq


_power_history = jax.jit(_power_history, static_argnames=("num_iters",))


def _power_iteration(op, v0, tol, maxiter):
    """PyHessian's ``eigenvalues`` loop (top-1): power iteration on the Rayleigh quotient."""
    mv = op.prepare()

    def cond(s):
        _, eig, prev, it = s
        return (it < maxiter) & ((it < 2) | (jnp.abs(eig - prev) / (jnp.abs(prev) + 1e-6) >= tol))

    def body(s):
        v, eig, _, it = s
        hv = mv(v)
        new = jnp.vdot(v, hv)
        return hv / jnp.linalg.norm(hv), new, eig, it + 1

    v = v0 / jnp.linalg.norm(v0)
    v, eig, _, it = jax.lax.while_loop(cond, body, (v, jnp.zeros((), v.dtype), jnp.zeros((), v.dtype), 0))
    return eig, it


_power_iteration = jax.jit(_power_iteration, static_argnames=("maxiter",))


def _torch_problem(params, x, y):
    """The MLP of :func:`mlp_problem` in PyTorch, same weights and data (JAX ``w`` is (din, dout): h @ w + b).

    Returns ``(ps, loss_fn, to_torch, to_jax)``: the flat parameter list [w0, b0, w1, b1, ...],
    the loss of ``ps``, and converters between a JAX parameter tree and a list shaped like ``ps``.
    """
    import torch

    def to_torch(tree):
        return [torch.from_numpy(np.array(layer[k], dtype=np.float32)) for layer in tree for k in ("w", "b")]

    def to_jax(ts):
        arrs = [jnp.asarray(t.detach().numpy()) for t in ts]
        return [{"w": w, "b": b} for w, b in zip(arrs[::2], arrs[1::2], strict=True)]

    ps = [t.requires_grad_() for t in to_torch(params)]
    xt = torch.from_numpy(np.array(x, dtype=np.float32))
    yt = torch.from_numpy(np.array(y, dtype=np.int64))

    def loss_fn(ps):
        h = xt
        for w, b in zip(ps[:-2:2], ps[1:-2:2], strict=True):
            h = torch.tanh(h @ w + b)
        return torch.nn.functional.cross_entropy(h @ ps[-2] + ps[-1], yt)

    return ps, loss_fn, to_torch, to_jax


def _torch_hvp(loss_fn, ps, vs):
    """Double-backprop HVP from scratch: g = grad(L) with ``create_graph=True``, then H v = grad(g . v)."""
    import torch

    g = torch.autograd.grad(loss_fn(ps), ps, create_graph=True)
    gv = sum(torch.sum(gi * vi) for gi, vi in zip(g, vs, strict=True))
    return torch.autograd.grad(gv, ps)


def _torch_power_iteration(loss_fn, ps, v0, tol, maxiter):
    """PyHessian's ``hessian.eigenvalues`` (one batch, top-1) in PyTorch.

    The gradient g is built once with its graph; each HVP is ``grad(g, ps, grad_outputs=v)`` = grad(g . v).
    Stops when |eig - prev| / (|prev| + 1e-6) < tol and returns ``prev``, as PyHessian does.
    Returns ``(eigenvalue, number of HVPs)``.
    """
    import torch

    def normalized(vs):
        s = torch.sqrt(sum(torch.sum(t * t) for t in vs))
        return [t / s for t in vs]

    g = torch.autograd.grad(loss_fn(ps), ps, create_graph=True)
    v = normalized(v0)
    eig, hvps = None, 0
    while hvps < maxiter:
        hv = torch.autograd.grad(g, ps, grad_outputs=v, retain_graph=True)
        hvps += 1
        new = sum(torch.sum(a * b) for a, b in zip(hv, v, strict=True)).item()
        v = normalized(hv)
        if eig is not None and abs(eig - new) / (abs(eig) + 1e-6) < tol:
            break
        eig = new
    return eig, hvps


def pytorch_power(params, x, y, v0_tree, lam_ref, t_hvp, t_hvp_lin, t_pow_jax, tol=1e-4, maxiter=1000):
    """PyHessian-style power iteration in PyTorch on the JAX problem; ``{"error": ...}`` without torch.

    ``t_hvp``, ``t_hvp_lin``, ``t_pow_jax``: the JAX timings (jitted HVP, linearized HVP in a loop,
    JAX power iteration) the torch ones are compared with.
    """
    try:
        import torch
    except ImportError as err:  # pragma: no cover - optional comparison
        return {"error": repr(err)}

    torch.set_num_threads(os.cpu_count())
    ps, loss_fn, to_torch, _ = _torch_problem(params, x, y)
    v0 = to_torch(v0_tree)
    _torch_power_iteration(loss_fn, ps, v0, tol, maxiter=5)  # warm-up (lazy initialization of torch)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        eig, hvps = _torch_power_iteration(loss_fn, ps, v0, tol, maxiter)
        runs.append(time.perf_counter() - t)
    t_pow = float(np.median(runs))
    t_full, _ = timed(lambda: _torch_hvp(loss_fn, ps, v0), repeats=7)
    g = torch.autograd.grad(loss_fn(ps), ps, create_graph=True)
    t_retained, _ = timed(lambda: torch.autograd.grad(g, ps, grad_outputs=v0, retain_graph=True), repeats=7)
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "stopping_rule": f"|eig - prev| / (|prev| + 1e-6) < {tol:g}, maxIter {maxiter}, returns prev",
        "hvp": "double backprop: grad(loss, create_graph=True) once, then grad(g . v) per HVP",
        "seconds": t_pow,
        "seconds_runs": runs,
        "hvps": hvps,
        "eigenvalue": eig,
        "relative_error": abs(eig - lam_ref) / abs(lam_ref),
        "seconds_per_iteration": t_pow / hvps,
        "hvp_from_scratch_seconds": t_full,
        "hvp_retained_graph_seconds": t_retained,
        "jax_hvp_over_torch_hvp_from_scratch": t_hvp / t_full,
        "jax_linearized_hvp_over_torch_hvp_retained_graph": t_hvp_lin / t_retained,
        "torch_power_over_jax_power_time": t_pow / t_pow_jax,
    }


def _counting_scipy(op, n, dtype):
    """A scipy LinearOperator on ``op.to_scipy()`` that counts its matvecs (``counter["n"]``)."""
    import scipy.sparse.linalg as sla

    base_mv = op.to_scipy().matvec
    counter = {"n": 0}

    class Counting(sla.LinearOperator):
        def __init__(self):
            super().__init__(dtype, (n, n))

        def _matvec(self, x):
            counter["n"] += 1
            return base_mv(x)

    return Counting(), counter


def block_benchmark(op, op_plain, n, key, top=5, tol=1e-5):
    """Block eigsh vs ARPACK (same jitted HVP) vs single-vector eigsh; HVPs/s single vs blocks."""
    import scipy.sparse.linalg as sla

    runs = {
        "block": lambda: eigsh(op, top, which="LA", rtol=tol, key=key),
        "block_same_hvp": lambda: eigsh(op_plain, top, which="LA", rtol=tol, key=key),
        "single": lambda: eigsh(op, top, which="LA", rtol=tol, key=key, block_size=1),
    }
    out = {name: jax.block_until_ready(fn()) for name, fn in runs.items()}  # compile
    cop, counter = _counting_scipy(op_plain, n, np.float32)
    cop.matvec(np.ones(n, np.float32))
    v0 = np.asarray(jax.random.normal(key, (n,), jnp.float32))
    times = {name: [] for name in (*runs, "arpack")}
    for _ in range(3):
        for name, fn in runs.items():
            t, out[name] = timed(fn, repeats=1)
            times[name].append(t)
        counter["n"] = 0
        t0 = time.perf_counter()
        w_sp, _ = sla.eigsh(cop, k=top, which="LA", tol=tol, v0=v0)
        times["arpack"].append(time.perf_counter() - t0)
        sp_mv = counter["n"]
    w_sp = np.sort(w_sp)[::-1]
    res = {"tol": tol, "arpack_matvecs": sp_mv, "arpack_eigenvalues": w_sp.tolist()}
    for name, r in out.items():
        res[name] = {
            "seconds": float(np.median(times[name])),
            "seconds_runs": times[name],
            "matvecs": int(r.num_matvecs),
            "restarts": int(r.num_restarts),
            "status": r.status.name,
            "eigenvalues": np.asarray(r.eigenvalues).tolist(),
            "over_arpack_per_round": [a / b for a, b in zip(times[name], times["arpack"], strict=True)],
        }
    res["arpack_seconds"] = float(np.median(times["arpack"]))
    res["arpack_seconds_runs"] = times["arpack"]
    res["block_over_single_per_round"] = [a / b for a, b in zip(times["block"], times["single"], strict=True)]

    # HVPs per second: the linearized product one vector at a time vs a vmapped block
    @functools.partial(jax.jit, static_argnames=("b", "reps"))
    def products(op, V, b, reps):
        f = op.prepare()
        g = f if b == 1 else jax.vmap(f)

        def body(_, V):
            W = g(V)
            return W / jnp.linalg.norm(W)

        return jax.lax.fori_loop(0, reps, body, V)

    rates = {}
    for b in (1, 4, 8, 16):
        V = jax.random.normal(key, (n,) if b == 1 else (b, n), jnp.float32)
        reps = max(2, 32 // b)
        t, _ = timed(lambda V=V, b=b, reps=reps: products(op, V, b, reps), repeats=3)
        rates[str(b)] = b * reps / t
    res["hvps_per_second"] = rates
    res["block_speedup_per_vector"] = {b: rates[b] / rates["1"] for b in rates}
    return res


def multiplicity_cases():
    """The issue's repeated-eigenvalue cases (float64, dense): block / single-vector eigsh vs ARPACK."""
    import scipy.sparse.linalg as sla

    from curvlab._operators import DenseOperator, DiagonalOperator
    from curvlab.problems import matrix_with_spectrum

    cases = {}
    with jax.enable_x64(True):
        n = 21
        w21 = np.diag(np.abs(np.arange(n) - 10.0)) + np.eye(n, k=1) + np.eye(n, k=-1)
        lam3 = np.r_[np.full(3, 10.0), np.linspace(0.0, 9.0, 97)]
        lam0 = np.r_[np.zeros(100), np.linspace(0.01, 10.0, 100)]
        problems = {
            "W21+ k=2 LA": (w21, 2, "LA"),
            "diag [10,10,10,9..1] k=3 LA": (np.diag([10.0, 10.0, 10.0, *range(9, 0, -1)]), 3, "LA"),
            "rotated triple top k=3 LA": (np.asarray(matrix_with_spectrum(lam3, dtype=jnp.float64)), 3, "LA"),
            "singular PSD (100 zeros) k=5 SA": (
                np.asarray(matrix_with_spectrum(lam0, dtype=jnp.float64)),
                5,
                "SA",
            ),
        }
        for name, (A, k, which) in problems.items():
            ref = np.sort(np.linalg.eigvalsh(A))
            ref = ref[::-1][:k] if which == "LA" else ref[:k]
            op = DiagonalOperator(jnp.diag(jnp.asarray(A))) if name.startswith("diag") else DenseOperator(A)
            row = {"reference": ref.tolist()}
            for label, b in (("block", None), ("single", 1)):
                r = eigsh(op, k, which=which, block_size=b)
                row[label] = {
                    "eigenvalues": np.asarray(r.eigenvalues).tolist(),
                    "matvecs": int(r.num_matvecs),
                    "status": r.status.name,
                    "max_error": float(np.max(np.abs(np.asarray(r.eigenvalues) - ref))),
                }
            count = {"n": 0}

            def mv(x, A=A, count=count):
                count["n"] += 1
                return A @ x

            lop = sla.LinearOperator(A.shape, matvec=mv, dtype=np.float64)
            try:
                w, note = sla.eigsh(lop, k=k, which=which, tol=1e-6, v0=np.ones(A.shape[0]))[0], "converged"
            except sla.ArpackNoConvergence as err:  # ARPACK's relative test on zero eigenvalues
                w, note = err.eigenvalues, f"no convergence ({len(err.eigenvalues)}/{k} converged)"
            w = np.sort(w)[::-1] if which == "LA" else np.sort(w)
            row["arpack"] = {
                "eigenvalues": w.tolist(),
                "matvecs": count["n"],
                "status": note,
                "max_error": float(np.max(np.abs(w - ref[: len(w)]))) if len(w) else None,
            }
            cases[name] = row
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model (64-32-10, batch 128)")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args(argv)

    sizes, batch = ((64, 32, 10), 128) if args.quick else ((784, 256, 256, 10), 512)
    loss, params, x, y = mlp_problem(sizes, batch)
    op = hessian_operator(loss, params, x, y)  # linearize=True
    op_plain = hessian_operator(loss, params, x, y, linearize=False)
    n = op.size
    print(f"MLP {'-'.join(map(str, sizes))}, batch {batch}, float32, n = {n:,} parameters")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, {platform.processor()}"
    )
    results = {
        "model": "MLP " + "-".join(map(str, sizes)),
        "batch": batch,
        "dtype": "float32",
        "n": n,
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
    }
    key = jax.random.key(1)
    v = jax.random.normal(key, (n,), jnp.float32)

    # --- one HVP -------------------------------------------------------------
    t_hvp, _ = timed(lambda: _hvp_call(op_plain, v), repeats=7)
    results["hvp_seconds"] = t_hvp

    # --- Lanczos k = 60 vs the same 60 products without Gram-Schmidt, interleaved ----------
    # (interleaving A, B, A, B, ... makes the ratio robust to the load of a shared machine)
    k = 60
    loop = lambda: _products_in_loop(op, v, num_steps=k)  # noqa: E731
    run = lambda: lanczos(op, k, key=key).alpha  # noqa: E731
    jax.block_until_ready((loop(), run()))
    t_loops, t_runs = [], []
    for _ in range(3):
        t_loops.append(timed(loop, repeats=1)[0])
        t_runs.append(timed(run, repeats=1)[0])
    t_hvp_lin = float(np.median(t_loops)) / k  # linearized HVP + normalization, one linearization per 60
    t_lz = float(np.median(t_runs))
    per_step = t_lz / k
    results["hvp_linearized_in_loop_seconds"] = t_hvp_lin
    results["lanczos_over_loop_of_products_paired"] = [b / a for a, b in zip(t_loops, t_runs, strict=True)]
    t_lz_nh, _ = timed(lambda: lanczos(op, k, key=key, history=False).alpha, repeats=1)
    lres = lanczos(op, k, key=key)
    Q = np.asarray(lres.basis[:k], dtype=np.float64)
    orth = float(np.abs(Q @ Q.T - np.eye(k)).max())
    results["lanczos"] = {
        "num_steps": k,
        "status": lres.status.name,
        "seconds": t_lz,
        "seconds_per_step": per_step,
        "seconds_per_step_without_history": t_lz_nh / k,
        "per_step_over_hvp": per_step / t_hvp,
        "per_step_over_linearized_hvp": per_step / t_hvp_lin,
        "orthogonality_error": orth,
    }

    # --- matfree -------------------------------------------------------------
    try:
        from matfree import decomp

        tridiag = decomp.tridiag_sym(k, reortho="full")

        @jax.jit
        def matfree_lanczos(op, v0):
            mv = op.prepare()
            return tridiag(lambda w: mv(w), v0)

        t_mf, _ = timed(lambda: matfree_lanczos(op, v), repeats=3)
        results["matfree"] = {
            "seconds": t_mf,
            "seconds_per_step": t_mf / k,
            "per_step_over_hvp": t_mf / k / t_hvp,
            "per_step_over_linearized_hvp": t_mf / k / t_hvp_lin,
            "curvlab_over_matfree": t_lz / t_mf,
        }
    except Exception as err:  # pragma: no cover - optional comparison
        results["matfree"] = {"error": repr(err)}

    # --- top-5 to 1e-6 vs scipy ----------------------------------------------
    import scipy
    import scipy.sparse.linalg as sla

    top, tol = 5, 1e-6
    run_lin = lambda: eigsh(op, top, which="LA", rtol=tol, key=key)  # noqa: E731
    run_plain = lambda: eigsh(op_plain, top, which="LA", rtol=tol, key=key)  # noqa: E731
    eres, eres_plain = jax.block_until_ready((run_lin(), run_plain()))  # compile both
    sop = op.to_scipy()
    counter = {"n": 0}
    base_mv = sop.matvec

    class Counting(sla.LinearOperator):
        def __init__(self):
            super().__init__(np.float32, (n, n))

        def _matvec(self, x):
            counter["n"] += 1
            return base_mv(x)

    cop = Counting()
    cop.matvec(np.ones(n, np.float32))  # compile the jitted HVP
    v0 = np.asarray(jax.random.normal(key, (n,), jnp.float32))
    # three rounds of (curvlab, curvlab on the plain HVP, scipy), interleaved so that the ratios are
    # robust to the load of a shared machine; medians reported, and the per-round ratios
    t_lins, t_plains, t_sps = [], [], []
    for _ in range(3):
        t, eres = timed(run_lin, repeats=1)
        t_lins.append(t)
        t, eres_plain = timed(run_plain, repeats=1)
        t_plains.append(t)
        counter["n"] = 0
        t0 = time.perf_counter()
        w_sp, U_sp = sla.eigsh(cop, k=top, which="LA", tol=tol, v0=v0)
        t_sps.append(time.perf_counter() - t0)
        sp_mv = counter["n"]
    t_eig, t_eig_plain, t_sp = (float(np.median(t)) for t in (t_lins, t_plains, t_sps))
    order = np.argsort(-w_sp)
    w_sp, U_sp = w_sp[order], U_sp[:, order]
    sp_res = [
        float(np.linalg.norm(base_mv(U_sp[:, i]) - w * U_sp[:, i]) / abs(w)) for i, w in enumerate(w_sp)
    ]
    ev = np.asarray(eres.eigenvalues)
    results["top5"] = {
        "tol": tol,
        "curvlab_seconds": t_eig,
        "curvlab_matvecs": eres.num_matvecs,
        "curvlab_restarts": eres.num_restarts,
        "curvlab_status": eres.status.name,
        "curvlab_eigenvalues": ev.tolist(),
        "curvlab_relative_residuals": (np.asarray(eres.residual_norms) / np.abs(ev)).tolist(),
        "curvlab_same_hvp_seconds": t_eig_plain,
        "curvlab_same_hvp_matvecs": eres_plain.num_matvecs,
        "curvlab_same_hvp_status": eres_plain.status.name,
        "scipy_version": scipy.__version__,
        "scipy_seconds": t_sp,
        "scipy_matvecs": sp_mv,
        "scipy_eigenvalues": w_sp.tolist(),
        "scipy_relative_residuals": sp_res,
        "curvlab_over_scipy_time": t_eig / t_sp,
        "curvlab_over_scipy_time_per_round": [a / b for a, b in zip(t_lins, t_sps, strict=True)],
        "curvlab_same_hvp_over_scipy_time_per_round": [a / b for a, b in zip(t_plains, t_sps, strict=True)],
        "curvlab_same_hvp_over_scipy_time": t_eig_plain / t_sp,
        "max_relative_eigenvalue_difference": float(np.max(np.abs(ev - w_sp) / np.abs(w_sp))),
    }

    # --- top-1 to 1e-4 vs power iteration ------------------------------------
    ref = eigsh(op, 1, which="LA", rtol=1e-6, key=jax.random.key(7))
    lam_ref = float(ref.eigenvalues[0])
    t_top1, r1 = timed(lambda: eigsh(op, 1, which="LA", rtol=1e-4, key=key), repeats=3)
    t_pow, (eig_pow, it_pow) = timed(lambda: _power_iteration(op, v, 1e-4, maxiter=1000), repeats=3)
    t_tol2, r2 = timed(lambda: eigsh(op, 1, which="LA", rtol=1e-2, key=key), repeats=3)
    iters = 400
    rq = np.asarray(_power_history(op, v, num_iters=iters))
    err = np.abs(rq - lam_ref) / abs(lam_ref)
    hit = np.nonzero(err <= 1e-4)[0]
    power_needed = int(hit[0]) + 1 if hit.size else None
    t_hist, _ = timed(lambda: _power_history(op, v, num_iters=iters), repeats=1)
    results["top1"] = {
        "reference_eigenvalue": lam_ref,
        "curvlab_tol_1e-2_seconds": t_tol2,
        "curvlab_tol_1e-2_matvecs": r2.num_matvecs,
        "curvlab_tol_1e-2_relative_error": abs(float(r2.eigenvalues[0]) - lam_ref) / abs(lam_ref),
        "power_hvps_to_reach_1e-4": power_needed,
        "power_seconds_to_reach_1e-4": None if power_needed is None else t_hist / iters * power_needed,
        "power_relative_error_after_400": float(err[-1]),
        "curvlab_seconds": t_top1,
        "curvlab_matvecs": r1.num_matvecs,
        "curvlab_relative_error": abs(float(r1.eigenvalues[0]) - lam_ref) / abs(lam_ref),
        "power_seconds": t_pow,
        "power_hvps": int(it_pow),
        "power_relative_error": abs(float(eig_pow) - lam_ref) / abs(lam_ref),
        "curvlab_over_power_time": t_top1 / t_pow,
    }
    # --- top-1 to 1e-4: PyHessian-style power iteration in PyTorch ------------------
    results["pytorch_power"] = pytorch_power(params, x, y, op.unravel(v), lam_ref, t_hvp, t_hvp_lin, t_pow)

    # --- top-5 to 1e-5 (reference: the tol = 1e-6 run above) ---------------------
    t_top5, r5 = timed(lambda: eigsh(op, top, which="LA", rtol=1e-5, key=key), repeats=3)
    err5 = float(np.max(np.abs(np.asarray(r5.eigenvalues) - ev) / np.abs(ev)))
    results["top5_tol_1e-5"] = {
        "seconds": t_top5,
        "matvecs": r5.num_matvecs,
        "status": r5.status.name,
        "max_relative_error_vs_tol_1e-6": err5,
    }
    # --- block eigensolver (issue 12) -------------------------------------------
    results["block"] = block_benchmark(op, op_plain, n, key)
    results["multiplicity"] = multiplicity_cases()
    results["load_average_at_end"] = os.getloadavg()[0]

    # --- report ----------------------------------------------------------------
    rows = [
        ("HVP (jitted, primal included)", f"{1e3 * t_hvp:.2f} ms"),
        ("HVP inside a loop (linearized), per step", f"{1e3 * t_hvp_lin:.2f} ms"),
        ("Lanczos k=60 reorth, per step", f"{1e3 * per_step:.2f} ms"),
        ("  / HVP, / linearized HVP in loop", f"{per_step / t_hvp:.2f}x, {per_step / t_hvp_lin:.2f}x"),
        ("  orthogonality ||QQ^T - I||", f"{orth:.1e}"),
    ]
    mf = results["matfree"]
    if "seconds" in mf:
        rows += [
            ("matfree tridiag_sym k=60 full, per step", f"{1e3 * mf['seconds_per_step']:.2f} ms"),
            (
                "  / HVP, / linearized HVP",
                f"{mf['per_step_over_hvp']:.2f}x, {mf['per_step_over_linearized_hvp']:.2f}x",
            ),
        ]
    t5 = results["top5"]
    rows += [
        ("eigsh top-5 tol 1e-6: curvlab", f"{t_eig:.2f} s, {eres.num_matvecs} matvecs, {eres.status.name}"),
        ("  curvlab, same HVP as scipy", f"{t_eig_plain:.2f} s, {eres_plain.num_matvecs} matvecs"),
        ("  scipy (ARPACK)", f"{t_sp:.2f} s, {sp_mv} matvecs"),
        (
            "  curvlab / scipy time",
            f"{t5['curvlab_over_scipy_time']:.2f} ({t5['curvlab_same_hvp_over_scipy_time']:.2f})",
        ),
        (
            "top-1 to 1e-4: curvlab eigsh",
            f"{t_top1:.2f} s, {r1.num_matvecs} HVPs, err {results['top1']['curvlab_relative_error']:.1e}",
        ),
        (
            "  power iteration (PyHessian stop, 1e-4 change)",
            f"{t_pow:.2f} s, {int(it_pow)} HVPs, err {results['top1']['power_relative_error']:.1e}",
        ),
        (
            "  curvlab eigsh rtol=1e-2",
            f"{t_tol2:.2f} s, {r2.num_matvecs} HVPs, "
            f"err {results['top1']['curvlab_tol_1e-2_relative_error']:.1e}",
        ),
        (
            "  power iteration until true error <= 1e-4",
            f"{power_needed} HVPs, {results['top1']['power_seconds_to_reach_1e-4']} s",
        ),
    ]
    tp = results["pytorch_power"]
    if "error" in tp:
        rows += [("PyTorch power iteration (PyHessian)", f"skipped: {tp['error']}")]
    else:
        rows += [
            (
                f"PyTorch {tp['torch']} power iteration (PyHessian)",
                f"{tp['seconds']:.2f} s, {tp['hvps']} HVPs, err {tp['relative_error']:.1e}, "
                f"{tp['torch_threads']} threads",
            ),
            (
                "  torch HVP from scratch, on retained graph",
                f"{1e3 * tp['hvp_from_scratch_seconds']:.2f} ms, "
                f"{1e3 * tp['hvp_retained_graph_seconds']:.2f} ms",
            ),
            (
                "  JAX HVP / torch HVP (jitted/scratch, lin./retained)",
                f"{tp['jax_hvp_over_torch_hvp_from_scratch']:.2f}x, "
                f"{tp['jax_linearized_hvp_over_torch_hvp_retained_graph']:.2f}x",
            ),
            ("  torch power / JAX power time", f"{tp['torch_power_over_jax_power_time']:.2f}x"),
        ]
    rows += [
        (
            "top-5 to 1e-5: curvlab eigsh",
            f"{t_top5:.2f} s, {r5.num_matvecs} HVPs, {r5.status.name}, max err {err5:.1e} (vs tol 1e-6)",
        ),
    ]
    bk = results["block"]
    rows += [
        (
            "block eigsh top-5 rtol 1e-5 (default)",
            f"{bk['block']['seconds']:.2f} s, {bk['block']['matvecs']} HVPs, {bk['block']['status']}",
        ),
        (
            "  same HVP as ARPACK",
            f"{bk['block_same_hvp']['seconds']:.2f} s, {bk['block_same_hvp']['matvecs']} HVPs",
        ),
        (
            "  single-vector (block_size=1)",
            f"{bk['single']['seconds']:.2f} s, {bk['single']['matvecs']} HVPs, {bk['single']['status']}",
        ),
        ("  ARPACK tol 1e-5", f"{bk['arpack_seconds']:.2f} s, {bk['arpack_matvecs']} HVPs"),
        (
            "  block / ARPACK per round (same HVP)",
            ", ".join(f"{x:.2f}" for x in bk["block"]["over_arpack_per_round"])
            + " ("
            + ", ".join(f"{x:.2f}" for x in bk["block_same_hvp"]["over_arpack_per_round"])
            + ")",
        ),
        ("  block / single per round", ", ".join(f"{x:.2f}" for x in bk["block_over_single_per_round"])),
        (
            "HVPs/s single, block 4, 8, 16",
            ", ".join(f"{bk['hvps_per_second'][b]:.0f}" for b in ("1", "4", "8", "16")),
        ),
    ]
    for name, row in results["multiplicity"].items():
        rows.append(
            (
                name,
                f"block {np.round(row['block']['eigenvalues'], 4).tolist()} ({row['block']['matvecs']} mv, "
                f"{row['block']['status']}); single {np.round(row['single']['eigenvalues'], 4).tolist()} "
                f"({row['single']['matvecs']} mv, {row['single']['status']}); ARPACK "
                f"{np.round(row['arpack']['eigenvalues'], 4).tolist()} ({row['arpack']['matvecs']} mv, "
                f"{row['arpack']['status']})",
            )
        )
    width = max(len(r[0]) for r in rows)
    for name, val in rows:
        print(f"{name:<{width}}  {val}")
    out = (
        Path(args.out)
        if args.out
        else ROOT
        / "benchmarks"
        / "results"
        / ("krylov_eigen_quick.json" if args.quick else "krylov_eigen.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()

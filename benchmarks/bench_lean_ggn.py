"""Benchmark: memory of the memory-lean GGN product on a small GPT-style language model (Flax NNX).

The model: token + position embeddings, ``--layers`` pre-norm transformer blocks (causal
multi-head attention, a 4x GELU MLP), a final LayerNorm and an untied output head over a
vocabulary of ``--vocab`` tokens; random weights and random tokens (next-token targets),
float32. Compared, each one jitted function of its inputs:

* ``gradient``: ``jax.grad`` of the mean softmax cross-entropy, the reference;
* ``ggn_plain``: one GGN product :math:`J^\\top H_\\ell J v` with a plain cross-entropy
  function (``logsumexp - take_along_axis``, the output-loss Hessian by ``jvp`` of ``grad``:
  two derivatives through the loss);
* ``ggn_lean``: the same product with ``curvlab.softmax_cross_entropy``, whose output Hessian
  is applied in closed form (:math:`c\\,(p \\odot u - p\\,(p^\\top u))`);
* both GGN products again with the model under ``jax.checkpoint`` (``*_checkpoint``).

Memory is XLA's compiled ``memory_analysis()`` (deterministic, no run needed):
``temp_size_in_bytes`` (scratch, the peak beyond inputs and outputs) and the total with
arguments and outputs. Time: median of ``--repeats`` calls after a warm-up (on a loaded CPU
only the ratios mean anything).

Run::

    .venv/bin/python benchmarks/bench_lean_ggn.py            # vocab 8192, ~5.8M parameters
    .venv/bin/python benchmarks/bench_lean_ggn.py --quick    # smoke run

Writes ``benchmarks/results/lean_ggn.json`` (``--out`` to change). Needs ``flax``.
"""

from __future__ import annotations

import argparse
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

import curvlab  # noqa: E402
from curvlab._hvp import _ggn_product  # noqa: E402


def build_gpt(vocab, d_model, num_layers, num_heads, seq_len, seed=0):
    """A GPT-style NNX model ``tokens (B, T) -> logits (B, T, vocab)``."""
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                num_heads=num_heads, in_features=d_model, decode=False, rngs=rngs
            )
            self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
            self.fc1 = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
            self.fc2 = nnx.Linear(4 * d_model, d_model, rngs=rngs)

        def __call__(self, x, mask):
            x = x + self.attn(self.ln1(x), mask=mask)
            return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))

    class GPT(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
            self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq_len, d_model)))
            self.blocks = nnx.List([Block(rngs) for _ in range(num_layers)])
            self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
            self.head = nnx.Linear(d_model, vocab, use_bias=False, rngs=rngs)

        def __call__(self, tokens):
            T = tokens.shape[-1]
            x = self.embed(tokens) + self.pos[...][None, :T, :]
            mask = nnx.make_causal_mask(tokens)
            for block in self.blocks:
                x = block(x, mask)
            return self.head(self.ln_f(x))

    return GPT(nnx.Rngs(seed))


def plain_cross_entropy(logits, labels):
    """Mean softmax cross-entropy written the usual way (autodiff differentiates through it)."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.mean(lse - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0])


def memory(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    m = compiled.memory_analysis()
    temp = int(m.temp_size_in_bytes)
    total = temp + int(m.argument_size_in_bytes) + int(m.output_size_in_bytes) - int(m.alias_size_in_bytes)
    return compiled, temp, total


def timed(compiled, args, repeats):
    jax.block_until_ready(compiled(*args))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-time", action="store_true", help="memory only")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lean_ggn.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.d_model, args.seq_len, args.batch, args.repeats = 1024, 64, 32, 2, 1
    from flax import nnx

    model = build_gpt(args.vocab, args.d_model, args.layers, args.heads, args.seq_len)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def model_fn(p, tokens):
        return nnx.merge(graphdef, p, rest)(tokens)

    num_params = sum(a.size for a in jax.tree_util.tree_leaves(params))
    key = jax.random.key(1)
    tokens = jax.random.randint(key, (args.batch, args.seq_len + 1), 0, args.vocab)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    v = jax.tree_util.tree_map(lambda a: jax.random.normal(key, a.shape, a.dtype), params)

    def grad_fn(p, x, y):
        return jax.grad(lambda q: curvlab.softmax_cross_entropy(model_fn(q, x), y))(p)

    def ggn(loss, mfn):
        return lambda p, x, y, vec: _ggn_product(mfn, loss, p, (x, y))(vec)

    ckpt = jax.checkpoint(model_fn)
    cases = {
        "gradient": (grad_fn, (params, inputs, targets)),
        "ggn_plain": (ggn(plain_cross_entropy, model_fn), (params, inputs, targets, v)),
        "ggn_lean": (ggn(curvlab.softmax_cross_entropy, model_fn), (params, inputs, targets, v)),
        "ggn_plain_checkpoint": (ggn(plain_cross_entropy, ckpt), (params, inputs, targets, v)),
        "ggn_lean_checkpoint": (ggn(curvlab.softmax_cross_entropy, ckpt), (params, inputs, targets, v)),
    }
    results = {}
    for name, (fn, fargs) in cases.items():
        compiled, temp, total = memory(fn, *fargs)
        row = {"temp_bytes": temp, "total_bytes": total}
        if not args.no_time:
            row["seconds"] = timed(compiled, fargs, args.repeats)
        results[name] = row
        mib = f"temp {temp / 2**20:9.1f} MiB  total {total / 2**20:9.1f} MiB"
        print(f"{name:22s} {mib}  {row.get('seconds', '')}")
    # agreement of the two products (float32, same point and direction)
    plain = jax.jit(cases["ggn_plain"][0])(*cases["ggn_plain"][1])
    lean = jax.jit(cases["ggn_lean"][0])(*cases["ggn_lean"][1])
    a, b = jax.flatten_util.ravel_pytree(plain)[0], jax.flatten_util.ravel_pytree(lean)[0]
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    g = results["gradient"]
    ratios = {
        f"{k}_over_gradient": {
            "temp": results[k]["temp_bytes"] / g["temp_bytes"],
            "total": results[k]["total_bytes"] / g["total_bytes"],
            **({"time": results[k]["seconds"] / g["seconds"]} if "seconds" in g else {}),
        }
        for k in results
        if k != "gradient"
    }
    ratios["lean_over_plain"] = {
        "temp": results["ggn_lean"]["temp_bytes"] / results["ggn_plain"]["temp_bytes"],
        "total": results["ggn_lean"]["total_bytes"] / results["ggn_plain"]["total_bytes"],
    }
    logits_bytes = args.batch * args.seq_len * args.vocab * 4
    report = {
        "model": {
            "kind": "GPT-style transformer LM, Flax NNX, float32, random weights and tokens",
            "vocab": args.vocab,
            "d_model": args.d_model,
            "layers": args.layers,
            "heads": args.heads,
            "seq_len": args.seq_len,
            "batch": args.batch,
            "num_params": int(num_params),
            "logits_bytes": logits_bytes,
        },
        "results": results,
        "ratios": ratios,
        "lean_vs_plain_relative_difference": rel,
        "platform": {
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0]),
            "jax": jax.__version__,
            "python": platform.python_version(),
        },
        "command": " ".join(["benchmarks/bench_lean_ggn.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    print(json.dumps(ratios, indent=1), "relative difference lean vs plain", rel)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()

"""Data-parallel diagnose on 4 forced CPU devices equals the single-device result (float64, rtol 1e-8).

Runs in a subprocess: the device count must be set (XLA_FLAGS) before JAX starts.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, runpy
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from curvlab._curvature import dataset_operator
from curvlab._diagnostics import diagnose
from curvlab.sharding import data_mesh

assert jax.device_count() == 4, jax.devices()
ns = runpy.run_path("examples/plain_jax_mlp.py")
p = ns["make_problem"](jnp.float64, num_examples=70)   # batches of 16 (sharded 4 ways) + remainder of 6
opts = dict(k=2, num_probes=4, num_steps=20, trace_probes=40, rtol=1e-10, progress=False)
single = diagnose(**p, **opts)
mesh = data_mesh()
multi = diagnose(**p, **opts, mesh=mesh)
op = dataset_operator(p["loss_fn"], p["params"], p["data"], batch_size=16, mesh="auto")
group = op.data.groups[0][0][0]  # a Hessian batch is its argument tuple (batch,); batch = (X, Y)
out = {
    "single": single.to_dict(),
    "multi": multi.to_dict(),
    "num_devices_data": len(group.sharding.device_set),
    "fully_replicated": bool(group.sharding.is_fully_replicated),
    "shard_shape": list(group.sharding.shard_shape(group.shape)),
}
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_ENABLE_X64"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_batches_are_sharded_over_the_data_axis(results):
    assert results["num_devices_data"] == 4
    assert not results["fully_replicated"]
    assert results["shard_shape"] == [4, 4, 3]  # (num_batches, 16 / 4 examples, features)


def test_multi_device_equals_single_device(results):
    import numpy as np

    s, m = results["single"], results["multi"]
    for key in ("top_eigenvalues", "bottom_eigenvalues"):
        np.testing.assert_allclose(m[key], s[key], rtol=1e-8)
    np.testing.assert_allclose(m["trace"], s["trace"], rtol=1e-8)
    np.testing.assert_allclose(m["gradient_curvature"], s["gradient_curvature"], rtol=1e-8)
    np.testing.assert_allclose(m["loss"], s["loss"], rtol=1e-12)
    for bs, bm in zip(s["blocks"], m["blocks"], strict=True):
        np.testing.assert_allclose(bm["top_eigenvalue"], bs["top_eigenvalue"], rtol=1e-8)
        np.testing.assert_allclose(bm["trace"], bs["trace"], rtol=1e-8)

"""Test configuration: float64 on, rank promotion errors on (silent broadcasting fails loudly)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def _map_limit() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 30


#: Each compiled XLA CPU executable holds memory maps; a test worker that compiles thousands of them
#: passes Linux's default limit (65,530) and the compiler crashes. ``scripts/test.sh`` raises the
#: limit; where it could not, compiled code is freed after every test module.
LOW_MAP_LIMIT = _map_limit() < 200_000


def pytest_runtest_teardown(item, nextitem):
    if LOW_MAP_LIMIT and (nextitem is None or nextitem.path != item.path):
        import gc

        jax.clear_caches()
        gc.collect()

"""SpectrumCache: each answer equals a fresh run on the damped (scaled) operator; reuse costs no matvec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curvlab import (
    CongruenceOperator,
    DenseOperator,
    SpectrumCache,
    Status,
    ghost_mask,
    lanczos,
    spectral_density,
)
from tests.reference import CountingOperator, matrix_with_spectrum

KEY, SLQ_KEY = jax.random.key(0), jax.random.key(1)


Counted = CountingOperator


def spectrum(n=60):
    return np.geomspace(1.0, 1e3, n)


@pytest.fixture
def counted():
    return Counted(matrix_with_spectrum(spectrum()))


def assert_same_run(got, ref, scale, rtol=1e-12):
    m = int(ref.num_steps)
    assert int(got.num_steps) == m and Status(int(got.status)) == Status(int(ref.status))
    atol = rtol * scale
    np.testing.assert_allclose(np.asarray(got.alpha)[:m], np.asarray(ref.alpha)[:m], rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(got.beta)[:m], np.asarray(ref.beta)[:m], rtol=0, atol=atol)
    R, Rref = np.asarray(got.ritz_history)[:m, :m], np.asarray(ref.ritz_history)[:m, :m]
    assert np.array_equal(np.isnan(R), np.isnan(Rref))
    np.testing.assert_allclose(R, Rref, rtol=0, atol=atol)


@pytest.mark.parametrize("damping", [0.37, 4.2, -0.5])
def test_shifted_runs_equal_fresh_runs_on_the_damped_operator_without_a_matvec(counted, damping):
    cache = SpectrumCache(counted.op)
    _, first = counted.matvecs(lambda: cache.lanczos(40))
    assert first == 40
    got, extra = counted.matvecs(lambda: cache.lanczos(40, damping=damping))
    assert extra == 0
    ref = lanczos(DenseOperator(counted.A).damped(damping), 40, key=KEY)
    assert_same_run(got, ref, 1e3 + abs(damping))
    # the Ritz values are those of A's run moved by the damping
    base = cache.lanczos(40)
    np.testing.assert_allclose(
        np.asarray(got.ritz_history), np.asarray(base.ritz_history) + damping, rtol=0, atol=1e-12 * 1e3
    )


def test_prefixes_equal_shorter_runs(counted):
    cache = SpectrumCache(counted.op)
    _, n_mv = counted.matvecs(lambda: cache.lanczos(5, run_steps=50))
    assert n_mv == 50
    for k in (1, 17, 50):
        got, extra = counted.matvecs(lambda k=k: cache.lanczos(k, damping=0.25))
        assert extra == 0 and got.alpha.shape == (k,) and got.ritz_history.shape == (k, k)
        assert_same_run(got, lanczos(DenseOperator(counted.A).damped(0.25), k, key=KEY), 1e3)
    # past the stored run: one new run of that many steps, which then serves the shorter ones
    _, n_mv = counted.matvecs(lambda: cache.lanczos(55))
    assert n_mv == 55
    assert counted.matvecs(lambda: cache.lanczos(52))[1] == 0


def test_repeated_eigenvalues_stop_at_the_invariant_subspace_and_shift():
    lam = np.repeat([1.0, 2.0, 5.0, 9.0], [4, 1, 3, 2])  # 4 distinct values among 10
    c = Counted(matrix_with_spectrum(lam, seed=3))
    cache = SpectrumCache(c.op)
    for damping in (0.0, 1.5):
        got = cache.lanczos(8, damping=damping)
        ref = lanczos(DenseOperator(c.A).damped(damping), 8, key=KEY)
        assert got.status == ref.status == Status.INVARIANT_SUBSPACE and got.num_steps == 4
        assert_same_run(got, ref, 10.0, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(got.ritz_history)[3, :4], np.unique(lam) + damping, atol=1e-12)
    # a run that stopped early serves every longer request
    assert c.matvecs(lambda: cache.lanczos(30))[1] == 0


def test_jacobi_preconditioned_runs_are_congruences(counted):
    cache = SpectrumCache(counted.op)
    A = np.asarray(counted.A)
    damping = 0.8
    s = 1.0 / np.sqrt(np.abs(np.diag(A) + damping))
    B = s[:, None] * (A + damping * np.eye(A.shape[0])) * s[None, :]
    ref_op = CongruenceOperator(DenseOperator(counted.A).damped(damping), jnp.asarray(s))
    got = cache.lanczos(30, damping=damping, preconditioned=True)
    assert_same_run(got, lanczos(ref_op, 30, key=KEY), float(np.max(np.abs(B))), rtol=1e-11)
    np.testing.assert_allclose(
        cache.eigenvalues(damping=damping, preconditioned=True), np.linalg.eigvalsh(B), rtol=1e-12, atol=1e-13
    )
    sd = cache.spectral_density(num_probes=4, num_steps=20, damping=damping, preconditioned=True)
    ref = spectral_density(ref_op, num_probes=4, num_steps=20, key=SLQ_KEY)
    np.testing.assert_allclose(np.asarray(sd.grid), np.asarray(ref.grid), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(sd.density), np.asarray(ref.density), rtol=1e-8, atol=1e-12)
    # asked again: no matvec
    assert counted.matvecs(lambda: cache.lanczos(30, damping=damping, preconditioned=True))[1] == 0


def test_densities_and_eigenvalues_shift_with_the_damping(counted):
    cache = SpectrumCache(counted.op)
    cache.spectral_density(num_probes=5, num_steps=25)
    A = np.asarray(counted.A)
    for damping in (0.5, 3.0):
        sd, extra = counted.matvecs(
            lambda d=damping: cache.spectral_density(num_probes=5, num_steps=25, damping=d)
        )
        assert extra == 0
        ref = spectral_density(
            DenseOperator(counted.A).damped(damping), num_probes=5, num_steps=25, key=SLQ_KEY
        )
        np.testing.assert_allclose(np.asarray(sd.grid), np.asarray(ref.grid), rtol=0, atol=1e-12 * 1e3)
        d = np.asarray(ref.density)
        np.testing.assert_allclose(np.asarray(sd.density), d, rtol=0, atol=1e-10 * d.max())
        np.testing.assert_allclose(np.asarray(sd.nodes), np.asarray(ref.nodes), rtol=0, atol=1e-11 * 1e3)
        np.testing.assert_allclose(
            cache.eigenvalues(damping=damping), np.linalg.eigvalsh(A) + damping, rtol=1e-12
        )
    assert cache.spectral_density(num_probes=5, num_steps=30, compute=False) is None


def test_refusals_fall_back_to_fresh_runs(counted):
    cache = SpectrumCache(counted.op)
    # without reorthogonalization a shift is refused: a fresh run on A + λI, kept for that λ
    cache.lanczos(40, reorthogonalize=False)
    got, n_mv = counted.matvecs(lambda: cache.lanczos(40, damping=2.0, reorthogonalize=False))
    assert n_mv == 40
    assert counted.matvecs(lambda: cache.lanczos(40, damping=2.0, reorthogonalize=False))[1] == 0
    # the same arithmetic as a fresh run on A + λI (rounding differences grow without reorthogonalization)
    ref = lanczos(cache.operator(2.0), 40, key=KEY, reorthogonalize=False)
    assert_same_run(got, ref, 1e3, rtol=1e-12)
    np.testing.assert_allclose(cache.operator(2.0).to_dense(), counted.A + 2.0 * np.eye(60), rtol=1e-15)
    # equal SLQ nodes: SpectralDensity.shifted refuses (the default width depends on the shift)
    c = Counted(3.0 * np.eye(12))
    flat = SpectrumCache(c.op)
    flat.spectral_density(num_probes=3, num_steps=5)
    sd, n_mv = c.matvecs(lambda: flat.spectral_density(num_probes=3, num_steps=5, damping=1.0))
    assert n_mv > 0
    ref = spectral_density(DenseOperator(c.A).damped(1.0), num_probes=3, num_steps=5, key=SLQ_KEY)
    np.testing.assert_allclose(np.asarray(sd.grid), np.asarray(ref.grid), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(sd.density), np.asarray(ref.density), rtol=1e-10)


def test_the_table_keeps_the_last_maxsize_damping_values(counted):
    cache = SpectrumCache(counted.op, maxsize=2)
    cache.dense()  # the diagonal of the Jacobi scaling comes from the dense matrix (built once)

    def run(damping):
        return counted.matvecs(lambda: cache.lanczos(10, damping=damping, preconditioned=True))[1]

    assert [run(d) for d in (0.1, 0.2, 0.1, 0.3)] == [10, 10, 0, 10]  # 0.2 was the least recently used
    assert [run(d) for d in (0.1, 0.3, 0.2)] == [0, 0, 10]
    # the runs on A are always kept
    cache.lanczos(10)
    for d in (1.0, 2.0, 3.0):
        cache.lanczos(10, damping=d, preconditioned=True)
    assert counted.matvecs(lambda: cache.lanczos(10, damping=0.7))[1] == 0


def test_float32_shift_matches_a_fresh_run_to_float32_rounding():
    A = matrix_with_spectrum(spectrum(40), dtype=np.float32)
    cache = SpectrumCache(DenseOperator(jnp.asarray(A)))
    got = cache.lanczos(15, damping=2.0)
    ref = lanczos(DenseOperator(jnp.asarray(A)).damped(2.0), 15, key=KEY)
    # Ritz values of A + 2I agree to ~ 50 ε ‖A‖ (float32 rounding of two different sums)
    assert got.ritz_history.shape == (15, 15)
    np.testing.assert_allclose(
        np.asarray(got.ritz_history)[-1], np.asarray(ref.ritz_history)[-1], rtol=0, atol=50 * 1.2e-7 * 1e3
    )


def test_size_one():
    cache = SpectrumCache(DenseOperator(jnp.array([[2.5]])))
    r = cache.lanczos(3, damping=1.0)
    assert r.num_steps == 1 and r.status == Status.INVARIANT_SUBSPACE
    np.testing.assert_allclose(np.asarray(r.ritz_history)[0, 0], 3.5)
    np.testing.assert_allclose(cache.eigenvalues(damping=1.0), [3.5])
    np.testing.assert_allclose(cache.eigenvalues(damping=1.0, preconditioned=True), [1.0])


def test_large_operators_have_no_dense_eigenvalues():
    cache = SpectrumCache(DenseOperator(jnp.eye(8)), dense_max_n=4)
    assert cache.dense() is None and cache.eigenvalues(damping=1.0) is None


def test_bad_arguments_are_refused_by_name(counted):
    cache = SpectrumCache(counted.op)
    with pytest.raises(ValueError, match="damping"):
        cache.lanczos(5, damping=float("nan"))
    with pytest.raises(ValueError, match="num_steps"):
        cache.lanczos(0)
    with pytest.raises(ValueError, match="num_probes"):
        cache.spectral_density(num_probes=0, num_steps=5)
    with pytest.raises(ValueError, match="maxsize"):
        SpectrumCache(counted.op, maxsize=0)
    with pytest.raises(TypeError, match="slq_key"):
        SpectrumCache(counted.op, slq_key=3)
    assert counted.count == 0  # refused before any product


def test_ghost_mask_marks_near_equal_ritz_values_unless_the_spectrum_has_them():
    ritz = np.array([[1.0, 1.0, 1.0, 5.0], [1.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, np.nan]])
    raw = ghost_mask(ritz)
    assert raw[0].tolist() == [True, True, False, False] and raw[1].tolist() == [False, True, True, False]
    assert not raw[2].any()
    kept = ghost_mask(ritz, exact_eigenvalues=[1.0, 1.0, 1.0, 5.0])
    assert not kept[0].any()  # 1.0 has multiplicity 3: three Ritz values there are no ghosts
    assert kept[1].tolist() == [False, True, True, False]  # three copies of the simple 5.0: two ghosts
    # the tolerance is that of the working dtype: 1e-6 apart is a ghost in float32, not in float64
    close = np.array([[1.0, 1.0 + 1e-6]])
    assert not ghost_mask(close).any() and ghost_mask(close, dtype=np.float32)[0, 0]


def test_eigvalsh_with_one_blas_thread_is_eigvalsh():
    from threadpoolctl import threadpool_info

    from curvlab._spectrum_cache import _eigvalsh

    rng = np.random.default_rng(0)
    M = rng.standard_normal((60, 60))
    M = (M + M.T) / 2
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    np.testing.assert_allclose(_eigvalsh(M), np.linalg.eigvalsh(M), rtol=1e-13, atol=1e-13)
    assert [(i["filepath"], i["num_threads"]) for i in threadpool_info()] == before  # limit lifted

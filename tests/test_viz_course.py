"""curvlab.viz course figures: the numbers drawn are the numbers computed (float64: tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go
import pytest
from jax.flatten_util import ravel_pytree

import curvlab as cl
from curvlab import problems, viz
from tests.reference import dense_ggn, matrix_with_spectrum


def names(fig):
    return [t.name for t in fig.data]


def trace(fig, name):
    return fig.data[names(fig).index(name)]


def test_hvp_motion_figure_velocity_is_the_tangent_of_the_gradient_curve():
    p = problems.seed_example(dtype=jnp.float64)
    x, v = jnp.array([1.0, 0.5]), jnp.array([0.6, 0.8])
    eps = np.linspace(0.0, 1.0, 21)
    pts = x[None] + jnp.asarray(eps)[:, None] * v[None]
    grads = jax.vmap(jax.grad(p.f))(pts)
    hv = cl.hvp(p.f, x, v)
    fig = viz.hvp_motion_figure(
        eps, pts, grads, hv, eps_now=0.5, contour=viz.contour_grid(p.f, (0, 2, 0, 2), 11)
    )
    assert names(fig) == ["f", "x + εv", "ε now", "∇f(x + εv)", "∇f(x) + ε Hv", "Hv (velocity)", "∇f now"]
    curve = trace(fig, "∇f(x + εv)")
    # the arrow carries the exact Hv, and the drawn gradient curve leaves ∇f(x) with velocity Hv
    np.testing.assert_allclose(
        np.asarray(trace(fig, "Hv (velocity)").customdata[0]), np.asarray(p.hessian_fn(x) @ v)
    )
    h = 1e-6
    g1 = np.asarray(jax.grad(p.f)(x + h * v))
    g0 = np.array([curve.x[0], curve.y[0]])
    np.testing.assert_allclose((g1 - g0) / h, hv, rtol=1e-5)
    np.testing.assert_allclose([trace(fig, "∇f now").x[0], trace(fig, "∇f now").y[0]], np.asarray(grads[10]))
    tangent = trace(fig, "∇f(x) + ε Hv")
    np.testing.assert_allclose(np.asarray(tangent.x)[-1], float(grads[0][0] + 1.0 * hv[0]))
    assert fig.layout.xaxis2.title.text == "∂f/∂x"
    with pytest.raises(ValueError, match="points and grads"):
        viz.hvp_motion_figure(eps, pts[:3], grads, hv, eps_now=0.0)


def test_slope_curvature_figure_models():
    t = np.linspace(-1, 1, 11)
    phi = 1.0 + 2.0 * t + 1.5 * t**2  # an exact quadratic: the model is exact
    fig = viz.slope_curvature_figure(t, phi, 2.0 + 3.0 * t, slope=2.0, curvature=3.0)
    assert names(fig) == [
        "f(x + tv)",
        "tangent (slope)",
        "quadratic model",
        "slope φ′(t)",
        "change of slope vᵀHv",
    ]
    np.testing.assert_allclose(np.asarray(trace(fig, "quadratic model").y), phi)
    np.testing.assert_allclose(np.asarray(trace(fig, "change of slope vᵀHv").y), 2.0 + 3.0 * t)
    with pytest.raises(ValueError, match="same length"):
        viz.slope_curvature_figure(t, phi[:3], phi, slope=0.0, curvature=0.0)


def test_methods_error_figure_draws_zero_at_the_floor():
    fig = viz.methods_error_figure({"fwd_rev": 0.0, "central FD": 2e-11}, floor=1e-18)
    bar = fig.data[0]
    np.testing.assert_allclose(np.asarray(bar.x), [1e-18, 2e-11])
    assert list(bar.text) == ["0 (exact)", "2.0e-11"]
    with pytest.raises(ValueError, match="empty"):
        viz.methods_error_figure({})


def test_storage_figure_is_quadratic_vs_linear():
    n = np.array([10.0, 1e3, 1e6])
    fig = viz.storage_figure(n, measured={"HVP": (1e6, 7e6)}, limits={"RAM": 16e9})
    np.testing.assert_allclose(np.asarray(fig.data[0].y), n**2 * 4)
    np.testing.assert_allclose(np.asarray(fig.data[1].y), 3 * n * 4)
    assert names(fig)[2:] == ["RAM", "HVP"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="positive"):
        viz.storage_figure([0.0, 1.0])


def test_cost_bars_figure_ratios_and_units():
    fig = viz.cost_bars_figure(
        {"gradient": 2.0, "fwd_rev": 5.0},
        {"plain": {"gradient": 2**20, "fwd_rev": 3 * 2**20}, "checkpointed": {"gradient": 2**19}},
    )
    np.testing.assert_allclose(np.asarray(trace(fig, "time").y), [1.0, 2.5])
    np.testing.assert_allclose(np.asarray(trace(fig, "plain").y), [1.0, 3.0])
    np.testing.assert_allclose(np.asarray(trace(fig, "checkpointed").y), [0.5])
    only_time = viz.cost_bars_figure({"a": 1.0, "b": 3.0}, reference="a")
    assert names(only_time) == ["time"]
    with pytest.raises(ValueError, match="reference"):
        viz.cost_bars_figure({"a": 1.0})
    with pytest.raises(ValueError, match="memory_unit"):
        viz.cost_bars_figure({"gradient": 1.0}, {"x": {"gradient": 1.0}}, memory_unit="GB")


def test_quadratic_paths_figure_cg_reaches_the_minimizer_in_two_steps():
    A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
    b = jnp.array([1.0, -1.0])
    x0 = jnp.array([-2.0, 2.0])
    path = np.stack(
        [np.asarray(x0)] + [np.asarray(cl.cg(A, b, x0=x0, maxiter=k, rtol=1e-14).x) for k in (1, 2)]
    )
    fig = viz.quadratic_paths_figure(A, b, {"CG": path}, resolution=31)
    assert names(fig) == ["q", "CG (2 steps)", "x*"]
    star = trace(fig, "x*")
    np.testing.assert_allclose([star.x[0], star.y[0]], np.linalg.solve(np.asarray(A), np.asarray(b)))
    np.testing.assert_allclose(path[-1], [star.x[0], star.y[0]], atol=1e-12)
    d0, d1 = path[1] - path[0], path[2] - path[1]
    assert abs(d0 @ np.asarray(A) @ d1) < 1e-10  # A-conjugate directions
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        viz.quadratic_paths_figure(np.eye(3), np.ones(3), {})


def test_lines_model_spectra_and_agreement_figures():
    fig = viz.lines_figure(
        [1, 2, 4], {"a": [1, 2, 3], "ref": [1, 1, 1]}, xtitle="x", ytitle="y", dashed=["ref"]
    )
    assert names(fig) == ["a", "ref"] and fig.data[1].line.dash == "dash"
    with pytest.raises(ValueError, match="3 x values"):
        viz.lines_figure([1, 2, 4], {"a": [1, 2]}, xtitle="x", ytitle="y")
    t = np.linspace(0, 1.5, 7)
    m = viz.model_vs_loss_figure(t, 1 - t + t**2, 1 - t + 0.5 * t**2, rho=0.1)
    assert "raise λ" in m.layout.annotations[0].text
    assert "lower λ" in viz.model_vs_loss_figure(t, t, t, rho=0.9).layout.annotations[0].text
    s = viz.spectra_side_by_side_figure(
        {"H": np.array([-1.0, 0.0, 2.0]), "G": np.array([0.0, 1e-12, 2.0])}, bins=4
    )
    titles = [a.text for a in s.layout.annotations]
    assert "1 negative → indefinite" in titles[0] and "0 negative → PSD" in titles[1]
    assert int(np.nansum(np.asarray(s.data[0].y, dtype=float))) == 3
    a = viz.agreement_figure([1.0, 2.0], [1.1, 1.9], labels=["p", "q"])
    assert names(a) == ["y = x", "points"] and list(a.data[1].text) == ["p", "q"]
    with pytest.raises(ValueError, match="same length"):
        viz.agreement_figure([1.0], [1.0, 2.0])


def test_course_figures_export_to_html():
    fig = viz.storage_figure([1.0, 10.0])
    assert isinstance(fig, go.Figure)
    assert "plotly" in fig.to_html(include_plotlyjs="cdn")


def test_truncated_cg_figure_stops_where_cg_with_rtol_eta_stops():
    A = jnp.asarray(matrix_with_spectrum(np.geomspace(1.0, 1e3, 12)))
    g = jnp.asarray(np.random.default_rng(0).normal(size=12))
    full = cl.cg(A, -g, rtol=0.0, maxiter=40, save_iterates=True)
    rel = np.asarray(full.residual_norms) / float(jnp.linalg.norm(g))
    predicted = -np.asarray(full.quadratic_values)
    ks = np.asarray(full.saved_iterations)
    keep = ks <= int(full.num_iterations)
    steps = np.asarray(full.saved_iterates)[keep]
    # the "true loss" is the quadratic itself here, so the actual decrease equals the predicted one
    actual = np.array([-(float(g @ p) + 0.5 * float(p @ (A @ p))) for p in steps])
    np.testing.assert_allclose(actual, predicted[ks[keep]], rtol=1e-10)
    for eta in (0.5, 1e-2, 1e-6):
        fig = viz.truncated_cg_figure(rel, predicted, ks[keep], actual, forcing=eta)
        assert names(fig) == [
            "relative residual",
            "forcing term η",
            "CG stops",
            "predicted decrease −q(p_k)",
            "actual decrease",
            "step taken",
        ]
        stop = int(trace(fig, "CG stops").x[0])
        assert stop == viz.forcing_stop(rel, eta) == int(cl.cg(A, -g, rtol=eta, maxiter=40).num_iterations)
        assert float(trace(fig, "CG stops").y[0]) <= eta < (rel[stop - 1] if stop else np.inf)
        np.testing.assert_allclose(float(trace(fig, "step taken").y[0]), predicted[stop])
        np.testing.assert_allclose(np.asarray(trace(fig, "relative residual").y), rel)
    # η below every residual: the iteration cap (the last finite entry)
    capped = np.where(np.arange(rel.size) > 3, np.nan, np.maximum(rel, 1e-3))
    assert viz.forcing_stop(capped, 1e-9) == 3
    with pytest.raises(ValueError, match="positive"):
        viz.truncated_cg_figure(rel, predicted, ks[keep], actual, forcing=0.0)
    with pytest.raises(ValueError, match="same lengths"):
        viz.truncated_cg_figure(rel[:-1], predicted, ks[keep], actual, forcing=0.1)


def test_batch_noise_figure_plots_the_batch_products():
    lr = problems.logistic_regression(num_examples=64, dtype=jnp.float64)
    theta, unravel = ravel_pytree(lr.x0)
    v = jax.random.normal(jax.random.key(0), theta.shape, dtype=theta.dtype)

    def gv(batch):
        return cl.gnvp(lambda w, X: lr.model_fn(unravel(w), X), lr.output_loss_fn, theta, batch, v)

    X, y = lr.batch
    full = np.asarray(gv((X, y)))
    sizes = np.array([4, 16, 64])
    samples = np.stack([np.asarray(gv((X[:b], y[:b]))) for b in sizes])
    rel = np.linalg.norm(samples - full, axis=1) / np.linalg.norm(full)
    assert rel[-1] < 1e-12  # the whole data set is the full product
    fig = viz.batch_noise_figure(sizes, rel, full, samples, size_now=16)
    assert names(fig) == ["relative error", "∝ 1/√B", "B now", "y = x", "entries of G_B v"]
    np.testing.assert_allclose(np.asarray(trace(fig, "entries of G_B v").y), samples[1])
    np.testing.assert_allclose(np.asarray(trace(fig, "entries of G_B v").x), full)
    np.testing.assert_allclose(np.asarray(trace(fig, "∝ 1/√B").y), rel[0] * np.array([1.0, 0.5, 0.25]))
    assert float(trace(fig, "B now").y[0]) == rel[1]
    with pytest.raises(ValueError, match="not one of the sizes"):
        viz.batch_noise_figure(sizes, rel, full, samples, size_now=8)
    with pytest.raises(ValueError, match="samples be"):
        viz.batch_noise_figure(sizes, rel, full, samples[:2], size_now=4)


def test_agreement_figure_merges_labels_that_would_overlap():
    fig = viz.agreement_figure(
        [0.0, 0.001, 0.002, 1.0], [0.0, 0.001, -0.001, 1.0], labels=["a", "b", "c", "d"]
    )
    text = list(fig.data[1].text)
    assert text[3] == "d"  # far from the cluster: its own label
    assert sorted(text[:3]) == ["", "", "a, b, c"]  # the cluster near 0 shares one label
    hover = list(fig.data[1].hovertext)
    assert all(hover[i].startswith(lab) for i, lab in enumerate("abcd"))
    with pytest.raises(ValueError, match="one entry per point"):
        viz.agreement_figure([0.0, 1.0], [0.0, 1.0], labels=["a"])


def test_minibatch_choices_figure_plots_the_measured_batch_models():
    """Three curvature-batch choices on a small MLP: damped GGN steps solved by CG (checked against a
    dense solve), the weighted-batch form the notebook vmaps under jit (checked against sub-batch
    operators), and the figure's means, error bars and draws (checked against those numbers)."""
    net = problems.mlp(hidden=(3,), num_examples=48, dtype=jnp.float64)
    theta, unravel = ravel_pytree(net.x0)
    model = lambda w, X: net.model_fn(unravel(w), X)
    X, y = net.batch
    data_loss = lambda w, Xb, yb: net.output_loss_fn(model(w, Xb), yb)
    lam, b_grad, sizes, draws = 0.5, 16, np.array([4, 16, 32]), 2
    rng = np.random.default_rng(0)
    perms = [rng.permutation(48) for _ in range(draws)]

    @jax.jit
    def solve(Xg, yg, Xc, yc):  # the user's jit around curvlab's operator and CG (one compile per |C|)
        g = jax.grad(data_loss)(theta, Xg, yg)
        G = cl.ggn_operator(model, net.output_loss_fn, theta, (Xc, yc))
        d = cl.cg(G.damped(lam), -g, rtol=1e-12, maxiter=300).x
        f = lambda w: data_loss(w, X, y)
        return d, g, -(g @ d + 0.5 * d @ (G @ d)), f(theta) - f(theta + d)

    def step(gi, ci, dense_check=False):
        d, g, pred, act = solve(X[gi], y[gi], X[ci], y[ci])
        if dense_check:
            Gd = dense_ggn(net.model_fn, net.output_loss_fn, net.x0, (X[ci], y[ci]))
            np.testing.assert_allclose(
                d, np.linalg.solve(Gd + lam * np.eye(theta.size), -g), rtol=1e-7, atol=1e-10
            )
        return float(pred), float(act)

    # every choice, size and draw at once in the notebook's form: a batch as weights over all examples,
    # one vmapped CG under jit
    xent_i = jax.vmap(lambda zi, yi: net.output_loss_fn(zi[None], yi[None]))
    weighted = lambda z, t: jnp.sum(t[1] * xent_i(z, t[0]))

    @jax.jit
    @jax.vmap
    def step_w(wg, wc):
        g = jax.grad(lambda t: weighted(model(t, X), (y, wg)))(theta)
        G = cl.ggn_operator(model, weighted, theta, (X, (y, wc)))
        d = cl.cg(G.damped(lam), -g, rtol=1e-12, maxiter=300).x
        f = lambda w: data_loss(w, X, y)
        return -(g @ d + 0.5 * d @ (G @ d)), f(theta) - f(theta + d)

    def w(idx):
        return np.bincount(idx, minlength=48) / len(idx)

    pairs = [(p[:b_grad], c) for p in perms for c in [p[:b_grad]] + [p[:s] for s in sizes[:2]]]
    pairs += [(p[:b_grad], p[b_grad : b_grad + s]) for p in perms for s in sizes]
    out = step_w(*(jnp.asarray(np.stack([w(a) for a in col])) for col in zip(*pairs, strict=True)))
    pw, aw = (np.asarray(o) for o in out)
    k = draws * 3
    same = np.stack([pw[:k:3], aw[:k:3]])  # (2, draws)
    nan2 = np.full((2, 1, draws), np.nan)
    sub = np.concatenate(
        [np.stack([pw[:k].reshape(draws, 3)[:, 1:].T, aw[:k].reshape(draws, 3)[:, 1:].T]), nan2], 1
    )
    ind = np.stack([pw[k:].reshape(draws, 3).T, aw[k:].reshape(draws, 3).T])  # (2, sizes, draws)
    np.testing.assert_allclose(sub[:, 1], same, rtol=1e-12)  # a subset of size |B| is the gradient batch
    assert np.all(same[0] > 0)
    # against curvlab on the sub-batches themselves (and the same batch against a dense solve)
    p0, p1 = perms
    np.testing.assert_allclose(step(p0[:b_grad], p0[:b_grad], dense_check=True), same[:, 0], rtol=1e-8)
    np.testing.assert_allclose(step(p1[:b_grad], p1[:4]), sub[:, 0, 1], rtol=1e-8)
    np.testing.assert_allclose(step(p0[:b_grad], p0[b_grad : b_grad + 4]), ind[:, 0, 0], rtol=1e-8)

    choices = {"same batch": tuple(same), "subset": tuple(sub), "independent": tuple(ind)}
    fig = viz.minibatch_choices_figure(sizes, choices, size_now=4)
    assert names(fig) == [
        "ρ = 1 (model exact)",
        "same batch",
        "subset",
        "independent",
        "|C| now",
        "y = x",
        "same batch: draws",
        "subset: draws",
        "independent: draws",
    ]
    rho_sub, rho_ind, rho_same = sub[1] / sub[0], ind[1] / ind[0], same[1] / same[0]
    np.testing.assert_allclose(np.asarray(trace(fig, "subset").y, dtype=float), np.mean(rho_sub, 1))
    np.testing.assert_allclose(
        np.asarray(trace(fig, "independent").error_y.array), np.std(rho_ind, 1, ddof=1) / np.sqrt(draws)
    )
    np.testing.assert_allclose(np.asarray(trace(fig, "same batch").y), [np.mean(rho_same)] * 2)
    np.testing.assert_allclose(
        np.asarray(trace(fig, "|C| now").y), [np.mean(rho_sub[0]), np.mean(rho_ind[0])]
    )
    np.testing.assert_allclose(np.asarray(trace(fig, "subset: draws").x), sub[0, 0])
    np.testing.assert_allclose(np.asarray(trace(fig, "independent: draws").y), ind[1, 0])
    # |C| = 32 is larger than the gradient batch: no subset there, only the independent batch
    big = viz.minibatch_choices_figure(sizes, choices, size_now=32)
    np.testing.assert_allclose(np.asarray(trace(big, "|C| now").y), [np.mean(rho_ind[2])])
    with pytest.raises(ValueError, match="not one of the sizes"):
        viz.minibatch_choices_figure(sizes, choices, size_now=8)
    with pytest.raises(ValueError, match="positive"):
        viz.minibatch_choices_figure(sizes, {"bad": (-same[0], same[1])}, size_now=4)
    with pytest.raises(ValueError, match=r"\(3, m\)"):
        viz.minibatch_choices_figure(sizes, {"bad": (sub[0, :2], sub[1, :2])}, size_now=4)
    with pytest.raises(ValueError, match="increasing"):
        viz.minibatch_choices_figure(sizes[::-1], choices, size_now=4)

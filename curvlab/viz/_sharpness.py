"""Edge-of-stability figure: training loss beside the top Hessian eigenvalue and the 2/η line.

Full-batch gradient descent :math:`\\theta_{t+1} = \\theta_t - \\eta \\nabla L(\\theta_t)` is
stable on a quadratic only while every Hessian eigenvalue is below :math:`2/\\eta`. On
neural networks the top eigenvalue (the *sharpness*) tends to rise during training
(progressive sharpening) until it reaches :math:`2/\\eta`, then hovers there while the
loss keeps falling, non-monotonically (the edge of stability, Cohen et al. 2021). The
figure shows both panels side by side; :func:`edge_of_stability_data` gives the trace
data by name so that an explorer can update a live figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from curvlab.viz._figures import COLORS, _line, _marker, apply_theme

__all__ = ["EOS_TRACES", "edge_of_stability_data", "edge_of_stability_figure"]

#: Trace names of :func:`edge_of_stability_figure`, in order.
EOS_TRACES = ("loss", "λ_max", "λ_max (not converged)", "2/η")


def _col(a) -> np.ndarray:
    return np.asarray([] if a is None else a, dtype=float).reshape(-1)


def edge_of_stability_data(
    steps: Sequence[float],
    losses: Sequence[float],
    sharpness_steps: Sequence[float],
    sharpness: Sequence[float],
    learning_rate: float,
    *,
    converged: Sequence[bool] | None = None,
) -> dict[str, dict]:
    """Trace data of :func:`edge_of_stability_figure` by trace name.

    Parameters
    ----------
    steps, losses : sequences
        Gradient-descent step :math:`t` and the training loss :math:`L(\\theta_t)`.
    sharpness_steps, sharpness : sequences
        Steps at which the top Hessian eigenvalue was measured and its values.
    learning_rate : float
        :math:`\\eta > 0`; the stability line is drawn at :math:`2/\\eta` across the steps shown.
    converged : sequence of bool, optional
        Whether each eigenvalue met its tolerance; values that did not are drawn as
        separate markers (``"λ_max (not converged)"``). Default: all converged.

    Non-finite values (a diverged run) and non-positive losses (log axis) are left out.
    """
    eta = float(learning_rate)
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate}")
    t, loss = _col(steps), _col(losses)
    ts, lam = _col(sharpness_steps), _col(sharpness)
    if t.shape != loss.shape:
        raise ValueError(f"steps and losses differ in length: {t.size} vs {loss.size}")
    if ts.shape != lam.shape:
        raise ValueError(f"sharpness_steps and sharpness differ in length: {ts.size} vs {lam.size}")
    ok = np.ones(lam.shape, bool) if converged is None else np.asarray(converged, bool).reshape(-1)
    if ok.shape != lam.shape:
        raise ValueError(f"converged has {ok.size} entries for {lam.size} eigenvalues")
    last = max([0.0, *t[-1:], *ts[-1:]])
    shown = np.isfinite(loss) & (loss > 0)  # a diverged run's inf/NaN losses are not drawn (log axis)
    finite = np.isfinite(lam)
    return {
        "loss": dict(x=t[shown], y=loss[shown]),
        "λ_max": dict(x=ts[ok & finite], y=lam[ok & finite]),
        "λ_max (not converged)": dict(x=ts[~ok & finite], y=lam[~ok & finite]),
        "2/η": dict(x=np.array([0.0, max(last, 1.0)]), y=np.full(2, 2.0 / eta)),
    }


def edge_of_stability_figure(
    steps: Sequence[float],
    losses: Sequence[float],
    sharpness_steps: Sequence[float],
    sharpness: Sequence[float],
    learning_rate: float,
    *,
    converged: Sequence[bool] | None = None,
    title: str | None = None,
    height: int = 440,
) -> go.Figure:
    """Training loss (left, log axis) and sharpness :math:`\\lambda_{\\max}` against :math:`2/\\eta` (right).

    Traces (by name, see :data:`EOS_TRACES`): ``"loss"``; ``"λ_max"`` (converged top
    eigenvalues); ``"λ_max (not converged)"`` (red crosses: the eigensolver stopped
    before its tolerance; the value is then a Rayleigh quotient, a lower bound on
    :math:`\\lambda_{\\max}`, not a certified eigenvalue); ``"2/η"`` (the dashed stability
    threshold of gradient descent on a quadratic with that curvature). Arguments:
    :func:`edge_of_stability_data`.
    """
    from plotly.subplots import make_subplots

    d = edge_of_stability_data(steps, losses, sharpness_steps, sharpness, learning_rate, converged=converged)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("training loss", "sharpness λ_max vs 2/η"),
        horizontal_spacing=0.1,
    )
    unconverged = "step %{x}<br>λ_max ≈ %{y:.4g} (not converged)<extra></extra>"
    styles = {  # trace name -> (builder, style); the loss goes left, the sharpness panel right
        "loss": (_line, dict(color=COLORS["direction"])),
        "λ_max": (_line, dict(color=COLORS["eig_max"], mode="lines+markers", marker=dict(size=4))),
        "λ_max (not converged)": (_marker, dict(color=COLORS["negative"], size=8, symbol="x")),
        "2/η": (_line, dict(color=COLORS["point"], width=1.5, dash="dash")),
    }
    hovers = {"λ_max": "step %{x}<br>λ_max = %{y:.4g}<extra></extra>", "2/η": "2/η = %{y:.4g}<extra></extra>"}
    hovers["λ_max (not converged)"] = unconverged
    for i, (name, (make, style)) in enumerate(styles.items()):
        hover = {"hovertemplate": hovers[name]} if name in hovers else {}
        fig.add_trace(make(name=name, **style, **hover, **d[name]), row=1, col=1 if i == 0 else 2)
    fig.update_yaxes(type="log", dtick="D2", title_text="loss", exponentformat="power", row=1, col=1)
    fig.update_yaxes(title_text="λ_max", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="gradient-descent step", row=1, col=1)
    fig.update_xaxes(title_text="gradient-descent step", row=1, col=2)
    return apply_theme(fig, title=title, height=height, legend="bottom", subplot_titles=True)

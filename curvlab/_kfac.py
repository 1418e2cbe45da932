"""Kronecker-factored curvature: K-FAC and EK-FAC operators, layers found by tracing the model.

No layer registration: the model is traced once (``jax.make_jaxpr``) and a small jaxpr
interpreter finds every ``dot_general`` whose one operand is a 2-D parameter leaf (a
dense layer: Flax ``nnx.Linear``, Equinox ``eqx.nn.Linear``, ``x @ W`` on a plain
pytree) and every ``conv_general_dilated`` whose kernel is a parameter leaf
(``feature_group_count = batch_group_count = 1``). The interpreter inlines ``jit``,
``custom_jvp``/``custom_vjp`` and ``checkpoint`` calls; a bias is recognised when a
parameter vector is added (broadcast) along the output-feature axis of a detected
layer's output (through transposes and reshapes, as Equinox and Flax write it).

For a layer with weight :math:`W` (``d_out x d_in``; a conv kernel flattened to
``C_out x (C_in k_h k_w)``), input rows :math:`a_r` (a dense layer's inputs; a conv's
im2col patches, one row per example and output position) and output gradients
:math:`g_{rc}` (one per column :math:`c` of the output-curvature factor, see
*Fisher types*),

.. math::

    A = \\frac1R \\sum_r a_r a_r^\\top, \\qquad G = \\sum_r \\sum_c g_{rc} g_{rc}^\\top,
    \\qquad B_W \\approx G \\otimes A \\;(\\text{in } W\\text{'s own layout}),

with :math:`R` the number of rows (examples x shared positions: the "expand"
convention of Grosse & Martens 2016 / curvlinops for weight sharing). For one example
and no weight sharing, :math:`G \\otimes A` *is* the exact GGN block. The bias is its
own block :math:`G` (:math:`A = 1`: curvlinops' ``separate_weight_and_bias=True``),
and blocks of different layers are uncoupled (block diagonal).

The curvature of ``output_loss_fn(model_fn(params, inputs), targets) = c \\sum_n \\ell_n``
(``reduction="mean"``: :math:`c = 1/N`; ``"sum"``: :math:`c = 1`; checked on the batch):

============  ===========================================================  =====================
fisher_type   output cotangents :math:`u_{nc}` that are backpropagated       the blocks approximate
============  ===========================================================  =====================
``exact``     columns of :math:`\\tilde H_n^{1/2}`,                          the GGN
              :math:`\\tilde H_n = \\nabla^2_{z_n} L` (``eigh``)
``mc``        :math:`\\sqrt{c}\\,\\nabla_{z}\\ell_n(z_n, y_n)`,                 the GGN (true
              :math:`y_n \\sim p(y \\mid z_n)`, ``num_samples`` each            Fisher), unbiased
``empirical`` :math:`\\sqrt{c}\\,\\nabla_{z}\\ell_n(z_n, t_n)`, true labels     :math:`c \\sum_n \\nabla
                                                                           \\ell_n \\nabla\\ell_n^\\top`
============  ===========================================================  =====================

so with the mean reduction every operator is on the scale of :func:`curvlab.ggn_operator`
and :func:`curvlab.fisher_operator` (``1/N`` of the sums), the same as kfac-jax (which
normalises by the batch size) and curvlinops' ``KFACLinearOperator`` with
``loss_average="batch"``; with ``reduction="sum"``, that of curvlinops' sum reduction
(``N`` times larger). For ``"mc"`` the likelihood is ``"categorical"`` (softmax
cross-entropy on logits; default when the targets are integers) or ``"gaussian"``
(labels :math:`y_n = z_n + \\tilde H_n^{-1/2}\\epsilon/\\sqrt{c}`, the Gaussian whose
negative log-likelihood has the loss's constant curvature, e.g. squared error).

**Parameters outside any detected layer** (norm scales, embeddings, a weight used
twice, ...): their block is the *exact diagonal* of the same curvature,
:math:`\\sum_{n,c} (J_n^\\top u_{nc})_i^2` from per-example backward passes
(``model_fn`` on one example at a time), so nothing is left out.

**EK-FAC** (George et al. 2018) keeps the Kronecker eigenbasis
:math:`U_G \\otimes U_A` (``eigh`` of the factors) and refits the diagonal to the
second moments of the per-example gradients in that basis,
:math:`S_{oi} = \\sum_{n,c} \\big(\\sum_p (U_G^\\top g_{npc})_o (U_A^\\top a_{np})_i\\big)^2`
(rows :math:`r = (n, p)`: example :math:`n`, shared position :math:`p`). That is the
diagonal of the exact block in that basis, so EK-FAC's block traces are the exact ones,
with weight sharing too (as curvlinops' ``EKFACLinearOperator``); K-FAC's
:math:`\\lambda_{G,o}\\lambda_{A,i}` is its value when :math:`a` and :math:`g` are
independent. So both
operators are :math:`(U_G \\otimes U_A)\\,\\mathrm{diag}(S + \\delta)\\,(U_G \\otimes U_A)^\\top`
per block, and inverse, log-determinant, trace, diagonal and every eigenvalue are
closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from curvlab._curvature import ParameterOperator, _unwrap_module
from curvlab._data import Batches, single_batch
from curvlab._operators import _SYM_PSD, LinearOperator, _set, pytree_operator, static_field
from curvlab._validation import check_real_floating, is_concrete

PyTree = Any

FISHER_TYPES = ("exact", "mc", "empirical")
LIKELIHOODS = ("categorical", "gaussian")
REDUCTIONS = ("mean", "sum")

__all__ = [
    "FISHER_TYPES",
    "LayerSpec",
    "KFACOperator",
    "kfac_operator",
    "ekfac_operator",
    "find_layers",
]


# ---------------------------------------------------------------------------
# Tracing: find dense / conv layers in the model's jaxpr
# ---------------------------------------------------------------------------

_CALLS = (
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "remat",
    "checkpoint",
)
_IDENTITY = ("convert_element_type", "copy", "copy_p")
_SHAPE_OPS = ("reshape", "squeeze", "expand_dims", "broadcast_in_dim", "transpose")


class LayerSpec(NamedTuple):
    """A detected layer (static, hashable).

    ``kind`` is ``"dense"`` or ``"conv"``; ``weight``/``bias`` are leaf indices of the
    flattened parameters (``bias`` is -1 when none); ``perm`` permutes the weight's
    axes to ``(out, in, spatial...)``; ``name`` is the weight's pytree path.
    """

    kind: str
    weight: int
    bias: int
    perm: tuple
    name: str


class _Layer(NamedTuple):  # what the detection pass records per dot/conv
    kind: str
    weight: int
    perm: tuple  # weight axes -> (out, in, spatial...)
    feat: int  # output-feature axis of the layer's output
    ospec: tuple  # conv: output axes -> (N, C, spatial...); dense: ()
    out_shape: tuple
    out_dtype: Any


class _State:
    """Walk state: detection records, or (apply mode) the taps and the recorded activations."""

    def __init__(self, eps=None, plan=None):
        self.count = 0
        self.layers: dict[int, _Layer] = {}
        self.uses: dict[int, list] = {}
        self.eps = eps
        self.plan = plan  # layer id -> position in eps (apply mode)
        self.acts: dict[int, jax.Array] = {}

    def use(self, leaf, role):
        self.uses.setdefault(leaf, []).append(role)


def _subjaxpr(eqn):
    if eqn.primitive.name not in _CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jcore.Jaxpr):
            return sub, ()
    return None


def _map_axis(old_shape, new_shape, axis):
    """Where axis ``axis`` of ``old_shape`` lands after a reshape (None if it does not stay whole)."""
    before = math.prod(old_shape[:axis])
    size = old_shape[axis]
    for j, s in enumerate(new_shape):
        if math.prod(new_shape[:j]) == before and s == size:
            return j
    return None


def _follow_axis(eqn, axis, in_shape):
    """The axis of the output carrying input axis ``axis`` through a shape op (or None)."""
    name, p = eqn.primitive.name, eqn.params
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if name in _IDENTITY:
        return axis
    if name == "transpose":
        return tuple(p["permutation"]).index(axis)
    if name == "broadcast_in_dim":
        return int(p["broadcast_dimensions"][axis])
    if name in ("reshape", "squeeze", "expand_dims"):
        return _map_axis(tuple(in_shape), out_shape, axis)
    return None


def _vector_axis(shape):
    """The one axis of size > 1 of a vector-like shape (0 for size one), else None."""
    big = [i for i, s in enumerate(shape) if s != 1]
    return big[0] if len(big) == 1 else (0 if not big and len(shape) else None)


def _rows(x, axis):
    """Move ``axis`` last and flatten the rest: ``(R, d)``."""
    x = jnp.moveaxis(x, axis, -1)
    return x.reshape(-1, x.shape[-1])


def _conv_patches(lhs, kernel_shape, p):
    """im2col rows ``(R, C_in prod(k))`` of a conv's input, in the output's row order."""
    lspec, rspec, ospec = p["dimension_numbers"]
    x = jnp.transpose(lhs, tuple(lspec))  # (N, C, spatial... in spec order)
    filt = tuple(kernel_shape[i] for i in rspec[2:])
    patches = jax.lax.conv_general_dilated_patches(
        x,
        filt,
        p["window_strides"],
        p["padding"],
        lhs_dilation=p["lhs_dilation"],
        rhs_dilation=p["rhs_dilation"],
        precision=jax.lax.Precision.HIGHEST,
    )
    return _rows(patches, 1)


def _conv_out_rows(z, p):
    ospec = p["dimension_numbers"][2]
    return _rows(jnp.transpose(z, tuple(ospec)), 1)


def _walk(jaxpr, consts, args, orig, zinf, st: _State):
    """Evaluate ``jaxpr``; ``orig``: var -> parameter origin, ``zinf``: var -> (layer, feature axis)."""
    env, o_env, z_env = {}, {}, {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    def meta(v, table):
        return None if isinstance(v, jcore.Literal) else table.get(v)

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a, o, z in zip(jaxpr.invars, args, orig, zinf, strict=True):
        env[v], o_env[v], z_env[v] = a, o, z

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        ins_o = [meta(v, o_env) for v in eqn.invars]
        ins_z = [meta(v, z_env) for v in eqn.invars]
        name = eqn.primitive.name
        sub = _subjaxpr(eqn)
        outs_o = outs_z = None
        if sub is not None:
            outs, outs_o, outs_z = _walk(sub[0], sub[1], invals, ins_o, ins_z, st)
        elif name in ("dot_general", "conv_general_dilated") and _is_layer(eqn, ins_o):
            outs = [_layer(eqn, invals, ins_o, st)]
            lid = st.count - 1
            outs_z, outs_o = [(lid, st.layers[lid].feat)], [None]
        else:
            outs = eqn.primitive.bind(*invals, **eqn.params)
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
            outs_o, outs_z = _propagate(eqn, ins_o, ins_z, st)
        for v, val, o, z in zip(eqn.outvars, outs, outs_o, outs_z, strict=True):
            env[v], o_env[v], z_env[v] = val, o, z
    return (
        [read(v) for v in jaxpr.outvars],
        [meta(v, o_env) for v in jaxpr.outvars],
        [meta(v, z_env) for v in jaxpr.outvars],
    )


def _is_layer(eqn, ins_o):
    p = eqn.params
    if eqn.primitive.name == "conv_general_dilated":
        o = ins_o[1]
        return (
            o is not None
            and o[0] == "leaf"
            and ins_o[0] is None
            and p["feature_group_count"] == 1
            and p["batch_group_count"] == 1
        )
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    if lb or rb or len(lc) != 1:
        return False
    for w, a in ((1, 0), (0, 1)):
        o = ins_o[w]
        if o is not None and o[0] == "leaf" and ins_o[a] is None and len(eqn.invars[w].aval.shape) == 2:
            return True
    return False


def _layer(eqn, invals, ins_o, st: _State):
    """Evaluate a detected dot/conv: record it (detect) or tap its output and keep its inputs (apply)."""
    p = eqn.params
    out = eqn.primitive.bind(*invals, **p)
    lid = st.count
    st.count += 1
    if eqn.primitive.name == "conv_general_dilated":
        w, leaf = 1, ins_o[1][1]
        _, rspec, ospec = p["dimension_numbers"]
        perm, ospec = tuple(int(i) for i in rspec), tuple(int(i) for i in ospec)
        kind, feat = "conv", ospec[1]
    else:
        (lc, rc), _ = p["dimension_numbers"]
        w = 1 if (ins_o[1] is not None and ins_o[1][0] == "leaf" and ins_o[0] is None) else 0
        leaf = ins_o[w][1]
        w_in = int((rc if w == 1 else lc)[0])
        perm, ospec = (1 - w_in, w_in), ()
        # output-feature axis: last for x @ W, first for W @ x
        kind, feat = "dense", out.ndim - 1 if w == 1 else 0
    st.use(leaf, ("weight", lid))
    st.layers[lid] = _Layer(kind, leaf, perm, feat, ospec, tuple(out.shape), out.dtype)
    if st.plan is not None and lid in st.plan:
        out = out + st.eps[st.plan[lid]]
        act = invals[1 - w]
        if kind == "conv":
            st.acts[lid] = _conv_patches(act, invals[1].shape, p)
        else:
            a_axis = int((lc if w == 1 else rc)[0])
            st.acts[lid] = _rows(act, a_axis)
    return out


def _propagate(eqn, ins_o, ins_z, st: _State):
    """Origins / layer-output tags of a generic eqn's outputs; count consuming uses of parameters."""
    name = eqn.primitive.name
    nout = len(eqn.outvars)
    none = [None] * nout
    if name in _IDENTITY + _SHAPE_OPS and len(eqn.invars) >= 1:
        o, z = ins_o[0], ins_z[0]
        in_shape = tuple(eqn.invars[0].aval.shape)
        new_o = None
        if o is not None:
            if o[0] == "leaf" and name in _IDENTITY:
                new_o = o
            else:
                ax = o[2] if o[0] == "vec" else _vector_axis(in_shape)
                ax = None if ax is None else _follow_axis(eqn, ax, in_shape)
                if ax is not None:
                    new_o = ("vec", o[1], ax)
                else:
                    st.use(o[1], ("other",))
        new_z = None
        if z is not None:
            ax = _follow_axis(eqn, z[1], in_shape)
            new_z = None if ax is None else (z[0], ax)
        return [new_o] + none[1:], [new_z] + none[1:]
    if name in ("add", "add_any") and len(eqn.invars) == 2:
        for zi, bi in ((0, 1), (1, 0)):
            z, o = ins_z[zi], ins_o[bi]
            if z is None or o is None:
                continue
            ax = o[2] if o[0] == "vec" else _vector_axis(tuple(eqn.invars[bi].aval.shape))
            shape_b = tuple(eqn.invars[bi].aval.shape)
            shape_z = tuple(eqn.invars[zi].aval.shape)
            if (
                ax == z[1]
                and len(shape_b) == len(shape_z)
                and shape_b[ax] == shape_z[ax]
                and all(s == 1 or i == ax or s == shape_z[i] for i, s in enumerate(shape_b))
            ):
                st.use(o[1], ("bias", z[0], shape_z[ax]))
                return none, [z] + none[1:]
    for o in ins_o:
        if o is not None:
            st.use(o[1], ("other",))
    return none, none


def _closed_model(model_fn, params, inputs):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    in_leaves, in_tree = jax.tree_util.tree_flatten(inputs)

    def flat(leaves, in_leaves):
        return model_fn(
            jax.tree_util.tree_unflatten(treedef, leaves), jax.tree_util.tree_unflatten(in_tree, in_leaves)
        )

    closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(leaves, in_leaves)
    return closed, out_shape


def _run(closed, leaves, in_leaves, st):
    orig = [("leaf", i, None) for i in range(len(leaves))] + [None] * len(in_leaves)
    outs, _, _ = _walk(
        closed.jaxpr, closed.consts, list(leaves) + list(in_leaves), orig, [None] * len(orig), st
    )
    return outs


def find_layers(model_fn: Callable, params: PyTree, inputs) -> tuple[tuple, tuple[LayerSpec, ...], tuple]:
    """Dense and conv layers of ``model_fn(params, inputs)``: ``(walk ids, layers, leftover leaf indices)``.

    A layer is claimed only when its weight leaf has no other use (and a bias only when it
    is used once, as that layer's bias); every other parameter leaf is a leftover.
    """
    closed, _ = _closed_model(model_fn, params, inputs)
    st = _State()
    leaves = jax.tree_util.tree_leaves(params)
    jax.eval_shape(lambda lv, il: _run(closed, lv, il, st), leaves, jax.tree_util.tree_leaves(inputs))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    layers, covered = [], set()
    for lid in sorted(st.layers):
        lay = st.layers[lid]
        if st.uses.get(lay.weight) != [("weight", lid)]:
            continue
        bias = -1
        for leaf, uses in st.uses.items():
            if len(uses) == 1 and uses[0][0] == "bias" and uses[0][1] == lid and leaf not in covered:
                if math.prod(np.shape(leaves[leaf])) == uses[0][2]:
                    bias = leaf
                    break
        layers.append((lid, LayerSpec(lay.kind, lay.weight, bias, lay.perm, paths[lay.weight])))
        covered.update({lay.weight} | ({bias} if bias >= 0 else set()))
    leftover = tuple(i for i in range(len(leaves)) if i not in covered)
    return tuple(lid for lid, _ in layers), tuple(s for _, s in layers), leftover


# ---------------------------------------------------------------------------
# Output cotangents per Fisher type
# ---------------------------------------------------------------------------


def _output_hessian_sqrt(output_loss_fn, z, t):
    """Per-example factors ``(N, C, C)``: :math:`S_n` with :math:`S_n S_n^\\top = \\nabla^2_{z_n} L`."""
    n, c = z.shape[0], math.prod(z.shape[1:])
    grad = jax.grad(lambda zz: output_loss_fn(zz, t))

    def col(j):
        v = jnp.zeros((n, c), z.dtype).at[:, j].set(1).reshape(z.shape)
        return jax.jvp(grad, (z,), (v,))[1].reshape(n, c)

    H = jax.vmap(col, out_axes=2)(jnp.arange(c))  # (N, C, C): H[n, :, j] = column j of H_n
    H = 0.5 * (H + jnp.swapaxes(H, 1, 2))
    lam, U = jnp.linalg.eigh(H)
    return U * jnp.sqrt(jnp.maximum(lam, 0))[:, None, :]


def _cotangents(output_loss_fn, z, t, fisher_type, scale, *, key, num_samples, likelihood):
    """Output cotangents ``(M, *z.shape)`` whose outer products average to the wanted output curvature."""
    n = z.shape[0]
    if fisher_type == "exact":
        S = _output_hessian_sqrt(output_loss_fn, z, t)  # (N, C, C)
        return jnp.moveaxis(S, 2, 0).reshape((-1,) + z.shape)
    grad = jax.grad(lambda zz, tt: output_loss_fn(zz, tt))
    if fisher_type == "empirical":
        return (grad(z, t) / jnp.sqrt(scale))[None]
    keys = jax.random.split(key, num_samples)
    if likelihood == "gaussian":
        S = _output_hessian_sqrt(output_loss_fn, z, t)
        eps = jax.vmap(lambda k: jax.random.normal(k, (n, S.shape[1]), z.dtype))(keys)
        u = jnp.einsum("ncj,mnj->mnc", S, eps)
        return u.reshape((num_samples,) + z.shape) / jnp.sqrt(num_samples)

    def one(k):
        y = jax.random.categorical(k, z, axis=-1)
        if jnp.issubdtype(t.dtype, jnp.integer):
            y = y.astype(t.dtype).reshape(t.shape)
        else:
            y = jax.nn.one_hot(y, z.shape[-1], dtype=t.dtype).reshape(t.shape)
        return grad(z, y) / jnp.sqrt(scale)

    return jax.vmap(one)(keys) / jnp.sqrt(num_samples)


# ---------------------------------------------------------------------------
# Factors of one batch
# ---------------------------------------------------------------------------


class _Plan(NamedTuple):
    closed: Any
    lids: tuple
    layers: tuple
    leftover: tuple
    info: tuple  # _Layer records of the claimed layers


def _reduction_scale(output_loss_fn, z, t, reduction):
    """:math:`c` of :math:`L = c \\sum_n \\ell_n`, checked against the loss on a concrete batch."""
    n = z.shape[0]
    scale = 1.0 / n if reduction == "mean" else 1.0
    if is_concrete(z):
        total = float(output_loss_fn(z, t))
        per = jax.vmap(lambda zi, ti: output_loss_fn(zi[None], ti[None]))(z, t)
        expect = scale * float(jnp.sum(per))
        if not np.isclose(total, expect, rtol=1e-4, atol=1e-12):
            raise ValueError(
                f"output_loss_fn is not the {reduction} of its per-example values on this batch "
                f"(loss {total:.6g}, {reduction} of the per-example losses {expect:.6g}); "
                "pass reduction='mean' or 'sum' to match it"
            )
    return scale


def _batch_factors(plan: _Plan, model_fn, output_loss_fn, cfg, params, batch, key, eig=None):
    """``(A, G)`` per layer, leftover diagonals, and (``eig`` given) the EK-FAC scalings of one batch."""
    inputs, targets = batch
    leaves = jax.tree_util.tree_leaves(params)
    in_leaves = jax.tree_util.tree_leaves(inputs)
    eps0 = [jnp.zeros(lay.out_shape, lay.out_dtype) for lay in plan.info]
    pos = {lid: i for i, lid in enumerate(plan.lids)}

    def fwd(eps):
        st = _State(eps, pos)
        outs = _run(plan.closed, leaves, in_leaves, st)
        return outs[0], [st.acts[lid] for lid in plan.lids]

    z, vjp_fn, acts = jax.vjp(fwd, eps0, has_aux=True)
    scale = 1.0 / z.shape[0] if cfg.reduction == "mean" else 1.0
    cots = _cotangents(
        output_loss_fn,
        z,
        targets,
        cfg.fisher_type,
        scale,
        key=key,
        num_samples=cfg.num_samples,
        likelihood=cfg.likelihood,
    )
    gs = jax.vmap(lambda u: vjp_fn(u)[0])(cots)
    factors, scales = [], []
    for i, (lay, spec) in enumerate(zip(plan.info, plan.layers)):
        a = acts[i]
        if spec.kind == "dense":
            g = jax.vmap(lambda x, f=lay.feat: _rows(x, f))(gs[i])
        else:
            g = jax.vmap(lambda x, o=lay.ospec: _rows(jnp.transpose(x, o), 1))(gs[i])
        A = a.T @ a / a.shape[0]
        G = jnp.einsum("mro,mrp->op", g, g)
        factors.append((A, G))
        if eig is not None:
            UA, UG = eig[i]
            ga, aa = jnp.einsum("mro,op->mrp", g, UG), a @ UA
            scales.append(_ekfac_scalings(ga, aa, z.shape[0], spec.bias >= 0))
    diag = _leftover_diag(plan, model_fn, params, inputs, cots) if plan.leftover else ()
    return factors, diag, scales


def _ekfac_scalings(ga, aa, n, bias):
    """EK-FAC scalings: second moments of the per-example gradients in the Kronecker eigenbasis.

    ``ga`` ``(M, R, O)``: the output gradients in the basis :math:`U_G`, ``aa`` ``(R, I)``:
    the inputs in :math:`U_A`, rows example-major (``R = n P``, ``P`` shared positions per
    example: a conv's output positions, a sequence's tokens). With the per-example
    gradient :math:`\\sum_p g_{npc} a_{np}^\\top` of column ``c``,

    .. math::

        S_{oi} = \\sum_{n,c} \\Big(\\sum_p (U_G^\\top g_{npc})_o (U_A^\\top a_{np})_i\\Big)^2,
        \\qquad s_o = \\sum_{n,c} \\Big(\\sum_p (U_G^\\top g_{npc})_o\\Big)^2 .
    """
    m, r, o = ga.shape
    if r == n or r % n:  # one row per example (or rows not grouped by example): per row
        ga2 = ga**2
        return jnp.einsum("mro,ri->oi", ga2, aa**2), (jnp.einsum("mro->o", ga2) if bias else None)
    p = r // n
    per_example = (jnp.moveaxis(ga.reshape(m, n, p, o), 1, 0), aa.reshape(n, p, aa.shape[-1]))

    def one(item):
        g_n, a_n = item  # (M, P, O), (P, I)
        y = jnp.einsum("mpo,pi->moi", g_n, a_n)
        return jnp.sum(y**2, axis=0), jnp.sum(jnp.sum(g_n, axis=1) ** 2, axis=0)

    Sw, Sb = jax.lax.map(one, per_example, batch_size=min(n, 8))
    return jnp.sum(Sw, axis=0), (jnp.sum(Sb, axis=0) if bias else None)


def _leftover_diag(plan, model_fn, params, inputs, cots):
    """Exact diagonal :math:`\\sum_{n,m} (J_n^\\top u_{mn})_i^2` on the leftover leaves (per example)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    idx = plan.leftover

    def model_of(sub, x):
        full = list(leaves)
        for i, s in zip(idx, sub):
            full[i] = s
        return model_fn(jax.tree_util.tree_unflatten(treedef, full), x)

    sub0 = [leaves[i] for i in idx]

    def example(item):
        x, u = item  # one example's inputs, (M, *out) cotangents
        x1 = jax.tree_util.tree_map(lambda a: a[None], x)
        _, vjp_fn = jax.vjp(lambda s: model_of(s, x1), sub0)
        g = jax.vmap(lambda uu: vjp_fn(uu[None])[0])(u)
        return [jnp.sum(gi**2, axis=0) for gi in g]

    per = jax.lax.map(example, (inputs, jnp.moveaxis(cots, 0, 1)))
    return tuple(jnp.sum(p, axis=0) for p in per)


# ---------------------------------------------------------------------------
# The operator
# ---------------------------------------------------------------------------


def _block_apply(UA, UG, S, V):
    """:math:`U_G (S \\circ U_G^\\top V U_A) U_A^\\top` for ``V`` of shape ``(d_out, d_in)``."""
    return UG @ (S * (UG.T @ V @ UA)) @ UA.T


@pytree_operator
class KFACOperator(ParameterOperator):
    """K-FAC / EK-FAC curvature; see the module docs. Tagged PSD.

    .. math::

        \\bigoplus_\\ell (U_G \\otimes U_A) \\operatorname{diag}(S_\\ell + \\delta)
        (U_G \\otimes U_A)^\\top \\oplus \\operatorname{diag}(d + \\delta)

    Build with :func:`kfac_operator` / :func:`ekfac_operator`. ``factors`` holds the
    Kronecker factors ``(A, G)`` per layer, ``eig`` their eigenvectors and the scalings
    ``(U_A, U_G, S_W, s_b)``, ``diag`` the leftover parameters' diagonal blocks (one
    per leftover leaf, in ``leftover`` order). Methods: :meth:`inverse`,
    :meth:`logdet`, :meth:`trace`, :meth:`eigenvalues`, :meth:`diagonal`,
    :meth:`damped` (stays a K-FAC operator).
    """

    x: PyTree
    factors: tuple
    eig: tuple
    diag: tuple
    damping: jax.Array
    layers: tuple = static_field()
    leftover: tuple = static_field()
    approx: str = static_field()
    fisher_type: str = static_field()
    power: int = static_field(default=1)

    tags = property(lambda self: _SYM_PSD)

    # -- products -------------------------------------------------------
    def _fn(self, s):
        s = s + self.damping
        return s if self.power == 1 else 1.0 / s

    def tree_product(self, linearize):
        treedef = jax.tree_util.tree_structure(self.x)

        def product(v_tree):
            v = jax.tree_util.tree_leaves(v_tree)
            out = list(v)
            # K-FAC itself multiplies by its factors, G V A + delta V (two matmuls, not the
            # eigenbasis' four; equal up to the clipping of rounding-negative eigenvalues)
            direct = self.approx == "kfac" and self.power == 1
            for spec, (UA, UG, Sw, Sb), (A, G) in zip(self.layers, self.eig, self.factors):
                w = v[spec.weight]
                Wp = jnp.transpose(w, spec.perm)
                V = Wp.reshape(Wp.shape[0], -1)
                if direct:
                    Y = G @ V @ A + self.damping * V
                else:
                    Y = _block_apply(UA, UG, self._fn(Sw), V)
                out[spec.weight] = jnp.transpose(Y.reshape(Wp.shape), np.argsort(spec.perm))
                if spec.bias >= 0:
                    b = v[spec.bias].reshape(-1)
                    if direct:
                        yb = G @ b + self.damping * b
                    else:
                        yb = UG @ (self._fn(Sb) * (UG.T @ b))
                    out[spec.bias] = yb.reshape(v[spec.bias].shape)
            for i, d in zip(self.leftover, self.diag):
                out[i] = self._fn(d) * v[i]
            return jax.tree_util.tree_unflatten(treedef, out)

        return product

    # -- closed forms ---------------------------------------------------
    def _spectrum_parts(self):
        parts = []
        for spec, (_, _, Sw, Sb) in zip(self.layers, self.eig):
            parts.append(Sw.reshape(-1))
            if spec.bias >= 0:
                parts.append(Sb.reshape(-1))
        parts.extend(d.reshape(-1) for d in self.diag)
        return jnp.concatenate(parts)

    def eigenvalues(self) -> jax.Array:
        """All ``n`` eigenvalues, descending (closed form: the scalings plus damping)."""
        return -jnp.sort(-self._fn(self._spectrum_parts()))

    def logdet(self) -> jax.Array:
        """:math:`\\log\\det` (``-inf`` when singular; of the inverse for an inverse operator)."""
        return jnp.sum(jnp.log(self._fn(self._spectrum_parts())))

    def trace(self) -> jax.Array:
        """:math:`\\operatorname{tr}` in closed form."""
        return jnp.sum(self._fn(self._spectrum_parts()))

    def diagonal(self) -> jax.Array:
        tree = [None] * len(jax.tree_util.tree_leaves(self.x))
        leaves = jax.tree_util.tree_leaves(self.x)
        for spec, (UA, UG, Sw, Sb) in zip(self.layers, self.eig):
            Wp_shape = tuple(np.shape(leaves[spec.weight])[i] for i in spec.perm)
            D = ((UG**2) @ self._fn(Sw) @ (UA**2).T).reshape(Wp_shape)
            tree[spec.weight] = jnp.transpose(D, np.argsort(spec.perm))
            if spec.bias >= 0:
                tree[spec.bias] = ((UG**2) @ self._fn(Sb)).reshape(np.shape(leaves[spec.bias]))
        for i, d in zip(self.leftover, self.diag):
            tree[i] = self._fn(d)
        return jnp.concatenate([jnp.ravel(t) for t in tree])

    def damped(self, damping) -> KFACOperator:
        """The same structure with :math:`\\delta + \\text{damping}` (inverse, logdet stay closed form)."""
        if self.power != 1:
            return super().damped(damping)
        if is_concrete(damping) and float(damping) < 0:
            raise ValueError(f"damping must be >= 0 to keep the operator PSD, got {float(damping)}")
        return _replace(self, damping=self.damping + jnp.asarray(damping, self.dtype))

    def inverse(self, damping=None) -> KFACOperator:
        """:math:`(K + \\delta I)^{-1}` in closed form (``damping`` added first when given).

        Raises ``ValueError`` (concrete operators) when the damped operator is singular.
        """
        op = self if damping is None else self.damped(damping)
        return op._exact_inverse()

    def _exact_inverse(self) -> LinearOperator:
        if self.power != 1:
            return _replace(self, power=1)
        if is_concrete(self.damping):
            s = self._fn(self._spectrum_parts())
            smin, smax = float(jnp.min(s)), float(jnp.max(s))
            if not smin > self.size * float(jnp.finfo(s.dtype).eps) * smax:
                raise ValueError(
                    f"the K-FAC operator is singular to working precision (eigenvalues {smin:.3g} .. "
                    f"{smax:.3g}); pass damping > 0"
                )
        return _replace(self, power=-1)


def _replace(op, **kw):
    fields = {f: getattr(op, f) for f in op.__dataclass_fields__}
    fields.update(kw)
    new = KFACOperator.__new__(KFACOperator)
    _set(new, **fields)
    return new


# ---------------------------------------------------------------------------
# Constructors
# ---------------------------------------------------------------------------


class _Config(NamedTuple):
    fisher_type: str
    reduction: str
    num_samples: int
    likelihood: str


def _check_config(fisher_type, reduction, num_samples, likelihood, key, targets, damping):
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if fisher_type == "mc" and key is None:
        raise ValueError("fisher_type='mc' samples labels: pass key=jax.random.key(...)")
    if likelihood is None:
        likelihood = "categorical" if jnp.issubdtype(jnp.result_type(targets), jnp.integer) else "gaussian"
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if is_concrete(damping) and not (np.ndim(damping) == 0 and float(damping) >= 0):
        raise ValueError(f"damping must be a scalar >= 0, got {damping!r}")
    return _Config(fisher_type, reduction, num_samples, likelihood)


def _eigenbases(factors, layers):
    """``(U_A, U_G, S = lambda_G lambda_A^T, s_b = lambda_G)`` per layer (eigenvalues clipped at 0)."""
    eig = []
    for (A, G), spec in zip(factors, layers):
        la, UA = jnp.linalg.eigh(0.5 * (A + A.T))
        lg, UG = jnp.linalg.eigh(0.5 * (G + G.T))
        la, lg = jnp.maximum(la, 0), jnp.maximum(lg, 0)
        eig.append((UA, UG, jnp.outer(lg, la), lg if spec.bias >= 0 else None))
    return eig


def _refitted(eig, scales):
    return [(e[0], e[1], Sw, Sb) for e, (Sw, Sb) in zip(eig, scales)]


def _dataset_average(data: Batches, fn, key):
    """The weighted sum over the batches of a stacked dataset of ``fn(batch, key_b)``."""
    acc = None
    for gi, (group, w) in enumerate(zip(data.groups, data.weights, strict=True)):
        ks = jax.random.split(jax.random.fold_in(key, gi), int(w.shape[0]))
        for b in range(int(w.shape[0])):
            batch = jax.tree_util.tree_map(lambda a, b=b: a[b], group)
            val = jax.tree_util.tree_map(lambda a, wb=w[b]: wb * a, fn(batch, ks[b]))
            acc = val if acc is None else jax.tree_util.tree_map(jnp.add, acc, val)
    return acc


def _build(approx, model_fn, output_loss_fn, params, data: Batches, cfg: _Config, damping, key):
    first = data.first()
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    out = jax.eval_shape(model_fn, params, first[0])
    if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) < 2:
        raise ValueError(
            "model_fn(params, inputs) must return one array of shape (N, ...) (examples first), "
            f"got {jax.tree_util.tree_map(lambda s: s.shape, out)}"
        )
    if cfg.fisher_type == "mc" and cfg.likelihood == "categorical" and len(out.shape) != 2:
        raise ValueError(f"likelihood='categorical' needs logits of shape (N, classes), got {out.shape}")
    lids, layers, leftover = find_layers(model_fn, params, first[0])
    closed, _ = _closed_model(model_fn, params, first[0])
    st = _State()
    jax.eval_shape(
        lambda lv, il: _run(closed, lv, il, st),
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(first[0]),
    )
    plan = _Plan(closed, lids, layers, leftover, tuple(st.layers[lid] for lid in lids))
    if is_concrete(first[0]) and is_concrete(jax.tree_util.tree_leaves(params)[0]):
        _reduction_scale(output_loss_fn, model_fn(params, first[0]), first[1], cfg.reduction)
    key = jax.random.key(0) if key is None else key
    k1, k2 = jax.random.split(key)
    stats = lambda p, b, k: _batch_factors(plan, model_fn, output_loss_fn, cfg, p, b, k)[:2]
    refit = lambda p, b, k, e: _batch_factors(plan, model_fn, output_loss_fn, cfg, p, b, k, e)[2]
    ekfac = approx == "ekfac" and bool(layers)
    # fresh labels for the EK-FAC refit under "mc"; the same (deterministic) cotangents otherwise
    k2 = k2 if cfg.fisher_type == "mc" else k1
    if not data.stacked:  # one batch: one compiled call for factors, eigenbases and refit

        def single(p, b):
            factors, diag = stats(p, b, k1)
            eig = _eigenbases(factors, layers)
            if ekfac:
                eig = _refitted(eig, refit(p, b, k2, [(e[0], e[1]) for e in eig]))
            return factors, diag, eig

        factors, diag, eig = jax.jit(single)(params, data.groups[0])
    else:
        stats_j, refit_j = jax.jit(stats), jax.jit(refit)
        factors, diag = _dataset_average(data, lambda b, k: stats_j(params, b, k), k1)
        eig = _eigenbases(factors, layers)
        if ekfac:
            bases = [(e[0], e[1]) for e in eig]
            eig = _refitted(eig, _dataset_average(data, lambda b, k: refit_j(params, b, k, bases), k2))
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    op = KFACOperator.__new__(KFACOperator)
    _set(
        op,
        x=params,
        factors=tuple(tuple(f) for f in factors),
        eig=tuple(tuple(e) for e in eig),
        diag=tuple(diag),
        damping=jnp.asarray(damping, dtype),
        layers=layers,
        leftover=leftover,
        approx=approx,
        fisher_type=cfg.fisher_type,
        power=1,
    )
    return op


def _constructor(
    approx,
    model_fn,
    output_loss_fn,
    params,
    batch,
    *,
    fisher_type,
    damping,
    key,
    num_samples,
    likelihood,
    reduction,
    data=None,
):
    params, _, model_fn, _ = _unwrap_module(params, None, model_fn, None)
    check_real_floating("params", params)
    if data is None:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("batch must be a pair (inputs, targets)")
        data = single_batch(tuple(batch))
    cfg = _check_config(fisher_type, reduction, num_samples, likelihood, key, data.first()[1], damping)
    return _build(approx, model_fn, output_loss_fn, params, data, cfg, damping, key)


def _public_constructor(approx: str, doc: str) -> Callable:
    """The public constructor of ``approx`` ("kfac" / "ekfac"): one signature for both."""

    def constructor(
        model_fn: Callable,
        output_loss_fn: Callable,
        params: PyTree,
        batch: tuple,
        *,
        fisher_type: str = "exact",
        damping: float = 0.0,
        key: jax.Array | None = None,
        num_samples: int = 1,
        likelihood: str | None = None,
        reduction: str = "mean",
    ) -> KFACOperator:
        return _constructor(
            approx,
            model_fn,
            output_loss_fn,
            params,
            batch,
            fisher_type=fisher_type,
            damping=damping,
            key=key,
            num_samples=num_samples,
            likelihood=likelihood,
            reduction=reduction,
        )

    constructor.__name__ = constructor.__qualname__ = f"{approx}_operator"
    constructor.__doc__ = doc
    return constructor


_KFAC_DOC = """K-FAC of the GGN / Fisher of ``output_loss_fn(model_fn(params, inputs), targets)``.

    Layers are found by tracing ``model_fn`` (no annotations; see the module docs for
    what is detected and the scaling table). Per layer
    :math:`G \\otimes A` with :math:`A = \\frac1R\\sum_r a_r a_r^\\top`,
    :math:`G = \\sum_{r,c} g_{rc} g_{rc}^\\top` (the mean-reduction scale of
    :func:`curvlab.ggn_operator`); biases their own block :math:`G`; other parameters the
    exact diagonal of the same curvature.

    Parameters
    ----------
    model_fn, output_loss_fn : callable
        ``model_fn(params, inputs) -> (N, ...)`` and ``output_loss_fn(outputs, targets) -> scalar``.
    params : pytree or module
        Floating arrays, or a Flax NNX / Equinox module (split into its parameters).
    batch : (inputs, targets)
    fisher_type : {"exact", "mc", "empirical"}
        Output curvature: exact square root of the output Hessian (sample-free), labels
        sampled from the model (needs ``key``; ``num_samples`` each), or the true labels.
    damping : float
        :math:`\\delta \\ge 0` added to every eigenvalue (``op.damped`` adds more).
    likelihood : {"categorical", "gaussian"}, optional
        For ``"mc"``; default categorical for integer targets, else gaussian.
    reduction : {"mean", "sum"}
        How ``output_loss_fn`` reduces over the examples (checked on the batch).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from curvlab import ggn_operator
    >>> X = jax.random.normal(jax.random.key(0), (1, 3)); y = jnp.zeros((1, 2))
    >>> model = lambda p, x: x @ p["w"]
    >>> mse = lambda z, t: 0.5 * jnp.mean(jnp.sum((z - t) ** 2, axis=1))
    >>> p = {"w": jnp.ones((3, 2))}
    >>> K = kfac_operator(model, mse, p, (X, y))
    >>> G = ggn_operator(model, mse, p, (X, y))  # one example, one linear layer: exact
    >>> bool(jnp.allclose(K.to_dense(), G.to_dense(), atol=1e-5))
    True
    """

_EKFAC_DOC = """EK-FAC (George et al. 2018): K-FAC's Kronecker eigenbasis with refitted diagonal scalings.

    Same arguments as :func:`kfac_operator`. In the eigenbasis :math:`U_G \\otimes U_A`
    of the K-FAC factors the scalings are the second moments of the projected per-example
    gradients, :math:`S_{oi} = \\sum_{n,c} (\\sum_p (U_G^\\top g_{npc})_o (U_A^\\top a_{np})_i)^2`
    (``p`` a conv's output positions or a sequence's tokens): the diagonal of the exact
    block in that basis, so the block traces are the exact curvature's.
    """

kfac_operator = _public_constructor("kfac", _KFAC_DOC)
ekfac_operator = _public_constructor("ekfac", _EKFAC_DOC)

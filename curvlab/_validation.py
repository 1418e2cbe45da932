"""Argument checks shared by the core: clear errors at call time, before tracing."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """Sum of elementwise products over all leaves: :math:`\\langle a, b\\rangle`."""
    leaves = [jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    if not leaves:
        return jnp.asarray(0.0)
    return sum(leaves[1:], leaves[0])


def _shape_dtype(leaf):
    return tuple(np.shape(leaf)), jnp.result_type(leaf)


def check_like(x: Any, v: Any, xname: str = "x", vname: str = "v") -> None:
    """Raise if ``v`` does not have the pytree structure, shapes and dtypes of ``x``.

    The message names the first mismatching leaf by its path (e.g. ``['w'][0]``).
    """
    x_paths, x_def = jax.tree_util.tree_flatten_with_path(x)
    v_paths, v_def = jax.tree_util.tree_flatten_with_path(v)
    if x_def != v_def:
        xk = [jax.tree_util.keystr(p) for p, _ in x_paths]
        vk = [jax.tree_util.keystr(p) for p, _ in v_paths]
        first = next((i for i, (a, b) in enumerate(zip(xk, vk)) if a != b), min(len(xk), len(vk)))
        if xk == vk:  # same leaf paths, different containers (e.g. list vs tuple)
            raise ValueError(
                f"{vname} must have the same pytree structure as {xname}: the leaf paths agree but the "
                f"containers differ ({xname}: {x_def}, {vname}: {v_def})"
            )
        where = (
            f"first difference at leaf {first}: {xname} has "
            f"{xk[first] if first < len(xk) else '<no leaf>'!s}, {vname} has "
            f"{vk[first] if first < len(vk) else '<no leaf>'!s}"
        )
        raise ValueError(
            f"{vname} must have the same pytree structure as {xname} ({len(xk)} leaves vs {len(vk)}); {where}"
        )
    for (path, a), (_, b) in zip(x_paths, v_paths):
        (sa, da), (sb, db) = _shape_dtype(a), _shape_dtype(b)
        name = jax.tree_util.keystr(path) or "<root>"
        if sa != sb:
            raise ValueError(f"shape mismatch at leaf {name}: {xname} has {sa}, {vname} has {sb}")
        if da != db:
            raise TypeError(f"dtype mismatch at leaf {name}: {xname} has {da}, {vname} has {db}")


def check_scalar_output(f, x, *args) -> None:
    """Raise ``ValueError`` unless ``f(x, *args)`` is a real scalar."""
    try:
        out = jax.eval_shape(f, x, *args)
    except TypeError as err:  # pragma: no cover - message passthrough
        raise TypeError(f"could not evaluate f(x, *args): {err}") from err
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"f must return a scalar (shape ()), got output of shape {shape}; "
            "reduce it (e.g. with .mean() or .sum()) before asking for curvature"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"f must return a real floating scalar, got dtype {out.dtype}")


def is_concrete(x) -> bool:
    """True if ``x`` holds concrete values (not a tracer inside jit/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, value) -> None:
    """Raise ``ValueError`` if a concrete array holds NaN or infinity."""
    leaves = jax.tree_util.tree_leaves(value)
    for leaf in leaves:
        if is_concrete(leaf) and not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError(f"{name} contains non-finite values (NaN or infinity)")


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real_floating(name: str, tree: Any) -> None:
    """Raise ``TypeError`` unless every leaf of ``tree`` is a real floating-point array.

    Complex input is refused (curvlab's operators and solvers are real symmetric: casting
    would silently drop the imaginary part); integer input is refused because derivatives
    need floating-point leaves.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.result_type(leaf)
        where = jax.tree_util.keystr(path)
        where = f" (leaf {where})" if where else ""
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{name}{where} is complex ({dtype}); curvlab works on real symmetric operators and real "
                "vectors. Split a Hermitian problem into its real form [[Re, -Im], [Im, Re]]"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{name}{where} has dtype {dtype}; curvlab needs floating-point leaves")


#: matvecs already checked by :func:`check_matvec_output`, by structure (bounded; cleared when full)
_CHECKED_MATVECS: dict = {}
_MAX_CHECKED = 128


def _matvec_key(matvec, n: int, dtype):
    """A hashable key under which ``matvec``'s output shape is the same, or ``None``.

    A bound method of an operator is keyed by the operator's pytree structure (type and static
    fields) and its leaves' shapes and dtypes, so a new operator of the same model and batch
    shapes (a new damping, new parameters) reuses the check; a plain function by identity.
    """
    owner = getattr(matvec, "__self__", None)
    try:
        if owner is not None:
            leaves, treedef = jax.tree_util.tree_flatten(owner)
            if jax.tree_util.treedef_is_leaf(treedef):  # not a registered pytree: nothing to key on
                return None
            shapes = tuple((np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)
            key = (treedef, shapes, matvec.__func__, n, jnp.dtype(dtype))
        else:
            key = (matvec, n, jnp.dtype(dtype))
        hash(key)
    except TypeError:  # unhashable static data: check every time
        return None
    return key


def check_matvec_output(what: str, matvec, n: int, dtype) -> None:
    """Raise ``ValueError`` unless ``matvec`` maps an ``(n,)`` vector to an ``(n,)`` vector.

    Evaluated abstractly (``jax.eval_shape``), so no product is computed; remembered per
    operator structure (tracing a large model's HVP costs tens of milliseconds per call).
    """
    key = _matvec_key(matvec, n, dtype)
    if key is not None and key in _CHECKED_MATVECS:
        return
    out = jax.eval_shape(matvec, jax.ShapeDtypeStruct((n,), dtype))
    shape = getattr(out, "shape", None)
    if shape != (n,):
        raise ValueError(
            f"{what}: the operator's matvec must map a vector of shape ({n},) to shape ({n},), "
            f"but it returned {shape if shape is not None else type(out).__name__}"
        )
    check_real_floating(f"{what}: the operator's matvec output", out)
    if key is not None:
        if len(_CHECKED_MATVECS) >= _MAX_CHECKED:
            _CHECKED_MATVECS.clear()
        _CHECKED_MATVECS[key] = True


def as_key(name: str, key, *, required: bool = True, default_seed: int = 0):
    """A typed PRNG key (``jax.random.key``) from ``key``; raw ``uint32[2]`` keys are wrapped.

    ``key=None`` raises when ``required`` (stochastic estimators), else gives
    ``jax.random.key(default_seed)`` (start vectors).
    """
    if key is None:
        if required:
            raise TypeError(f"{name} is required: pass a typed key, e.g. {name}=jax.random.key(0)")
        return jax.random.key(default_seed)
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype is not None and np.shape(key) == (2,) and jnp.issubdtype(dtype, jnp.unsignedinteger):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a PRNG key such as jax.random.key(0), got {type(key).__name__}")


def check_not_traced(what: str, why: str, **values) -> None:
    """Raise one clear ``ValueError`` if any of ``values`` holds a tracer (a call under the user's
    ``jax.jit`` / ``vmap`` of a routine that runs a Python loop between compiled calls)."""
    for name, value in values.items():
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value)):
            raise ValueError(
                f"{what} cannot run under jax.jit / vmap ({name} is traced): {why}. "
                f"Call {what} outside the transformation"
            )

"""Curvature linear operators on flat vectors.

A :class:`LinearOperator` represents a matrix :math:`A \\in \\mathbb{R}^{n \\times n}`
through its action ``v -> A v`` on 1-D arrays of length ``n``. Every operator is a
frozen dataclass registered as a JAX pytree (:func:`pytree_operator`): array fields
are leaves, functions, sizes and dtypes are static, so an operator can be an
argument of a jitted function and a new operator of the same kind and shapes reuses
the compiled code. Its :attr:`~LinearOperator.tags` say what solvers may assume:
``"symmetric"`` (:math:`A = A^\\top`) and ``"psd"`` (:math:`v^\\top A v \\ge 0`).

Curvature operators (Hessian, GGN, empirical Fisher, and their dataset averages)
are built on this base in :mod:`curvlab._curvature`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from curvlab._validation import (
    check_matvec_output,
    check_positive_int,
    check_real_floating,
    is_concrete,
)

PyTree = Any

#: Largest ``n`` for which :meth:`LinearOperator.to_dense` builds a matrix by default.
DENSE_SIZE_LIMIT = 8192

#: Tag: :math:`A = A^\\top`.
SYMMETRIC = "symmetric"
#: Tag: :math:`v^\\top A v \\ge 0` for every ``v`` (and symmetric).
PSD = "psd"
_SYM = frozenset({SYMMETRIC})
_SYM_PSD = frozenset({SYMMETRIC, PSD})

__all__ = [
    "DENSE_SIZE_LIMIT",
    "SYMMETRIC",
    "PSD",
    "pytree_operator",
    "static_field",
    "LinearOperator",
    "DenseOperator",
    "DiagonalOperator",
    "IdentityOperator",
    "LowRankOperator",
    "BlockDiagonalOperator",
    "KroneckerOperator",
    "SumOperator",
    "ScaledOperator",
    "CongruenceOperator",
    "FunctionOperator",
    "as_operator",
]


# ---------------------------------------------------------------------------
# Registration: frozen dataclasses as pytrees
# ---------------------------------------------------------------------------


def static_field(**kwargs) -> Any:
    """A dataclass field that is part of the pytree structure (hashable), not a leaf."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_operator(cls: type) -> type:
    """Make ``cls`` a frozen dataclass and register it as a pytree.

    Fields declared with :func:`static_field` are static (pytree metadata: functions,
    sizes, dtypes, tags); every other field is a child (arrays, parameter pytrees, other
    operators). The class's own ``__init__`` validates user input; rebuilding from
    leaves (inside ``jit``, ``vmap``, ``tree_map``) bypasses it, as leaves may then be
    tracers or placeholders. ``dataclasses.replace`` works where ``__init__`` takes the
    fields by name (the generated one, when the class writes none).
    """
    cls = dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if not f.metadata.get("static", False))
    meta = tuple(f.name for f in fields if f.metadata.get("static", False))
    keys = tuple(jax.tree_util.GetAttrKey(k) for k in data)

    def flatten_with_keys(op):
        return [(k, getattr(op, n)) for k, n in zip(keys, data)], tuple(getattr(op, n) for n in meta)

    def flatten(op):
        return [getattr(op, n) for n in data], tuple(getattr(op, n) for n in meta)

    def unflatten(aux, children):
        op = cls.__new__(cls)
        for n, val in zip(data, children):
            object.__setattr__(op, n, val)
        for n, val in zip(meta, aux):
            object.__setattr__(op, n, val)
        return op

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def _set(obj, **values) -> None:
    """Assign fields of a frozen operator in its ``__init__``."""
    for name, val in values.items():
        object.__setattr__(obj, name, val)


def _real_array(name: str, a) -> jax.Array:
    """``a`` as a real floating array: integers and booleans are cast, complex input refused."""
    a = jnp.asarray(a)
    check_real_floating(name, a.astype(jnp.result_type(float)) if _is_int_or_bool(a) else a)
    if _is_int_or_bool(a):
        a = a.astype(jnp.result_type(float))
    return a


def _is_int_or_bool(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.integer) or jnp.issubdtype(a.dtype, jnp.bool_)


def _nonnegative(a) -> bool:
    """True when ``a`` is concrete and every entry is ``>= 0`` (a tracer: unknown, so False)."""
    return is_concrete(a) and bool(jnp.all(a >= 0))


def _real_dtype(name: str, dtype) -> jnp.dtype:
    dtype = jnp.dtype(dtype if dtype is not None else jnp.result_type(float))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a real floating dtype, got {dtype}")
    return dtype


# ---------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------


class LinearOperator:
    """Abstract linear operator :math:`v \\mapsto A v` on flat vectors of length ``n``.

    A subclass is a :func:`pytree_operator` dataclass that implements :meth:`matvec`
    and the properties ``size`` (``n``) and ``dtype``, and overrides :attr:`tags`
    when it knows more than "symmetric". Everything else (``shape``, :meth:`matmat`,
    ``@``, ``+``, scalar ``*``, :meth:`damped`, :meth:`to_dense`, :meth:`to_scipy`)
    is provided. Operators whose products share work (a linearization) override
    :meth:`prepare`, and :meth:`matmat` and every solver use it.
    """

    # -- to implement: matvec(v), size, dtype --------------------------
    def matvec(self, v: jax.Array) -> jax.Array:
        """:math:`A v` for a vector ``v`` of shape ``(n,)``."""
        raise NotImplementedError

    @property
    def tags(self) -> frozenset[str]:
        """What solvers may assume: a subset of ``{"symmetric", "psd"}``."""
        return _SYM

    # -- provided -----------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return (self.size, self.size)

    def prepare(self) -> Callable[[jax.Array], jax.Array]:
        """Return ``v -> A v`` after doing once any work shared by all products.

        Iterative solvers call this once inside their jitted loop; curvature
        operators linearize the gradient (or the model) here.
        """
        return self.matvec

    def matmat(self, V: jax.Array) -> jax.Array:
        """:math:`A V` for ``V`` of shape ``(n, k)``: the prepared product mapped over columns."""
        V = jnp.asarray(V)
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(
                f"matmat of an operator of shape {self.shape} needs an array of shape ({self.size}, k), "
                f"got {tuple(V.shape)}"
            )
        return jax.vmap(self.prepare(), in_axes=1, out_axes=1)(V)

    def diagonal(self) -> jax.Array:
        """Exact diagonal, where it is cheap; otherwise raises ``NotImplementedError``.

        Use :func:`curvlab.diagonal` for a stochastic estimate.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no cheap exact diagonal; estimate it with curvlab.diagonal(op, ...)"
        )

    def __matmul__(self, v):
        v = jnp.asarray(v)
        if v.ndim not in (1, 2) or v.shape[0] != self.size:
            raise ValueError(
                f"operator of shape {self.shape} cannot multiply an array of shape {tuple(v.shape)}; "
                f"expected ({self.size},) or ({self.size}, k)"
            )
        return self.matvec(v) if v.ndim == 1 else self.matmat(v)

    def __call__(self, v):
        return self @ v

    def __add__(self, other):
        if isinstance(other, LinearOperator):
            return SumOperator((self, other))
        return NotImplemented

    __radd__ = __add__

    def __mul__(self, c):
        if isinstance(c, LinearOperator):
            return NotImplemented
        if np.ndim(c) != 0:
            raise ValueError("operators can only be scaled by a scalar")
        return ScaledOperator(c, self)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other)

    def damped(self, damping) -> LinearOperator:
        """Tikhonov damping :math:`A + \\delta I` (``damping`` :math:`= \\delta`; a leaf, not static).

        PSD when :math:`A` is PSD and a concrete :math:`\\delta \\ge 0`.
        """
        return self + ScaledOperator(damping, IdentityOperator(self.size, self.dtype))

    def to_dense(self, max_size: int = DENSE_SIZE_LIMIT) -> jax.Array:
        """Dense ``(n, n)`` matrix :math:`A I`, built from one :meth:`matmat` of the identity.

        A debugging and test reference: refuses ``n > max_size``.
        """
        if self.size > max_size:
            raise ValueError(
                f"to_dense() refuses n = {self.size} > max_size = {max_size} "
                f"({self.size**2 * jnp.dtype(self.dtype).itemsize / 2**30:.2f} GiB); "
                "work with matvecs instead or pass a larger max_size"
            )
        return _to_dense(self)

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` calling the jitted matvec (``rmatvec`` too: symmetric)."""
        from scipy.sparse.linalg import LinearOperator as ScipyOperator

        mv = jax.jit(lambda op, v: op.matvec(v))
        dtype = np.dtype(self.dtype)

        def matvec(v):
            return np.asarray(mv(self, jnp.asarray(np.ravel(v), dtype=dtype)))

        return ScipyOperator(self.shape, matvec=matvec, rmatvec=matvec, dtype=dtype)

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={jnp.dtype(self.dtype).name})"


@jax.jit
def _to_dense(op):
    return op.matmat(jnp.eye(op.size, dtype=op.dtype))


def _tags_of_all(ops) -> frozenset[str]:
    """Tags every operator in ``ops`` carries (symmetric and PSD are closed under sums)."""
    return frozenset.intersection(*[frozenset(op.tags) for op in ops])


# ---------------------------------------------------------------------------
# Structured operators
# ---------------------------------------------------------------------------


@pytree_operator
class DenseOperator(LinearOperator):
    """A dense matrix :math:`A`, taken to be symmetric (not checked); tagged symmetric."""

    matrix: jax.Array

    def __init__(self, matrix):
        matrix = _real_array("matrix", matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"DenseOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        _set(self, matrix=matrix)

    size = property(lambda self: self.matrix.shape[0])
    dtype = property(lambda self: self.matrix.dtype)

    def matvec(self, v):
        return self.matrix @ v

    def diagonal(self):
        return jnp.diag(self.matrix)

    def to_dense(self, max_size=DENSE_SIZE_LIMIT):
        return self.matrix


@pytree_operator
class DiagonalOperator(LinearOperator):
    """:math:`\\operatorname{diag}(d)`; PSD when its (concrete) entries are :math:`\\ge 0`."""

    diag: jax.Array
    nonnegative: bool = static_field()

    def __init__(self, diag):
        diag = _real_array("diag", diag)
        if diag.ndim != 1:
            raise ValueError(f"DiagonalOperator needs a 1-D diagonal, got shape {tuple(diag.shape)}")
        _set(self, diag=diag, nonnegative=_nonnegative(diag))

    size = property(lambda self: self.diag.shape[0])
    dtype = property(lambda self: self.diag.dtype)
    tags = property(lambda self: _SYM_PSD if self.nonnegative else _SYM)

    def matvec(self, v):
        return self.diag * v

    def diagonal(self):
        return self.diag


@pytree_operator
class IdentityOperator(LinearOperator):
    """The identity :math:`I_n` (``n >= 1``); PSD."""

    n: int = static_field()
    dtype: Any = static_field()

    def __init__(self, n: int, dtype=None):
        _set(self, n=check_positive_int("n", n), dtype=_real_dtype("dtype", dtype))

    size = property(lambda self: self.n)
    tags = property(lambda self: _SYM_PSD)

    def matvec(self, v):
        return v

    def diagonal(self):
        return jnp.ones(self.n, self.dtype)


@pytree_operator
class LowRankOperator(LinearOperator):
    """:math:`U \\operatorname{diag}(s) U^\\top` with ``U`` of shape ``(n, r)``; PSD when :math:`s \\ge 0`."""

    U: jax.Array
    s: jax.Array
    nonnegative: bool = static_field()

    def __init__(self, U, s):
        U = _real_array("U", U)
        s = _real_array("s", s).astype(U.dtype)
        if U.ndim != 2:
            raise ValueError(f"LowRankOperator needs U of shape (n, r), got {tuple(U.shape)}")
        if s.shape != (U.shape[1],):
            raise ValueError(
                f"s must have shape ({U.shape[1]},) to match U {tuple(U.shape)}, got {tuple(s.shape)}"
            )
        _set(self, U=U, s=s, nonnegative=_nonnegative(s))

    size = property(lambda self: self.U.shape[0])
    dtype = property(lambda self: self.U.dtype)
    tags = property(lambda self: _SYM_PSD if self.nonnegative else _SYM)

    def matvec(self, v):
        return self.U @ (self.s * (self.U.T @ v))

    def diagonal(self):
        return jnp.sum(self.U**2 * self.s[None, :], axis=1)


@pytree_operator
class BlockDiagonalOperator(LinearOperator):
    """Block-diagonal :math:`\\operatorname{blkdiag}(A_1, \\dots, A_m)`; tags shared by all blocks."""

    blocks: tuple

    def __init__(self, blocks: Sequence[LinearOperator]):
        blocks = tuple(as_operator(b) for b in blocks)
        if not blocks:
            raise ValueError("BlockDiagonalOperator needs at least one block")
        _set(self, blocks=blocks)

    size = property(lambda self: sum(b.size for b in self.blocks))
    dtype = property(lambda self: jnp.result_type(*[b.dtype for b in self.blocks]))
    tags = property(lambda self: _tags_of_all(self.blocks))

    def _split(self, v):
        return jnp.split(v, np.cumsum([b.size for b in self.blocks])[:-1])

    def matvec(self, v):
        return jnp.concatenate([b.matvec(p) for b, p in zip(self.blocks, self._split(v))])

    def prepare(self):
        fns = [b.prepare() for b in self.blocks]
        return lambda v: jnp.concatenate([fn(p) for fn, p in zip(fns, self._split(v))])

    def diagonal(self):
        return jnp.concatenate([b.diagonal() for b in self.blocks])


@pytree_operator
class KroneckerOperator(LinearOperator):
    """:math:`A \\otimes B` without forming it; PSD when both factors are.

    With ``x`` reshaped row-major to ``X`` of shape ``(m, p)``,
    :math:`(A \\otimes B)\\,\\mathrm{vec}(X) = \\mathrm{vec}(A X B^\\top)`.
    """

    A: LinearOperator
    B: LinearOperator

    def __init__(self, A, B):
        _set(self, A=as_operator(A), B=as_operator(B))

    size = property(lambda self: self.A.size * self.B.size)
    dtype = property(lambda self: jnp.result_type(self.A.dtype, self.B.dtype))
    tags = property(lambda self: _tags_of_all((self.A, self.B)))

    def _apply(self, fa, fb, v):
        X = v.reshape(self.A.size, self.B.size)
        Y = jax.vmap(fb)(X)  # rows: X B^T (B symmetric)
        return jax.vmap(fa, in_axes=1, out_axes=1)(Y).reshape(-1)

    def matvec(self, v):
        return self._apply(self.A.matvec, self.B.matvec, v)

    def prepare(self):
        fa, fb = self.A.prepare(), self.B.prepare()
        return lambda v: self._apply(fa, fb, v)

    def diagonal(self):
        return jnp.outer(self.A.diagonal(), self.B.diagonal()).reshape(-1)


@pytree_operator
class SumOperator(LinearOperator):
    """:math:`A_1 + \\dots + A_m`; symmetric / PSD when every term is."""

    terms: tuple

    def __init__(self, terms: Sequence[LinearOperator]):
        flat = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumOperator) else (as_operator(t),))
        if not flat:
            raise ValueError("SumOperator needs at least one term")
        if any(t.size != flat[0].size for t in flat):
            raise ValueError(f"cannot add operators of shapes {[t.shape for t in flat]}")
        _set(self, terms=tuple(flat))

    size = property(lambda self: self.terms[0].size)
    dtype = property(lambda self: jnp.result_type(*[t.dtype for t in self.terms]))
    tags = property(lambda self: _tags_of_all(self.terms))

    def matvec(self, v):
        return self._sum([t.matvec for t in self.terms], v)

    def prepare(self):
        fns = [t.prepare() for t in self.terms]
        return lambda v: self._sum(fns, v)

    @staticmethod
    def _sum(fns, v):
        out = fns[0](v)
        for fn in fns[1:]:
            out = out + fn(v)
        return out

    def diagonal(self):
        return sum((t.diagonal() for t in self.terms[1:]), self.terms[0].diagonal())


@pytree_operator
class ScaledOperator(LinearOperator):
    """:math:`c\\,A` for a real scalar ``c`` (a leaf); PSD when :math:`A` is PSD and ``c >= 0`` (concrete)."""

    scale: jax.Array
    op: LinearOperator
    nonnegative: bool = static_field()

    def __init__(self, scale, op: LinearOperator):
        op = as_operator(op)
        scale = _real_array("scale", scale)
        if scale.ndim != 0:
            raise ValueError(f"scale must be a scalar, got shape {tuple(scale.shape)}")
        _set(self, scale=scale.astype(op.dtype), op=op, nonnegative=_nonnegative(scale))

    size = property(lambda self: self.op.size)
    dtype = property(lambda self: self.op.dtype)
    tags = property(lambda self: self.op.tags if self.nonnegative else self.op.tags & _SYM)

    def matvec(self, v):
        return self.scale * self.op.matvec(v)

    def prepare(self):
        fn = self.op.prepare()
        return lambda v: self.scale * fn(v)

    def diagonal(self):
        return self.scale * self.op.diagonal()


@pytree_operator
class CongruenceOperator(LinearOperator):
    """Congruence :math:`D A D` with :math:`D = \\operatorname{diag}(d)` (e.g. a Jacobi scaling).

    ``d`` is a leaf, so a new scaling reuses compiled solvers. A congruence keeps
    symmetry and positive semidefiniteness, so the tags are those of :math:`A`; for
    nonzero ``d`` it keeps the inertia (Sylvester), not the eigenvalues.
    """

    op: LinearOperator
    scale: jax.Array

    def __init__(self, op: LinearOperator, scale):
        op = as_operator(op)
        scale = _real_array("scale", scale).astype(op.dtype)
        if scale.shape != (op.size,):
            raise ValueError(
                f"scale must have shape ({op.size},) to match the operator, got {tuple(scale.shape)}"
            )
        _set(self, op=op, scale=scale)

    size = property(lambda self: self.op.size)
    dtype = property(lambda self: self.op.dtype)
    tags = property(lambda self: self.op.tags)

    def matvec(self, v):
        return self.scale * self.op.matvec(self.scale * v)

    def prepare(self):
        mv, s = self.op.prepare(), self.scale
        return lambda v: s * mv(s * v)

    def diagonal(self):
        return self.scale**2 * self.op.diagonal()


@pytree_operator
class FunctionOperator(LinearOperator):
    """Wrap a matvec ``fn(v)`` on vectors of length ``n`` (symmetric unless ``tags`` says otherwise).

    ``fn`` is static: pass the same function object to reuse compiled code. Its
    output shape is checked once, abstractly (``jax.eval_shape``), at construction.
    ``tags`` declares what the caller knows, e.g. ``{"symmetric", "psd"}``.
    """

    fn: Callable = static_field()
    n: int = static_field()
    dtype: Any = static_field()
    declared_tags: frozenset = static_field()

    def __init__(self, fn: Callable[[jax.Array], jax.Array], n: int, dtype=None, *, tags=(SYMMETRIC,)):
        if not callable(fn):
            raise TypeError("fn must be callable v -> A v")
        n = check_positive_int("n", n)
        dtype = _real_dtype("dtype", dtype)
        tags = frozenset(tags)
        if not tags <= _SYM_PSD:
            raise ValueError(f"tags must be a subset of {sorted(_SYM_PSD)}, got {sorted(tags)}")
        check_matvec_output("FunctionOperator", fn, n, dtype)
        _set(self, fn=fn, n=n, dtype=dtype, declared_tags=tags | (_SYM if PSD in tags else frozenset()))

    size = property(lambda self: self.n)
    tags = property(lambda self: self.declared_tags)

    def matvec(self, v):
        return self.fn(v)


def as_operator(a) -> LinearOperator:
    """Return ``a`` if it is an operator, else wrap a square array in :class:`DenseOperator`."""
    if isinstance(a, LinearOperator):
        return a
    if hasattr(a, "shape") or isinstance(a, (list, tuple)):
        return DenseOperator(a)
    raise TypeError(f"expected a LinearOperator or a square matrix, got {type(a).__name__}")

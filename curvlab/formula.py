"""Safe parsing of user-typed 2-D formulas such as ``x**2*y + sin(y)``.

The text is parsed with :func:`ast.parse` (``mode="eval"``) and the tree is
walked node by node: only whitelisted node types become closures over
``jax.numpy`` functions. The user's text is **never** passed to ``eval``,
``exec`` or ``compile``, names are looked up only in a fixed table, and
anything outside the grammar raises :class:`FormulaError` (a ``ValueError``)
with a message meant for the person who typed it.

Grammar
-------
* numbers: ``2``, ``0.5``, ``1e-3`` (finite, magnitude at most ``1e12``);
* variables ``x`` and ``y``; constants ``pi`` and ``e``;
* ``+ - * / **`` and unary ``+ -``; ``^`` also means power (``x^2`` is
  ``x**2``, with the precedence of ``**``: ``-x^2 = -(x^2)``, ``2^3^2 = 2^9``);
* superscript powers as written in labels: ``x²`` is ``x**2``, ``x⁻¹`` is ``x**(-1)``,
  ``x¹⁰`` is ``x**10`` (digits ``⁰¹²³⁴⁵⁶⁷⁸⁹`` with an optional leading ``⁺``/``⁻``, binding like
  ``**``); a name, number or ``(`` right after a superscript multiplies, as in writing
  (``x²y`` is ``x**2*y``, ``x²(y + 1)`` is ``x**2*(y + 1)``);
* parentheses; calls of the functions in :data:`ALLOWED_FUNCTIONS`
  (``min``/``max``/``atan2`` take two arguments, the others one);
* at most :data:`MAX_LENGTH` characters and :data:`MAX_DEPTH` levels of nesting;
* a cost budget on powers with a variable exponent (``x^y``, ``x^x``): at most
  :data:`MAX_VARIABLE_POWERS` of them and towers at most :data:`MAX_POWER_TOWER`
  high. Their derivatives are what make compilation slow: a 195-character tower
  product ``(x^x^...^x)*(y^y^...^y)`` with 47 levels each took 23 s to compile its
  Hessian, 8 levels 0.5 s.

Evaluation follows IEEE arithmetic: ``log(-1)`` is NaN and ``1/0`` is
infinite rather than an error. The function keeps the dtype of its input
(constants are weakly typed), so a float32 point gives a float32 value.

Examples
--------
>>> import jax.numpy as jnp
>>> f = parse_formula("x^2*y + sin(y)")
>>> round(float(f(jnp.array([1.0, 0.0]))), 6)
0.0
>>> round(float(parse_formula("x²y + sin(y)")(jnp.array([2.0, 1.0]))), 6)  # 4 + sin 1
4.841471
>>> parse_formula("z + 1")
Traceback (most recent call last):
...
curvlab.formula.FormulaError: unknown name 'z': use x and y (constants: pi, e)
"""

from __future__ import annotations

import ast
import math
import re
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "FormulaError",
    "parse_formula",
    "describe_grammar",
    "ALLOWED_FUNCTIONS",
    "ALLOWED_NAMES",
    "MAX_LENGTH",
    "MAX_DEPTH",
    "MAX_VARIABLE_POWERS",
    "MAX_POWER_TOWER",
    "MAX_LITERAL",
]

#: Longest accepted formula, in characters.
MAX_LENGTH = 500
#: Deepest accepted nesting of the expression tree.
MAX_DEPTH = 50
#: Most powers with a non-constant exponent in one formula (compile-cost budget).
MAX_VARIABLE_POWERS = 24
#: Highest tower of powers with non-constant exponents, as in ``x^x^x`` (compile-cost budget).
MAX_POWER_TOWER = 8
#: Largest accepted magnitude of a numeric literal.
MAX_LITERAL = 1e12


class FormulaError(ValueError):
    """A formula outside the grammar; the message is written for the user."""


def _sigmoid(a):
    return jax.nn.sigmoid(a)


# name -> (function, number of arguments)
_FUNCTIONS: dict[str, tuple[Callable, int]] = {
    "sin": (jnp.sin, 1),
    "cos": (jnp.cos, 1),
    "tan": (jnp.tan, 1),
    "exp": (jnp.exp, 1),
    "log": (jnp.log, 1),
    "log1p": (jnp.log1p, 1),
    "expm1": (jnp.expm1, 1),
    "sqrt": (jnp.sqrt, 1),
    "abs": (jnp.abs, 1),
    "tanh": (jnp.tanh, 1),
    "sinh": (jnp.sinh, 1),
    "cosh": (jnp.cosh, 1),
    "arctan": (jnp.arctan, 1),
    "atan": (jnp.arctan, 1),
    "arcsin": (jnp.arcsin, 1),
    "asin": (jnp.arcsin, 1),
    "arccos": (jnp.arccos, 1),
    "acos": (jnp.arccos, 1),
    "sigmoid": (_sigmoid, 1),
    "min": (jnp.minimum, 2),
    "max": (jnp.maximum, 2),
    "atan2": (jnp.arctan2, 2),
    "arctan2": (jnp.arctan2, 2),
}

#: Function name -> number of arguments (read-only).
ALLOWED_FUNCTIONS = types.MappingProxyType({k: n for k, (_, n) in _FUNCTIONS.items()})

_CONSTANTS = {"pi": math.pi, "e": math.e}
_VARIABLES = ("x", "y")
#: Names a formula may use besides function names.
ALLOWED_NAMES = _VARIABLES + tuple(_CONSTANTS)

_BINOPS: dict[type, Callable] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: jnp.divide(a, b),  # never a Python ZeroDivisionError on literals
    ast.Pow: lambda a, b: jnp.power(a, b),
}

_OP_SYMBOLS = {
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
    ast.Invert: "~",
    ast.Not: "not",
}

# friendly names for node types outside the grammar
_NODE_NAMES = {
    ast.Attribute: "attribute access (a.b)",
    ast.Subscript: "indexing (a[...])",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Compare: "comparisons (<, ==, ...)",
    ast.BoolOp: "boolean operators (and, or)",
    ast.IfExp: "conditional expressions (a if c else b)",
    ast.Starred: "starred arguments (*a)",
    ast.List: "lists",
    ast.Tuple: "tuples (a, b)",
    ast.Set: "sets",
    ast.Dict: "dictionaries",
    ast.JoinedStr: "strings",
    ast.FormattedValue: "strings",
    ast.NamedExpr: "assignment (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}


def describe_grammar() -> str:
    """Plain-text help on what a formula may contain (for the explorer's help box)."""
    one = sorted(k for k, n in ALLOWED_FUNCTIONS.items() if n == 1)
    two = sorted(k for k, n in ALLOWED_FUNCTIONS.items() if n == 2)
    return (
        "A formula in x and y, e.g. x^2*y + sin(y), x²y + sin(y) or (1 - x)**2 + 100*(y - x**2)**2.\n"
        "Operators: + - * / and ** or ^ or superscripts (x², x⁻¹) for powers (-x^2 means -(x^2)); "
        "parentheses.\n"
        "Constants: pi, e, and numbers such as 2, 0.5, 1e-3 "
        f"(at most {MAX_LITERAL:.0e} in magnitude).\n"
        f"Functions of one argument: {', '.join(one)}.\n"
        f"Functions of two arguments: {', '.join(two)}.\n"
        f"At most {MAX_LENGTH} characters and {MAX_DEPTH} levels of nesting. "
        "Nothing else (no attributes, indexing, comparisons, strings or other names) is accepted."
    )


_SUPERSCRIPTS = {"⁰": "0", "¹": "1", "²": "2", "³": "3", "⁴": "4", "⁵": "5", "⁶": "6", "⁷": "7",
                 "⁸": "8", "⁹": "9", "⁺": "+", "⁻": "-"}  # fmt: skip
_SUPERSCRIPT_RUN = re.compile("[" + "".join(_SUPERSCRIPTS) + "]+")


def _expand_superscripts(text: str) -> str:
    """``x²y`` -> ``x**(2)*y``: each run of superscripts becomes a parenthesized power.

    A run is an optional sign and at least one digit; a name, number or ``(`` right after it
    multiplies (juxtaposition after a power, as in written formulas). Plain string rewriting
    before :func:`ast.parse`: the result is checked by the same whitelist as typed text.
    """

    def power(match: re.Match) -> str:
        run = "".join(_SUPERSCRIPTS[c] for c in match.group())
        if not re.fullmatch(r"[+-]?[0-9]+", run):
            raise FormulaError(
                f"superscript {match.group()!r} at column {match.start() + 1} is not a power: use digits "
                "with an optional leading ⁻ (x², x⁻¹)"
            )
        rest = text[match.end() :]
        nxt = rest[:1]
        times = "*" if nxt and (nxt.isalnum() or nxt in "_(.") else ""
        return f"**({run}){times}"

    return _SUPERSCRIPT_RUN.sub(power, text)


def _depth(tree: ast.AST) -> int:
    """Depth of the expression tree, iteratively (no recursion on untrusted input)."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)):
                continue
            stack.append((child, d + 1))
    return deepest


def _is_constant(node: ast.AST) -> bool:
    """True if the subtree mentions neither ``x`` nor ``y`` (own walk: ``ast.walk`` imports at call time)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Name) and n.id in _VARIABLES:
            return False
        stack.extend(ast.iter_child_nodes(n))
    return True


def _check_cost(tree: ast.AST) -> None:
    """Refuse formulas whose Hessian would take long to compile (variable-exponent powers).

    Iterative post-order walk: ``tower[node]`` is the height of the tallest tower of
    variable-exponent powers in the subtree.
    """
    count, tower, order, stack = 0, {}, [], [tree]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(ast.iter_child_nodes(node))
    for node in reversed(order):
        below = max((tower.get(id(c), 0) for c in ast.iter_child_nodes(node)), default=0)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and not _is_constant(node.right):
            count += 1
            below += 1
        tower[id(node)] = below
    height = tower.get(id(tree), 0)
    if count > MAX_VARIABLE_POWERS or height > MAX_POWER_TOWER:
        raise FormulaError(
            f"formula too costly to differentiate: {count} powers with a variable exponent (at most "
            f"{MAX_VARIABLE_POWERS}) in towers up to {height} high (at most {MAX_POWER_TOWER}); "
            "compiling the Hessian of such towers takes tens of seconds. Use fewer x^y-style powers"
        )


def _where(node: ast.AST) -> str:
    col = getattr(node, "col_offset", None)
    return f" (at column {col + 1})" if isinstance(col, int) else ""


def _build(node: ast.AST) -> Callable:
    """Closure ``(x, y) -> value`` for a whitelisted node; FormulaError otherwise."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                raise FormulaError(f"strings are not allowed in a formula{_where(node)}")
            if isinstance(value, complex):
                raise FormulaError(f"complex numbers are not allowed{_where(node)}")
            raise FormulaError(f"{value!r} is not allowed in a formula: use numbers{_where(node)}")
        too_large = f"a number is too large{_where(node)} (at most {MAX_LITERAL:.0e} in magnitude)"
        if isinstance(value, int) and abs(value) > MAX_LITERAL:
            raise FormulaError(too_large)
        number = float(value)
        if not math.isfinite(number) or abs(number) > MAX_LITERAL:
            raise FormulaError(too_large)
        return lambda x, y: number
    if isinstance(node, ast.Name):
        name = node.id
        if name == "x":
            return lambda x, y: x
        if name == "y":
            return lambda x, y: y
        if name in _CONSTANTS:
            c = _CONSTANTS[name]
            return lambda x, y: c
        if name in _FUNCTIONS:
            raise FormulaError(f"{name} is a function: call it, e.g. {name}(x)")
        shown = name if len(name) <= 30 else name[:30] + "..."
        raise FormulaError(f"unknown name {shown!r}: use x and y (constants: pi, e)")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            sym = _OP_SYMBOLS.get(type(node.op), type(node.op).__name__)
            raise FormulaError(f"operator '{sym}' is not allowed{_where(node)}: use + - * / ** ^")
        left, right = _build(node.left), _build(node.right)
        return lambda x, y: op(left(x, y), right(x, y))
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            inner = _build(node.operand)
            return lambda x, y: -inner(x, y)
        if isinstance(node.op, ast.UAdd):
            return _build(node.operand)
        sym = _OP_SYMBOLS.get(type(node.op), type(node.op).__name__)
        raise FormulaError(f"operator '{sym}' is not allowed{_where(node)}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            if isinstance(node.func, ast.Attribute):
                raise FormulaError(f"attribute access is not allowed{_where(node)}: call functions by name")
            raise FormulaError(f"only named functions can be called{_where(node)}")
        name = node.func.id
        if name not in _FUNCTIONS:
            shown = name if len(name) <= 30 else name[:30] + "..."
            raise FormulaError(f"unknown function {shown!r}; allowed: {', '.join(sorted(ALLOWED_FUNCTIONS))}")
        if node.keywords:
            raise FormulaError(f"keyword arguments are not allowed in {name}(...)")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise FormulaError(f"starred arguments are not allowed in {name}(...)")
        fn, nargs = _FUNCTIONS[name]
        if len(node.args) != nargs:
            plural = "argument" if nargs == 1 else "arguments"
            raise FormulaError(f"{name} takes {nargs} {plural}, got {len(node.args)}")
        args = [_build(a) for a in node.args]
        if nargs == 1:
            (a0,) = args
            return lambda x, y: fn(a0(x, y))
        a0, a1 = args
        return lambda x, y: fn(a0(x, y), a1(x, y))
    what = _NODE_NAMES.get(type(node), f"'{type(node).__name__}' expressions")
    raise FormulaError(f"not allowed in a formula: {what}{_where(node)}")


def parse_formula(text: str) -> Callable[[jax.Array], jax.Array]:
    """Parse a formula in ``x`` and ``y`` into a jittable ``f(xy)``.

    Parameters
    ----------
    text : str
        The formula; see the module docstring or :func:`describe_grammar`.

    Returns
    -------
    callable
        ``f(xy)`` taking a length-2 array ``[x, y]`` and returning a scalar of
        its floating dtype; differentiable with ``jax.grad``/``jax.hessian``
        and usable under ``jax.jit``/``jax.vmap``. It carries the source as
        ``f.formula``.

    Raises
    ------
    FormulaError
        For text outside the grammar (a ``ValueError``); the message says why.
    TypeError
        If ``text`` is not a string.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> f = parse_formula("(1 - x)^2 + 100*(y - x^2)^2")
    >>> jax.grad(f)(jnp.array([1.0, 1.0])).tolist()
    [0.0, 0.0]
    """
    if not isinstance(text, str):
        raise TypeError(f"formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula too long: {len(text)} characters (at most {MAX_LENGTH})")
    if not text.strip():
        raise FormulaError("empty formula: type an expression in x and y, e.g. x^2 + y^2")
    if "\x00" in text:
        raise FormulaError("the formula contains a null character")
    source = _expand_superscripts(text.strip()).replace("^", "**")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        where = f" at column {err.offset}" if err.offset else ""
        raise FormulaError(f"syntax error{where}: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise FormulaError(f"formula too deeply nested (at most {MAX_DEPTH} levels)") from None
    if _depth(tree.body) > MAX_DEPTH:
        raise FormulaError(f"formula too deeply nested (at most {MAX_DEPTH} levels)")
    _check_cost(tree.body)
    body = _build(tree.body)

    def f(xy):
        xy = jnp.asarray(xy)
        if xy.shape != (2,):
            raise ValueError(f"xy must have shape (2,), got {xy.shape}")
        if not jnp.issubdtype(xy.dtype, jnp.floating):
            xy = xy.astype(jnp.result_type(float))
        x, y = xy[0], xy[1]
        return jnp.zeros_like(x) + body(x, y)

    f.formula = text
    f.__name__ = "formula"
    f.__qualname__ = "formula"
    f.__doc__ = f"f(xy) for the formula {text!r}"
    return f

"""curvlab.formula: the whitelisted-AST formula parser."""

import ast
import builtins
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from curvlab.formula import (
    ALLOWED_FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    FormulaError,
    describe_grammar,
    parse_formula,
)

POINT = jnp.array([0.7, -1.3])

KNOWN = [
    ("x^2*y + sin(y)", lambda x, y: x**2 * y + jnp.sin(y)),
    ("(1 - x)**2 + 100*(y - x**2)**2", lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2),
    ("(x^2 + y - 11)^2 + (x + y^2 - 7)^2", lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2),
    ("-x^2", lambda x, y: -(x**2)),
    ("2^3^2", lambda x, y: 2.0 ** (3.0**2)),
    ("exp(-x)*cos(pi*y) + e", lambda x, y: jnp.exp(-x) * jnp.cos(jnp.pi * y) + jnp.e),
    ("log1p(x^2) + expm1(y/3) - sqrt(abs(y))",
     lambda x, y: jnp.log1p(x**2) + jnp.expm1(y / 3) - jnp.sqrt(jnp.abs(y))),
    ("tanh(x)*sinh(y)/cosh(x)", lambda x, y: jnp.tanh(x) * jnp.sinh(y) / jnp.cosh(x)),
    ("atan(x) + arctan(y) + arcsin(x) + acos(x/2)", lambda x, y: 2 * 0 + jnp.arctan(x) + jnp.arctan(y)
     + jnp.arcsin(x) + jnp.arccos(x / 2)),
    ("sigmoid(x*y) + min(x, y) * max(x, y) + atan2(y, x)", lambda x, y: jax.nn.sigmoid(x * y)
     + jnp.minimum(x, y) * jnp.maximum(x, y) + jnp.arctan2(y, x)),
    ("+x - -y", lambda x, y: x + y),
    ("3", lambda x, y: 3.0 + 0 * x),
    ("1/x", lambda x, y: 1 / x),
]  # fmt: skip


@pytest.mark.parametrize("text,ref", KNOWN, ids=[k for k, _ in KNOWN])
def test_known_formulas_match_jnp(text, ref):
    f = parse_formula(text)
    expected = ref(POINT[0], POINT[1])
    np.testing.assert_allclose(float(f(POINT)), float(expected), rtol=1e-13)
    np.testing.assert_allclose(float(jax.jit(f)(POINT)), float(expected), rtol=1e-13)
    g = jax.grad(f)(POINT)
    g_ref = jax.grad(lambda p: ref(p[0], p[1]))(POINT)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-12, atol=1e-14)
    H = jax.hessian(f)(POINT)
    H_ref = jax.hessian(lambda p: ref(p[0], p[1]))(POINT)
    np.testing.assert_allclose(np.asarray(H), np.asarray(H_ref), rtol=1e-12, atol=1e-13)


def test_caret_is_power_with_power_precedence():
    f = parse_formula("x^2 + 1")
    assert float(f(jnp.array([3.0, 0.0]))) == 10.0  # Python's xor precedence would give 3 ^ 3
    assert float(parse_formula("-x^2")(jnp.array([3.0, 0.0]))) == -9.0


def test_keeps_input_dtype_and_vmaps():
    f = parse_formula("x^2*y + sin(y) + pi")
    out = f(jnp.array([1.0, 2.0], jnp.float32))
    assert out.dtype == jnp.float32 and out.shape == ()
    pts = jnp.array([[1.0, 2.0], [0.5, -1.0], [0.0, 0.0]])
    vals = jax.vmap(f)(pts)
    np.testing.assert_allclose(np.asarray(vals), [f(p) for p in pts], rtol=1e-15)
    assert parse_formula("x + y")(jnp.array([1, 2])).dtype == jnp.result_type(float)


def test_ieee_results_instead_of_errors():
    assert math.isnan(float(parse_formula("log(x)")(jnp.array([-1.0, 0.0]))))
    assert math.isinf(float(parse_formula("1/x")(jnp.array([0.0, 0.0]))))
    assert math.isinf(float(parse_formula("10**10**10")(POINT)))


def test_hvp_of_formula_matches_dense_hessian():
    from curvlab._hvp import hvp

    f = parse_formula("x^2*y + sin(y)")
    x = jnp.array([1.0, 0.5])
    H = np.array([[2 * 0.5, 2 * 1.0], [2 * 1.0, -np.sin(0.5)]])
    for v in (jnp.array([1.0, 0.0]), jnp.array([0.3, -0.8])):
        np.testing.assert_allclose(np.asarray(hvp(f, x, v)), H @ np.asarray(v), rtol=1e-13)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("z + 1", "unknown name 'z'"),
        ("x.real", "attribute access"),
        ("__import__('os')", "unknown function '__import__'"),
        ("open('f')", "unknown function 'open'"),
        ("x.__class__", "attribute access"),
        ("().__class__.__bases__[0]", "not allowed"),
        ("sin.__globals__", "attribute access"),
        ("np.sin(x)", "attribute access"),
        ("x[0]", "indexing"),
        ("lambda: 1", "lambda"),
        ("[x for x in y]", "comprehensions"),
        ("x < y", "comparisons"),
        ("x and y", "boolean"),
        ("x if y else 1", "conditional"),
        ("'abc'", "strings"),
        ("f'{x}'", "strings"),
        ("1j", "complex"),
        ("True", "use numbers"),
        ("None", "use numbers"),
        ("x // 2", "operator '//'"),
        ("x % 2", "operator '%'"),
        ("x @ y", "operator '@'"),
        ("~x", "operator '~'"),
        ("not x", "operator 'not'"),
        ("x, y", "tuples"),
        ("sin(x, y)", "sin takes 1 argument, got 2"),
        ("min(x)", "min takes 2 arguments, got 1"),
        ("sin(x=1)", "keyword arguments"),
        ("sin(*x)", "starred"),
        ("sin", "is a function"),
        ("(x := 1)", "assignment"),
        ("1e400", "too large"),
        ("1" * 20, "too large"),
        ("", "empty formula"),
        ("   ", "empty formula"),
        ("x +", "syntax error"),
        ("import os", "syntax error"),
        ("x; y", "syntax error"),
        ("x\x00", "null"),
    ],
)
def test_rejections_have_user_messages(text, fragment):
    with pytest.raises(FormulaError, match=None) as info:
        parse_formula(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_limits():
    ok = "x" + "+x" * ((MAX_LENGTH - 1) // 2 - 1)
    assert len(ok) <= MAX_LENGTH
    with pytest.raises(FormulaError, match="too long"):
        parse_formula("x" + " " * MAX_LENGTH)
    with pytest.raises(FormulaError, match="nested"):
        parse_formula("-" * (MAX_DEPTH + 5) + "x")
    with pytest.raises(FormulaError, match="nested"):
        parse_formula("sin(" * 60 + "x" + ")" * 60)
    parse_formula("-" * (MAX_DEPTH - 2) + "x")  # just inside the limit
    with pytest.raises(FormulaError):
        parse_formula("(" * 250 + "x" + ")" * 249)  # unbalanced and deep: parser error, not a crash
    with pytest.raises(TypeError, match="string"):
        parse_formula(3)


def test_grammar_help_lists_every_function():
    text = describe_grammar()
    for name in ALLOWED_FUNCTIONS:
        assert name in text
    assert "^" in text and str(MAX_LENGTH) in text


# ---------------------------------------------------------------------------
# fuzzing: accepted -> evaluates to a float; otherwise FormulaError, and never
# any call of eval/exec/compile/open or import during parsing
# ---------------------------------------------------------------------------


class _Sentinel:
    def __init__(self, monkeypatch):
        self.calls = []
        real_import = builtins.__import__

        def spy(name):
            def hook(*args, **kwargs):
                self.calls.append(name)
                raise AssertionError(f"{name} called while parsing a formula")

            return hook

        def import_hook(name, *args, **kwargs):
            if name != "unicodedata":  # Python's parser normalizes non-ASCII identifiers with it
                self.calls.append(f"import {name}")
            return real_import(name, *args, **kwargs)

        real_compile = builtins.compile

        def compile_hook(source, filename, mode, flags=0, *args, **kwargs):
            # ast.parse compiles to an AST only (PyCF_ONLY_AST): that is parsing, not code
            if not flags & ast.PyCF_ONLY_AST:
                self.calls.append("compile to code")
                raise AssertionError("compile to code called while parsing a formula")
            return real_compile(source, filename, mode, flags, *args, **kwargs)

        for name in ("eval", "exec", "open", "breakpoint", "input"):
            monkeypatch.setattr(builtins, name, spy(name))
        monkeypatch.setattr(builtins, "compile", compile_hook)
        monkeypatch.setattr(builtins, "__import__", import_hook)


def _check(text, monkeypatch):
    with monkeypatch.context() as m:
        sentinel = _Sentinel(m)
        try:
            f = parse_formula(text)
        except FormulaError:
            f = None
        calls = list(sentinel.calls)
    assert calls == [], calls
    if f is not None:
        out = f(POINT)
        assert isinstance(float(out), float)
        assert out.shape == ()


NAMES = st.sampled_from(["x", "y", "pi", "e", "z", "os", "__import__", "open", "sin", "min", "__builtins__"])
CONSTANTS = st.one_of(
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.sampled_from([True, None, 1j, b"x"]),
)
BINOPS = st.sampled_from(
    [ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.FloorDiv, ast.BitXor, ast.MatMult]
)
UNOPS = st.sampled_from([ast.UAdd, ast.USub, ast.Not, ast.Invert])
FUNCS = st.sampled_from(sorted(ALLOWED_FUNCTIONS) + ["eval", "exec", "getattr", "__import__", "open"])


def _expr(children):
    return st.one_of(
        st.builds(lambda a, op, b: ast.BinOp(a, op(), b), children, BINOPS, children),
        st.builds(lambda op, a: ast.UnaryOp(op(), a), UNOPS, children),
        st.builds(
            lambda f, args: ast.Call(ast.Name(f, ast.Load()), args, []), FUNCS, st.lists(children, max_size=3)
        ),
        st.builds(lambda f, a: ast.Call(ast.Name(f, ast.Load()), [], [ast.keyword("x", a)]), FUNCS, children),
        st.builds(
            lambda a, attr: ast.Attribute(a, attr, ast.Load()),
            children,
            st.sampled_from(["real", "__class__"]),
        ),
        st.builds(lambda a, b: ast.Subscript(a, b, ast.Load()), children, children),
        st.builds(lambda a, b: ast.Compare(a, [ast.Lt()], [b]), children, children),
        st.builds(lambda a, b: ast.BoolOp(ast.And(), [a, b]), children, children),
        st.builds(lambda a, b, c: ast.IfExp(a, b, c), children, children, children),
        st.builds(lambda a, b: ast.Tuple([a, b], ast.Load()), children, children),
        st.builds(lambda a: ast.Lambda(ast.arguments([], [], None, [], [], None, []), a), children),
        st.builds(lambda a: ast.Call(ast.Attribute(a, "sin", ast.Load()), [a], []), children),
    )


EXPRS = st.recursive(
    st.one_of(st.builds(lambda n: ast.Name(n, ast.Load()), NAMES), st.builds(ast.Constant, CONSTANTS)),
    _expr,
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(EXPRS)
def test_fuzz_generated_expressions(monkeypatch, node):
    try:
        text = ast.unparse(ast.fix_missing_locations(ast.Expression(node)))
    except Exception:  # noqa: BLE001 - hypothesis built a tree ast cannot print
        assume(False)
    _check(text, monkeypatch)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80) | st.text(alphabet="xy+-*/^() .0123456789esinpcoqrtab,_[]'\"", max_size=80))
def test_fuzz_arbitrary_text(monkeypatch, text):
    _check(text, monkeypatch)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["x", "y", "+", "*", "-", "^", "(", ")", "sin(", "2", "."]), max_size=60))
def test_fuzz_token_soup_accepted_is_differentiable(tokens):
    text = "".join(tokens)
    try:
        f = parse_formula(text)
    except FormulaError:
        return
    g = jax.grad(f)(POINT)
    assert g.shape == (2,)


def test_power_towers_are_refused_before_compiling():
    """The 195-character tower product that stalled a kernel for 36-75 s is refused by the parser."""
    from curvlab.formula import MAX_POWER_TOWER, MAX_VARIABLE_POWERS

    tower = lambda v, d: "^".join([v] * d)
    text = f"({tower('x', 47)})*({tower('y', 47)})"
    assert len(text) < 200
    with pytest.raises(FormulaError, match="too costly to differentiate: 92 powers"):
        parse_formula(text)
    with pytest.raises(FormulaError, match=f"towers up to {MAX_POWER_TOWER + 1} high"):
        parse_formula(tower("x", MAX_POWER_TOWER + 2))  # d symbols make d - 1 powers
    with pytest.raises(FormulaError, match="powers with a variable exponent"):
        parse_formula("+".join(["x^y"] * (MAX_VARIABLE_POWERS + 1)))
    # at the budget: accepted and correct
    f = parse_formula(f"({tower('x', MAX_POWER_TOWER + 1)})*({tower('y', 3)})")
    assert np.isfinite(float(f(jnp.array([1.2, 0.7]))))
    np.testing.assert_allclose(float(parse_formula("x^y")(jnp.array([2.0, 3.0]))), 8.0)
    # constant exponents cost nothing: long polynomials stay accepted
    parse_formula("+".join(f"{i}*x^{i % 5}*y^(2^{i % 3})" for i in range(30)))


SUPERSCRIPTS = [
    ("x²", lambda x, y: x**2),
    ("x²y + sin(y)", lambda x, y: x**2 * y + jnp.sin(y)),  # the seed label, as the menus write it
    ("-x²", lambda x, y: -(x**2)),  # binds like **
    ("x⁻¹ + y³", lambda x, y: 1 / x + y**3),
    ("x¹⁰", lambda x, y: x**10),
    ("x²y²", lambda x, y: x**2 * y**2),
    ("x²(y + 1)", lambda x, y: x**2 * (y + 1)),
    ("(x + y)³ - 2*x² ", lambda x, y: (x + y) ** 3 - 2 * x**2),
    ("e^x²", lambda x, y: jnp.exp(x**2)),  # a superscript inside a power: e^(x²)
    ("x²*y", lambda x, y: x**2 * y),
]


@pytest.mark.parametrize(("text", "ref"), SUPERSCRIPTS)
def test_superscript_powers(text, ref):
    f = parse_formula(text)
    np.testing.assert_allclose(float(f(POINT)), float(ref(*POINT)), rtol=1e-12)
    expected = jax.hessian(lambda p: ref(p[0], p[1]))(POINT)
    np.testing.assert_allclose(jax.hessian(f)(POINT), expected, rtol=1e-10)


def test_widget_labels_parse():
    """Every 2-D function label of the explorers' menus is a formula the parser accepts."""
    from curvlab import problems
    from curvlab.widgets.curvature import PROBLEMS
    from curvlab.widgets.finite_difference import FUNCTIONS

    seed = problems.TWO_D_PROBLEMS["seed"]()
    for label in (PROBLEMS["seed"], FUNCTIONS["seed"]):
        text = label.split(" (")[0]
        np.testing.assert_allclose(float(parse_formula(text)(POINT)), float(seed.f(POINT)), rtol=1e-12)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("x⁻", "is not a power"), ("x²⁻¹", "is not a power"), ("x⁺", "is not a power"), ("²x", "syntax error")],
)
def test_bad_superscripts_are_rejected(text, fragment):
    with pytest.raises(FormulaError, match=fragment):
        parse_formula(text)


def test_superscripts_keep_the_whitelist_and_the_cost_budget():
    # rewriting never opens a door: what follows a superscript still goes through the whitelist
    with pytest.raises(FormulaError, match="unknown name"):
        parse_formula("x²__import__")
    with pytest.raises(FormulaError, match="attribute access"):
        parse_formula("(x²).real")
    # a superscript exponent is constant: free; a variable exponent above it still counts
    parse_formula("+".join(["x²y³"] * 30))
    from curvlab.formula import MAX_VARIABLE_POWERS

    with pytest.raises(FormulaError, match="powers with a variable exponent"):
        parse_formula("+".join(["x^y²"] * (MAX_VARIABLE_POWERS + 1)))


def test_division_by_zero_is_infinite_not_an_error():
    """``1/0`` parses (IEEE arithmetic); the explorer, not the parser, says why nothing is drawn."""
    assert math.isinf(float(parse_formula("1/0")(POINT)))

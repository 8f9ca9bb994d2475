"""Every test in the suite checks something: it asserts, expects an exception, or calls a helper that does.

A test that asserts nothing passes whatever the code does; this one reads every test module's syntax tree
and names such tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = sorted({*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("core/tests/**/test_*.py"),
                     *ROOT.glob("plugins/*/tests/**/test_*.py"), *ROOT.glob("examples/*/tests/**/test_*.py")})
#: Calls that check by themselves (pytest's and jsonschema's own, and the conformance kit's fixture); so does any
#: call named assert_* (torch.testing.assert_close, numpy.testing.assert_allclose).
CHECKING_CALLS = {"raises", "warns", "fail", "validate", "mistralrs_kit", "deprecated_call"}


def _called_names(node: ast.AST) -> set[str]:
    names = set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        target = call.func
        names.add(target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", ""))
    return names


def _checks_directly(node: ast.AST) -> bool:
    called = _called_names(node)
    return (any(isinstance(n, ast.Assert) for n in ast.walk(node)) or bool(called & CHECKING_CALLS)
            or any(name.startswith("assert_") for name in called))


def _unchecked_tests(tree: ast.Module) -> list[str]:
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    # Helpers (and fixtures) that check, directly or through other checking helpers of the module.
    checking = {name for name, f in functions.items() if _checks_directly(f)}
    changed = True
    while changed:
        changed = False
        for name, f in functions.items():
            if name not in checking and _called_names(f) & checking:
                checking.add(name)
                changed = True
    unchecked = []
    for name, f in functions.items():
        if not name.startswith("test_"):
            continue
        fixtures = {a.arg for a in f.args.args}
        if name in checking or fixtures & checking:
            continue
        unchecked.append(f"{name} (line {f.lineno})")
    return unchecked


def test_the_suite_has_test_files_to_read() -> None:
    assert len(TEST_FILES) > 40
    assert Path(__file__) in TEST_FILES


def test_every_test_function_checks_something() -> None:
    found = {}
    for path in TEST_FILES:
        unchecked = _unchecked_tests(ast.parse(path.read_text(encoding="utf-8")))
        if unchecked:
            found[str(path.relative_to(ROOT))] = unchecked
    assert not found, f"tests that assert nothing: {found}"


def test_the_reader_catches_a_test_that_asserts_nothing() -> None:
    tree = ast.parse("def helper(x):\n    assert x\n\n"
                     "def test_ok():\n    helper(1)\n\n"
                     "def test_raises():\n    with pytest.raises(ValueError):\n        int('x')\n\n"
                     "def test_close():\n    torch.testing.assert_close(1, 1)\n\n"
                     "def test_nothing():\n    compute(1)\n")
    assert _unchecked_tests(tree) == ["test_nothing (line 14)"]

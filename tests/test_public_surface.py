"""Plugins, in-repo or not, use only the core's public API: no module path with a private segment."""

from __future__ import annotations

import ast
from pathlib import Path

import mistralrs_torch

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted({*ROOT.glob("plugins/**/*.py"), *ROOT.glob("examples/*/**/*.py")})


def _private_core_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "mistralrs_torch" and any(part.startswith("_") for part in parts[1:]):
                found.append(f"line {node.lineno}: {name}")
    return found


def test_no_file_under_plugins_or_examples_imports_a_private_core_module() -> None:
    assert len(PLUGIN_FILES) > 40
    offenders = {str(p.relative_to(ROOT)): hits for p in PLUGIN_FILES
                 if (hits := _private_core_imports(p.read_text(encoding="utf-8")))}
    assert not offenders, f"plugins must use the public API (names in a package's __all__): {offenders}"


def test_the_reader_tells_private_from_public_and_from_a_plugins_own_modules() -> None:
    source = ("from mistralrs_torch.parallel._rendezvous import x\nimport mistralrs_torch._errors\n"
              "from mistralrs_torch.parallel import y\nfrom mistralrs_torch_ring._config import z\n"
              "from . import _local\n")
    assert _private_core_imports(source) == ["line 1: mistralrs_torch.parallel._rendezvous",
                                             "line 2: mistralrs_torch._errors"]


def test_what_plugins_need_is_exported() -> None:
    for name in ("FeatureManifest", "hookimpl", "OpInputError", "FallbackError", "LayerBackend", "QuantizedWeight",
                 "PreparedWeight", "kernel_for", "CheckResult", "Support", "CallSpec"):
        assert name in mistralrs_torch.__all__ and getattr(mistralrs_torch, name) is not None, name


SOURCES = sorted({*ROOT.glob("core/src/**/*.py"), *ROOT.glob("plugins/*/src/**/*.py")})
#: Files other branches are rewriting as this rule lands; their __all__ goes when those merge.
def _module_names(tree: ast.Module) -> tuple[set[str], list[str]]:
    """(names bound at module level, as a type checker sees them (``if TYPE_CHECKING:`` imports too), __all__)."""
    bound: set[str] = set()
    exported: list[str] = []
    body = list(tree.body)
    for node in body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            body += node.body
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound |= {t.id for t in targets if isinstance(t, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                exported = list(ast.literal_eval(node.value)) if node.value is not None else []
    return bound, exported


def test_only_package_init_files_declare_all() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES
                 if p.name != "__init__.py"
                 and "__all__" in _module_names(ast.parse(p.read_text()))[0]]
    assert not offenders, f"a private module repeats its package's __all__: {offenders}"


def test_type_checkers_see_every_public_name() -> None:
    """Every name in a package's __all__ is bound where a type checker looks, even when it loads lazily."""
    inits = [p for p in SOURCES if p.name == "__init__.py"]
    assert len(inits) > 15
    for path in inits:
        bound, exported = _module_names(ast.parse(path.read_text()))
        assert set(exported) <= bound, (str(path.relative_to(ROOT)), sorted(set(exported) - bound))

"""The core names no plugin: what it knows about a feature comes from that feature's manifest or probe hook.

The one exception is the seed's catalogue (features/seed_catalogue.json), a data file. This test reads every
string literal of the core's code (docstrings aside) and fails on a plugin's feature, entry-point, distribution
or import-package name, or one of the seed's package names, other than the built-in ``cpu``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mistralrs_torch import PluginManager
from mistralrs_torch.features import catalogue

CORE = Path(__file__).resolve().parents[1] / "core" / "src" / "mistralrs_torch"

#: Where the core uses torch's own vocabulary, which happens to spell a feature's name: (file, name) -> why.
TORCH_WORDS = {
    ("system/_probe.py", "cuda"): "torch.version.cuda and ATen's cuda folder: the CUDA runtime torch was built with",
    ("system/_gpu_facts.py", "cuda"): "the CUDA runtime fact the probe records from torch's build",
    ("doctor/_sections.py", "cuda"): "the label of that CUDA runtime fact",
    ("doctor/_verify.py", "cuda"): "torch's device type",
    ("testing/_verify.py", "cuda"): "torch's device type",
    ("parallel/_device_map.py", "cuda"): "torch's device type in a device-map example",
    ("generic/_sdpa.py", "cuda"): "torch's device type",
    ("generic/_sdpa.py", "cudnn"): "the name of torch's cuDNN SDPA kernel",
    ("system/_blas.py", "mkl"): "the BLAS name torch's build configuration reports",
    ("system/_schema.py", "cuda"): "TorchBuild's fields: how torch was built",
    ("system/_schema.py", "cudnn"): "TorchBuild's fields: how torch was built",
    ("system/_schema.py", "mkl"): "TorchBuild's fields: how torch was built",
    ("ops/_contract.py", "cuda"): "torch's device type, in CallSpec's field documentation",
    ("runtime/_measure.py", "cuda"): "torch's device type (a CUDA device needs a synchronize before the clock stops)",
    # Examples in error messages, in files being changed elsewhere.
    ("resolution/_selection.py", "cuda"): "an example of a feature list in a config-file error",
    ("resolution/_selection.py", "cudnn"): "an example of a feature list in a config-file error",
    ("runtime/_runtime.py", "cuda"): "an example of a feature list in Runtime.create's argument error",
    ("runtime/_runtime.py", "cudnn"): "an example of a feature list in Runtime.create's argument error",
    ("cli/_run.py", "cuda"): "an example of a feature list in `mistralrs run --features` help",
    ("cli/_run.py", "flash-attn"): "an example of a feature list in `mistralrs run --features` help",
}


def _plugin_names() -> set[str]:
    manager = PluginManager(environ={})
    names = {p.seed for p in catalogue().packages if p.distribution != "mistralrs-torch"}
    for installed in manager.features:
        if installed.manifest.name == "cpu":
            continue
        plugin = installed.plugin
        package = plugin.value.partition(":")[0].split(".")[0]
        names |= {installed.manifest.name, plugin.name, plugin.distribution, package}
    return names


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string literal but documentation (docstrings, a manifest field's ``_doc(...)``),
    and of every imported module name."""
    documentation = {id(node.body[0].value) for node in ast.walk(tree)
                     if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and node.body and isinstance(node.body[0], ast.Expr)
                     and isinstance(node.body[0].value, ast.Constant)}
    documentation |= {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Call)
                      and isinstance(node.func, ast.Name) and node.func.id == "_doc" for inner in ast.walk(node)}
    found = [(node.lineno, node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in documentation]
    found += [(node.lineno, alias.name) for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names]
    found += [(node.lineno, node.module) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    return found


def _hits(source: str, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, name, text) for each plugin name in the literals and imports of ``source``."""
    alternatives = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
    pattern = re.compile(rf"(?<![\w-])({alternatives})(?![\w-])")
    return [(line, name, text) for line, text in _literals(ast.parse(source)) for name in pattern.findall(text)]


def test_the_names_looked_for_are_every_in_repo_plugins() -> None:
    names = _plugin_names()
    assert {"cuda", "flash-attn-v3", "ring", "mistralrs-torch-mkl", "mistralrs_torch_nccl", "flash_attn",
            "mistralrs-cuda"} <= names
    assert "cpu" not in names and "mistralrs-torch" not in names


def test_the_core_names_no_plugin_outside_the_catalogue() -> None:
    names = _plugin_names()
    found = []
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE).as_posix()
        found += [f"{relative}:{line}: {name!r} in {text[:80]!r}"
                  for line, name, text in _hits(path.read_text(encoding="utf-8"), names)
                  if (relative, name) not in TORCH_WORDS]
    assert not found, "move this knowledge into the plugin's manifest or probe hook, or the catalogue:\n" + \
        "\n".join(found)


@pytest.mark.parametrize(("source", "name"), [
    ('LABELS = {"cudnn": "cuDNN"}', "cudnn"),
    ('message = f"install {dist} (mistralrs-torch-cuda)"', "mistralrs-torch-cuda"),
    ('if name == "flash-attn": pass', "flash-attn"),
    ('import mistralrs_torch_ring', "mistralrs_torch_ring"),
    ('from mistralrs_torch_metal._backend import mps_devices', "mistralrs_torch_metal"),
])
def test_the_check_catches_a_plugin_name(source: str, name: str) -> None:
    assert [hit[1] for hit in _hits(source, _plugin_names())] == [name]


def test_documentation_and_words_containing_a_name_are_not_hits() -> None:
    source = ('"""mentions cuda in a docstring"""\n'
              'def f():\n    """and nccl here"""\n    return "during string ring-buffer"\n'
              'x: int = field(default=0, metadata=_doc("at least this many GPUs (nccl: 2)"))\n')
    assert _hits(source, _plugin_names()) == []

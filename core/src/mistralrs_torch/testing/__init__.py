"""The conformance kit and verification engine for plugin authors.

``CONTRACT_CHECKS`` run without torch. ``run_kit`` (imports torch) also runs every
backend of the plugin's features on every case of every op it implements against
the float64 references, with the per-dtype ``TOLERANCES`` doctor uses too; the
references and ``compare`` are public so a plugin's own tests can judge its
kernels the same way.
"""

from typing import TYPE_CHECKING, Any

from mistralrs_torch.testing._contract import CONTRACT_CHECKS, PluginUnderTest

if TYPE_CHECKING:
    from mistralrs_torch.testing import _references as references
    from mistralrs_torch.testing._cases import OpCase
    from mistralrs_torch.testing._kit import VERDICT_EXIT_CODES, KitReport, KitResult, run_kit
    from mistralrs_torch.testing._verify import TOLERANCES, CaseResult, Tolerance, compare, run_case

__all__ = [
    "CONTRACT_CHECKS",
    "TOLERANCES",
    "VERDICT_EXIT_CODES",
    "CaseResult",
    "KitReport",
    "KitResult",
    "OpCase",
    "PluginUnderTest",
    "Tolerance",
    "compare",
    "references",
    "run_case",
    "run_kit",
]

# These import torch and numpy: loaded on first use, so `import mistralrs_torch.testing` stays light.
_LAZY = {
    "references": ("mistralrs_torch.testing._references", None),
    "OpCase": ("mistralrs_torch.testing._cases", "OpCase"),
    **{name: ("mistralrs_torch.testing._kit", name) for name in ("VERDICT_EXIT_CODES", "KitReport", "KitResult",
                                                                 "run_kit")},
    **{name: ("mistralrs_torch.testing._verify", name) for name in ("TOLERANCES", "CaseResult", "Tolerance",
                                                                    "compare", "run_case")},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        loaded = importlib.import_module(module)
        return loaded if attribute is None else getattr(loaded, attribute)
    raise AttributeError(f"module 'mistralrs_torch.testing' has no attribute {name!r}")

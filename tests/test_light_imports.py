"""`list`, `resolve` and `system` never import torch (nor numpy, nor the model runner's tokenizers, gguf and jinja2),
yet report what torch itself says."""

from __future__ import annotations

import json

import pytest

COMMANDS = [
    ["plugins", "list"],
    ["plugins", "list", "--json"],
    ["plugins", "resolve"],
    ["plugins", "resolve", "--json", "--system", "h100"],
    ["plugins", "list", "--system", "multi-gpu-8xh100", "--features", "nccl"],
    ["plugins", "system"],
    ["plugins", "system", "--json"],
    ["run", "--help"],
    ["serve", "--help"],
]

HEAVY = ("torch", "numpy", "tokenizers", "gguf", "jinja2", "starlette", "uvicorn")


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_cheap_commands_import_no_torch(run_python, args) -> None:
    result = run_python(f"""
        import sys
        from mistralrs_torch.cli import cli
        cli({args!r}, prog_name="mistralrs", standalone_mode=False)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        assert not heavy, heavy
        print("LIGHT-OK", file=sys.stderr)
        """)
    assert result.returncode == 0, result.stderr
    assert "LIGHT-OK" in result.stderr


def test_importing_mistralrs_imports_no_torch(run_python) -> None:
    result = run_python(f"""
        import sys
        import mistralrs_torch
        from mistralrs_torch import PluginManager, Selection, resolve
        manager = PluginManager()
        resolve(manager.features, manager.broken, Selection(), manager.probe_system(), {{}})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        assert not heavy, heavy
        """)
    assert result.returncode == 0, result.stderr


def test_a_bad_selection_also_stays_light(run_python) -> None:
    result = run_python("""
        import sys
        from mistralrs_torch import SelectionError
        from mistralrs_torch.cli import cli
        try:
            cli(["plugins", "resolve", "--system", "v100", "--features", "flash-attn"], standalone_mode=False)
        except Exception as exc:
            print(type(exc).__name__)
        assert "torch" not in sys.modules
        """)
    assert result.returncode == 0, result.stderr


def test_the_cheap_probe_agrees_with_torch_itself(run_python) -> None:
    result = run_python("""
        import json, sys
        from mistralrs_torch import PluginManager
        cheap = PluginManager(environ={}).probe_system()  # the core's facts and the plugins' (mkl's)
        assert "torch" not in sys.modules
        import torch
        print(json.dumps({
            "cheap": None if cheap.torch is None else {
                "version": cheap.torch.version, "cuda": cheap.torch.cuda, "hip": cheap.torch.hip,
                "mkl": cheap.torch.mkl, "mkldnn": cheap.torch.mkldnn, "cudnn": cheap.torch.cudnn},
            "cheap_mkl_library": "mkl" in cheap.libraries,
            "cheap_cuda_library": cheap.libraries.get("cuda"),
            "torch": {
                "version": str(torch.__version__), "cuda": torch.version.cuda, "hip": torch.version.hip,
                "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
                "cudnn": torch.backends.cudnn.is_available()},
        }))
        """)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["cheap"] == facts["torch"]
    if facts["torch"]["mkl"]:
        assert facts["cheap_mkl_library"]
    assert facts["cheap_cuda_library"] == facts["torch"]["cuda"]

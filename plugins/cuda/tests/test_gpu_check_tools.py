"""The GPU check's tools on this machine: wheel selection, marker evaluation, the scripts' guards, the benchmark's
clean exit without a GPU. (The check itself runs where a GPU is: scripts/gpu-check.)"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_loaded_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


wheels = _load(ROOT / "scripts" / "_gpu_wheels.py")
bench = _load(ROOT / "benchmarks" / "gpu_attention.py")


def test_floors_come_from_the_workspace_pyprojects_without_torch_or_members() -> None:
    found = wheels.floors(ROOT)
    assert {"pluggy", "click", "packaging", "numpy", "safetensors", "pytest", "jsonschema"} <= set(found)
    assert "torch" not in found and not any(name.startswith("mistralrs") for name in found)
    assert found["pytest"] == "8.0" and found["numpy"] == "1.24"


def test_markers_are_evaluated_for_the_gpu_machines_python_not_this_one() -> None:
    exported = ["numpy==2.2.6 ; python_full_version < '3.11'", "numpy==2.4.6 ; python_full_version == '3.11.*'",
                "numpy==2.5.5 ; python_full_version >= '3.12'", "colorama==0.4.6 ; sys_platform == 'win32'",
                "tomli==2.5.0 ; python_full_version < '3.11'",
                "typing-extensions==4.16.0 ; python_full_version < '3.13'",
                "pytest==9.2.0", ""]
    assert wheels.target_requirements(exported, "3.12", "x86_64") == ["numpy==2.5.5", "typing-extensions==4.16.0",
                                                                       "pytest==9.2.0"]
    assert wheels.target_requirements(exported, "3.13", "aarch64") == ["numpy==2.5.5", "pytest==9.2.0"]


def test_only_missing_or_too_old_distributions_are_installed() -> None:
    found = [Path(n) for n in ("numpy-2.5.5-cp312-cp312-manylinux_2_28_x86_64.whl", "pytest-9.2.0-py3-none-any.whl",
                               "typing_extensions-4.16.0-py3-none-any.whl", "attrs-26.1.0-py3-none-any.whl")]
    installed = {"numpy": "1.26.4", "pytest": "7.4.0", "typing-extensions": "4.12.2"}
    chosen, kept, upgrades = wheels.choose(found, {"numpy": "1.24", "pytest": "8.0"}, installed.get)
    assert [w.name.split("-")[0] for w in chosen] == ["attrs", "pytest"]
    assert kept == ["numpy 1.26.4", "typing-extensions 4.12.2"]  # torch's own numpy stays
    assert upgrades == ["pytest 7.4.0 -> 9.2.0 (the workspace needs >= 8.0)"]
    assert wheels.version_key("2.11.0+cu128") == (2, 11, 0)


@pytest.mark.parametrize("script", ["build-gpu-wheels", "gpu-check"])
def test_the_scripts_are_executable_bash(script: str) -> None:
    path = ROOT / "scripts" / script
    assert path.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, check=False).returncode == 0


def test_gpu_check_without_built_wheels_says_how_to_get_them(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gpu-check", tmp_path / "scripts" / "gpu-check")
    result = subprocess.run(["bash", str(tmp_path / "scripts" / "gpu-check")], capture_output=True, text=True,
                            timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")})
    assert result.returncode == 2
    assert "run scripts/build-gpu-wheels where the package registry is reachable" in result.stderr


def test_the_benchmark_exits_cleanly_without_a_gpu(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpu_attention: no GPU benchmark: ") and "NVIDIA GPU" in out


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5),
                                            ("NVIDIA GH200 480GB", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0),
                                            ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA L40S", 362.1),
                                            ("NVIDIA L4", 121.0), ("Tesla V100-SXM2-16GB", None)])
def test_peaks_are_found_by_the_most_specific_name(name: str, peak: float | None) -> None:
    assert bench.peak_tflops(name) == peak


def test_the_benchmark_table_shows_ratio_and_fraction_of_peak() -> None:
    rows = [{"op": "attention", "backend": "cuda-sdpa", "shape": "b8 s1024", "ms": 1.0, "tflops": 400.0,
             "of_peak": 400 / 989.4, "direct": "torch SDPA", "direct_tflops": 404.0, "ratio": 0.99},
            {"op": "attention", "backend": "flash-attn-v3", "skipped": "flash_attn_3 is not installed"}]
    text = bench.render(rows, "NVIDIA H100 80GB HBM3", 989.4)
    assert "dense bf16 peak: 989 TFLOP/s" in text
    assert "400.0      40%           404.0   0.99  torch SDPA" in text
    assert "flash-attn-v3       skipped: flash_attn_3 is not installed" in text


def test_the_gpu_step_fails_where_torch_sees_no_gpu_unless_rehearsing(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert wheels.main(["gpus"]) == 1
    assert capsys.readouterr().out.startswith("no CUDA GPU visible to torch (Python ")
    assert wheels.main(["gpus", "--rehearsal"]) == 0
    assert wheels.main(["gpus", "--bogus"]) == 2


def test_the_benchmarks_measuring_code_runs_end_to_end_on_the_cpu() -> None:
    # The GPU run is scarce: its code paths (kernel binding, direct counterparts, rows, table) run here on tiny
    # CPU shapes, so only the CUDA timing itself is new there.
    from mistralrs_torch.runtime import Runtime

    runtime = Runtime.create(features="none", environ={})
    rows = bench.bench_attention(runtime, ((1, 16),), 1, None, device="cpu", heads=2)
    rows += bench.bench_matmul(runtime, ((8, 16, 32),), 1, None, device="cpu")
    skipped = [r for r in rows if "skipped" in r]
    assert [(r["backend"], r["skipped"]) for r in skipped] == [
        ("cpu-native-attention", "cpu-native-attention does not implement attention")]
    rows = [r for r in rows if "skipped" not in r]
    assert [(r["op"], r["backend"], r["shape"]) for r in rows] == [("attention", "cpu-attention", "b1 s16"),
                                                                   ("matmul", "cpu-matmul", "8x32 @ 32x16")]
    assert all(r["ms"] > 0 and r["tflops"] > 0 for r in rows)
    assert rows[1]["direct"] == "torch.matmul" and rows[1]["ratio"] > 0 and "direct" not in rows[0]
    assert "cpu-matmul" in bench.render(rows, "cpu", None)


@pytest.mark.parametrize(("backend_name", "direct"), [("cuda-sdpa", "torch SDPA"),
                                                      ("cudnn-attention", "torch SDPA [cuDNN]"),
                                                      ("flash-attn-torch", "torch SDPA [flash]")])
def test_each_nvidia_backend_has_its_direct_counterpart(backend_name: str, direct: str) -> None:
    from types import SimpleNamespace

    found = bench._direct_attention(SimpleNamespace(name=backend_name))
    assert found is not None and found[0] == direct and callable(found[1])


@pytest.mark.parametrize("returns_tuple", [True, False])  # FA3 returns (out, lse), FA2 the output alone
def test_the_flash_packages_are_called_in_their_own_layout(returns_tuple: bool) -> None:
    from types import SimpleNamespace

    import torch

    seen = []

    def flash_attn_func(q, k, v, causal=False):
        seen.append((tuple(q.shape), causal))
        return (q * 2, None) if returns_tuple else q * 2

    module = SimpleNamespace(__name__="flash_attn_interface", flash_attn_func=flash_attn_func)
    name, call = bench._direct_attention(SimpleNamespace(name="flash-attn-v3", module=module))
    q = torch.ones(1, 4, 8, 16)  # (batch, heads, seq, head size) in, (batch, seq, heads, head size) to the package
    out = call(q, q, q)
    assert name == "flash_attn_interface.flash_attn_func" and seen == [((1, 8, 4, 16), True)]
    assert tuple(out.shape) == (1, 8, 4, 16)

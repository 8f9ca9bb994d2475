"""The library facts each plugin now probes itself (the core names no plugin): cuDNN, NCCL, MKL, Accelerate."""

from __future__ import annotations

from mistralrs_torch import PluginManager, load_system, probe_system
from mistralrs_torch.system import installed_version
from mistralrs_torch_accelerate import plugin as accelerate
from mistralrs_torch_cuda import plugin as cuda
from mistralrs_torch_cuda._manifest import CUDNN_WHEELS
from mistralrs_torch_mkl import plugin as mkl
from mistralrs_torch_nccl import plugin as nccl
from mistralrs_torch_nccl._manifest import NCCL_WHEELS


def _fact(name: str, version: str | None) -> dict[str, str]:
    return {} if version is None else {name: version}


def test_cudnn_is_the_wheel_of_torchs_cuda_line_and_only_with_a_torch_built_with_cudnn() -> None:
    assert cuda.mistralrs_probe_system(load_system("h100")) == _fact("cudnn", installed_version(*CUDNN_WHEELS))
    assert cuda.mistralrs_probe_system(load_system("epyc-cpu")) == {}  # its torch has no cuDNN


def test_nccl_is_the_nccl_wheel() -> None:
    assert nccl.mistralrs_probe_system(load_system("h100")) == _fact("nccl", installed_version(*NCCL_WHEELS))


def test_mkl_is_in_torchs_build_or_the_mkl_wheel() -> None:
    wheel = installed_version("mkl")
    assert mkl.mistralrs_probe_system(load_system("epyc-cpu")) == {"mkl": wheel or ""}  # PyPI's x86_64 torch has MKL
    assert mkl.mistralrs_probe_system(load_system("apple-m2")) == _fact("mkl", wheel)


def test_accelerate_is_looked_for_on_macos_only() -> None:
    assert accelerate.mistralrs_probe_system(load_system("xeon-cpu")) == {}


def test_the_core_alone_probes_none_of_them_and_the_plugins_add_them_here() -> None:
    core = probe_system(environ={})
    assert not {"cudnn", "nccl", "mkl", "accelerate"} & set(core.libraries)
    merged = PluginManager(environ={}).probe_system()
    expected = {**cuda.mistralrs_probe_system(core), **nccl.mistralrs_probe_system(core),
                **mkl.mistralrs_probe_system(core), **accelerate.mistralrs_probe_system(core)}
    assert {k: merged.libraries[k] for k in expected} == expected

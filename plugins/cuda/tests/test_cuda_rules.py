"""cuda and cudnn under simulated machines: resolution and doctor, with their exact messages.

Every rule is evaluated for machines that are not here (profiles, and
profiles edited into a CPU build of torch, an old driver, hidden GPUs), so it
holds on this CPU-only machine exactly as it would there.
"""

from __future__ import annotations

import dataclasses

import pytest

from mistralrs_torch import GPU, PluginManager, Selection, SelectionError, load_system, resolve
from mistralrs_torch.doctor import run_doctor
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch_cuda import plugin
from mistralrs_torch_cuda._checks import cuda_checks, torch_cuda_fix
from mistralrs_torch_cuda._facts import CudaFacts, cudnn_label, cudnn_version_number, parse_version

PROFILES = ("h100", "h100-fa2", "a100", "v100", "rtx4090-windows", "multi-gpu-8xh100", "apple-m2")
NVIDIA = ("h100", "h100-fa2", "a100", "v100", "rtx4090-windows", "multi-gpu-8xh100")
GPU_FIX = "check that `nvidia-smi` lists it and that CUDA_VISIBLE_DEVICES does not hide it"


def _resolve(system, *features: str, environ=None):
    manager = PluginManager(environ={})
    selection = Selection("explicit", features, "--features") if features else Selection()
    snapshot = load_system(system) if isinstance(system, str) else system
    return resolve(manager.features, manager.broken, selection, snapshot, dict(environ or {}))


def _edit(profile: str, *, drop: tuple[str, ...] = (), libraries: dict | None = None, **changes) -> SystemSnapshot:
    system = load_system(profile)
    kept = {k: v for k, v in system.libraries.items() if k not in drop}
    return dataclasses.replace(system, libraries={**kept, **(libraries or {})}, source=f"{profile} (edited)", **changes)


def _cpu_torch(profile: str) -> SystemSnapshot:
    system = load_system(profile)
    return _edit(profile, drop=("cuda",), torch=dataclasses.replace(system.torch, cuda=None, cudnn=False,
                                                                    version="2.11.0+cpu"))


def _checks(system: SystemSnapshot, active=None, environ=None) -> dict[str, tuple[str, str, str]]:
    if active is None:
        active = frozenset(_resolve(system).active)
    return {c.subject: (c.status, c.message, c.fix) for c in cuda_checks(active, system, environ or {})}


# -- resolution ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", NVIDIA)
def test_cuda_and_cudnn_are_active_on_every_nvidia_profile(profile: str) -> None:
    resolution = _resolve(profile)
    assert {"cuda", "cudnn"} <= set(resolution.active)
    assert resolution.status("cuda").manifest.paged_attention == "default"


def test_apple_m2_says_cuda_is_linux_and_windows_only() -> None:
    resolution = _resolve("apple-m2")
    assert resolution.status("cuda").reasons[0] == "cuda runs on Linux, Windows, not macOS: remove the cuda feature"
    assert resolution.status("cudnn").reasons[0] == "cudnn runs on Linux, Windows, not macOS: remove the cudnn feature"
    with pytest.raises(SelectionError) as caught:
        _resolve("apple-m2", "cuda")
    assert next(v.message for v in caught.value.violations) == "cuda runs on Linux, Windows, not macOS"


def test_a_cpu_build_of_torch_makes_cuda_unavailable_with_the_fix() -> None:
    resolution = _resolve(_cpu_torch("a100"))
    assert resolution.status("cuda").status == "unavailable"
    assert resolution.status("cuda").reasons[0] == (
        "CUDA not found: torch was built without CUDA: install a CUDA build of torch (on Linux x86_64, `pip install "
        "torch` from PyPI is one); nvcc is needed only to build kernels such as flash-attn")
    assert resolution.status("cudnn").reasons[0].startswith("requires cuda, which is unavailable here")


def test_no_visible_gpu_makes_cuda_unavailable_and_explicit_cuda_an_error() -> None:
    hidden = dataclasses.replace(load_system("a100"), gpus=())
    assert _resolve(hidden).status("cuda").reasons[0] == f"cuda needs an NVIDIA GPU; none is visible: {GPU_FIX}"
    with pytest.raises(SelectionError) as caught:
        _resolve(hidden, "cuda", "cudnn")
    assert {v.subject for v in caught.value.violations} >= {"cuda"}


def test_cudnn_without_the_library_is_unavailable_with_the_wheel_to_install() -> None:
    resolution = _resolve(_edit("a100", drop=("cudnn",)))
    assert resolution.status("cuda").status == "active"
    assert resolution.status("cudnn").reasons[0] == (
        "cuDNN not found: install the cuDNN wheel matching torch's CUDA (pip install nvidia-cudnn-cu12, or -cu13) and "
        "a torch built with cuDNN")


def test_cudnn_requires_cuda_when_selected_alone() -> None:
    with pytest.raises(SelectionError) as caught:
        _resolve("a100", "cudnn")
    assert any(v.subject == "cudnn" and "requires cuda" in v.message for v in caught.value.violations)


# -- doctor checks ------------------------------------------------------------------------------------------

def test_h100_doctor_checks() -> None:
    assert _checks(load_system("h100")) == {
        "cuda driver": ("ok", "the NVIDIA driver 570.124.06 supports CUDA 12.8, enough for torch's CUDA runtime 12.8",
                        ""),
        "nvcc": ("info", "nvcc is on PATH (needed only to build kernels such as flash-attn from source)", ""),
        "cudnn version": ("ok", "cuDNN 9.8.0.87 (9.8.0 as torch numbers it)", ""),
        "cudnn flags": ("info", "a runtime that binds cudnn sets torch.backends.cudnn.enabled=True and benchmark=True "
                                "(autotuned cuDNN algorithms)", ""),
    }


def test_v100_doctor_says_cudnn_attention_needs_ampere() -> None:
    checks = _checks(load_system("v100"))
    assert checks["cudnn attention"] == (
        "info",
        "Tesla V100-SXM2-16GB has compute capability 7.0; torch's cuDNN attention kernel needs 8.0 or newer, "
        "so attention runs on cuda-sdpa (cuDNN still serves torch's other cuDNN work, such as convolutions)",
        "",
    )
    assert checks["nvcc"][2] == "to build kernels: install the CUDA toolkit and put its bin folder on PATH"
    assert checks["cuda driver"][0] == "ok"  # driver 12.8 runs torch's CUDA 12.6


@pytest.mark.parametrize(
    ("profile", "fix"),
    [
        (
            "a100",
            "install a CUDA build of torch: pip install --force-reinstall torch (PyPI's Linux x86_64 wheels are CUDA "
            "builds), or pick a CUDA line at https://pytorch.org/get-started/locally/",
        ),
        (
            "rtx4090-windows",
            "install a CUDA build of torch: pip install --force-reinstall torch --index-url "
            "https://download.pytorch.org/whl/cu128 (or the cuXYZ line your driver supports, "
            "https://pytorch.org/get-started/locally/)",
        ),
    ],
)
def test_cpu_build_of_torch_with_a_gpu_is_a_warning_with_the_platforms_fix(profile: str, fix: str) -> None:
    system = _cpu_torch(profile)
    assert _checks(system)["torch build"] == (
        "warning",
        "torch 2.11.0+cpu is a CPU build (no CUDA): 1 NVIDIA GPU(s) are visible but mistralrs-torch-cuda is "
        "installed and cannot run cuda with it",
        fix,
    )
    assert torch_cuda_fix(system) == fix


def test_cpu_build_of_torch_without_a_gpu_is_information() -> None:
    system = dataclasses.replace(_cpu_torch("a100"), gpus=())
    status, message, _ = _checks(system)["torch build"]
    assert status == "info" and message == (
        "torch 2.11.0+cpu is a CPU build (no CUDA): mistralrs-torch-cuda is installed and cannot run cuda with it"
    )


def test_a_driver_for_an_older_cuda_major_is_an_error_while_cuda_is_active() -> None:
    old = _edit("a100", libraries={"cuda_driver": "11.8", "nvidia_driver": "520.61.05"})
    fix = (
        "update the NVIDIA driver to one that supports CUDA 12.8 (`nvidia-smi` shows the CUDA version a driver "
        "supports), or install a torch built for CUDA 11.8 or older"
    )
    message = (
        "the NVIDIA driver 520.61.05 supports CUDA 11.8 but torch was built for CUDA 12.8: CUDA driver version "
        "is insufficient for CUDA runtime version, so torch cannot initialise CUDA"
    )
    assert _checks(old)["cuda driver"] == ("error", message, fix)
    assert _checks(old, active=frozenset({"cpu"}))["cuda driver"] == ("warning", message, fix)


def test_a_driver_for_an_older_cuda_minor_is_a_warning() -> None:
    status, message, _ = _checks(_edit("a100", libraries={"cuda_driver": "12.2"}))["cuda driver"]
    assert status == "warning"
    assert message == (
        "the NVIDIA driver 570.124.06 supports CUDA 12.2, older than torch's CUDA runtime 12.8: torch "
        "runs through CUDA minor-version compatibility, but kernels that need the newer driver (PTX "
        "compiled at run time) fail"
    )


def test_no_driver_and_hidden_gpus_are_explained() -> None:
    no_driver = dataclasses.replace(_edit("a100", drop=("nvidia_driver", "cuda_driver")), gpus=())
    assert _checks(no_driver)["nvidia gpu"] == (
        "info",
        "no NVIDIA GPU is visible: no NVIDIA driver was found (NVML did not load); cuda is unavailable and "
        "work runs on the CPU",
        "check that `nvidia-smi` lists a GPU and that CUDA_VISIBLE_DEVICES does not hide it",
    )
    hidden = dataclasses.replace(load_system("a100"), gpus=(), local=True)
    assert _checks(hidden, environ={"CUDA_VISIBLE_DEVICES": ""})["nvidia gpu"][1] == (
        "no NVIDIA GPU is visible: CUDA_VISIBLE_DEVICES='' hides every GPU; "
        "cuda is unavailable and work runs on the CPU"
    )
    # A loaded profile is not judged by this process's environment.
    remote = dataclasses.replace(load_system("a100"), gpus=())
    assert _checks(remote, environ={"CUDA_VISIBLE_DEVICES": ""})["nvidia gpu"][1].startswith(
        "no NVIDIA GPU is visible: the NVIDIA driver lists no GPU"
    )


def test_old_cudnn_warns_that_cudnn_attention_will_refuse() -> None:
    checks = _checks(_edit("a100", libraries={"cudnn": "8.9.7.29"}))
    assert checks["cudnn version"] == (
        "warning",
        "cuDNN 8.9.7.29 is older than 9.0, which torch's cuDNN attention kernel needs: the cudnn-attention "
        "backend refuses every call (cuda-sdpa runs attention)",
        "install a torch that ships cuDNN 9 (pip install -U torch)",
    )


def test_cuda_without_cudnn_says_cudnn_is_turned_off() -> None:
    checks = _checks(load_system("a100"), active=frozenset({"cpu", "cuda"}))
    assert checks["cudnn flags"] == (
        "info",
        "cudnn is not active: a runtime that binds cuda without it turns torch's "
        "cuDNN off (torch.backends.cudnn.enabled=False, cuDNN attention off)",
        "add the cudnn feature to use cuDNN",
    )
    assert "cudnn version" not in checks


def test_mixed_gpus_warn_that_the_lowest_capability_decides() -> None:
    h100 = load_system("h100")
    mixed = dataclasses.replace(h100, gpus=(h100.gpus[0], GPU(1, "NVIDIA A100-SXM4-80GB", "nvidia", (8, 0))))
    assert _checks(mixed)["mixed gpus"] == (
        "warning",
        "the visible GPUs differ in compute capability (8.0, 9.0): a call may land on any of them, so "
        "backends judge calls by the lowest, 8.0",
        "set CUDA_VISIBLE_DEVICES to GPUs of one kind to use what the newer ones can run",
    )
    assert "mixed gpus" not in _checks(load_system("multi-gpu-8xh100"))


def test_apple_m2_gets_no_cuda_checks_beyond_the_platform_rule() -> None:
    assert _checks(load_system("apple-m2")) == {}


def test_the_doctor_hook_never_asks_torch_about_a_loaded_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401 - imported, as after a verification run

    monkeypatch.setattr(CudaFacts, "from_torch", classmethod(lambda cls: pytest.fail("asked torch about a profile")))
    names = [
        c.subject for c in plugin.mistralrs_doctor_checks(frozenset({"cpu", "cuda", "cudnn"}), load_system("h100"), {})
    ]
    assert "torch cuda" not in names and "cuda driver" in names


def test_on_this_machine_torch_is_asked_whether_it_can_use_the_gpus_nvml_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(
        CudaFacts,
        "from_torch",
        classmethod(
            lambda cls: CudaFacts(
                unusable="torch cannot initialise CUDA: CUDA driver version is insufficient for CUDA runtime version"
            )
        ),
    )
    here = dataclasses.replace(load_system("a100"), local=True)
    checks = {c.subject: (c.status, c.message) for c in cuda_checks(frozenset({"cuda", "cudnn"}), here, {}, torch)}
    assert checks["torch cuda"] == (
        "error",
        "NVML lists 1 NVIDIA GPU(s) but torch cannot initialise CUDA: CUDA driver "
        "version is insufficient for CUDA runtime version",
    )
    # The same facts loaded from a file describe another machine: torch is not asked.
    remote = {c.subject for c in cuda_checks(frozenset({"cuda", "cudnn"}), load_system("a100"), {}, torch)}
    assert "torch cuda" not in remote


@pytest.mark.parametrize("profile", PROFILES)
def test_doctor_on_every_profile_exits_zero(profile: str) -> None:
    report = run_doctor(environ={}, system=load_system(profile))
    assert report.exit_code == 0, report.errors


def test_doctor_on_this_machine_explains_cuda_without_an_error_exit() -> None:
    report = run_doctor(environ={}, verify=False)
    assert report.exit_code == 0, report.errors
    if not PluginManager(environ={}).probe_system().gpus_of("nvidia"):  # this CPU-only machine
        (cuda,) = [c for c in report.sections["features"] if c.subject == "cuda"]
        assert (
            cuda.status == "info"
            and cuda.message == f"unavailable: cuda needs an NVIDIA GPU; none is visible: {GPU_FIX}"
        )
        (gpu,) = [c for c in report.sections["configuration"] if c.subject == "nvidia gpu"]
        assert gpu.status == "info" and gpu.plugin == "cuda"


# -- the facts themselves ---------------------------------------------------------------------------------


def test_versions_parse_as_the_libraries_spell_them() -> None:
    assert parse_version("12.8") == (12, 8)
    assert parse_version("2.11.0+cu128") == (2, 11, 0)
    assert parse_version("") is None and parse_version(None) is None
    assert cudnn_version_number("9.8.0.87") == 90800
    assert cudnn_version_number("9.26.0.51") == 92600
    assert cudnn_version_number("8.9.7.29") == 8907
    assert (cudnn_label(90800), cudnn_label(8907), cudnn_label(None)) == ("9.8.0", "8.9.7", "unknown")


@pytest.mark.parametrize(
    ("profile", "capability", "cudnn"),
    [
        ("h100", (9, 0), 90800),
        ("a100", (8, 0), 90800),
        ("v100", (7, 0), 90800),
        ("rtx4090-windows", (8, 9), 90800),
        ("multi-gpu-8xh100", (9, 0), 90800),
    ],
)
def test_facts_from_each_profile(profile: str, capability, cudnn: int) -> None:
    facts = CudaFacts.from_snapshot(load_system(profile))
    assert (facts.capability, facts.cudnn, facts.unusable) == (capability, cudnn, "")


def test_facts_without_cuda_say_why() -> None:
    assert CudaFacts.from_snapshot(load_system("apple-m2")).unusable == "torch is a CPU build (no CUDA)"
    assert (
        CudaFacts.from_snapshot(dataclasses.replace(load_system("a100"), gpus=())).unusable
        == "no NVIDIA GPU is visible"
    )


def test_blackwell_datacenter_gpus_warn_about_the_cudnn_gqa_bug() -> None:
    h100 = load_system("h100")
    b200 = dataclasses.replace(
        h100, gpus=(dataclasses.replace(h100.gpus[0], name="NVIDIA B200", compute_capability=(10, 0)),)
    )
    status, message, _ = _checks(b200)["cudnn attention"]
    assert (
        status == "warning"
        and "pytorch/pytorch#193893" in message
        and message.startswith(
            "NVIDIA B200 has compute capability 10.0, where torch's cuDNN attention silently corrupts grouped-query"
        )
    )

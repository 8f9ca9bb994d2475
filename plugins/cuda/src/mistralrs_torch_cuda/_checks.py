"""mistralrs-torch-cuda's doctor checks: why cuda (and cudnn) can or cannot run on the machine a snapshot describes.

Every check here is a function of the snapshot's facts, so it answers the same
for a loaded profile as for this machine. Checks that ask torch itself run
only for a snapshot probed here (``system.local``) and only when doctor has
already imported torch, so ``doctor --no-verify`` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from mistralrs_torch.ops import CheckResult
from mistralrs_torch.system import SystemSnapshot
from mistralrs_torch.validation import shown
from mistralrs_torch_cuda._facts import CudaFacts, cudnn_label, parse_version
from mistralrs_torch_cuda._manifest import CUDA, CUDNN

_GPU_FIX = "check that `nvidia-smi` lists a GPU and that CUDA_VISIBLE_DEVICES does not hide it"


def torch_cuda_fix(system: SystemSnapshot) -> str:
    """How to get a CUDA build of torch on the snapshot's platform."""
    if system.os == "linux" and system.arch == "x86_64":
        return ("install a CUDA build of torch: pip install --force-reinstall torch (PyPI's Linux x86_64 wheels are "
                "CUDA builds), or pick a CUDA line at https://pytorch.org/get-started/locally/")
    return ("install a CUDA build of torch: pip install --force-reinstall torch --index-url "
            "https://download.pytorch.org/whl/cu128 (or the cuXYZ line your driver supports, "
            "https://pytorch.org/get-started/locally/)")


def cuda_checks(active: frozenset[str], system: SystemSnapshot, environ: Mapping[str, str],
                torch: ModuleType | None = None) -> list[CheckResult]:
    """The checks for ``system``; ``torch`` is the imported module when this machine may be asked directly."""
    if system.os not in CUDA.platforms:
        return []  # the platform rule already says cuda runs on Linux and Windows only
    checks = _torch_build(system) + _driver(active, system) + _visibility(system, environ) + [_nvcc(system)]
    if CUDNN.name in active:
        checks += _cudnn(system, torch)
    elif CUDA.name in active:
        checks.append(
            CheckResult(
                "cudnn flags",
                "cudnn is not active: a runtime that binds cuda without it "
                "turns torch's cuDNN off (torch.backends.cudnn.enabled=False, cuDNN attention off)",
                "add the cudnn feature to use cuDNN",
                status="info",
            )
        )
    if CUDA.name in active:
        checks += _mixed_gpus(system)
        if torch is not None and system.local:
            checks += _torch_sees_gpus(system, torch)
    return checks


def _torch_build(system: SystemSnapshot) -> list[CheckResult]:
    if system.torch is None or "cuda" in system.libraries:
        return []
    gpus = system.gpus_of("nvidia")
    seen = f"{len(gpus)} NVIDIA GPU(s) are visible but " if gpus else ""
    return [
        CheckResult(
            "torch build",
            f"torch {system.torch.version} is a CPU build (no CUDA): "
            f"{seen}mistralrs-torch-cuda is installed and cannot run cuda with it",
            torch_cuda_fix(system),
            status="warning" if gpus else "info",
        )
    ]


def _driver(active: frozenset[str], system: SystemSnapshot) -> list[CheckResult]:
    driver_text, runtime_text = system.libraries.get("cuda_driver"), system.libraries.get("cuda")
    driver, runtime = parse_version(driver_text), parse_version(runtime_text)
    if driver is None or runtime is None:
        return []
    nvidia = system.libraries.get("nvidia_driver", "")
    who = f"the NVIDIA driver {nvidia}".rstrip() if nvidia else "the NVIDIA driver"
    fix = (
        f"update the NVIDIA driver to one that supports CUDA {runtime_text} (`nvidia-smi` shows the CUDA version "
        f"a driver supports), or install a torch built for CUDA {driver_text} or older"
    )
    if driver[0] < runtime[0]:
        return [
            CheckResult(
                "cuda driver",
                f"{who} supports CUDA {driver_text} but torch was built for CUDA {runtime_text}: "
                "CUDA driver version is insufficient for CUDA runtime version, "
                "so torch cannot initialise CUDA",
                fix,
                status="error" if CUDA.name in active else "warning",
            )
        ]
    if driver < runtime:
        return [
            CheckResult(
                "cuda driver",
                f"{who} supports CUDA {driver_text}, older than torch's CUDA runtime {runtime_text}: torch "
                "runs through CUDA minor-version compatibility, but kernels that need the newer driver "
                "(PTX compiled at run time) fail",
                fix,
                status="warning",
            )
        ]
    return [
        CheckResult(
            "cuda driver",
            f"{who} supports CUDA {driver_text}, enough for torch's CUDA runtime {runtime_text}",
            status="ok",
        )
    ]


def _visibility(system: SystemSnapshot, environ: Mapping[str, str]) -> list[CheckResult]:
    if system.gpus_of("nvidia"):
        return []
    if "nvidia_driver" not in system.libraries:
        why = "no NVIDIA driver was found (NVML did not load)"
    elif system.local and environ.get("CUDA_VISIBLE_DEVICES") is not None:
        why = f"CUDA_VISIBLE_DEVICES={shown(environ['CUDA_VISIBLE_DEVICES'])} hides every GPU"
    else:
        why = "the NVIDIA driver lists no GPU"
    return [
        CheckResult(
            "nvidia gpu",
            f"no NVIDIA GPU is visible: {why}; cuda is unavailable and work runs on the CPU",
            _GPU_FIX,
            status="info",
        )
    ]


def _nvcc(system: SystemSnapshot) -> CheckResult:
    if "nvcc" in system.libraries:
        return CheckResult(
            "nvcc", "nvcc is on PATH (needed only to build kernels such as flash-attn from source)", status="info"
        )
    return CheckResult(
        "nvcc",
        "nvcc is not on PATH: running mistralrs does not need it; building kernels such "
        "as flash-attn or FlashAttention-3 from source does",
        "to build kernels: install the CUDA toolkit and put its bin folder on PATH",
        status="info",
    )


def _cudnn(system: SystemSnapshot, torch: ModuleType | None) -> list[CheckResult]:
    facts = CudaFacts.from_snapshot(system)
    checks = []
    if facts.cudnn is not None:
        if facts.cudnn < 90000:
            checks.append(
                CheckResult(
                    "cudnn version",
                    f"cuDNN {system.libraries['cudnn']} is older than 9.0, "
                    "which torch's cuDNN attention kernel needs: "
                    "the cudnn-attention backend refuses every call (cuda-sdpa runs attention)",
                    "install a torch that ships cuDNN 9 (pip install -U torch)",
                    status="warning",
                )
            )
        else:
            checks.append(
                CheckResult(
                    "cudnn version",
                    f"cuDNN {system.libraries['cudnn']} ({cudnn_label(facts.cudnn)} as torch numbers it)",
                    status="ok",
                )
            )
    if facts.capability is not None and facts.capability < (8, 0):
        checks.append(
            CheckResult(
                "cudnn attention",
                f"{facts.gpu} has compute capability {facts.cc_label}; "
                "torch's cuDNN attention kernel needs 8.0 or newer, so attention runs on cuda-sdpa "
                "(cuDNN still serves torch's other cuDNN work, such as convolutions)",
                status="info",
            )
        )
    if facts.capability is not None and facts.capability[0] == 10:
        checks.append(
            CheckResult(
                "cudnn attention",
                f"{facts.gpu} has compute capability {facts.cc_label}, where torch's cuDNN attention "
                "silently corrupts grouped-query attention (pytorch/pytorch#193893): cudnn-attention "
                "refuses grouped-query calls and cuda-sdpa gives torch expanded key/value heads",
                "upgrade torch once that issue is fixed",
                status="warning",
            )
        )
    if torch is not None and system.local:
        flags = (
            f"torch.backends.cudnn.enabled={torch.backends.cudnn.enabled}, benchmark={torch.backends.cudnn.benchmark}"
        )
        checks.append(CheckResult("cudnn flags", f"{flags} (a runtime that binds cudnn turns both on)", status="info"))
    else:
        checks.append(
            CheckResult(
                "cudnn flags",
                "a runtime that binds cudnn sets torch.backends.cudnn."
                "enabled=True and benchmark=True (autotuned cuDNN algorithms)",
                status="info",
            )
        )
    return checks


def _mixed_gpus(system: SystemSnapshot) -> list[CheckResult]:
    capabilities = sorted({g.compute_capability for g in system.gpus_of("nvidia") if g.compute_capability})
    if len(capabilities) < 2:
        return []
    labels = ", ".join(f"{c[0]}.{c[1]}" for c in capabilities)
    low = capabilities[0]
    return [
        CheckResult(
            "mixed gpus",
            f"the visible GPUs differ in compute capability ({labels}): a call "
            f"may land on any of them, so backends judge calls by the lowest, {low[0]}.{low[1]}",
            "set CUDA_VISIBLE_DEVICES to GPUs of one kind to use what the newer ones can run",
            status="warning",
        )
    ]


def _torch_sees_gpus(system: SystemSnapshot, torch: ModuleType) -> list[CheckResult]:
    facts = CudaFacts.from_torch()
    listed = len(system.gpus_of("nvidia"))
    if facts.unusable:
        return [
            CheckResult(
                "torch cuda",
                f"NVML lists {listed} NVIDIA GPU(s) but {facts.unusable}",
                "run `nvidia-smi`; update the driver to one that supports torch's CUDA "
                f"{system.libraries.get('cuda', '')}, or install a torch built for the driver's CUDA",
                status="error",
            )
        ]
    count = torch.cuda.device_count()
    return [
        CheckResult(
            "torch cuda",
            f"torch {torch.__version__} uses CUDA {torch.version.cuda} on {count} "
            f"GPU(s); the lowest compute capability is {facts.cc_label} ({facts.gpu})",
            status="ok",
        )
    ]

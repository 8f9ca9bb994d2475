"""Helpers of scripts/build-gpu-wheels and scripts/gpu-check (standard library only: it runs before anything
is installed on the GPU machine).

    python3 scripts/_gpu_wheels.py floors OUT_FILE     here: the version floors of the workspace's pyproject files
    python3 scripts/_gpu_wheels.py target EXPORTED OUT PYTHON MACHINE   here: the pins whose markers hold there
    python3 scripts/_gpu_wheels.py install WHEELS_DIR  there: install the wheels offline, never touching torch
    python3 scripts/_gpu_wheels.py describe            there: Python, torch, CUDA and the GPU torch sees
    python3 scripts/_gpu_wheels.py gpus [--rehearsal]  there: every GPU torch sees; exit 1 when none (0 rehearsing)
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

__all__ = ["choose", "describe", "floors", "gpus", "install", "normalise", "target_requirements", "version_key"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> tuple[int, ...]:
    """ "2.11.0+cu128" -> (2, 11, 0): enough to compare release numbers against a floor."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def floors(root: Path) -> dict[str, str]:
    """name -> the lowest version a workspace pyproject asks for (">=X"), torch and workspace members left out."""
    # Runs here, in the workspace's environment: tomllib from 3.11, tomli (a core dependency) on 3.10.
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    projects = [root / "core" / "pyproject.toml", *sorted(root.glob("plugins/*/pyproject.toml"))]
    wanted = [r for p in projects for r in tomllib.loads(p.read_text())["project"].get("dependencies", [])]
    for group in tomllib.loads((root / "pyproject.toml").read_text()).get("dependency-groups", {}).values():
        wanted += [r for r in group if isinstance(r, str)]
    found: dict[str, str] = {}
    for requirement in wanted:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement)
        if match and normalise(match.group(1)) != "torch":
            found[normalise(match.group(1))] = match.group(2)
    return found


def _marker_class() -> type:
    try:
        from packaging.markers import Marker
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]  # the fallback import of the same name from pip's vendored copy
    return Marker


def target_requirements(lines: list[str], python: str, machine: str) -> list[str]:
    """The "name==version" lines whose markers hold on CPython ``python`` on Linux ``machine``.

    pip download --python-version picks wheel tags for the target but evaluates markers such as
    python_full_version against the interpreter running it, so they are evaluated here instead.
    """
    marker_class = _marker_class()
    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": machine, "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    kept = []
    for line in lines:
        requirement, _, marker = line.partition(";")
        if requirement.strip() and not requirement.lstrip().startswith("#") and \
                (not marker.strip() or marker_class(marker.strip()).evaluate(environment)):
            kept.append(requirement.strip())
    return kept


def choose(wheels: list[Path], minimums: dict[str, str],
           installed: Callable[[str], str | None]) -> tuple[list[Path], list[str], list[str]]:
    """(wheels to install, "name version" kept as preinstalled, "name old -> new" upgrades).

    A third-party wheel goes in only when its distribution is missing or below the workspace's floor,
    so a preinstalled environment (torch's own numpy, typing-extensions, ...) is left as it is.
    """
    chosen, kept, upgrades = [], [], []
    for wheel in sorted(wheels):
        name = normalise(wheel.name.split("-")[0])
        have = installed(name)
        if have is None:
            chosen.append(wheel)
        elif version_key(have) < version_key(minimums.get(name, "0")):
            chosen.append(wheel)
            upgrades.append(f"{name} {have} -> {wheel.name.split('-')[1]} (the workspace needs >= {minimums[name]})")
        else:
            kept.append(f"{name} {have}")
    return chosen, kept, upgrades


def _installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def install(wheels: Path) -> None:
    minimums = dict(line.split(">=") for line in (wheels / "floors.txt").read_text().split())
    chosen, kept, upgrades = choose(list((wheels / "third-party").glob("*.whl")), minimums, _installed)
    print("kept preinstalled:", ", ".join(kept) or "none")
    for upgrade in upgrades:
        print("upgrading", upgrade)
    flags = ["--no-index", "--no-deps", "--disable-pip-version-check"]
    if (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists() and sys.prefix == sys.base_prefix:
        # A distro Python refuses pip installs; what goes in is only our wheels and missing dependencies.
        flags.append("--break-system-packages")
        print("note: externally managed Python: installing with --break-system-packages (torch is not touched)")
    pip = [sys.executable, "-m", "pip", "install", *flags]
    if chosen:
        subprocess.run(pip + [str(w) for w in chosen], check=True)
    workspace = sorted((wheels / "workspace").glob("*.whl"))
    # Force-reinstalled: the same version number may already be installed from an earlier build.
    subprocess.run([*pip, "--force-reinstall", *map(str, workspace)], check=True)
    import torch  # the preinstalled torch must still import, with CUDA

    print(f"installed {len(workspace)} workspace and {len(chosen)} third-party wheels; torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}) untouched; GPUs visible to torch: {torch.cuda.device_count()}")


def describe() -> str:
    """One line on the interpreter, its torch and the GPU torch sees (or why it sees none)."""
    try:
        import torch
    except ImportError as exc:
        return f"Python {sys.version.split()[0]}, torch does not import ({exc}): install a CUDA torch first"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE visible to torch"
    return f"Python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}"


def gpus() -> list[str]:
    """A line per GPU torch sees: name, compute capability, memory, and the torch, CUDA and cuDNN versions."""
    import torch

    lines = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB; "
                     f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "floors":
        found = floors(Path.cwd())
        Path(argv[1]).write_text("".join(f"{n}>={v}\n" for n, v in sorted(found.items())))
        return 0
    if len(argv) == 5 and argv[0] == "target":  # target EXPORTED OUT PYTHON MACHINE
        lines = target_requirements(Path(argv[1]).read_text().splitlines(), argv[3], argv[4])
        Path(argv[2]).write_text("".join(f"{line}\n" for line in lines))
        return 0
    if argv == ["describe"]:
        print(describe())
        return 0
    if argv[:1] == ["gpus"] and argv[1:] in ([], ["--rehearsal"]):
        found = gpus()
        print("\n".join(found) or f"no CUDA GPU visible to torch ({describe()})")
        return 0 if found or argv[1:] else 1
    if len(argv) == 2 and argv[0] == "install":
        install(Path(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

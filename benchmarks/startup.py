"""Wall time of `mistralrs plugins list` as a ratio to `python -c "import click"`, side by side.

Run: python3 -m uv run --locked python benchmarks/startup.py [--runs 15]
Both commands alternate in one loop so machine noise hits them alike; the
ratio of medians is printed (aim: at most 2x). Both run as a user's second
and later runs do, from cached bytecode: the warm-up run writes it, even
where PYTHONDONTWRITEBYTECODE is set (these machines set it, which would
otherwise make every run recompile whatever changed since the cache was
written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**env, "MISTRALRS_FEATURES": ""})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    script = shutil.which("mistralrs", path=os.path.dirname(sys.executable)) or "mistralrs"
    commands = {
        "import click": [sys.executable, "-c", "import click"],
        "mistralrs plugins list": [script, "plugins", "list"],
    }
    for command in commands.values():  # warm the page cache and bytecode
        _time(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(_time(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:24s} median {median * 1000:7.1f} ms over {args.runs} runs")
    print(f"ratio (plugins list / import click): {medians['mistralrs plugins list'] / medians['import click']:.2f}x")


if __name__ == "__main__":
    main()

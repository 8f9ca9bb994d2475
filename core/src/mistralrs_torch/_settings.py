"""The core's own environment variables and what each does (parsed by :mod:`mistralrs_torch.validation`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: Variables the core reads, with what they do (doctor judges unknown MISTRALRS_* names against these
#: and the ones manifests declare).
CORE_ENV_VARS = {
    "MISTRALRS_FEATURES": "feature selection: 'auto' (default), 'none', or a space-separated list of feature names",
    "MISTRALRS_DISABLE_PLUGINS": "comma-separated plugin names to skip at discovery",
    "MISTRALRS_PLUGIN_AUTOLOAD": "0 loads only the built-in generic CPU plugin",
    "MISTRALRS_STRICT_PLUGINS": "1 makes any broken plugin a fatal error (for CI)",
    "MISTRALRS_NO_FALLBACK": "1 turns a fallback to a lower-priority backend into an error",
    "MISTRALRS_PAGED_ATTN": "1 opts in to paged attention on devices where it is opt-in (each feature's manifest "
                            "says which)",
    "MISTRALRS_CHECK_INPUTS": "1 runs the op input checks that read tensor values (block ids, sequence lengths, "
                              "slots) on every device; they always run for CPU tensors, and are off by default on "
                              "GPUs because reading values synchronises the device",
    "MISTRALRS_SELECTION": "how each op's backend is chosen: 'priority' (default: the first supporting backend in "
                           "dispatch priority) or 'measured' (the fastest correct one, timed once per signature)",
    "MISTRALRS_TUNING_CACHE": "the file measured selection keeps its choices in (default: "
                              "~/.cache/mistralrs-torch/tuning.json, or under XDG_CACHE_HOME)",
    "MISTRALRS_KERNEL_CACHE": "the folder the CPU kernels compiled at first use are kept in (default: "
                              "~/.cache/mistralrs-torch/kernels, or under XDG_CACHE_HOME); the compiler is $CC, "
                              "else cc, gcc or clang",
    "MISTRALRS_TRACEBACK": "1 shows a broken plugin's own traceback (as --traceback does)",
    "MISTRALRS_DEBUG": "1 lets torch's own native messages (C++ warnings and stacks) reach the terminal while ranks "
                       "start, instead of a log file that a start-up error names",
    "MISTRALRS_DEVICE_LAYERS": "explicit layer-to-device map when one process drives several devices, e.g. "
                               "'0:16;1:16' (layers per accelerator ordinal, in order); replaces the automatic map; "
                               "refused where the collective backend gives each process one device",
}


def cache_home(environ: Mapping[str, str]) -> Path:
    """The folder the core's caches live under: $XDG_CACHE_HOME/mistralrs-torch, else ~/.cache/mistralrs-torch."""
    base = environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mistralrs-torch"

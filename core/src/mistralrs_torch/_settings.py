"""The core's own environment variables, parsed with errors that say what to write instead."""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch._errors import InputError
from mistralrs_torch.validation import parse_flag, shown

__all__ = ["CORE_ENV_VARS", "env_flag", "env_list"]

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
    "MISTRALRS_TRACEBACK": "1 shows a broken plugin's own traceback (as --traceback does)",
    "MISTRALRS_DEBUG": "1 lets torch's own native messages (C++ warnings and stacks) reach the terminal while ranks "
                       "start, instead of a log file that a start-up error names",
    "MISTRALRS_DEVICE_LAYERS": "explicit layer-to-device map when one process drives several devices, e.g. "
                               "'0:16;1:16' (layers per accelerator ordinal, in order); replaces the automatic map; "
                               "refused where the collective backend gives each process one device",
}

#: Names a list variable may hold, and how long each may be (plugin and feature names are short).
_MAX_ITEMS, _MAX_ITEM_LENGTH = 64, 100


def env_flag(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean variable; raises InputError (a ConfigError) on a value that is neither true nor false."""
    raw = environ.get(name)
    return default if raw is None else parse_flag(raw, name)


def env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma- or space-separated list variable, empty when unset; InputError past 64 names of 100 characters."""
    items = tuple(item for item in environ.get(name, "").replace(",", " ").split() if item)
    long = next((item for item in items if len(item) > _MAX_ITEM_LENGTH), None)
    if long is not None or len(items) > _MAX_ITEMS:
        problem = f"names {shown(long)}, longer than {_MAX_ITEM_LENGTH} characters" if long is not None else \
            f"names {len(items)} entries, more than {_MAX_ITEMS}"
        raise InputError(name, problem, f"list at most {_MAX_ITEMS} names, separated by commas or spaces")
    return items

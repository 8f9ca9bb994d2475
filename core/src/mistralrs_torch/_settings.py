"""The core's own environment variables, parsed with errors that say what to write instead."""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs_torch._errors import ConfigError

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
    "MISTRALRS_DEVICE_LAYERS": "explicit layer-to-device map when one process drives several devices, e.g. "
                               "'0:16;1:16' (layers per accelerator ordinal, in order); replaces the automatic map; "
                               "refused where the collective backend gives each process one device",
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def env_flag(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean variable; raises ConfigError on a value that is neither true nor false."""
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: set {name}=1 or {name}=0")


def env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma- or space-separated list variable, empty when unset."""
    return tuple(item for item in environ.get(name, "").replace(",", " ").split() if item)

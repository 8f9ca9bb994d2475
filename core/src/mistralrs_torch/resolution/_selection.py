"""Where the feature selection comes from, in precedence order.

``--features`` > ``MISTRALRS_FEATURES`` > ``mistralrs.toml`` > ``[tool.mistralrs]``
in pyproject.toml > auto. "auto" (or unset or empty) means auto; "none" means the
generic CPU backend alone; anything else is an explicit list of features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mistralrs_torch._errors import ConfigError, InputError
from mistralrs_torch.validation import shown


@dataclass(frozen=True)
class Selection:
    """The requested features: mode is "auto", "none" or "explicit"; source names where it came from."""

    mode: str = "auto"
    features: tuple[str, ...] = ()
    source: str = "auto mode"


def read_selection(cli_features: str | None = None, environ: Mapping[str, str] = os.environ,
                   cwd: str | os.PathLike[str] | None = None) -> Selection:
    """The selection in force, from the first source that sets one."""
    if cli_features is not None and cli_features.strip():
        return _parse(cli_features, "--features")
    env_value = environ.get("MISTRALRS_FEATURES", "")
    if env_value.strip():
        return _parse(env_value, "MISTRALRS_FEATURES")
    folder = os.fspath(cwd) if cwd is not None else os.getcwd()
    for file, table in (("mistralrs.toml", ()), ("pyproject.toml", ("tool", "mistralrs"))):
        path = os.path.join(folder, file)
        if os.path.isfile(path):
            value = _config_features(path, table)
            if value is not None:
                return value
    return Selection()


#: Feature names a selection may list, and how long one may be (manifests' names are a few characters).
_MAX_NAMES, _MAX_NAME = 64, 64
#: Larger files are refused unread; pyproject.toml files of real projects are a few KiB.
_MAX_CONFIG_BYTES = 1 << 20
_FEATURES_HELP = 'features = ["cuda", "cudnn"] (or "auto", or "none")'


def _parse(value: str | list[Any], source: str) -> Selection:
    # A list's entries read as the string form does: blanks dropped, "cuda, cudnn" in one entry names two.
    text = value if isinstance(value, str) else " ".join(value)
    names = tuple(dict.fromkeys(text.replace(",", " ").split()))
    long = next((name for name in names if len(name) > _MAX_NAME), None)
    if long is not None:
        raise InputError(source, f"names {shown(long)}, longer than any feature name ({_MAX_NAME} characters "
                         "at most)", "list feature names such as cuda cudnn (`mistralrs plugins list` shows them)")
    if len(names) > _MAX_NAMES:
        raise InputError(source, f"names {len(names)} features, more than {_MAX_NAMES}",
                         "list the features to enable (`mistralrs plugins list` shows them)")
    if not names or names == ("auto",):
        return Selection(source=f"{source} (auto)")
    if names == ("none",):
        return Selection(mode="none", source=source)
    for reserved in ("auto", "none"):
        if reserved in names:
            raise ConfigError(f"{source}: {reserved!r} cannot be combined with feature names "
                              f"({shown(' '.join(names))}): use {reserved!r} alone, or list only features")
    return Selection(mode="explicit", features=names, source=source)


def _config_schema(where: str) -> Any:
    from mistralrs_torch.validation import ListOf, OneOf, Record, Text

    names = ListOf(Text(_MAX_NAME), _MAX_NAMES)
    return Record({"features": OneOf((Text(_MAX_NAMES * (_MAX_NAME + 1)), names))},
                  unknown_hint=f"{where} takes only features, as in {_FEATURES_HELP}")


def _config_features(path: str, table: tuple[str, ...]) -> Selection | None:
    from mistralrs_torch.validation import problem_lines, problems, read_toml

    name = os.path.basename(path)
    data: Any = read_toml(path, "a configuration file", max_bytes=_MAX_CONFIG_BYTES,
                          fix="fix the file, or remove it")
    where = name + (f" [{'.'.join(table)}]" if table else "")
    if table:
        _misplaced(name, data)
        for key in table:
            data = data.get(key)
            if data is None:
                return None
            if not isinstance(data, dict):
                raise ConfigError(f"{name}: {key} must be a table ([{'.'.join(table[:table.index(key) + 1])}]), "
                                  f"not {type(data).__name__}: write [tool.mistralrs] with {_FEATURES_HELP}")
    found = problems(_config_schema(where), data)
    if found:
        raise ConfigError("\n".join([f"{where} is not a valid mistralrs configuration:", *problem_lines(found)]))
    if "features" not in data:
        return None
    return _parse(data["features"], where)


def _misplaced(name: str, data: dict[str, Any]) -> None:
    """A table meant for mistralrs under another name in pyproject.toml ([mistralrs], [tool.mistralrs-torch])."""
    tool = data.get("tool")
    names = [key for key in (tool if isinstance(tool, dict) else {}) if key != "mistralrs"
             and key.lower().replace("-", "").replace("_", "").startswith("mistralrs")]
    if "mistralrs" in data:
        raise ConfigError(f"{name} has a [mistralrs] table, which is not read there: rename it [tool.mistralrs]")
    if names:
        raise ConfigError(f"{name} has a [tool.{names[0]}] table, which mistralrs does not read: did you mean "
                          "[tool.mistralrs]?")

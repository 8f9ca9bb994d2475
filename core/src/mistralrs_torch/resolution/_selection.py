"""Where the feature selection comes from, in precedence order.

``--features`` > ``MISTRALRS_FEATURES`` > ``mistralrs.toml`` > ``[tool.mistralrs]``
in pyproject.toml > auto. "auto" (or unset or empty) means auto; "none" means the
generic CPU backend alone; anything else is an explicit list of features.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mistralrs_torch._errors import ConfigError

__all__ = ["Selection", "read_selection"]


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


def _parse(value: str | list[Any], source: str) -> Selection:
    # A list's entries read as the string form does: blanks dropped, "cuda, cudnn" in one entry names two.
    text = value if isinstance(value, str) else " ".join(value)
    names = tuple(dict.fromkeys(text.replace(",", " ").split()))
    if not names or names == ("auto",):
        return Selection(source=f"{source} (auto)")
    if names == ("none",):
        return Selection(mode="none", source=source)
    for reserved in ("auto", "none"):
        if reserved in names:
            raise ConfigError(f"{source}: {reserved!r} cannot be combined with feature names ({' '.join(names)}): "
                              f"use {reserved!r} alone, or list only features")
    return Selection(mode="explicit", features=names, source=source)


def _config_features(path: str, table: tuple[str, ...]) -> Selection | None:
    data = _load_toml(path)
    where = os.path.basename(path) + (f" [{'.'.join(table)}]" if table else "")
    for key in table:
        data = data.get(key)
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table, not {type(data).__name__}")
    if "features" not in data:
        return None
    value = data["features"]
    valid = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if not valid:
        raise ConfigError(f"{where}: features = {value!r} must be a list of feature names or a string "
                          "(for example features = [\"cuda\", \"cudnn\"], or \"auto\")")
    return _parse(value, where)


def _load_toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, encoding="utf-8") as file:
            return tomllib.loads(file.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): fix the file or remove it") from None

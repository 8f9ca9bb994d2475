"""The core's environment switches and the plugin API version rule."""

from __future__ import annotations

import pytest

from mistralrs_torch import PLUGIN_API_VERSION, ConfigError, MistralrsError
from mistralrs_torch._settings import CORE_ENV_VARS
from mistralrs_torch._version import supports_api_version
from mistralrs_torch.validation import env_flag, env_list


@pytest.mark.parametrize("value", ["1", "true", "True", "YES", "on", " 1 "])
def test_true_values(value) -> None:
    assert env_flag({"X": value}, "X") is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "off", "", "  "])
def test_false_values(value) -> None:
    assert env_flag({"X": value}, "X", default=True) is False


def test_unset_gives_the_default() -> None:
    assert env_flag({}, "X") is False
    assert env_flag({}, "X", default=True) is True


@pytest.mark.parametrize("value", ["2", "maybe", "enable", "y es"])
def test_a_non_boolean_value_is_a_config_error_that_says_what_to_write(value) -> None:
    with pytest.raises(ConfigError) as caught:
        env_flag({"MISTRALRS_X": value}, "MISTRALRS_X")
    message = str(caught.value)
    assert f"MISTRALRS_X={value!r}" in message
    assert "MISTRALRS_X=1" in message and "MISTRALRS_X=0" in message
    assert isinstance(caught.value, MistralrsError)


@pytest.mark.parametrize(("value", "expected"), [
    ("a,b", ("a", "b")), ("a, b", ("a", "b")), ("a b", ("a", "b")), (" , a,,b ,", ("a", "b")), ("", ()),
])
def test_lists_split_on_commas_and_spaces(value, expected) -> None:
    assert env_list({"L": value}, "L") == expected


def test_an_unset_list_is_empty() -> None:
    assert env_list({}, "L") == ()


def test_the_core_documents_its_variables() -> None:
    for name in ("MISTRALRS_FEATURES", "MISTRALRS_DISABLE_PLUGINS", "MISTRALRS_PLUGIN_AUTOLOAD",
                 "MISTRALRS_STRICT_PLUGINS"):
        assert CORE_ENV_VARS[name]


def test_this_core_supports_its_own_api_version() -> None:
    assert supports_api_version(PLUGIN_API_VERSION)


def test_minor_zero_of_the_same_major_is_supported() -> None:
    major = PLUGIN_API_VERSION.split(".")[0]
    assert supports_api_version(f"{major}.0")


@pytest.mark.parametrize("version", ["1.0", "3.0", "1.99", "2.1", "2", "2.0.0", "one.two", "", "-2.0", "2.-1"])
def test_unsupported_api_versions(version) -> None:
    assert PLUGIN_API_VERSION == "2.0", "update this table when the API version moves"
    assert not supports_api_version(version)

"""Where the feature selection comes from: --features > MISTRALRS_FEATURES > mistralrs.toml >
[tool.mistralrs] in pyproject.toml > auto; malformed configuration is always an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mistralrs_torch import ConfigError, Selection, read_selection


def _config(folder: Path, mistralrs_toml: str | None = None, pyproject: str | None = None) -> Path:
    if mistralrs_toml is not None:
        (folder / "mistralrs.toml").write_text(mistralrs_toml, encoding="utf-8")
    if pyproject is not None:
        (folder / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return folder


FULL = dict(mistralrs_toml='features = ["mkl"]\n',
            pyproject='[project]\nname = "app"\n\n[tool.mistralrs]\nfeatures = ["ring"]\n')


def test_nothing_set_means_auto(tmp_path) -> None:
    selection = read_selection(None, {}, cwd=tmp_path)
    assert selection.mode == "auto"
    assert selection.features == ()
    assert selection == Selection()


def test_cli_features_beat_everything(tmp_path) -> None:
    _config(tmp_path, **FULL)
    selection = read_selection("cuda cudnn", {"MISTRALRS_FEATURES": "metal"}, cwd=tmp_path)
    assert selection == Selection(mode="explicit", features=("cuda", "cudnn"), source="--features")


def test_the_environment_beats_config_files(tmp_path) -> None:
    _config(tmp_path, **FULL)
    selection = read_selection(None, {"MISTRALRS_FEATURES": "metal,accelerate"}, cwd=tmp_path)
    assert selection == Selection(mode="explicit", features=("metal", "accelerate"), source="MISTRALRS_FEATURES")


def test_mistralrs_toml_beats_pyproject(tmp_path) -> None:
    _config(tmp_path, **FULL)
    selection = read_selection(None, {}, cwd=tmp_path)
    assert selection.mode == "explicit"
    assert selection.features == ("mkl",)
    assert "mistralrs.toml" in selection.source


def test_pyproject_tool_table_is_read_last(tmp_path) -> None:
    _config(tmp_path, pyproject=FULL["pyproject"])
    selection = read_selection(None, {}, cwd=tmp_path)
    assert selection.features == ("ring",)
    assert "pyproject.toml" in selection.source and "tool.mistralrs" in selection.source


def test_a_mistralrs_toml_without_features_falls_through_to_pyproject(tmp_path) -> None:
    _config(tmp_path, mistralrs_toml="# nothing chosen here\n", pyproject=FULL["pyproject"])
    assert read_selection(None, {}, cwd=tmp_path).features == ("ring",)


def test_list_entries_read_as_the_string_form_does(tmp_path) -> None:
    # Found by core/tests/test_selection_properties.py: features = [""] once selected a feature named "".
    _config(tmp_path, mistralrs_toml='features = ["cuda, cudnn", "", " mkl ", "cuda"]\n')
    assert read_selection(None, {}, cwd=tmp_path).features == ("cuda", "cudnn", "mkl")
    _config(tmp_path, mistralrs_toml='features = ["", " "]\n')
    assert read_selection(None, {}, cwd=tmp_path).mode == "auto"
    assert read_selection("auto auto", {}).mode == "auto"  # a repeated "auto" is still auto alone


def test_a_pyproject_without_the_tool_table_means_auto(tmp_path) -> None:
    _config(tmp_path, pyproject='[project]\nname = "app"\n[tool.other]\nfeatures = ["cuda"]\n')
    assert read_selection(None, {}, cwd=tmp_path).mode == "auto"


def test_config_files_are_read_from_the_given_folder_only(tmp_path) -> None:
    _config(tmp_path, **FULL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert read_selection(None, {}, cwd=elsewhere).mode == "auto"


@pytest.mark.parametrize("value", ["auto", "  auto  ", "auto,"])
def test_auto_in_the_environment_means_auto_and_overrides_config_files(tmp_path, value) -> None:
    _config(tmp_path, **FULL)
    selection = read_selection(None, {"MISTRALRS_FEATURES": value}, cwd=tmp_path)
    assert selection.mode == "auto"
    assert selection.features == ()


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_environment_value_is_the_same_as_unset(tmp_path, value) -> None:
    assert read_selection(None, {"MISTRALRS_FEATURES": value}, cwd=tmp_path).mode == "auto"
    _config(tmp_path, mistralrs_toml='features = ["mkl"]\n')
    assert read_selection(None, {"MISTRALRS_FEATURES": value}, cwd=tmp_path).features == ("mkl",)


def test_cli_auto_overrides_the_environment(tmp_path) -> None:
    assert read_selection("auto", {"MISTRALRS_FEATURES": "cuda"}, cwd=tmp_path).mode == "auto"


@pytest.mark.parametrize(("cli", "environ"), [("none", {}), (None, {"MISTRALRS_FEATURES": "none"})])
def test_none_selects_the_generic_cpu_alone(tmp_path, cli, environ) -> None:
    selection = read_selection(cli, environ, cwd=tmp_path)
    assert selection.mode == "none"
    assert selection.features == ()


def test_none_in_a_config_file(tmp_path) -> None:
    _config(tmp_path, mistralrs_toml='features = "none"\n')
    assert read_selection(None, {}, cwd=tmp_path).mode == "none"


def test_auto_in_a_config_file(tmp_path) -> None:
    _config(tmp_path, mistralrs_toml='features = ["auto"]\n', pyproject=FULL["pyproject"])
    assert read_selection(None, {}, cwd=tmp_path).mode == "auto"


def test_a_string_in_a_config_file_is_split_like_the_environment(tmp_path) -> None:
    _config(tmp_path, mistralrs_toml='features = "cuda, cudnn flash-attn"\n')
    assert read_selection(None, {}, cwd=tmp_path).features == ("cuda", "cudnn", "flash-attn")


@pytest.mark.parametrize("value", ["cuda cudnn", "cuda,cudnn", "cuda, cudnn", " cuda  cudnn ", "cuda cudnn cuda"])
def test_feature_lists_split_on_commas_and_spaces_and_drop_repeats(tmp_path, value) -> None:
    assert read_selection(value, {}, cwd=tmp_path).features == ("cuda", "cudnn")


@pytest.mark.parametrize("value", ["auto cuda", "cuda,none", "none auto"])
def test_mixing_auto_or_none_with_feature_names_is_a_config_error(tmp_path, value) -> None:
    with pytest.raises(ConfigError) as caught:
        read_selection(value, {}, cwd=tmp_path)
    assert "--features" in str(caught.value)
    assert "alone" in str(caught.value)


def test_mixing_auto_with_names_in_the_environment_names_the_variable(tmp_path) -> None:
    with pytest.raises(ConfigError, match="MISTRALRS_FEATURES"):
        read_selection(None, {"MISTRALRS_FEATURES": "auto cuda"}, cwd=tmp_path)


def test_mixing_in_a_config_file_names_the_file(tmp_path) -> None:
    _config(tmp_path, mistralrs_toml='features = ["auto", "cuda"]\n')
    with pytest.raises(ConfigError, match=r"mistralrs.toml"):
        read_selection(None, {}, cwd=tmp_path)


@pytest.mark.parametrize("file", ["mistralrs.toml", "pyproject.toml"])
def test_malformed_toml_is_a_config_error_naming_the_file(tmp_path, file) -> None:
    (tmp_path / file).write_text('features = ["cuda"\n[oops', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_selection(None, {}, cwd=tmp_path)
    assert file in str(caught.value)
    assert "TOML" in str(caught.value)


def test_malformed_config_does_not_matter_when_a_higher_source_decides(tmp_path) -> None:
    (tmp_path / "mistralrs.toml").write_text("not toml at all = = =", encoding="utf-8")
    assert read_selection("cuda", {}, cwd=tmp_path).features == ("cuda",)
    assert read_selection(None, {"MISTRALRS_FEATURES": "mkl"}, cwd=tmp_path).features == ("mkl",)


@pytest.mark.parametrize("value", ["3", "true", '[1, 2]', '["cuda", 2]', '{ cuda = true }'])
def test_wrongly_typed_features_in_mistralrs_toml_are_a_config_error(tmp_path, value) -> None:
    _config(tmp_path, mistralrs_toml=f"features = {value}\n")
    with pytest.raises(ConfigError) as caught:
        read_selection(None, {}, cwd=tmp_path)
    assert "mistralrs.toml" in str(caught.value)
    assert "features" in str(caught.value)


@pytest.mark.parametrize("pyproject", [
    'tool = 3\n',
    '[tool]\nmistralrs = "cuda"\n',
    '[tool.mistralrs]\nfeatures = 7\n',
])
def test_wrongly_typed_pyproject_tables_are_a_config_error(tmp_path, pyproject) -> None:
    _config(tmp_path, pyproject=pyproject)
    with pytest.raises(ConfigError, match=r"pyproject.toml"):
        read_selection(None, {}, cwd=tmp_path)


def test_an_empty_feature_list_in_a_config_file_means_auto(tmp_path) -> None:
    _config(tmp_path, mistralrs_toml="features = []\n")
    assert read_selection(None, {}, cwd=tmp_path).mode == "auto"

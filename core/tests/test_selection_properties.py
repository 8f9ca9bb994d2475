"""Property-based tests of reading the selection (hypothesis): whatever a user types in --features,
MISTRALRS_FEATURES or a config file, the answer is a Selection or a ConfigError naming the source, never
another exception, and what is read back is clean (no empty or repeated names)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mistralrs_torch import ConfigError, Selection, read_selection

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
_names = st.sampled_from(("cuda", "cudnn", "flash-attn", "mkl", "auto", "none", "Cuda", "flash_attn", "x"))
_separators = st.sampled_from((" ", ",", ", ", "\t", "\n", "  ,", ""))


@st.composite
def _feature_text(draw: st.DrawFn) -> str:
    """Feature lists as people type them, and arbitrary text."""
    if draw(st.booleans()):
        return draw(st.text(max_size=40))
    parts = draw(st.lists(_names, max_size=5))
    return draw(_separators).join(parts) if parts else draw(_separators)


def _clean(selection: Selection) -> None:
    assert selection.mode in ("auto", "none", "explicit")
    if selection.mode == "explicit":
        names = selection.features
        assert names and len(set(names)) == len(names) and all(n and n == n.strip() for n in names), names
        assert not {"auto", "none"} & set(names)
    else:
        assert selection.features == ()


@PROPERTY
@given(text=_feature_text(), from_cli=st.booleans())
def test_any_feature_text_reads_as_a_clean_selection_or_a_config_error(text: str, from_cli: bool) -> None:
    try:
        selection = read_selection(text if from_cli else None, {} if from_cli else {"MISTRALRS_FEATURES": text},
                                   cwd="/nonexistent")
    except ConfigError as exc:
        assert ("--features" if from_cli else "MISTRALRS_FEATURES") in str(exc)
        return
    _clean(selection)
    if selection.mode == "explicit":  # reading it back gives the same selection
        assert read_selection(" ".join(selection.features), {}).features == selection.features


_toml_values = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.floats(allow_nan=False),
                         st.lists(st.one_of(_names, st.text(max_size=8), st.integers()), max_size=4))


@st.composite
def _config_file(draw: st.DrawFn) -> str:
    """mistralrs.toml contents: well-formed with any value, or arbitrary text."""
    if draw(st.booleans()):
        return draw(st.text(max_size=60))
    value = draw(_toml_values)
    if isinstance(value, str):
        rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    elif isinstance(value, bool):
        rendered = str(value).lower()
    elif isinstance(value, list):
        rendered = "[" + ", ".join('"' + v + '"' if isinstance(v, str) and v.isprintable() and '"' not in v
                                   and "\\" not in v else "1" for v in value) + "]"
    else:
        rendered = repr(value)
    return f"features = {rendered}\n"


@PROPERTY
@given(content=_config_file())
def test_any_config_file_reads_as_a_clean_selection_or_a_config_error_naming_it(content: str, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("selection")
    (Path(folder) / "mistralrs.toml").write_text(content, encoding="utf-8")
    try:
        selection = read_selection(None, {}, cwd=folder)
    except ConfigError as exc:
        assert "mistralrs.toml" in str(exc)
        return
    _clean(selection)

"""Config files: any YAML gives valid settings or a ConfigError that names the field, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advrobust.config import EvalSettings, TrainSettings, build_settings, read_yaml
from advrobust.errors import ConfigError

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_as_config(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    try:
        config = read_yaml(path)
        build_settings(TrainSettings, config, {})
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=150, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["epochs", "batch_size", "lr", "eps", "attack", "model", "n", "norm"]), values
    )
)
def test_arbitrary_values_validate_or_name_the_field(fields: dict[str, object]) -> None:
    for kind in (TrainSettings, EvalSettings):
        try:
            build_settings(kind, {"model": "m", **fields}, {})
        except ConfigError as exc:
            assert "invalid option" in str(exc)


def test_error_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: -3\n")
    with pytest.raises(ConfigError, match="epochs"):
        build_settings(TrainSettings, read_yaml(path), {})
    path.write_text("[1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)

"""Settings: unknown ``CARWATCH_*`` variables are rejected; where each process serves metrics."""

import pytest

from streams.settings import (
    OTHER_VARIABLES,
    Settings,
    UnknownSetting,
    check_environment,
    known_variables,
)


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("CARWATCH_METRICS_HOTS", "CARWATCH_METRICS_HOST"),
        ("CARWATCH_BROKER", "CARWATCH_BROKER_URL"),
        ("carwatch_lab_topic", "CARWATCH_LABS_TOPIC"),
        ("CARWATCH_WEBHOOK_SECRT", "CARWATCH_WEBHOOK_SECRET"),
    ],
)
def test_a_misspelt_variable_names_the_closest_valid_one(variable: str, suggestion: str) -> None:
    with pytest.raises(UnknownSetting) as failure:
        check_environment({variable: "x", "CARWATCH_APP_ID": "ok"})
    assert str(failure.value) == f"unknown setting {variable}; did you mean {suggestion}?"


def test_nothing_close_points_at_the_reference() -> None:
    with pytest.raises(UnknownSetting, match=r"CARWATCH_ZZZ \(docs/settings.md"):
        check_environment({"CARWATCH_ZZZ": "1"})


def test_every_model_field_and_script_variable_is_known() -> None:
    fields = {f"CARWATCH_{name.upper()}" for name in Settings.model_fields}
    assert fields | set(OTHER_VARIABLES) <= known_variables()
    check_environment({name: "" for name in known_variables()})
    check_environment({"PATH": "/bin", "KAFKA_HEAP_OPTS": "-Xmx1g"})  # not ours: ignored


def test_metrics_port_option_then_environment_then_the_process_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CARWATCH_METRICS_PORT", raising=False)
    monkeypatch.delenv("CARWATCH_METRICS_HOST", raising=False)
    assert Settings().metrics_address(9465) == ("127.0.0.1", 9465)
    assert Settings().metrics_address(9465, 0) == ("127.0.0.1", 0)
    monkeypatch.setenv("CARWATCH_METRICS_PORT", "19000")
    monkeypatch.setenv("CARWATCH_METRICS_HOST", "0.0.0.0")
    assert Settings().metrics_address(9465) == ("0.0.0.0", 19000)
    assert Settings().metrics_address(9465, 19001) == ("0.0.0.0", 19001)


def test_an_aliased_field_is_known_by_its_alias() -> None:
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from streams.settings import env_names

    class Aliased(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="CARWATCH_")
        plain: int = 1
        protocol_setting: str | None = Field(default=None, validation_alias="CARWATCH_PROTOCOL")

    assert env_names(Aliased) == {
        "CARWATCH_PLAIN": "plain",
        "CARWATCH_PROTOCOL": "protocol_setting",
    }

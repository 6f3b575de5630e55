"""What every ``carwatch`` command shares: --version, the settings check, one spelling per option."""

import importlib.metadata
import io
from collections.abc import Iterator

import click
import pytest

from streams.cli import _current_spellings, cli, main
from streams.cli.common import DEPRECATED_OPTIONS

#: Commands that run until stopped: each serves /metrics and logs at --log-level.
LONG_RUNNING = ("worker", "mllp", "fhir-gateway", "alerts webhook")


def commands(group: click.Group = cli, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} ")
        else:
            yield path, command


def options(command: click.Command) -> dict[str, click.Option]:
    return {
        name: param
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for name in param.opts
        if name.startswith("--")
    }


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"carwatch {importlib.metadata.version('carwatch')}\n"


def test_a_misspelt_setting_stops_every_command_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CARWATCH_METRICS_HOTS", "0.0.0.0")
    assert main(["replay", "-"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "carwatch: error: unknown setting CARWATCH_METRICS_HOTS; "
        "did you mean CARWATCH_METRICS_HOST?\n"
    )


def test_known_settings_and_script_variables_pass(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("carwatch_metrics_host", "127.0.0.1")  # pydantic reads names in any case
    monkeypatch.setenv("CARWATCH_KAFKA_PORT", "9092")  # scripts/broker.sh
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["replay", "--format", "ndjson", "-"]) == 0, capsys.readouterr().err


def test_no_option_has_two_spellings() -> None:
    """``--log-level`` here and ``--loglevel`` there, or ``--metrics-port`` next to
    ``--metrics_port``, is one option spelt twice: the normalised names must be unique."""
    spelt: dict[str, set[str]] = {}
    for _, command in commands():
        for name in options(command):
            spelt.setdefault(name.replace("-", "").replace("_", ""), set()).add(name)
    twice = {key: names for key, names in spelt.items() if len(names) > 1}
    assert not twice
    assert not set(DEPRECATED_OPTIONS) & {n for names in spelt.values() for n in names}


def test_a_shared_option_means_the_same_everywhere() -> None:
    """An option several commands have comes from one definition (same type and help; a
    default may differ, e.g. each listener's ``--port``)."""
    seen: dict[str, tuple[str, click.Option]] = {}
    for path, command in commands():
        for name, option in options(command).items():
            if name not in seen:
                seen[name] = (path, option)
                continue
            first_path, first = seen[name]
            for attribute in ("type", "help"):
                assert repr(getattr(option, attribute)) == repr(getattr(first, attribute)), (
                    f"{name}: {attribute} differs between {first_path!r} and {path!r}"
                )


@pytest.mark.parametrize("path", LONG_RUNNING)
def test_long_running_commands_have_the_common_options(path: str) -> None:
    command = dict(commands())[path]
    assert {"--log-level", "--metrics-port"} <= set(options(command))


def test_the_old_spelling_still_works_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert _current_spellings(["worker", "--loglevel", "debug"]) == [
        "worker",
        "--log-level",
        "debug",
    ]
    assert _current_spellings(["worker", "--loglevel=debug"]) == ["worker", "--log-level=debug"]
    capsys.readouterr()
    # rewritten before click parses: the error names the current spelling
    assert main(["worker", "--loglevel", "verbose"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "carwatch: warning: --loglevel is deprecated, use --log-level"
    assert err[1].startswith("carwatch: error: Invalid value for '--log-level'")

"""``carwatch worker`` before Faust starts: data directory, settings and policy errors."""

from pathlib import Path
from unittest import mock

import pytest

from streams.cli import main


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("CARWATCH_CREATE_TOPICS", "false")
    return tmp_path


def test_the_data_directory_is_created_with_its_parents(env: Path) -> None:
    data = env / "var" / "worker"
    with (
        mock.patch.dict("os.environ", {"CARWATCH_DATA_DIR": str(data)}),
        mock.patch("streams.shell.app.run_worker") as run,
    ):
        assert main(["worker"]) == 0
    assert data.is_dir()
    ((settings, loglevel), _) = run.call_args
    assert settings.data_dir == data and loglevel == "info"


def test_a_data_directory_that_cannot_be_made_is_one_clear_line(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = env / "a-file"
    blocker.write_text("")
    with (
        mock.patch.dict("os.environ", {"CARWATCH_DATA_DIR": str(blocker / "worker")}),
        mock.patch("streams.shell.app.run_worker") as run,
    ):
        assert main(["worker"]) == 1
    run.assert_not_called()
    err = capsys.readouterr().err
    assert err.startswith("carwatch: error: CARWATCH_DATA_DIR ") and "cannot be created" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("store", ["rocksdict://", "redis://", ""])
def test_an_unknown_store_url_is_one_clear_line(
    env: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        mock.patch.dict("os.environ", {"CARWATCH_STORE": store, "CARWATCH_DATA_DIR": str(env)}),
        mock.patch("streams.shell.app.run_worker") as run,
    ):
        assert main(["worker"]) == 2
    run.assert_not_called()
    err = capsys.readouterr().err
    assert err.startswith("carwatch: error: CARWATCH_STORE: ") and "rocksdb://" in err
    assert len(err.strip().splitlines()) == 1

"""``carwatch web`` and ``carwatch alerts ack``: one clear line on what cannot work, exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.web.auth import hash_password, load_users, verify_password

REPO = Path(__file__).resolve().parents[3]


def carwatch(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARWATCH_UI_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=REPO,
        env={**clean, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("carwatch: error: ") and done.stderr.count("\n") == 1
    assert words in done.stderr


def test_web_without_users_refuses_to_start(tmp_path: Path) -> None:
    done = carwatch("web", CARWATCH_UI_DATA_DIR=str(tmp_path))
    assert_one_line_error(done, "CARWATCH_UI_USERS_FILE")


def test_web_with_a_broken_users_file_says_which(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users.demo]\npassword_hash = "plain-text"\n')
    done = carwatch("web", CARWATCH_UI_DATA_DIR=str(tmp_path), CARWATCH_UI_USERS_FILE=str(users))
    assert_one_line_error(done, "users.demo needs an argon2 password_hash")


def test_hash_password_reads_stdin_and_the_hash_verifies(tmp_path: Path) -> None:
    done = carwatch("web", "hash-password", stdin="a long enough secret\n")
    assert done.returncode == 0, done.stderr
    users = tmp_path / "users.toml"
    users.write_text(f'[users.demo]\npassword_hash = "{done.stdout.strip()}"\n')
    user = load_users(users)["demo"]
    assert verify_password(user, "a long enough secret")
    assert not verify_password(user, "another secret")
    assert_one_line_error(carwatch("web", "hash-password", stdin="short\n"), "8 characters")


@pytest.mark.parametrize("exists", [False, True])
def test_ack_of_an_unknown_alert_is_a_usage_error(tmp_path: Path, exists: bool) -> None:
    env = {"CARWATCH_UI_DATA_DIR": str(tmp_path), "CARWATCH_BROKER_URL": "kafka://127.0.0.1:9"}
    if exists:
        from streams.web.db import connect
        from streams.web.schema import migrate

        migrate(connect(f"sqlite:///{tmp_path / 'web.db'}"))
    done = carwatch("alerts", "ack", "no-such-alert", **env)
    assert_one_line_error(done, "unknown alert" if exists else "start carwatch web first")


def test_hashes_are_salted() -> None:
    assert hash_password("same password") != hash_password("same password")

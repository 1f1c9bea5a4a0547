"""Settings from the environment, and the app factory itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app import create_app
from taskservice.config import load_config
from taskservice.errors import ConfigError
from taskservice.extension import EXTENSION_KEY


def test_defaults(tmp_path: Path):
    config = load_config({}, str(tmp_path))

    assert config == {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'taskservice.sqlite3'}",
        "TASKSERVICE_API_TOKEN": None,
        "TASKSERVICE_CONCURRENCY": 2,
        "TASKSERVICE_TIME_SCALE": 1.0,
        "TASKSERVICE_FAILURE_RATE": 0.0,
        "TASKSERVICE_LOCK_TIMEOUT": 15.0,
        "TASKSERVICE_MAX_QUEUED": 100_000,
        "TASKSERVICE_SQLITE_SYNCHRONOUS": "FULL",
        "TASKSERVICE_LEASE_SECONDS": 5.0,
        "TASKSERVICE_RUN_TASKS": True,
        "TASKSERVICE_AMQP_URL": None,
        "TASKSERVICE_AMQP_PREFIX": "taskservice",
    }


def test_values_from_the_environment(tmp_path: Path):
    environ = {
        "DATABASE_URL": "sqlite:////data/tasks.db",
        "TASKSERVICE_CONCURRENCY": "3",
        "TASKSERVICE_TIME_SCALE": "0.5",
        "TASKSERVICE_FAILURE_RATE": "0.25",
        "TASKSERVICE_SQLITE_SYNCHRONOUS": "normal",
        "TASKSERVICE_AMQP_URL": " amqp://guest:guest@127.0.0.1:5672/%2F ",
        "TASKSERVICE_AMQP_PREFIX": "billing.tasks",
        "TASKSERVICE_LEASE_SECONDS": "2.5",
    }

    config = load_config(environ, str(tmp_path))

    assert config["DATABASE_URL"] == "sqlite:////data/tasks.db"
    assert config["TASKSERVICE_CONCURRENCY"] == 3
    assert config["TASKSERVICE_TIME_SCALE"] == 0.5
    assert config["TASKSERVICE_FAILURE_RATE"] == 0.25
    assert config["TASKSERVICE_SQLITE_SYNCHRONOUS"] == "NORMAL"
    assert config["TASKSERVICE_AMQP_URL"] == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert config["TASKSERVICE_AMQP_PREFIX"] == "billing.tasks"
    assert config["TASKSERVICE_LEASE_SECONDS"] == 2.5


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False), ("TRUE", True)])
def test_an_api_only_replica_on_postgresql(tmp_path: Path, value: str, expected: bool):
    environ = {"DATABASE_URL": "postgresql://h/db", "TASKSERVICE_RUN_TASKS": value}

    assert load_config(environ, str(tmp_path))["TASKSERVICE_RUN_TASKS"] is expected


def test_an_api_only_replica_on_sqlite_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="TASKSERVICE_RUN_TASKS=false needs PostgreSQL"):
        load_config({"TASKSERVICE_RUN_TASKS": "false"}, str(tmp_path))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TASKSERVICE_CONCURRENCY", "two", "TASKSERVICE_CONCURRENCY must be a whole number"),
        ("TASKSERVICE_CONCURRENCY", "2.5", "must be a whole number, got '2.5'"),
        ("TASKSERVICE_CONCURRENCY", "0", "TASKSERVICE_CONCURRENCY must be between 1 and 64"),
        ("TASKSERVICE_FAILURE_RATE", "1.5", "TASKSERVICE_FAILURE_RATE must be between 0 and 1"),
        ("TASKSERVICE_FAILURE_RATE", "nan", "must be between"),
        ("TASKSERVICE_TIME_SCALE", "-1", "TASKSERVICE_TIME_SCALE must be between"),
        ("TASKSERVICE_MAX_QUEUED", "0", "TASKSERVICE_MAX_QUEUED must be between 1 and 1000000000"),
        ("TASKSERVICE_MAX_QUEUED", "lots", "TASKSERVICE_MAX_QUEUED must be a whole number"),
        ("TASKSERVICE_TIME_SCALE", "fast", "TASKSERVICE_TIME_SCALE must be a number"),
        (
            "TASKSERVICE_SQLITE_SYNCHRONOUS",
            "OFF",
            "TASKSERVICE_SQLITE_SYNCHRONOUS must be one of FULL, NORMAL, got 'OFF'",
        ),
        ("DATABASE_URL", "sqlite://", "in-memory SQLite"),
        ("DATABASE_URL", "sqlite:///:memory:", "in-memory SQLite"),
        ("DATABASE_URL", "mysql://root@localhost/tasks", "mysql is not supported"),
        ("DATABASE_URL", "not a url", "DATABASE_URL is not a database URL"),
        (
            "TASKSERVICE_AMQP_URL",
            "http://127.0.0.1:5672",
            "TASKSERVICE_AMQP_URL is not an AMQP URL",
        ),
        ("TASKSERVICE_AMQP_URL", "amqp://h:port/", "TASKSERVICE_AMQP_URL is not a valid AMQP URL"),
        ("TASKSERVICE_AMQP_URL", "amqp://h/?heartbeat=x", "is not a valid AMQP URL"),
        ("TASKSERVICE_AMQP_PREFIX", "amq.mine", "TASKSERVICE_AMQP_PREFIX must be 1 to 100"),
        ("TASKSERVICE_AMQP_PREFIX", ".hidden", "not starting with '.'"),
        ("TASKSERVICE_AMQP_PREFIX", "with space", "got 'with space'"),
        ("TASKSERVICE_LEASE_SECONDS", "1", "TASKSERVICE_LEASE_SECONDS must be between 2 and 600"),
        ("TASKSERVICE_RUN_TASKS", "maybe", "TASKSERVICE_RUN_TASKS must be true or false"),
        ("TASKSERVICE_AMQP_PREFIX", "x" * 101, "TASKSERVICE_AMQP_PREFIX must be 1 to 100"),
    ],
)
def test_malformed_settings_are_refused(tmp_path: Path, name: str, value: str, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config({name: value}, str(tmp_path))


@pytest.mark.parametrize(
    "token", ["short-secret", "a secret with spaces in it", "sécret-sécret-sécret"]
)
def test_a_weak_or_unsendable_token_is_refused_and_not_echoed(tmp_path: Path, token: str):
    with pytest.raises(ConfigError, match="TASKSERVICE_API_TOKEN must be at least 16") as error:
        load_config({"TASKSERVICE_API_TOKEN": token}, str(tmp_path))
    assert token not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "secret-password-in-a-bad-url"),
        ("TASKSERVICE_AMQP_URL", "amqp://user:secret@host:notaport/"),
        ("TASKSERVICE_AMQP_URL", "secret://user:secret@host/"),
    ],
)
def test_a_malformed_url_is_not_echoed(tmp_path: Path, name: str, value: str):
    """A URL may carry a password; the error must not print it."""
    with pytest.raises(ConfigError) as error:
        load_config({name: value}, str(tmp_path))
    assert "secret" not in str(error.value)


def test_factory_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'env.sqlite3'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("TASKSERVICE_CONCURRENCY", "3")

    app = create_app(start_pool=False)
    try:
        assert app.config["DATABASE_URL"] == url
        assert app.extensions[EXTENSION_KEY].concurrency == 3
        assert (tmp_path / "env.sqlite3").exists()
    finally:
        app.extensions[EXTENSION_KEY].close()


def test_test_config_overrides_the_environment(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'override.sqlite3'}"

    app = create_app({"DATABASE_URL": url, "TESTING": True}, start_pool=False)
    try:
        assert app.testing
        assert app.config["DATABASE_URL"] == url
        assert app.extensions[EXTENSION_KEY].pool is None
    finally:
        app.extensions[EXTENSION_KEY].close()


@pytest.mark.parametrize(("setting", "pragma"), [("FULL", 2), ("NORMAL", 1)])
def test_the_sqlite_sync_setting_reaches_the_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: str, pragma: int
):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'sync.sqlite3'}")
    monkeypatch.setenv("TASKSERVICE_SQLITE_SYNCHRONOUS", setting)

    app = create_app(start_pool=False)
    try:
        with app.extensions[EXTENSION_KEY].db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
    finally:
        app.extensions[EXTENSION_KEY].close()


def test_pool_starts_with_the_app(pool_app):
    pool = pool_app.extensions[EXTENSION_KEY].pool
    assert pool is not None
    assert pool.health().workers_alive == 2

"""The schema migrations build exactly the schema the models describe."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from taskservice.db import Database
from taskservice.models import Base

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def differences(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_migrations_match_the_models(db: Database):
    db.upgrade_schema()

    assert differences(db) == []


def test_upgrading_twice_changes_nothing(db: Database):
    db.upgrade_schema()
    db.upgrade_schema()

    assert differences(db) == []


def test_downgrade_removes_everything(db: Database):
    db.upgrade_schema()
    config = Config()
    config.set_main_option("script_location", "taskservice:migrations")
    with db.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        connection.commit()

    assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}


# Imports first, then waits for the word to go, so that all starters migrate at once.
STARTER = """
import sys
from taskservice.db import Database
database = Database(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
database.upgrade_schema()
"""


def test_concurrent_starts_migrate_once(database_url: str):
    """Processes starting together on an empty database must not race to create it."""
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, database_url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for starter in starters:
        assert starter.stdout is not None
        assert starter.stdout.readline() == "ready\n"
    for starter in starters:
        assert starter.stdin is not None
        starter.stdin.write("go\n")
        starter.stdin.flush()
    results = [(starter.communicate(timeout=60)[1], starter.returncode) for starter in starters]
    failures = [error for error, returncode in results if returncode != 0]

    assert failures == []
    checker = Database(database_url)
    try:
        assert differences(checker) == []
    finally:
        checker.dispose()


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", "taskservice:migrations")
    config.attributes["connection"] = connection
    return config


def test_the_counts_start_from_the_tasks_already_there(db: Database):
    with db.engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0001")
        rows = [("Completed", "high"), ("Completed", "high"), ("In Queue", "low")]
        for status, priority in rows:
            connection.execute(
                text(
                    "INSERT INTO tasks (priority, duration, status, create_time, attempts)"
                    " VALUES (:priority, 1, :status, CURRENT_TIMESTAMP, 0)"
                ),
                {"status": status, "priority": priority},
            )
        connection.commit()

    db.upgrade_schema()

    with db.engine.connect() as connection:
        counts = connection.execute(text("SELECT status, priority, count FROM task_counts"))
        nonzero = {(status, priority): count for status, priority, count in counts if count}
    assert nonzero == {("Completed", "high"): 2, ("In Queue", "low"): 1}

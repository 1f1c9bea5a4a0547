"""The schema migrations build exactly the schema the models describe."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from taskservice.db import Database
from taskservice.models import Base


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

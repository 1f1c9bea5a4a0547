"""The database layer: SQLite settings, transactions and timestamps."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError

from taskservice.db import Database, sqlite_path
from taskservice.models import Task, TaskPriority, TaskStatus


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """These tests are about SQLite's settings: SQLite only."""
    return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    database.upgrade_schema()
    yield database
    database.dispose()


def other_connection(database_url: str) -> sqlite3.Connection:
    path = sqlite_path(database_url)
    assert path is not None
    return sqlite3.connect(path, timeout=0, isolation_level=None)


def test_sqlite_runs_in_wal_mode_with_full_sync(db: Database):
    with db.reading() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 5000


@pytest.mark.parametrize(("setting", "value"), [("FULL", 2), ("NORMAL", 1)])
def test_the_sync_setting_applies_to_every_connection(database_url: str, setting: str, value: int):
    db = Database(database_url, sqlite_synchronous=setting)
    try:
        with db.reading() as session:
            assert session.execute(text("PRAGMA synchronous")).scalar() == value
        with db.engine.connect() as pooled:
            assert pooled.execute(text("PRAGMA synchronous")).scalar() == value
    finally:
        db.dispose()


def test_an_unknown_sync_setting_is_refused(database_url: str):
    with pytest.raises(ValueError, match="unknown SQLite synchronous setting 'OFF'"):
        Database(database_url, sqlite_synchronous="OFF")


def test_a_write_transaction_holds_the_write_lock_from_its_start(db: Database, database_url: str):
    other = other_connection(database_url)
    # Nothing written yet, but the lock is taken: a writer that would read
    # first and write later cannot deadlock on an upgrade.
    with db.writing(), pytest.raises(sqlite3.OperationalError, match="database is locked"):
        other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()


def test_reads_do_not_wait_for_a_writer(db: Database, database_url: str):
    other = other_connection(database_url)
    other.execute("BEGIN IMMEDIATE")
    try:
        with db.reading() as session:
            assert session.execute(text("SELECT count(*) FROM tasks")).scalar() == 0
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_failed_write_is_rolled_back(db: Database):
    def write_then_fail() -> None:
        with db.writing() as session:
            session.add(new_task(datetime.now(UTC)))
            session.flush()
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        write_then_fail()

    with db.reading() as session:
        assert session.execute(text("SELECT count(*) FROM tasks")).scalar() == 0


def new_task(create_time: datetime) -> Task:
    return Task(
        duration=1,
        priority=TaskPriority.LOW,
        status=TaskStatus.IN_QUEUE,
        create_time=create_time,
        attempts=0,
    )


def test_times_are_stored_as_utc_and_read_back_aware(db: Database):
    moscow = timezone(timedelta(hours=3))
    created = datetime(2026, 11, 22, 17, 3, 5, 123456, tzinfo=moscow)
    with db.writing() as session:
        session.add(new_task(created))
    db.remove_session()

    with db.reading() as session:
        task = session.get(Task, 1)
        raw = session.execute(text("SELECT create_time, priority, status FROM tasks")).one()

    assert task is not None
    assert task.create_time == created
    assert task.create_time.tzinfo is UTC
    assert raw == ("2026-11-22 14:03:05.123456", "low", "In Queue")


def test_naive_times_are_refused(db: Database):
    naive = datetime(2026, 11, 22, 14, 3, 5)
    with db.writing() as session:
        session.add(new_task(naive))
        with pytest.raises(StatementError, match="naive datetimes"):
            session.flush()
        session.rollback()


def test_transactions_do_not_nest(db: Database):
    with db.reading(), pytest.raises(RuntimeError, match="already open"), db.writing():
        pass


def test_writes_do_not_nest(db: Database):
    with db.writing(), pytest.raises(RuntimeError, match="already open"), db.writing():
        pass

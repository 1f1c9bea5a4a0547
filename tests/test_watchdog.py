"""Losing the pool lock: noticed, reported once, and no task starts after it."""

from __future__ import annotations

import threading

import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from taskservice import tasks
from taskservice.extension import EXTENSION_KEY, get_extension
from taskservice.models import TaskPriority, TaskStatus
from taskservice.pool import LOCK_LOSS_GRACE, LockWatchdog
from taskservice.pool.lock import ADVISORY_LOCK_CLASS, PostgresAdvisoryLock
from taskservice.runner import TaskRunner, sleep_body
from tests.conftest import AppFactory


class FakeLock:
    can_be_lost = True

    def __init__(self) -> None:
        self.held = True

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def is_held(self) -> bool:
        return self.held


def test_the_watchdog_reports_a_lost_lock_once():
    lock = FakeLock()
    watchdog = LockWatchdog(lock, interval=0.01)
    reports: list[int] = []
    reported = threading.Event()

    def on_lost() -> None:
        reports.append(1)
        reported.set()

    watchdog.start(on_lost)
    watchdog.arm()
    assert not watchdog.lost.is_set()
    lock.held = False
    assert reported.wait(10)
    watchdog.stop()

    assert watchdog.lost.is_set()
    assert reports == [1]


def test_a_lock_not_taken_yet_is_not_lost():
    """A process still waiting for its database holds no lock yet: nothing is lost."""
    lock = FakeLock()
    lock.held = False
    watchdog = LockWatchdog(lock)

    assert watchdog.check() is True
    assert not watchdog.lost.is_set()
    watchdog.arm()
    assert watchdog.check() is False
    assert watchdog.lost.is_set()


def test_check_while_held():
    watchdog = LockWatchdog(FakeLock())
    watchdog.arm()

    assert watchdog.check() is True
    assert not watchdog.lost.is_set()


def test_no_task_starts_once_the_lock_is_lost(app: Flask):
    with app.app_context():
        extension = get_extension()
    task_id = extension.service.create(name=None, duration=1, priority=TaskPriority.LOW).id
    runner = TaskRunner(extension.db, sleep_body(0, 0), may_claim=lambda: False)

    runner(task_id, slot=1)

    task = extension.service.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.IN_QUEUE, 0)


@pytest.mark.postgresql
def test_a_postgres_lock_is_lost_with_its_connection(postgres_url: str):
    lock = PostgresAdvisoryLock(postgres_url, timeout=1)
    lock.acquire()
    assert lock.is_held()

    terminate_lock_connection(postgres_url)

    assert not lock.is_held()
    lock.release()  # nothing left to release; it must not raise


def terminate_lock_connection(database_url: str) -> None:
    """End the session that holds the pool lock of the URL's schema, as a network fault would."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
                " AND classid = CAST(:lock_class AS oid)"
                " AND objid = CAST(hashtext(current_schema()) AS oid)"
            ),
            {"lock_class": ADVISORY_LOCK_CLASS},
        ).scalar()
    engine.dispose()
    assert killed == 1


# The pool of one SQLite database (on PostgreSQL, replicas take over through leases).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_successor_waits_before_requeuing_running_tasks(
    make_app: AppFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """The lock can be lost while its holder lives (a dropped connection, a replaced file)."""
    dead = make_app(start_pool=False)
    with dead.app_context():
        service = get_extension().service
        task_id = service.create(name=None, duration=1, priority=TaskPriority.LOW).id
    db = dead.extensions[EXTENSION_KEY].db
    with db.writing() as session:  # it was running when its holder lost the lock
        tasks.claim_task(session, task_id, slot=1)
    waits: list[float] = []
    monkeypatch.setattr("taskservice.pool.watchdog.sleep", waits.append)

    successor = make_app()

    assert waits == [LOCK_LOSS_GRACE]
    assert successor.extensions[EXTENSION_KEY].pool is not None

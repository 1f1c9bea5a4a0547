"""LISTEN/NOTIFY on the real PostgreSQL: a committed create wakes the listener; a rollback not."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from taskservice import tasks
from taskservice.db import Database
from taskservice.models import TaskPriority
from taskservice.pool.notify import Listener, notify_created
from tests.helpers import wait_for


class Wakes:
    """Counts the listener's calls."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def __call__(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
def listener(pg: Database, wakes: Wakes) -> Iterator[Listener]:
    # A poll far longer than the test's waits: a wake-up within them is a notification.
    listening = Listener(pg.url, wakes, poll=30.0)
    listening.start()
    assert listening.listening.wait(10)
    wait_for(lambda: wakes.count >= 1)  # the wake-up after it started listening
    yield listening
    assert listening.stop()


def create(db: Database, *, commit: bool) -> None:
    try:
        with db.writing() as session:
            tasks.create_task(session, name=None, duration=1, priority=TaskPriority.LOW)
            notify_created(session)
            if not commit:
                raise RuntimeError("roll back")
    except RuntimeError:
        pass
    finally:
        db.remove_session()


def test_a_committed_create_wakes_the_listener(pg: Database, listener: Listener, wakes: Wakes):
    before = wakes.count

    create(pg, commit=True)

    wait_for(lambda: wakes.count > before, timeout=10)


def test_a_create_that_rolls_back_wakes_nobody(pg: Database, listener: Listener, wakes: Wakes):
    before = wakes.count

    create(pg, commit=False)
    create(pg, commit=True)  # a marker: its wake-up comes after the first one's would have

    wait_for(lambda: wakes.count > before, timeout=10)
    assert wakes.count == before + 1


def test_the_listener_comes_back_after_its_session_is_ended(
    pg: Database, listener: Listener, wakes: Wakes
):
    with pg.engine.connect() as connection:
        ended = (
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query = format('LISTEN %I', 'taskservice.' || current_schema())"
                    " AND datname = current_database()"
                )
            )
            .scalars()
            .all()
        )
    assert ended == [True]
    wait_for(lambda: not listener.listening.is_set() or wakes.count > 1, timeout=10)
    wait_for(listener.listening.is_set, timeout=10)
    before = wakes.count

    create(pg, commit=True)

    wait_for(lambda: wakes.count > before, timeout=10)


def test_without_notifications_the_listener_still_polls(pg: Database, wakes: Wakes):
    polling = Listener(pg.url, wakes, poll=0.05)
    polling.start()
    try:
        wait_for(lambda: wakes.count >= 5, timeout=10)
    finally:
        assert polling.stop()

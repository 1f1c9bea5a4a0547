"""LISTEN/NOTIFY on the real PostgreSQL: a replica's notifier wakes every listener of its schema."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from taskservice.db import Database
from taskservice.pool.notify import Listener, Notifier, notify_created
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


@pytest.fixture
def notifier(pg: Database) -> Iterator[Notifier]:
    notifying = Notifier(pg.engine)
    notifying.start()
    yield notifying
    assert notifying.stop()


def test_a_poke_wakes_every_listener_of_the_schema(
    pg: Database, listener: Listener, wakes: Wakes, notifier: Notifier
):
    other_wakes = Wakes()
    other = Listener(pg.url, other_wakes, poll=30.0)
    other.start()
    try:
        wait_for(lambda: other_wakes.count >= 1)  # it listens
        before, other_before = wakes.count, other_wakes.count

        notifier.poke()

        wait_for(lambda: wakes.count > before and other_wakes.count > other_before, timeout=10)
    finally:
        assert other.stop()


def test_pokes_that_come_together_make_few_notifications(
    pg: Database, listener: Listener, wakes: Wakes, notifier: Notifier
):
    before = wakes.count

    for _ in range(200):  # creates committing faster than one notification is sent
        notifier.poke()

    wait_for(lambda: wakes.count > before, timeout=10)
    # Each notification takes a round trip; the pokes came in far less: most were merged.
    assert 1 <= notifier.sent < 100


def test_a_notification_is_sent_only_when_its_transaction_commits(
    pg: Database, listener: Listener, wakes: Wakes
):
    before = wakes.count
    for commit in (False, True):  # the second is a marker: its wake-up follows the first's
        try:
            with pg.writing() as session:
                notify_created(session)
                if not commit:
                    raise RuntimeError("roll back")
        except RuntimeError:
            pass
        finally:
            pg.remove_session()

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

    notify(pg)

    wait_for(lambda: wakes.count > before, timeout=10)


def notify(db: Database) -> None:
    with db.engine.connect() as connection:
        notify_created(connection)
        connection.commit()


def test_without_notifications_the_listener_still_polls(pg: Database, wakes: Wakes):
    polling = Listener(pg.url, wakes, poll=0.05)
    polling.start()
    try:
        wait_for(lambda: wakes.count >= 5, timeout=10)
    finally:
        assert polling.stop()

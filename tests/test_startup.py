"""The service's start: tried again while the database does not answer, refused on anything else."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from taskservice.errors import ConfigError, DatabaseInUse
from taskservice.startup import Startup
from tests.helpers import wait_for


def database_down() -> OperationalError:
    """What SQLAlchemy raises when the server refuses the connection (no SQLSTATE)."""
    return OperationalError("connect", {}, Exception("connection refused"))


class FlakyStart:
    """A start that fails with the given errors, one per try, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.tries = 0

    def __call__(self, _stopping: threading.Event) -> bool:
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        return True


def test_a_start_that_succeeds_is_ready_at_once():
    startup = Startup(FlakyStart())

    startup.run()

    assert startup.ready.is_set()
    assert startup.waiting_for is None


def test_a_database_that_does_not_answer_is_waited_for_in_the_background():
    start = FlakyStart(database_down(), database_down(), DatabaseInUse("held"))
    startup = Startup(start)
    try:
        startup.run()
        assert not startup.ready.is_set()
        assert startup.waiting_for == "the database does not answer (OperationalError)"

        wait_for(startup.ready.is_set, timeout=10)
    finally:
        startup.stop()

    assert start.tries == 4
    assert startup.waiting_for is None


def sqlite_error(code: int) -> OperationalError:
    """An error of SQLite with its result code, as sqlite3 raises it."""
    orig = sqlite3.OperationalError("sqlite says no")
    orig.sqlite_errorcode = code  # type: ignore[attr-defined]
    return OperationalError("BEGIN", {}, orig)


def test_a_busy_sqlite_database_is_waited_for():
    startup = Startup(FlakyStart(sqlite_error(5)))  # SQLITE_BUSY
    try:
        startup.run()
        wait_for(startup.ready.is_set, timeout=10)
    finally:
        startup.stop()


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("bad"),
        # Read-only and cannot-open are the file's permissions: no retry cures them.
        sqlite_error(8),
        sqlite_error(14),
        DatabaseInUse("another process runs the task pool on this database"),
        PermissionError(13, "Permission denied"),
        # An error no retry cures (a bug) is not an outage.
        ProgrammingError("SELECT", {}, Exception("relation does not exist")),
    ],
)
def test_anything_but_an_outage_at_the_first_start_is_raised(error: Exception):
    startup = Startup(FlakyStart(error))

    with pytest.raises(type(error)):
        startup.run()
    assert not startup.ready.is_set()


def test_stop_ends_the_retries():
    start = FlakyStart(*[database_down() for _ in range(1000)])
    startup = Startup(start)
    startup.run()

    startup.stop()

    assert not startup.ready.is_set()
    assert "startup" not in {thread.name for thread in threading.enumerate()}


def test_a_stop_waits_for_the_try_in_progress_and_no_worker_starts_after_it():
    entered, release = threading.Event(), threading.Event()
    starts: list[bool] = []

    def slow_start(stopping: threading.Event) -> bool:
        if not starts:
            starts.append(False)
            raise database_down()
        entered.set()
        release.wait(10)
        starts.append(not stopping.is_set())  # what start_service does before the workers
        return starts[-1]

    startup = Startup(slow_start)
    startup.run()
    assert entered.wait(10)

    assert startup.stop(timeout=0.05) is False  # the try holds on
    release.set()
    assert startup.stop(timeout=10) is True

    assert starts == [False, False]
    assert not startup.ready.is_set()

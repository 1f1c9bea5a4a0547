"""The suite isolates its tests: a leak fails the test, a restart fails only the tests using it.

Each test here runs a small pytest session of its own, with this suite's
conftest, in a child process, and reads the outcome.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, event, text

from tests.conftest import drop_schema

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

INNER_CONFTEST = """
import tests.conftest
import tests.leaks

pytest_plugins = ["tests.conftest"]

# These leaks never end and this server never comes back: do not wait as long as the suite does.
tests.leaks.GRACE = 0.5
tests.conftest.DROP_TIMEOUT = 0.5


def pytest_configure(config):
    config.addinivalue_line("markers", "postgresql: runs against the PostgreSQL server")
"""

LEAKY_TESTS = """
import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine

kept = []  # what the tests leave behind stays reachable: only the leak check sees it
finish = threading.Event()


@pytest.fixture
def finished_in_teardown():
    yield
    finish.set()


def test_leaves_a_thread():
    threading.Thread(target=threading.Event().wait, name="leaky-thread", daemon=True).start()


def test_leaves_a_child_process():
    kept.append(subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE))


def test_leaves_an_sqlite_connection(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'leaky.sqlite3'}")
    kept.append(engine.connect())


@pytest.fixture
def dies_in_teardown():
    die = threading.Event()

    def serve():
        die.wait()
        raise ConnectionResetError("the server went away")

    threading.Thread(target=serve, name="dying-thread").start()
    yield
    die.set()


def test_whose_thread_dies_in_teardown(dies_in_teardown):
    pass


def test_whose_thread_ends_in_teardown(finished_in_teardown):
    threading.Thread(target=finish.wait, name="finishing-thread").start()


def test_that_cleans_up(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'tidy.sqlite3'}")
    with engine.connect():
        pass
    engine.dispose()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


HELD_SCHEMA_TESTS = """
from pathlib import Path

from sqlalchemy import create_engine, text

kept = []


def test_leaves_a_transaction_in_its_schema(postgres_url):
    Path("schemas.txt").write_text(postgres_url.rpartition("%3D")[2])
    connection = create_engine(postgres_url).connect()
    connection.execute(text("CREATE TABLE held (n integer)"))
    connection.execute(text("SELECT * FROM held"))  # its locks would keep the schema from a drop
    kept.append(connection)
"""

RESTART_TESTS = """
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event, text

from taskservice.db import Database
from tests.conftest import POSTGRES_URL
from tests.helpers import insert_task
from tests.leaks import open_connections


def restart_server():
    \"\"\"What a restart of the server does to this session: it ends every connection.\"\"\"
    backends = [
        connection.info.backend_pid
        for connection in open_connections()
        if not isinstance(connection, sqlite3.Connection)
    ]
    assert backends  # the admin engine's at least
    with psycopg.connect(POSTGRES_URL, autocommit=True) as server:
        for pid in backends:
            # With a timeout, it returns once the backend is gone.
            server.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def note_schema(url):
    with Path("schemas.txt").open("a") as notes:
        notes.write(url.rpartition("%3D")[2] + "\\n")


@pytest.fixture(scope="session")
def server_away(postgres_admin, postgres_schemas):
    \"\"\"While set, the session cannot connect, as in a long restart; it is back at the end.\"\"\"
    away = threading.Event()

    @event.listens_for(postgres_admin, "do_connect")
    def refuse(*_args):
        if away.is_set():
            raise psycopg.OperationalError("the server is starting up")

    yield away
    away.clear()  # before the session's schemas are swept: this fixture depends on them


def test_in_a_transaction_as_the_server_restarts(postgres_url):
    note_schema(postgres_url)
    db = Database(postgres_url)
    try:
        with db.reading() as session:
            session.execute(text("SELECT 1"))
            restart_server()
            session.execute(text("SELECT 1"))
    finally:
        db.dispose()


def test_on_sqlite_as_the_server_restarts(tmp_path):
    restart_server()
    db = Database(f"sqlite:///{tmp_path / 'tasks.sqlite3'}")
    db.upgrade_schema()
    try:
        assert insert_task(db) == 1
    finally:
        db.dispose()


def test_the_next_one(db):
    if db.url.startswith("postgresql"):
        note_schema(db.url)
    assert insert_task(db) == 1


def test_as_the_server_stays_away(postgres_url, postgres_admin, server_away):
    note_schema(postgres_url)
    server_away.set()
    restart_server()
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose sessions have this suite's fixtures and leak check."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("COLUMNS", "1000")  # the summary lines in full
    pytester.makeconftest(INNER_CONFTEST)
    return pytester


def run(inner: pytest.Pytester) -> pytest.RunResult:
    return inner.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)


def schemas_noted(inner: pytest.Pytester) -> list[str]:
    return (inner.path / "schemas.txt").read_text().split()


def existing(admin: Engine, schemas: list[str]) -> list[str]:
    with admin.connect() as connection:
        found = connection.execute(
            text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"),
            {"names": schemas},
        )
        return list(found.scalars())


def test_what_a_test_leaves_behind_fails_it_by_name(inner: pytest.Pytester):
    inner.makepyfile(test_leaky=LEAKY_TESTS)

    result = run(inner)

    result.assert_outcomes(passed=6, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR test_leaky.py::test_leaves_a_thread - Failed: the test left behind:",
            "  thread 'leaky-thread'",
            "ERROR test_leaky.py::test_leaves_a_child_process - Failed: the test left behind:",
            "  child process * -c input()",
            "ERROR test_leaky.py::test_leaves_an_sqlite_connection - *",
            "  connection SQLite */leaky.sqlite3 opened at test_leaky.py:*",
            # Not the next test's error, as when its exception was reported after the test.
            "ERROR test_leaky.py::test_whose_thread_dies_in_teardown - *Exception in thread"
            " dying-thread*",
        ]
    )
    result.stdout.no_fnmatch_line("*finishing-thread*")


@pytest.mark.postgresql
def test_a_schema_is_dropped_although_a_transaction_holds_it(
    inner: pytest.Pytester, postgres_admin: Engine
):
    inner.makepyfile(test_held=HELD_SCHEMA_TESTS)

    result = run(inner)

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "  connection PostgreSQL backend * options=-csearch_path=taskservice_test_*"
            " opened at test_held.py:*",
        ]
    )
    assert existing(postgres_admin, schemas_noted(inner)) == []


@pytest.mark.postgresql
def test_a_restart_of_the_server_fails_only_the_tests_using_it(
    inner: pytest.Pytester, postgres_admin: Engine
):
    inner.makepyfile(test_restart=RESTART_TESTS)

    result = run(inner)

    result.assert_outcomes(passed=4, failed=1, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_restart.py::test_in_a_transaction_as_the_server_restarts - *Operational*",
            # Its schema is dropped at the end of the session instead.
            "ERROR test_restart.py::test_as_the_server_stays_away - *the server is starting up*",
        ]
    )
    schemas = schemas_noted(inner)
    assert len(schemas) == 3
    assert existing(postgres_admin, schemas) == []


@pytest.mark.postgresql
def test_a_schema_is_dropped_once_the_server_is_back(postgres_admin: Engine, postgres_url: str):
    name = postgres_url.rpartition("%3D")[2]
    refusals = iter(range(3))

    @event.listens_for(postgres_admin, "do_connect")
    def refuse(*_args: object) -> None:
        if next(refusals, None) is not None:
            raise psycopg.OperationalError("the server is starting up")

    try:
        postgres_admin.dispose()  # the restart took its connections
        drop_schema(postgres_admin, name)
    finally:
        event.remove(postgres_admin, "do_connect", refuse)

    assert next(refusals, None) is None  # the drop was refused three times, then done
    assert existing(postgres_admin, [name]) == []

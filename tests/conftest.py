"""Fixtures: an isolated database per test, apps with and without the pool; a leak check."""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from app import create_app
from taskservice.broker import Topology
from taskservice.db import Database
from taskservice.extension import EXTENSION_KEY
from tests.amqp import AMQP_URL, BrokerClient, delete_topology, skip_without_broker
from tests.leaks import Snapshot, mark_session_scoped

# Tasks of "duration 10" take 10 ms: the code path is the real one, only faster.
FAST = 0.001

AppFactory = Callable[..., Flask]


# Where the PostgreSQL tests create their throw-away databases. CI sets
# TASKSERVICE_REQUIRE_POSTGRES=1 so that an unreachable server fails them.
POSTGRES_URL = os.environ.get(
    "TASKSERVICE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("TASKSERVICE_REQUIRE_POSTGRES") == "1"


# How long dropping a test's schema is retried: long enough for the server to restart.
DROP_TIMEOUT = 30.0
# Backends that hold a lock on a schema or on a table in it: DROP SCHEMA would wait for them.
# A transaction that creates a table locks the schema too (its new table is not visible here).
_SCHEMA_LOCKERS = text(
    "SELECT DISTINCT locks.pid FROM pg_locks AS locks, pg_namespace AS schema"
    " WHERE schema.nspname = :schema AND locks.pid <> pg_backend_pid()"
    " AND locks.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND (locks.relation IN (SELECT oid FROM pg_class WHERE relnamespace = schema.oid)"
    " OR (locks.classid = 'pg_namespace'::regclass AND locks.objid = schema.oid))"
)


# The leak check. A test's snapshot is taken before its first fixture; it is
# compared with what is alive after the last fixture's teardown, in a
# finalizer that runs after every fixture's (it is added before the first
# fixture's), and before pytest collects the exceptions of threads: one that a
# leaked thread raises as it ends is reported in its own test, not the next.
# What fixtures of wider scope make is left alone: it outlives tests by design.
_long_lived = Snapshot()
_before_test: dict[str, Snapshot] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Note what is alive before the test's first fixture."""
    _before_test[item.nodeid] = Snapshot.take()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    """Check the test after its fixtures; let fixtures of wider scope make what outlives it."""
    if fixturedef.scope == "function":
        before = _before_test.pop(request.node.nodeid, None)
        if before is not None:  # the test's first fixture
            request.node.addfinalizer(functools.partial(fail_on_leaks, before))
        return (yield)
    before = Snapshot.take()
    try:
        return (yield)
    finally:
        _long_lived.allow(Snapshot.take().since(before))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Check a test that had no fixture to be checked after."""
    before = _before_test.pop(item.nodeid, None)
    if before is not None:
        fail_on_leaks(before)


def fail_on_leaks(before: Snapshot) -> None:
    """Fail the test if it left a thread, a child process or a database connection behind."""
    before.allow(_long_lived)
    leaked = before.leaks()
    if leaked:
        pytest.fail("the test left behind:\n  " + "\n  ".join(leaked), pytrace=False)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An autocommit engine on the PostgreSQL server, or a skip if there is none.

    It outlives a restart of the server: each checkout pings the connection
    and replaces a dead one.
    """
    engine = create_engine(
        POSTGRES_URL,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,
        connect_args={"application_name": "taskservice tests", "connect_timeout": 5},
    )
    mark_session_scoped(engine)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        reason = f"PostgreSQL is not reachable at {engine.url!r}: {exc.orig}"
        if REQUIRE_POSTGRES:
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


def drop_schema(admin: Engine, name: str) -> None:
    """Drop schema `name`, ending the backends that lock it; retry while the server is away."""
    deadline = time.monotonic() + DROP_TIMEOUT
    while True:
        try:
            with admin.connect() as connection:
                lockers = connection.execute(_SCHEMA_LOCKERS, {"schema": name}).scalars().all()
                for pid in lockers:
                    connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                connection.exec_driver_sql("SET lock_timeout = '5s'")
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                return
        except OperationalError:
            # A restart, or a locker that came back: try again on a new connection.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the retry interval, within the deadline


@pytest.fixture(scope="session")
def postgres_schemas(postgres_admin: Engine) -> Iterator[set[str]]:
    """The schemas this session created and has not dropped yet; any left are dropped at its end.

    Only this session's: another run may share the database.
    """
    names: set[str] = set()
    yield names
    for name in sorted(names):
        drop_schema(postgres_admin, name)
        names.discard(name)


@pytest.fixture
def postgres_url(postgres_admin: Engine, postgres_schemas: set[str]) -> Iterator[str]:
    """A fresh PostgreSQL schema for this test (much faster than a database), dropped at its end.

    It is dropped even when the test fails or the server restarted meanwhile.
    """
    name = f"taskservice_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    postgres_schemas.add(name)
    url = postgres_admin.url.update_query_dict({"options": f"-csearch_path={name}"})
    yield url.render_as_string(hide_password=False)
    drop_schema(postgres_admin, name)
    postgres_schemas.discard(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for this test: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """This test's database, migrated, without an app."""
    yield from _migrated(database_url)


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    """A fresh PostgreSQL schema, migrated, for what runs on PostgreSQL only."""
    yield from _migrated(postgres_url)


def _migrated(url: str) -> Iterator[Database]:
    database = Database(url)
    database.upgrade_schema()
    yield database
    database.dispose()


@pytest.fixture
def make_app(database_url: str) -> Iterator[AppFactory]:
    """Build apps on this test's database; each is closed at the end of the test."""
    apps: list[Flask] = []

    def make(start_pool: bool = True, **config: Any) -> Flask:
        settings = {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "TASKSERVICE_TIME_SCALE": FAST,
            "TASKSERVICE_LOCK_TIMEOUT": 0.2,
            **config,
        }
        app = create_app(settings, start_pool=start_pool)
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        app.extensions[EXTENSION_KEY].close(timeout=5)


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """An app without the pool: tasks stay queued unless a test runs them."""
    return make_app(start_pool=False)


@pytest.fixture
def pool_app(make_app: AppFactory) -> Flask:
    """An app whose pool runs tasks 1000 times faster than real time."""
    return make_app()


class Gate:
    """Stands in for the task body's sleep: tasks block until the gate opens."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self._entered = threading.Semaphore(0)

    def sleep(self, _seconds: float) -> None:
        self._entered.release()
        self.open.wait(30)

    def wait_for_entries(self, count: int) -> None:
        """Block until `count` tasks are inside their body."""
        for _ in range(count):
            assert self._entered.acquire(timeout=30), "a task did not start"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Task bodies wait on this gate instead of sleeping; it opens at the end of the test."""
    gate = Gate()
    monkeypatch.setattr("taskservice.runner.time", SimpleNamespace(sleep=gate.sleep))
    yield gate
    gate.open.set()


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The broker's URL; the test skips (fails in CI) where none answers."""
    skip_without_broker()
    return AMQP_URL


@pytest.fixture
def amqp_prefix(amqp_url: str) -> Iterator[str]:
    """A prefix of this test's own; its queues and exchange are deleted after it."""
    prefix = f"taskservice-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    left = delete_topology(amqp_url, Topology(prefix))
    if left:
        # Deleted, then declared again by something the test left running.
        delete_topology(amqp_url, Topology(prefix))
        pytest.fail(f"the test left {left} behind: close the app before its prefix goes")


@pytest.fixture
def broker_client(amqp_url: str, amqp_prefix: str) -> Iterator[BrokerClient]:
    """A program of the test's own that talks to the service through the broker."""
    client = BrokerClient(amqp_url, amqp_prefix)
    yield client
    client.close()

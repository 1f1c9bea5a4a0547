"""Fixtures: an isolated database per test, apps with and without the pool; a leak check."""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import OperationalError

from app import create_app
from taskservice.db import Database
from taskservice.extension import EXTENSION_KEY
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
    """An autocommit engine on the PostgreSQL server, or a skip if there is none."""
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
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


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """A fresh PostgreSQL schema for this test (much faster than a database), dropped at its end."""
    name = f"taskservice_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    url = postgres_admin.url.update_query_dict({"options": f"-csearch_path={name}"})
    yield url.render_as_string(hide_password=False)
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')


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
    database = Database(database_url)
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

"""One pool per SQLite database: a second one refuses to start, clearly.

On PostgreSQL replicas share the database (tests/test_replicas.py); there the
advisory lock only keeps a replica from starting beside a pool of a version
from before replicas (the last tests here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from taskservice.db import Database
from taskservice.errors import DatabaseInUse
from taskservice.pool.lock import PostgresAdvisoryLock, SQLiteFileLock, pool_lock_for
from taskservice.service import TaskService
from tests.conftest import AppFactory, Gate
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite's: the one kind of database that takes one pool only."""
    return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"


def test_second_pool_in_the_same_process_is_refused(make_app: AppFactory):
    make_app()

    with pytest.raises(DatabaseInUse, match="another process runs the task pool"):
        make_app()


def test_the_lock_is_free_again_after_close(make_app: AppFactory):
    first = make_app()
    first.extensions["taskservice"].close()

    second = make_app()

    assert second.test_client().get("/health").status_code == 200


def test_apps_without_a_pool_do_not_take_the_lock(make_app: AppFactory):
    make_app(start_pool=False)
    make_app(start_pool=False)
    make_app()


def test_second_process_refuses_to_start(make_app: AppFactory, database_url: str):
    make_app()
    env = {**os.environ, "DATABASE_URL": database_url, "TASKSERVICE_LOCK_TIMEOUT": "0.2"}

    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # gunicorn stops at a worker that exits with 3 while booting, instead of restarting it.
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # no traceback
    assert lines[0].startswith(
        "taskservice cannot start: another process runs the task pool on this database ("
    )
    assert lines[0].endswith("); stop that process first, or set DATABASE_URL to another database")


def test_a_database_it_may_not_write_stops_it_with_one_line(tmp_path: Path):
    # Tests run as root, whom file modes do not stop: the refusal is raised instead.
    script = (
        "import app\n"
        "def refuse(*args, **kwargs):\n"
        "    raise PermissionError(13, 'Permission denied', '/data/tasks.sqlite3.pool.lock')\n"
        "app.create_app = refuse\n"
        "import wsgi\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.sqlite3'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "taskservice cannot start: [Errno 13] Permission denied:"
        f" '/data/tasks.sqlite3.pool.lock'; this process runs as uid {os.getuid()}, which must"
        " be able to write the database's directory"
    ]


@pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def test_each_database_gets_its_kind_of_lock(
    kind: str, database_url: str, request: pytest.FixtureRequest
):
    url = database_url if kind == "sqlite" else request.getfixturevalue("postgres_url")
    db = Database(url)
    try:
        lock = pool_lock_for(db, timeout=0.1)
    finally:
        db.dispose()

    assert type(lock) is (SQLiteFileLock if kind == "sqlite" else PostgresAdvisoryLock)


@pytest.mark.postgresql
def test_a_replica_waits_for_a_pool_from_before_replicas(postgres_url: str):
    """Such a pool holds the advisory lock while it runs: no replica starts beside it."""
    old_pool = PostgresAdvisoryLock(postgres_url, timeout=1)
    old_pool.acquire()
    try:
        with pytest.raises(DatabaseInUse, match="another process runs the task pool"):
            create_replica(postgres_url)
    finally:
        old_pool.release()
    app = create_replica(postgres_url)
    try:
        assert app.extensions["taskservice"].pool.health().workers_alive == 2
    finally:
        app.extensions["taskservice"].close()


def test_a_pool_that_cannot_stop_keeps_the_lock(make_app: AppFactory, gate: Gate):
    app = make_app()
    lock = app.extensions["taskservice"].pool.lock
    try:
        client = app.test_client()
        ids = [client.post("/tasks", json={"duration": 10}).json["id"] for _ in range(2)]
        gate.wait_for_entries(2)

        app.extensions["taskservice"].close(timeout=0)

        # Both tasks still run in this process: a new pool must not start them again.
        with pytest.raises(DatabaseInUse):
            make_app()
        gate.open.set()
        reader = make_app(start_pool=False).test_client()
        wait_for(lambda: all(reader.get(f"/tasks/{i}").json["status"] == "Completed" for i in ids))
        assert [reader.get(f"/tasks/{i}").json["attempts"] for i in ids] == [1, 1]
    finally:
        # The lock is kept until the process exits; the test's end stands for the exit.
        gate.open.set()
        lock.release()


def test_a_failed_start_releases_the_lock(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch):
    def broken_recover(_service: TaskService) -> None:
        raise RuntimeError("recovery failed")

    monkeypatch.setattr(TaskService, "recover", broken_recover)
    with pytest.raises(RuntimeError, match="recovery failed") as failure:
        make_app()
    monkeypatch.undo()

    assert failure.value is not None  # the failed start's frames are still alive here
    assert make_app().extensions["taskservice"].pool is not None


def create_replica(url: str) -> Any:
    settings = {"TESTING": True, "DATABASE_URL": url, "TASKSERVICE_LOCK_TIMEOUT": 0.3}
    return create_app(settings)


# Holds the pool for a moment, as a predecessor that is still exiting would.
PREDECESSOR = """
import time
from app import create_app
app = create_app()
print("holding", flush=True)
time.sleep(0.5)
"""


def test_a_start_waits_for_a_predecessor_to_exit(make_app: AppFactory, database_url: str):
    env = {**os.environ, "DATABASE_URL": database_url}
    predecessor = subprocess.Popen(
        [sys.executable, "-c", PREDECESSOR], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert predecessor.stdout is not None
        assert predecessor.stdout.readline() == "holding\n"

        # The predecessor holds the lock now; without waiting, this start would be refused.
        app = make_app(TASKSERVICE_LOCK_TIMEOUT=30)

        assert app.extensions["taskservice"].pool.lock.is_held()
    finally:
        predecessor.communicate(timeout=30)
    assert predecessor.returncode == 0

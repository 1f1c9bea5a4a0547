"""The SQLite pool lock is the database file's own: no other name or file beside it fools it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from taskservice.errors import DatabaseInUse
from taskservice.extension import EXTENSION_KEY
from tests.conftest import FAST
from tests.server import ROOT

StartPool = Callable[[str], Flask]


@pytest.fixture
def start_pool() -> Iterator[StartPool]:
    """Start apps with their pools on given database URLs; all are closed at the end."""
    apps: list[Flask] = []

    def start(url: str) -> Flask:
        settings = {
            "TESTING": True,
            "DATABASE_URL": url,
            "TASKSERVICE_TIME_SCALE": FAST,
            "TASKSERVICE_LOCK_TIMEOUT": 0.2,
        }
        app = create_app(settings)
        apps.append(app)
        return app

    yield start
    for app in reversed(apps):
        app.extensions[EXTENSION_KEY].close(timeout=5)


def symlink(database: Path) -> str:
    (database.parent / "alias.sqlite3").symlink_to(database)
    return str(database.parent / "alias.sqlite3")


def hard_link(database: Path) -> str:
    (database.parent / "other-name.sqlite3").hardlink_to(database)
    return str(database.parent / "other-name.sqlite3")


def symlinked_directory(database: Path) -> str:
    (database.parent / "linked-dir").symlink_to(database.parent, target_is_directory=True)
    return str(database.parent / "linked-dir" / database.name)


def dotted_path(database: Path) -> str:
    (database.parent / "sub").mkdir()
    return f"{database.parent}/sub/../{database.name}"


def relative_path(database: Path) -> str:
    return os.path.relpath(database, ROOT)  # the server runs in ROOT


ALIASES = [symlink, hard_link, symlinked_directory, dotted_path, relative_path]


@pytest.mark.parametrize("alias", ALIASES)
def test_a_second_pool_through_another_name_is_refused(
    start_pool: StartPool, tmp_path: Path, alias: Callable[[Path], str]
):
    database = tmp_path / "tasks.sqlite3"
    start_pool(f"sqlite:///{database}")
    other_name = alias(database)

    with pytest.raises(DatabaseInUse, match="another process runs the task pool"):
        start_pool(f"sqlite:///{other_name}")


def run_wsgi(url: str, *prefix: str) -> subprocess.CompletedProcess[str]:
    """Import the gunicorn target in a process of its own, as a second server would."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "TASKSERVICE_LOCK_TIMEOUT": "0.2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 3, result.stderr
    assert "cannot start: another process runs the task pool" in result.stderr


@pytest.mark.parametrize("alias", ALIASES)
def test_a_second_process_through_another_name_is_refused(
    start_pool: StartPool, tmp_path: Path, alias: Callable[[Path], str]
):
    database = tmp_path / "tasks.sqlite3"
    start_pool(f"sqlite:///{database}")

    assert_refused(run_wsgi(f"sqlite:///{alias(database)}"))


def test_no_file_beside_the_database_can_be_deleted_to_fool_it(
    start_pool: StartPool, tmp_path: Path
):
    database = tmp_path / "tasks.sqlite3"
    start_pool(f"sqlite:///{database}")
    # Whatever SQLite keeps beside the database (its WAL and shared memory), the
    # lock is not among them: delete them all.
    for beside in tmp_path.iterdir():
        if beside != database:
            beside.unlink()

    assert_refused(run_wsgi(f"sqlite:///{database}"))


def test_a_second_process_through_a_bind_mount_is_refused(start_pool: StartPool, tmp_path: Path):
    database = tmp_path / "data" / "tasks.sqlite3"
    database.parent.mkdir()
    start_pool(f"sqlite:///{database}")
    mount_point = tmp_path / "mounted"
    mount_point.mkdir()
    # The bind mount lives in a mount namespace of the child's own, and ends with it.
    mount = f'mount --bind {database.parent} {mount_point} && exec "$@"'
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"cannot bind-mount in a private namespace here: {probe.stderr.strip()}")

    assert_refused(run_wsgi(f"sqlite:///{mount_point / database.name}", *prefix))


def test_the_lock_passes_to_another_name_once_released(start_pool: StartPool, tmp_path: Path):
    database = tmp_path / "tasks.sqlite3"
    first = start_pool(f"sqlite:///{database}")
    first.extensions[EXTENSION_KEY].close()

    second = start_pool(f"sqlite:///{symlink(database)}")

    assert second.test_client().get("/health").json["pool_lock"] == "held"


@pytest.mark.parametrize("replace", ["move", "delete"])
def test_a_pool_whose_file_is_replaced_has_lost_its_lock(
    start_pool: StartPool, tmp_path: Path, replace: str
):
    database = tmp_path / "tasks.sqlite3"
    first = start_pool(f"sqlite:///{database}")
    pool = first.extensions[EXTENSION_KEY].pool
    if replace == "move":  # a backup restored over the database
        shutil.copyfile(database, tmp_path / "backup.sqlite3")
        os.replace(tmp_path / "backup.sqlite3", database)
    else:
        database.unlink()

    assert not pool.lock.is_held()
    assert pool.watchdog.check() is False  # the server's watchdog now ends the worker
    assert first.test_client().get("/health").json["pool_lock"] == "not held"

"""One pool per database: a second one refuses to start, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskservice.errors import DatabaseInUse
from tests.conftest import AppFactory

ROOT = Path(__file__).resolve().parent.parent


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

    assert result.returncode != 0
    assert "DatabaseInUse: another process runs the task pool on this database" in result.stderr

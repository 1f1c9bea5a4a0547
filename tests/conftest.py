"""Fixtures: an isolated SQLite file per test, apps with and without the pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app import create_app
from taskservice.extension import EXTENSION_KEY

# Tasks of "duration 10" take 10 ms: the code path is the real one, only faster.
FAST = 0.001

AppFactory = Callable[..., Flask]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"


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

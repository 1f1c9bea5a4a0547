"""GET /health: 200 only when the database answers and every worker lives."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy.exc import OperationalError

from taskservice.extension import EXTENSION_KEY


def test_healthy(pool_app: Flask):
    response = pool_app.test_client().get("/health")

    assert response.status_code == 200
    assert response.json == {
        "status": "ok",
        "database": "ok",
        "workers_alive": 2,
        "workers_expected": 2,
        "workers_stuck": [],
        "pool_lock": "held",
        "queued": 0,
        "starting": None,
        "broker": {"state": "disabled", "last_error": None, "holding": None},
    }


def test_no_workers_is_unavailable(app: Flask):
    response = app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["workers_alive"] == 0


def test_dead_worker_is_unavailable(pool_app: Flask):
    pool = pool_app.extensions[EXTENSION_KEY].pool
    pool.workers.stop(timeout=5)

    response = pool_app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["workers_alive"] == 0


def test_lost_pool_lock_is_unavailable(pool_app: Flask):
    pool_app.extensions[EXTENSION_KEY].pool.lock.release()

    response = pool_app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["pool_lock"] == "not held"


def test_a_stuck_worker_is_unavailable(pool_app: Flask, monkeypatch: pytest.MonkeyPatch):
    runner = pool_app.extensions[EXTENSION_KEY].pool.runner
    monkeypatch.setattr(runner, "stuck", lambda longer_than: ["worker-1"])

    response = pool_app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["workers_stuck"] == ["worker-1"]


def test_database_down_is_unavailable(pool_app: Flask, monkeypatch: pytest.MonkeyPatch):
    def broken_ping() -> None:
        raise OperationalError("SELECT 1", {}, Exception("unable to open database file"))

    monkeypatch.setattr(pool_app.extensions[EXTENSION_KEY].db, "ping", broken_ping)

    response = pool_app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["database"] == "error: OperationalError"
    assert response.json["workers_alive"] == 2

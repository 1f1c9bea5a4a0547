"""GET /health: 200 only when the database answers and every worker lives."""

from __future__ import annotations

import os

import pytest
from flask import Flask
from sqlalchemy.exc import OperationalError

from taskservice.extension import EXTENSION_KEY
from taskservice.pool.shared import SharedPool
from tests.conftest import Gate
from tests.helpers import wait_for


def test_healthy(pool_app: Flask):
    response = pool_app.test_client().get("/health")

    assert response.status_code == 200
    body = response.json
    replica = body.pop("replica")
    assert replica == {"id": pool_app.extensions[EXTENSION_KEY].replica_id, "pid": os.getpid()}
    assert len(replica["id"]) == 12
    assert body == {
        "status": "ok",
        "database": "ok",
        "workers_alive": 2,
        "workers_expected": 2,
        "workers_stuck": [],
        "pool_lock": "held",
        "queued": 0,
        "running": [],
        "starting": None,
        "broker": {"state": "disabled", "last_error": None, "holding": None},
    }


def test_no_workers_is_unavailable(app: Flask):
    response = app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["workers_alive"] == 0


def test_dead_worker_is_unavailable(pool_app: Flask):
    pool_app.extensions[EXTENSION_KEY].pool.stop(timeout=5)

    response = pool_app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["workers_alive"] == 0


def test_lost_pool_lock_is_unavailable(pool_app: Flask):
    pool = pool_app.extensions[EXTENSION_KEY].pool
    if isinstance(pool, SharedPool):  # a replica's lease lapsed, or its slot was taken
        pool.keeper.lost.set()
    else:
        pool.lock.release()

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


def test_health_lists_the_tasks_this_process_runs(pool_app: Flask, gate: Gate):
    client = pool_app.test_client()
    ids = [client.post("/tasks", json={"duration": 1}).json["id"] for _ in range(3)]
    gate.wait_for_entries(2)

    running = client.get("/health").json["running"]

    assert running == ids[:2]  # the third waits for a slot
    gate.open.set()
    wait_for(lambda: client.get("/health").json["running"] == [])

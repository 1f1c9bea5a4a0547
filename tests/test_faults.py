"""Database faults seen by clients: a clear 503, nothing half-done, service back once it is."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask import Flask
from sqlalchemy import event

from taskservice.extension import EXTENSION_KEY
from tests.helpers import wait_for


@contextmanager
def read_only_database(app: Flask) -> Iterator[None]:
    """Every new connection refuses writes (SQLite's query_only), as a read-only file would."""
    engine = app.extensions[EXTENSION_KEY].db.engine

    def refuse_writes(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")

    event.listen(engine, "connect", refuse_writes)
    engine.dispose()
    try:
        yield
    finally:
        event.remove(engine, "connect", refuse_writes)
        engine.dispose()


@pytest.fixture
def database_url(tmp_path) -> str:
    """query_only is SQLite's; PostgreSQL's outages are the same error class to the API."""
    return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"


def test_a_write_the_database_refuses_answers_503(app: Flask, caplog: pytest.LogCaptureFixture):
    client = app.test_client()

    with read_only_database(app), caplog.at_level(logging.ERROR):
        response = client.post("/tasks", json={"name": "not now"})

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json["message"] == "The database is unavailable; try again in 5 s."
    assert "readonly database" in caplog.text  # the details are for the operator
    assert client.get("/tasks").json == []  # nothing half-created


def test_a_database_error_no_retry_can_cure_is_a_500(make_app):
    """A missing table is a bug: it must not hide behind 'try again'."""
    app = make_app(start_pool=False, TESTING=False)
    with app.extensions[EXTENSION_KEY].db.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE tasks RENAME TO tasks_elsewhere")

    response = app.test_client().get("/tasks/1")

    assert response.status_code == 500
    assert "Retry-After" not in response.headers


def test_the_service_writes_again_once_the_database_does(app: Flask):
    client = app.test_client()
    with read_only_database(app):
        assert client.post("/tasks").status_code == 503

    response = client.post("/tasks", json={"name": "now"})

    assert response.status_code == 201
    assert [task["name"] for task in client.get("/tasks").json] == ["now"]


def test_reads_still_answer_while_writes_fail(app: Flask):
    client = app.test_client()
    task_id = client.post("/tasks").json["id"]

    with read_only_database(app):
        assert client.get(f"/tasks/{task_id}").status_code == 200
        assert client.delete(f"/tasks/{task_id}").status_code == 503
    assert client.get(f"/tasks/{task_id}").json["status"] == "In Queue"


def test_workers_ride_out_a_database_that_refuses_writes(
    make_app, gate, caplog: pytest.LogCaptureFixture
):
    app = make_app()
    client = app.test_client()
    blocker = client.post("/tasks").json["id"]  # holds a worker in the gate
    gate.wait_for_entries(1)
    waiting = [client.post("/tasks").json["id"] for _ in range(3)]

    with read_only_database(app), caplog.at_level(logging.ERROR):
        gate.open.set()  # the workers now finish and claim against a refusing database
        wait_for(lambda: "database error, retrying" in caplog.text, timeout=10)
        assert client.get(f"/tasks/{blocker}").json["status"] == "Run"

    def all_completed() -> bool:
        tasks = [client.get(f"/tasks/{task_id}").json for task_id in [blocker, *waiting]]
        return all(task["status"] == "Completed" for task in tasks)

    wait_for(all_completed, timeout=30)

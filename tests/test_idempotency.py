"""Idempotency-Key on POST /tasks: a retry makes no second task, a reused key is refused."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask
from flask.testing import FlaskClient

from taskservice.db import Database
from taskservice.extension import get_extension
from taskservice.models import TaskPriority
from taskservice.service import TaskService
from tests.conftest import AppFactory


def task_count(app: Flask) -> int:
    with app.app_context():
        return get_extension().service.list()[1]


def post(client: FlaskClient, key: str, body: dict | None = None):
    headers = {"Idempotency-Key": key}
    if body is None:
        return client.post("/tasks", headers=headers)
    return client.post("/tasks", json=body, headers=headers)


def test_a_retry_answers_the_task_it_made(client: FlaskClient, app: Flask):
    first = post(client, "report-7", {"name": "report", "duration": 2, "priority": "high"})
    again = post(client, "report-7", {"priority": "high", "duration": 2, "name": "report"})

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json == first.json
    assert task_count(app) == 1


def test_a_retry_of_an_empty_body_keeps_the_first_random_duration(client: FlaskClient, app: Flask):
    first = post(client, "defaults")
    retries = [post(client, "defaults") for _ in range(5)]

    assert {retry.json["duration"] for retry in retries} == {first.json["duration"]}
    assert {retry.json["id"] for retry in retries} == {first.json["id"]}
    assert task_count(app) == 1


def test_the_same_values_written_differently_are_the_same_body(client: FlaskClient, app: Flask):
    first = post(client, "same", {"duration": 1, "name": "n"})
    again = post(client, "same", {"name": "n", "duration": 1.0})

    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]


def test_a_structured_field_string_is_the_same_key(client: FlaskClient, app: Flask):
    first = post(client, "k-1")
    again = post(client, '"k-1"')

    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]


def test_the_same_key_with_other_fields_is_refused(client: FlaskClient, app: Flask):
    first = post(client, "report-7", {"name": "report"})

    response = post(client, "report-7", {"name": "another report"})

    assert response.status_code == 422
    assert response.json == {
        "code": 422,
        "status": "Unprocessable Entity",
        "message": f"The Idempotency-Key 'report-7' was used for task {first.json['id']} with"
        " other fields; send a new key for a new task.",
        "errors": {"headers": {"Idempotency-Key": ["Already used with other fields."]}},
    }
    assert task_count(app) == 1


@pytest.mark.parametrize("key", ["", " ", '""', "x" * 256, "ключ", "tab\there"])
def test_a_malformed_key_is_refused(client: FlaskClient, app: Flask, key: str):
    response = client.post("/tasks", headers={"Idempotency-Key": key.encode().decode("latin-1")})

    assert response.status_code == 422
    assert response.json["message"] == (
        "The Idempotency-Key header must be 1 to 255 visible ASCII characters."
    )
    assert response.json["errors"] == {
        "headers": {"Idempotency-Key": ["Must be 1 to 255 visible ASCII characters."]}
    }
    assert task_count(app) == 0


def test_different_keys_make_different_tasks(client: FlaskClient, app: Flask):
    ids = {post(client, f"key-{n}", {"name": "same"}).json["id"] for n in range(3)}

    assert len(ids) == 3


def test_a_retry_is_answered_even_when_the_queue_is_full(make_app: AppFactory):
    app = make_app(start_pool=False, TASKSERVICE_MAX_QUEUED=1)
    client = app.test_client()
    first = post(client, "only-one")

    assert client.post("/tasks").status_code == 503  # the queue is full
    again = post(client, "only-one")

    assert again.status_code == 201
    assert again.json["id"] == first.json["id"]


def test_sixteen_concurrent_creates_with_one_key_make_one_task(app: Flask):
    clients = 16
    start = threading.Barrier(clients)

    def create(_n: int) -> tuple[int, int, bool]:
        client = app.test_client()
        start.wait(10)
        response = post(client, "race", {"name": "raced", "duration": 1})
        return response.status_code, response.json["id"], "Idempotent-Replayed" in response.headers

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(create, range(clients)))

    assert {status for status, _id, _replayed in answers} == {201}
    assert len({task_id for _status, task_id, _replayed in answers}) == 1
    assert sum(not replayed for _status, _id, replayed in answers) == 1
    assert task_count(app) == 1


def test_the_document_describes_the_header(client: FlaskClient):
    operation = client.get("/openapi.json").json["paths"]["/tasks"]["post"]

    assert {"in": "header", "name": "Idempotency-Key"}.items() <= operation["parameters"][0].items()
    assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]


def test_a_replay_of_a_task_still_queued_queues_it_again(db: Database):
    """The first try may have committed, lost its answer, and never queued its task."""
    submitted: list[tuple[int, int]] = []
    service = TaskService(db, submit=lambda rank, task_id: submitted.append((rank, task_id)))
    fields = {"name": None, "duration": 1.0, "priority": TaskPriority.HIGH}
    task, _ = service.create_once(key="k", fingerprint="f", **fields)
    submitted.clear()  # as if the first try's answer was lost before it queued the task

    again, replayed = service.create_once(key="k", fingerprint="f", **fields)
    assert again.id == task.id

    assert replayed
    assert submitted == [(TaskPriority.HIGH.rank, task.id)]
    service.cancel(task.id)
    submitted.clear()
    service.create_once(key="k", fingerprint="f", **fields)
    assert submitted == []  # no longer queued: nothing to run

"""Messages to tasks without a broker: the rules of POST /tasks, and idempotency keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from taskservice.extension import EXTENSION_KEY
from taskservice.intake import MAX_BODY_BYTES, Accepted, Message, Refused, TaskIntake
from taskservice.models import TaskPriority, TaskSource
from tests.helpers import all_tasks


@pytest.fixture
def intake(app: Flask) -> TaskIntake:
    return TaskIntake(app.extensions[EXTENSION_KEY].service)


def message(body: Any = None, **properties: Any) -> Message:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(body=data, **properties)


def test_a_message_makes_a_task_from_amqp(intake: TaskIntake, app: Flask):
    outcome = intake.take(message({"name": "report", "duration": 2, "priority": "high"}))

    assert isinstance(outcome, Accepted)
    assert not outcome.replayed
    task = outcome.task
    assert (task.name, task.duration, task.priority) == ("report", 2.0, TaskPriority.HIGH)
    assert task.source is TaskSource.AMQP
    assert [stored.id for stored in all_tasks(app)] == [task.id]


@pytest.mark.parametrize("body", [b"", b"  ", b"{}"])
def test_an_empty_body_takes_every_default(intake: TaskIntake, body: bytes):
    outcome = intake.take(Message(body=body))

    assert isinstance(outcome, Accepted)
    assert outcome.task.priority is TaskPriority.MEDIUM
    assert outcome.task.duration in range(11)


@pytest.mark.parametrize(
    ("sent", "code", "reason", "errors"),
    [
        (message(b"{not json"), 400, "The body is not valid JSON", {}),
        (message(b"\xff\xfe{}"), 400, "The body is not UTF-8", {}),
        (message(b"[" * 60_000), 400, "not JSON this service can read", {}),
        (message([1, 2]), 422, "must be a JSON object of a task's fields, not an array", None),
        (message("text"), 422, "not a string", None),
        (message({"colour": "red"}), 422, "colour: Unknown field.", None),
        (message({"duration": "5"}), 422, "duration: Not a valid number.", None),
        (message({"duration": -1}), 422, "duration: Must be greater than or equal to 0", None),
        (message({"duration": 3601}), 422, "less than or equal to 3600", None),
        (message({"priority": "urgent"}), 422, "priority: Must be one of", None),
        (message({"name": "a\x00b"}), 422, "name: Control characters", None),
        (message({}, content_type="text/plain"), 415, "content_type 'application/json'", None),
        (message({}, content_encoding="gzip"), 415, "content_encoding 'gzip'", None),
        (message(b" " * (MAX_BODY_BYTES + 1)), 413, f"larger than {MAX_BODY_BYTES} bytes", {}),
        (message({}, message_id=""), 422, "The message_id, the message's idempotency key", None),
        (message({}, message_id="é"), 422, "visible ASCII characters", None),
        (message({}, message_id="k" * 256), 422, "1 to 255 visible ASCII", None),
    ],
)
def test_what_is_not_a_task_is_refused_and_makes_nothing(
    intake: TaskIntake,
    app: Flask,
    sent: Message,
    code: int,
    reason: str,
    errors: dict[str, Any] | None,
):
    outcome = intake.take(sent)

    assert isinstance(outcome, Refused)
    assert outcome.code == code
    assert reason in outcome.message
    if errors is not None:
        assert outcome.errors == errors
    else:
        assert outcome.errors  # which field or property is to blame
    document = outcome.document
    assert set(document) == {"code", "status", "message", "errors"}
    assert all_tasks(app) == []


def test_field_errors_are_those_of_post_tasks(intake: TaskIntake, client: FlaskClient):
    body = {"duration": "5", "priority": "urgent", "colour": "red"}

    outcome = intake.take(message(body))
    answer = client.post("/tasks", json=body)

    assert isinstance(outcome, Refused)
    assert answer.status_code == outcome.code == 422
    assert outcome.errors == answer.json["errors"]


def test_a_repeated_message_id_answers_the_first_task(intake: TaskIntake, app: Flask):
    first = intake.take(message({"duration": 1}, message_id="order-7"))
    again = intake.take(message({"duration": 1.0}, message_id="order-7"))

    assert isinstance(first, Accepted)
    assert isinstance(again, Accepted)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.task.id == first.task.id
    assert len(all_tasks(app)) == 1


def test_a_message_id_reused_with_another_body_is_refused(intake: TaskIntake, app: Flask):
    first = intake.take(message({"duration": 1}, message_id="order-8"))
    reused = intake.take(message({"duration": 2}, message_id="order-8"))

    assert isinstance(first, Accepted)
    assert isinstance(reused, Refused)
    assert reused.code == 422
    assert reused.message.startswith("idempotency key reused with a different body")
    assert f"task {first.task.id}" in reused.message
    assert len(all_tasks(app)) == 1


def test_http_keys_and_message_ids_are_one_namespace(intake: TaskIntake, client: FlaskClient):
    created = client.post("/tasks", json={"name": "x"}, headers={"Idempotency-Key": "k-1"})
    over_amqp = intake.take(message({"name": "x"}, message_id="k-1"))
    other_body = intake.take(message({"name": "y"}, message_id="k-1"))
    back_over_http = client.post("/tasks", json={"name": "z"}, headers={"Idempotency-Key": "k-1"})

    assert created.status_code == 201
    assert isinstance(over_amqp, Accepted)
    assert over_amqp.replayed
    assert over_amqp.task.id == created.json["id"]
    assert over_amqp.task.source is TaskSource.HTTP  # it was made over HTTP
    assert isinstance(other_body, Refused)
    assert back_over_http.status_code == 422


def test_without_a_message_id_every_message_is_a_new_task(intake: TaskIntake, app: Flask):
    outcomes = [intake.take(message({"duration": 1})) for _ in range(3)]

    assert all(isinstance(outcome, Accepted) for outcome in outcomes)
    assert len(all_tasks(app)) == 3

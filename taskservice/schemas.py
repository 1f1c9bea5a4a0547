"""A task's fields on the wire: one set of rules for every way in (HTTP, AMQP) and out.

`TaskCreateSchema` reads the fields of a new task, from the body of `POST /tasks`
or of a message; `TaskSchema` writes a task as `GET /tasks/{id}` answers it, in
answers, replies and events alike.
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

import orjson
from marshmallow import Schema, ValidationError, fields, validate

from taskservice.models import NAME_MAX_LENGTH, TaskPriority, TaskRow, TaskSource, TaskStatus

MAX_DURATION = 3600


def _random_duration() -> int:
    # The task body of the specification: time.sleep(random.randint(0, 10)).
    return random.randint(0, 10)


def printable_text(value: str) -> None:
    """Refuse control characters and lone surrogates, which no database stores as text."""
    for character in value:
        if unicodedata.category(character) in ("Cc", "Cs"):
            raise ValidationError(
                f"Control characters and lone surrogates are not allowed ({character!a})."
            )


class StrictFloat(fields.Float):
    """A JSON number; unlike fields.Float it refuses numeric strings like "5"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        number: float = super()._deserialize(value, attr, data, **kwargs)
        return number + 0.0  # -0.0 would be stored and echoed back as "-0.0"


class TaskCreateSchema(Schema):
    """The body of POST /tasks; every field is optional."""

    name = fields.String(
        allow_none=True,
        load_default=None,
        validate=[validate.Length(min=1, max=NAME_MAX_LENGTH), printable_text],
        metadata={
            "description": "A human-readable name, without control characters.",
            "example": "nightly report",
            # What printable_text refuses, for the OpenAPI document and its clients.
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        },
    )
    duration = StrictFloat(
        allow_nan=False,
        load_default=_random_duration,
        validate=validate.Range(min=0, max=MAX_DURATION),
        metadata={
            "description": "Seconds the task runs; a random whole number from 0 to 10 if omitted.",
            "example": 3,
        },
    )
    priority = fields.Enum(
        TaskPriority,
        by_value=True,
        load_default=TaskPriority.MEDIUM,
        metadata={"description": "Higher priority runs first, then first come first served."},
    )


class TaskSchema(Schema):
    """A task as clients see it."""

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        """Read the field from the task's row by name (a row is also a tuple)."""
        # marshmallow would first try obj[attr], which a row refuses with an
        # exception, for every field of every task.
        return getattr(obj, attr, default)

    # Every field is in every answer (`required`), null where it says so, so a
    # generated client types `id` as an int, not as "int or unset".
    id = fields.Integer(required=True, metadata={"description": "The task's number.", "example": 7})
    name = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Its name; null if it was given none.",
            "example": "nightly report",
        },
    )
    priority = fields.Enum(
        TaskPriority, by_value=True, required=True, metadata={"type": "string", "example": "medium"}
    )
    duration = fields.Float(
        required=True, metadata={"description": "Seconds the task runs.", "example": 3}
    )
    status = fields.Enum(
        TaskStatus,
        by_value=True,
        required=True,
        metadata={
            "type": "string",
            "description": "In Queue, then Run, then Completed or Failed; Cancelled if it"
            " was cancelled while queued.",
            "example": "In Queue",
        },
    )
    create_time = fields.AwareDateTime(
        required=True,
        metadata={
            "description": "When it was created (UTC).",
            "example": "2026-12-01T10:00:00+00:00",
        },
    )
    start_time = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When its current attempt started; null until it starts."},
    )
    time_to_execute = fields.Float(
        attribute="exec_time",
        required=True,
        allow_none=True,
        metadata={"description": "Seconds its run took; null until it has finished."},
    )
    finish_time = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When it finished, failed or was cancelled; null before."},
    )
    error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why it failed; null unless it failed."},
    )
    attempts = fields.Integer(
        required=True,
        metadata={
            "description": "How many times it was started; more than 1 after a crash.",
            "example": 0,
        },
    )
    slot = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "The worker slot (1 to the concurrency) of its current attempt;"
            " null until it starts."
        },
    )
    source = fields.Enum(
        TaskSource,
        by_value=True,
        required=True,
        metadata={
            "type": "string",
            "description": "How it was created: over HTTP (`http`) or from a RabbitMQ message"
            " (`amqp`).",
            "example": "http",
        },
    )


_TASK = TaskSchema()
# Sorted keys, as the HTTP answers are written: the same task is the same bytes.
_JSON_OPTIONS = orjson.OPT_SORT_KEYS


def task_document(task: TaskRow) -> dict[str, Any]:
    """The task as `GET /tasks/{id}` answers it."""
    document: dict[str, Any] = _TASK.dump(task)
    return document


def encode_json(document: Any) -> bytes:
    """`document` as compact JSON with sorted keys."""
    return orjson.dumps(document, option=_JSON_OPTIONS)

"""The shapes of requests and answers, validated and documented by marshmallow."""

from __future__ import annotations

import random
import unicodedata
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from taskservice.models import NAME_MAX_LENGTH, TaskPriority, TaskStatus

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


class ErrorSchema(Schema):
    """Every error answer: what went wrong, and which input if one is to blame."""

    code = fields.Integer(
        required=True, metadata={"description": "The HTTP status code.", "example": 404}
    )
    status = fields.String(
        required=True, metadata={"description": "Its reason phrase.", "example": "Not Found"}
    )
    message = fields.String(
        required=True,
        metadata={
            "description": "What was wrong, and what to do about it.",
            "example": "Task 7 does not exist.",
        },
    )
    errors = fields.Dict(
        required=True,
        metadata={
            "description": "Each invalid input by location (json, query, path) and name, with"
            " what is wrong with it; empty when no single input is to blame.",
            "example": {"json": {"duration": ["Must be greater than or equal to 0."]}},
        },
    )


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


class TaskFilterSchema(Schema):
    """The filters of GET /tasks."""

    status = fields.Enum(TaskStatus, by_value=True)
    priority = fields.Enum(TaskPriority, by_value=True)


class HealthSchema(Schema):
    """Whether the service can take and run tasks."""

    status = fields.String(
        required=True, metadata={"description": "'ok' or 'unavailable'.", "example": "ok"}
    )
    database = fields.String(
        required=True, metadata={"description": "'ok' or the error.", "example": "ok"}
    )
    workers_alive = fields.Integer(required=True, metadata={"example": 2})
    workers_expected = fields.Integer(required=True, metadata={"example": 2})
    workers_stuck = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Workers retrying a database error for over 10 s."},
    )
    pool_lock = fields.String(
        required=True,
        metadata={"description": "'held' while this process owns the pool.", "example": "held"},
    )
    queued = fields.Integer(
        required=True, metadata={"description": "Task numbers waiting in memory.", "example": 0}
    )
    starting = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "What the service waits for before it can start (its database,"
            " the pool another process holds); null once it has started."
        },
    )


class TimelineBarSchema(TaskSchema):
    """A task that ran and finished: one bar of the dashboard's timeline."""

    class Meta:
        fields = ("id", "slot", "status", "start_time", "finish_time")

    # A bar is a task that ran and finished: neither time is ever null.
    start_time = fields.AwareDateTime(
        required=True, metadata={"description": "When its last attempt started."}
    )
    finish_time = fields.AwareDateTime(required=True, metadata={"description": "When it ended."})


class TimelineBars(fields.List[Any]):
    """The timeline's bars: documented as a list of TimelineBarSchema, written directly.

    An open dashboard asks for up to 400 bars a second; marshmallow's dump,
    field by field, took half of each request. The output is the same.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.Nested(TimelineBarSchema), **kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return [
            {
                "id": bar.id,
                "slot": bar.slot,
                "status": bar.status.value,
                "start_time": bar.start_time.isoformat(),
                "finish_time": bar.finish_time.isoformat(),
            }
            for bar in value
        ]


class OverviewSchema(Schema):
    """A snapshot of the queue, as the dashboard shows it."""

    time = fields.AwareDateTime(
        required=True, metadata={"description": "When the snapshot was taken (UTC)."}
    )
    concurrency = fields.Integer(
        required=True, metadata={"description": "How many tasks may run at once."}
    )
    time_scale = fields.Float(
        required=True, metadata={"description": "A task runs for duration x time_scale seconds."}
    )
    counts = fields.Dict(
        required=True,
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "How many tasks there are of each status."},
    )
    running = fields.List(
        fields.Nested(TaskSchema),
        required=True,
        metadata={"description": "Every task in Run, by slot (at most 128)."},
    )
    queue_head = fields.List(
        fields.Nested(TaskSchema),
        required=True,
        metadata={"description": "The next 10 tasks to run, in the order they will run."},
    )
    recent = fields.List(
        fields.Nested(TaskSchema),
        required=True,
        metadata={"description": "The 10 latest tasks to finish, of those that ran."},
    )
    timeline_since = fields.AwareDateTime(
        required=True,
        metadata={
            "description": "The start of the time the timeline covers: three minutes before"
            " the snapshot, or less when more than 400 tasks ran in them."
        },
    )
    timeline = TimelineBars(
        required=True,
        metadata={
            "description": "The tasks that ran and finished since timeline_since, latest first"
            " (at most 400); the running ones are in `running`."
        },
    )

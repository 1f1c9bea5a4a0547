"""The shapes of requests and answers, validated and documented by marshmallow."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from taskservice.models import TaskPriority, TaskStatus
from taskservice.schemas import TaskSchema


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


class TaskFilterSchema(Schema):
    """The filters of GET /tasks."""

    status = fields.Enum(TaskStatus, by_value=True)
    priority = fields.Enum(TaskPriority, by_value=True)


class BrokerHealthSchema(Schema):
    """The RabbitMQ connections, when TASKSERVICE_AMQP_URL is set."""

    state = fields.String(
        required=True,
        metadata={
            "description": "'disabled' (no broker configured), 'connecting' (a connection is"
            " down or not yet up) or 'connected'.",
            "example": "connected",
        },
    )
    last_error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The last error a connection met; null if none."},
    )
    holding = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Why the message in hand waits (the database refuses writes, the"
            " queue is full); it is tried again, never dropped. Null when none waits."
        },
    )


class ReplicaSchema(Schema):
    """The process that answers."""

    id = fields.String(
        required=True,
        metadata={
            "description": "A name of the process's own, new at each start.",
            "example": "3f9c2a7b1e04",
        },
    )
    pid = fields.Integer(
        required=True, metadata={"description": "Its process id.", "example": 4242}
    )


class HealthSchema(Schema):
    """Whether the service can take and run tasks."""

    status = fields.String(
        required=True, metadata={"description": "'ok' or 'unavailable'.", "example": "ok"}
    )
    replica = fields.Nested(ReplicaSchema, required=True)
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
        metadata={
            "description": "'held' while this process may run tasks: it holds the SQLite"
            " database's pool lock, or, on PostgreSQL, its leases stand.",
            "example": "held",
        },
    )
    queued = fields.Integer(
        required=True,
        metadata={
            "description": "Task numbers waiting in memory (SQLite; on PostgreSQL the queue is"
            " the database's, and this is 0).",
            "example": 0,
        },
    )
    running = fields.List(
        fields.Integer(),
        required=True,
        metadata={"description": "The tasks this process runs now.", "example": [7, 8]},
    )
    starting = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "What the service waits for before it can start (its database,"
            " the pool another process holds); null once it has started."
        },
    )
    broker = fields.Nested(
        BrokerHealthSchema,
        required=True,
        metadata={"description": "RabbitMQ; while only it is down, the status stays 200."},
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


class ReplicaRowSchema(Schema):
    """A replica on the shared PostgreSQL database."""

    id = fields.String(required=True, metadata={"description": "Its name, as in /health."})
    pid = fields.Integer(required=True, metadata={"description": "Its worker's process id."})
    host = fields.String(required=True, metadata={"description": "The machine it runs on."})
    runs_tasks = fields.Boolean(
        required=True, metadata={"description": "False for an API-only replica."}
    )
    started_at = fields.AwareDateTime(required=True, metadata={"description": "When it started."})
    heartbeat_at = fields.AwareDateTime(
        required=True, metadata={"description": "When it last said it was alive (every second)."}
    )


class SlotSchema(Schema):
    """One of the places a task can run in, shared by every replica on PostgreSQL."""

    slot = fields.Integer(required=True)
    task_id = fields.Integer(
        required=True, allow_none=True, metadata={"description": "The task it holds, if any."}
    )
    attempt = fields.Integer(
        required=True, allow_none=True, metadata={"description": "That task's attempt."}
    )
    replica_id = fields.String(
        required=True, allow_none=True, metadata={"description": "The replica that runs it."}
    )
    lease_until = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "Until when its replica's claim stands without a renewal."},
    )


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
    replicas = fields.List(
        fields.Nested(ReplicaRowSchema),
        required=True,
        metadata={
            "description": "The replicas on a shared PostgreSQL database, with their heartbeats"
            " (empty on SQLite, which one process serves)."
        },
    )
    slots = fields.List(
        fields.Nested(SlotSchema),
        required=True,
        metadata={
            "description": "The slots on PostgreSQL and which replica holds each (empty on"
            " SQLite, whose one process has its workers)."
        },
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

"""The task table, its statuses and the transitions between them."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy import Enum as SQLEnum
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAME_MAX_LENGTH = 200
IDEMPOTENCY_KEY_MAX_LENGTH = 255
REPLICA_ID_MAX_LENGTH = 64


class TaskStatus(StrEnum):
    """Where a task is in its life; the values are the strings clients see."""

    IN_QUEUE = "In Queue"
    RUN = "Run"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the task can never change again."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# The only moves a task may make. Run -> In Queue is recovery: a task that was
# running when its process died is queued again (see tasks.requeue_interrupted).
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.IN_QUEUE: frozenset({TaskStatus.RUN, TaskStatus.CANCELLED}),
    TaskStatus.RUN: frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.IN_QUEUE}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def sources_of(target: TaskStatus) -> list[TaskStatus]:
    """The statuses from which a task may move to `target`."""
    return [source for source, targets in TRANSITIONS.items() if target in targets]


class TaskPriority(StrEnum):
    """How urgent a task is; higher priority runs first."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Sort key of the run order: 0 runs first."""
        return _PRIORITY_RANKS[self]


_PRIORITY_RANKS = {TaskPriority.HIGH: 0, TaskPriority.MEDIUM: 1, TaskPriority.LOW: 2}


class TaskSource(StrEnum):
    """The way a task came in."""

    HTTP = "http"
    AMQP = "amqp"


TaskId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and read back as an aware UTC datetime.

    SQLite has no time zones, so the offset is dropped on the way in and put
    back on the way out; every datetime the service handles is aware.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store `value` as naive UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read a stored naive UTC value back as aware."""
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def _enum_column(enum: type[Enum], name: str) -> SQLEnum:
    # Store the wire strings ("In Queue"), not the member names, with a CHECK
    # constraint, and no native ENUM type so the schema is the same everywhere.
    return SQLEnum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    """Declarative base of the service's tables."""


class Task(Base):
    """One task: what to run, where it is in its life, and its timings."""

    __tablename__ = "tasks"
    __table_args__ = (
        # The status filter and the list order (newest first) in one index;
        # recovery reads the queued tasks through it too.
        Index("ix_tasks_status_id", "status", "id"),
        Index("ix_tasks_priority_id", "priority", "id"),
        # The head of the queue in run order, one priority at a time, for the
        # dashboard; partial, so only the waiting tasks are in it.
        Index(
            "ix_tasks_queued_priority_id",
            "priority",
            "id",
            sqlite_where=text("status = 'In Queue'"),
            postgresql_where=text("status = 'In Queue'"),
        ),
        # The tasks that ran, by when they finished: the dashboard's latest
        # finished and its timeline. Partial: a task that never started (queued
        # or cancelled) is not in it, so a burst of cancels cannot crowd out
        # the ones that ran, and a create does not write to it.
        Index(
            "ix_tasks_ran_finish_time",
            "finish_time",
            sqlite_where=text("start_time IS NOT NULL"),
            postgresql_where=text("start_time IS NOT NULL"),
        ),
        {"sqlite_autoincrement": True},  # a task's number is never reused
    )

    # 64-bit everywhere; SQLite's INTEGER PRIMARY KEY already is, and must be
    # spelled INTEGER to be the rowid.
    id: Mapped[int] = mapped_column(TaskId, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    priority: Mapped[TaskPriority] = mapped_column(_enum_column(TaskPriority, "task_priority"))
    duration: Mapped[float] = mapped_column(Float)
    status: Mapped[TaskStatus] = mapped_column(_enum_column(TaskStatus, "task_status"))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exec_time: Mapped[float | None] = mapped_column(Float)
    finish_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Which worker (1 to TASKSERVICE_CONCURRENCY) runs or ran the current attempt.
    slot: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[TaskSource] = mapped_column(
        _enum_column(TaskSource, "task_source"), server_default=TaskSource.HTTP.value
    )

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.status.value}>"


# A task as the service reads it: a row of the tasks table, whose columns are
# its attributes (task.id, task.status, ...). See taskservice.tasks for why
# reads return rows rather than Task objects.
TaskRow = Row[Any]


class TaskCount(Base):
    """How many tasks there are of each status and priority.

    Kept by database triggers in the same transaction as the change to the
    tasks table, so it is exact, whoever writes the table: on SQLite they
    update these rows (migration 0002); on PostgreSQL they append to
    task_count_changes (migration 0007), and a count is its row plus its
    changes. It lets a list answer its total without counting a million rows.
    """

    __tablename__ = "task_counts"

    status: Mapped[TaskStatus] = mapped_column(
        _enum_column(TaskStatus, "task_count_status"), primary_key=True
    )
    priority: Mapped[TaskPriority] = mapped_column(
        _enum_column(TaskPriority, "task_count_priority"), primary_key=True
    )
    count: Mapped[int] = mapped_column(BigInteger)


class TaskCountChange(Base):
    """A change to a count, appended by PostgreSQL's trigger (migration 0007) and folded later.

    A count is its TaskCount row plus its changes. Appending, where SQLite's
    trigger updates the row, keeps transactions on PostgreSQL from locking
    the same few rows: claims, finishes and creates on every replica would
    otherwise take turns on them. A replica folds the changes in every second.
    """

    __tablename__ = "task_count_changes"

    id: Mapped[int] = mapped_column(TaskId, primary_key=True, autoincrement=True)
    status: Mapped[TaskStatus] = mapped_column(_enum_column(TaskStatus, "task_count_change_status"))
    priority: Mapped[TaskPriority] = mapped_column(
        _enum_column(TaskPriority, "task_count_change_priority")
    )
    delta: Mapped[int] = mapped_column(Integer)


class IdempotencyKey(Base):
    """A client's key for one create: a key is used once, so a retry makes no second task.

    The primary key is what makes it hold: of two creates with one key at the
    same moment, the second's insert fails on it and its transaction (task
    included) rolls back, whatever either of them read before.
    """

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True)
    # The SHA-256 of the request as sent, to tell a retry from a reuse.
    fingerprint: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[int] = mapped_column(TaskId, ForeignKey("tasks.id"))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


class TaskEventRecord(Base):
    """A change of a task's status, waiting to be published (the outbox).

    Written in the transaction that makes the change, so an event exists
    exactly when its change committed; the publisher deletes it once the
    broker has confirmed it.
    """

    __tablename__ = "task_events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    # The order the changes committed in, for each task (see taskservice.events).
    id: Mapped[int] = mapped_column(TaskId, primary_key=True)
    # A UUID: the message's message_id, by which consumers drop a duplicate.
    event_id: Mapped[str] = mapped_column(String(36))
    task_id: Mapped[int] = mapped_column(TaskId)
    routing_key: Mapped[str] = mapped_column(String(32))
    # The message body: the task as GET /tasks/{id} answered it then, with the event.
    body: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


class TaskSlot(Base):
    """One of the TASKSERVICE_CONCURRENCY places a task can run in, shared by every replica.

    On PostgreSQL the replicas claim tasks through these rows (taskservice.pool.claims):
    a task runs only in a slot it holds, and there are only so many slots, so
    the limit is the database's, not a count. `attempt` is the fencing token:
    a replica may renew, free or finish only the attempt the slot still holds.
    """

    __tablename__ = "task_slots"

    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    task_id: Mapped[int | None] = mapped_column(TaskId)
    attempt: Mapped[int | None] = mapped_column(Integer)
    replica_id: Mapped[str | None] = mapped_column(String(REPLICA_ID_MAX_LENGTH))
    # Until when the holder's claim stands without a renewal (the database's clock, UTC).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Replica(Base):
    """A service process on the shared database, and when it last said it was alive."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(REPLICA_ID_MAX_LENGTH), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(255))
    runs_tasks: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)

"""What the dashboard shows: a snapshot of the queue from bounded, indexed reads.

Each read follows an index and stops after a fixed number of rows, so a
snapshot costs the same with a thousand tasks in the table or a million
(migration 0003 adds the indexes; tests/test_overview.py checks the plans).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, literal_column, select, text
from sqlalchemy.orm import Session

from taskservice.config import MAX_CONCURRENCY
from taskservice.models import Replica, TaskPriority, TaskRow, TaskSlot, TaskStatus, utcnow
from taskservice.tasks import TASKS, count_by_status

QUEUE_HEAD = 10
RECENT = 10
TIMELINE = timedelta(minutes=3)
# At most this many bars: with 20 ms tasks three minutes hold thousands of
# them, more than a timeline can show; it then covers a shorter time.
TIMELINE_BARS = 400
# Every slot of the largest pool; more tasks in Run than slots would be a bug
# the dashboard must show, so the read is bounded well above the pool's size.
MAX_RUNNING = 2 * MAX_CONCURRENCY
# Replicas on PostgreSQL (none on SQLite); those silent for ten minutes are forgotten.
MAX_REPLICAS = 100

_REPLICAS_TABLE = cast("Table", Replica.__table__)
_SLOTS_TABLE = cast("Table", TaskSlot.__table__)

# Literal conditions, not bound parameters, so that every plan of a query can
# use the partial indexes (migration 0003): PostgreSQL's generic plans, for
# prepared statements, cannot assume a parameter's value.
_QUEUED = TASKS.c.status == literal_column(f"'{TaskStatus.IN_QUEUE.value}'")
_RUNNING_NOW = TASKS.c.status == literal_column(f"'{TaskStatus.RUN.value}'")
_RAN = TASKS.c.start_time.is_not(None)

_QUEUE_HEAD = (
    select(*TASKS.c)
    .where(_QUEUED, TASKS.c.priority == bindparam("priority"))
    .order_by(TASKS.c.id)
    .limit(bindparam("limit"))
)
_RUNNING = select(*TASKS.c).where(_RUNNING_NOW).limit(MAX_RUNNING)
_LATEST_FINISHED = (
    select(*TASKS.c)
    .where(_RAN, TASKS.c.finish_time.is_not(None))
    .order_by(TASKS.c.finish_time.desc())
    .limit(bindparam("limit"))
)
_FINISHED_SINCE = (
    select(*(TASKS.c[name] for name in ("id", "slot", "status", "start_time", "finish_time")))
    .where(_RAN, TASKS.c.finish_time >= bindparam("since"))
    .order_by(TASKS.c.finish_time.desc())
    .limit(bindparam("limit"))
)
_REPLICAS = (
    select(*_REPLICAS_TABLE.c)
    .order_by(_REPLICAS_TABLE.c.started_at, _REPLICAS_TABLE.c.id)
    .limit(MAX_REPLICAS)
)
_SLOTS = select(*_SLOTS_TABLE.c).order_by(_SLOTS_TABLE.c.slot).limit(MAX_RUNNING)
# On PostgreSQL each statement of a READ COMMITTED transaction sees its own
# moment: a task claimed between two reads would be in neither list.
_ONE_SNAPSHOT = text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


@dataclass(frozen=True)
class Overview:
    """The queue at one moment, as the dashboard draws it."""

    time: datetime
    counts: dict[TaskStatus, int]
    running: Sequence[TaskRow]
    queue_head: Sequence[TaskRow]
    recent: Sequence[TaskRow]
    timeline_since: datetime
    timeline: Sequence[TaskRow]
    replicas: Sequence[Row[Any]]
    slots: Sequence[Row[Any]]


def read_overview(session: Session) -> Overview:
    """Counts, running tasks, the next to run, the latest finished, the timeline, the replicas.

    All read in the session's transaction, which must not have read anything yet:
    on PostgreSQL it is made one snapshot, as SQLite's read transactions are.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_ONE_SNAPSHOT)
    since, bars = timeline(session, utcnow() - TIMELINE, TIMELINE_BARS)
    return Overview(
        counts=dict.fromkeys(TaskStatus, 0) | count_by_status(session),
        running=sorted(session.execute(_RUNNING), key=_by_slot),
        queue_head=queue_head(session, QUEUE_HEAD),
        recent=session.execute(_LATEST_FINISHED, {"limit": RECENT}).all(),
        timeline_since=since,
        timeline=bars,
        replicas=session.execute(_REPLICAS).all(),
        slots=session.execute(_SLOTS).all(),
        # After the reads: no task read can have started after the snapshot's time.
        time=utcnow(),
    )


def _by_slot(task: TaskRow) -> tuple[int, int]:
    # Sorted here rather than in SQL: a sort of a few rows needs no index.
    return (task.slot or 0, task.id)


def queue_head(session: Session, limit: int) -> list[TaskRow]:
    """The next `limit` queued tasks in the order the pool runs them."""
    head: list[TaskRow] = []
    for priority in sorted(TaskPriority, key=lambda p: p.rank):
        if len(head) >= limit:
            break
        params = {"priority": priority, "limit": limit - len(head)}
        head.extend(session.execute(_QUEUE_HEAD, params))
    return head


def timeline(session: Session, since: datetime, limit: int) -> tuple[datetime, Sequence[TaskRow]]:
    """The tasks that ran and finished since `since`, latest first, and the time they cover from.

    When more than `limit` did, the latest `limit` cover less than the asked
    time: from the end of the oldest of them.
    """
    params = {"since": since, "limit": limit + 1}
    finished: Sequence[TaskRow] = session.execute(_FINISHED_SINCE, params).all()
    if len(finished) > limit:
        finished = finished[:limit]
        since = finished[-1].finish_time
    return since, finished

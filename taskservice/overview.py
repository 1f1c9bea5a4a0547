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

from sqlalchemy import Table, bindparam, literal_column, select
from sqlalchemy.orm import Session

from taskservice.models import Task, TaskPriority, TaskRow, TaskStatus, utcnow
from taskservice.tasks import count_by_status

TASKS = cast("Table", Task.__table__)

QUEUE_HEAD = 10
RECENT = 10
TIMELINE = timedelta(minutes=3)
# At most this many bars: with 20 ms tasks three minutes hold thousands of
# them, more than a timeline can show; it then covers a shorter time.
TIMELINE_BARS = 400
MAX_RUNNING = 20


def _status_is(status: TaskStatus) -> Any:
    # A literal, not a bound parameter, so that every plan of the query can
    # use the partial index of queued tasks: PostgreSQL's generic plans (for
    # prepared statements) cannot assume a parameter's value.
    return TASKS.c.status == literal_column(f"'{status.value}'")


_QUEUE_HEAD = (
    select(*TASKS.c)
    .where(_status_is(TaskStatus.IN_QUEUE), TASKS.c.priority == bindparam("priority"))
    .order_by(TASKS.c.id)
    .limit(bindparam("limit"))
)
_RUNNING = select(*TASKS.c).where(_status_is(TaskStatus.RUN)).limit(MAX_RUNNING)
_LATEST_FINISHED = (
    select(*TASKS.c)
    .where(TASKS.c.finish_time.is_not(None))
    .order_by(TASKS.c.finish_time.desc())
    .limit(bindparam("limit"))
)
_FINISHED_SINCE = (
    select(*(TASKS.c[name] for name in ("id", "slot", "status", "start_time", "finish_time")))
    .where(TASKS.c.finish_time >= bindparam("since"))
    .order_by(TASKS.c.finish_time.desc())
    .limit(bindparam("limit"))
)


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


def read_overview(session: Session) -> Overview:
    """Counts, running tasks, the next to run, the latest finished and the timeline."""
    now = utcnow()
    counts = dict.fromkeys(TaskStatus, 0) | count_by_status(session)
    since, bars = timeline(session, now - TIMELINE, TIMELINE_BARS)
    return Overview(
        time=now,
        counts=counts,
        running=sorted(session.execute(_RUNNING), key=_by_slot),
        queue_head=queue_head(session, QUEUE_HEAD),
        recent=session.execute(_LATEST_FINISHED, {"limit": RECENT}).all(),
        timeline_since=since,
        timeline=bars,
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


def timeline(session: Session, since: datetime, limit: int) -> tuple[datetime, list[TaskRow]]:
    """The tasks that ran and finished since `since`, and the time their bars cover from.

    When more than `limit` tasks finished, the bars cover less than the asked
    time: from the end of the oldest of the latest `limit`.
    """
    finished = session.execute(_FINISHED_SINCE, {"since": since, "limit": limit}).all()
    if len(finished) == limit:
        since = finished[-1].finish_time
    # Cancelled tasks end without running: no bar.
    return since, [task for task in finished if task.start_time is not None]

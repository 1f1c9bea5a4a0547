"""Reads and state changes of tasks: each change is one conditional statement.

The statements are built once, at import, with bound parameters: building a
statement costs more than running it on SQLite (SQLAlchemy computes its cache
key each time). They are Core statements on the tasks table, so a read gives a
plain row (`TaskRow`) without the ORM's identity map and change tracking.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Select,
    Table,
    bindparam,
    case,
    func,
    insert,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from taskservice.errors import QueueFull, TaskNotCancellable, TaskNotFound
from taskservice.models import (
    Task,
    TaskCount,
    TaskCountChange,
    TaskPriority,
    TaskRow,
    TaskSource,
    TaskStatus,
    sources_of,
    utcnow,
)

# SQLite's integers are 64-bit; an OFFSET beyond this is past any table.
MAX_OFFSET = 2**63 - 1

TASKS = cast("Table", Task.__table__)
COUNTS = cast("Table", TaskCount.__table__)
CHANGES = cast("Table", TaskCountChange.__table__)


def _moving_to(target: TaskStatus) -> Any:
    """The condition that the task bound as :task_id may move to `target`."""
    return (TASKS.c.id == bindparam("task_id")) & TASKS.c.status.in_(sources_of(target))


_INSERT = insert(TASKS).returning(*TASKS.c)
# A count is its row plus the changes appended since the last fold (see TaskCountChange).
_ALL_COUNTS = union_all(
    select(COUNTS.c.status, COUNTS.c.priority, COUNTS.c.count),
    select(CHANGES.c.status, CHANGES.c.priority, CHANGES.c.delta),
).subquery("counts")
_COUNT_BY_STATUS = select(_ALL_COUNTS.c.status, func.sum(_ALL_COUNTS.c.count)).group_by(
    _ALL_COUNTS.c.status
)
_QUEUED_COUNT = select(func.coalesce(func.sum(_ALL_COUNTS.c.count), 0)).where(
    _ALL_COUNTS.c.status == TaskStatus.IN_QUEUE
)
# Not left to autovacuum, which may be off or a minute away: a second's folds
# leave a second's changes dead, and every count reads past them.
_VACUUM_CHANGES = text("VACUUM (SKIP_LOCKED) task_count_changes")
# Within this many of TASKSERVICE_MAX_QUEUED, creates on PostgreSQL count under a
# lock (see _queue_is_full): more creates than this at the same moment, far more
# than any deployment's request threads, could pass the bound.
EXACT_WITHIN = 1000
_CREATE_TURN = select(
    func.pg_advisory_xact_lock(func.hashtext(func.current_schema() + ".queue_bound"))
)
# One fold at a time per schema: two would update the same counts in any order.
_FOLD_TURN = select(
    func.pg_try_advisory_xact_lock(func.hashtext(func.current_schema() + ".task_count_changes"))
)
_FOLD = text(
    "WITH folded AS (DELETE FROM task_count_changes RETURNING status, priority, delta)"
    " UPDATE task_counts SET count = task_counts.count + sums.delta"
    " FROM (SELECT status, priority, sum(delta) AS delta FROM folded"
    " GROUP BY status, priority) AS sums"
    " WHERE task_counts.status = sums.status AND task_counts.priority = sums.priority"
)
_SELECT = select(*TASKS.c).where(TASKS.c.id == bindparam("task_id"))
_CANCEL = (
    update(TASKS)
    .where(_moving_to(TaskStatus.CANCELLED))
    .values(status=TaskStatus.CANCELLED, finish_time=bindparam("now"))
    .returning(*TASKS.c)
)
_CLAIM = (
    update(TASKS)
    .where(_moving_to(TaskStatus.RUN))
    .values(
        status=TaskStatus.RUN,
        start_time=bindparam("now"),
        attempts=TASKS.c.attempts + 1,
        slot=bindparam("slot"),
    )
    .returning(*TASKS.c)
)
# Only the attempt that is running may record its end: a runner from before a
# crash cannot overwrite the result of a later attempt.
_FINISH = {
    status: update(TASKS)
    .where(_moving_to(status), TASKS.c.attempts == bindparam("attempt"))
    .values(
        status=status,
        exec_time=bindparam("exec_time"),
        error=bindparam("error_message"),
        finish_time=bindparam("now"),
    )
    .returning(*TASKS.c)
    for status in (TaskStatus.COMPLETED, TaskStatus.FAILED)
}
_REQUEUE = (
    update(TASKS)
    .where(TASKS.c.status.in_(sources_of(TaskStatus.IN_QUEUE)))
    .values(status=TaskStatus.IN_QUEUE, start_time=None, slot=None)
    .returning(*TASKS.c)
)
_RANK = case({p.value: p.rank for p in TaskPriority}, value=TASKS.c.priority)
_QUEUED = (
    select(_RANK, TASKS.c.id)
    .where(TASKS.c.status == TaskStatus.IN_QUEUE)
    .order_by(_RANK, TASKS.c.id)
)


def create_task(
    session: Session,
    *,
    name: str | None,
    duration: float,
    priority: TaskPriority,
    source: TaskSource = TaskSource.HTTP,
    max_queued: int | None = None,
) -> TaskRow:
    """Insert a new queued task; QueueFull if `max_queued` tasks already wait."""
    # In the insert's transaction, so a refused create leaves nothing behind.
    if max_queued is not None and _queue_is_full(session, max_queued):
        raise QueueFull(max_queued)
    values = {
        "name": name,
        "duration": duration,
        "priority": priority,
        "status": TaskStatus.IN_QUEUE,
        "create_time": utcnow(),
        "attempts": 0,
        "source": source,
    }
    return session.execute(_INSERT, values).one()


def _queue_is_full(session: Session, max_queued: int) -> bool:
    """Whether `max_queued` tasks wait, counted so that creates at the same moment cannot all pass.

    SQLite's writers take turns, so its count is exact. On PostgreSQL creates
    near the bound take turns on a lock and count again, each seeing the ones
    before it; far from it they count without one, so that creates on every
    replica do not wait for each other.
    """
    queued: int = session.execute(_QUEUED_COUNT).scalar_one()
    if queued + EXACT_WITHIN >= max_queued and session.get_bind().dialect.name == "postgresql":
        session.execute(_CREATE_TURN)
        queued = session.execute(_QUEUED_COUNT).scalar_one()  # a new snapshot, after the lock
    return queued >= max_queued


def get_task(session: Session, task_id: int) -> TaskRow:
    """The task numbered `task_id`, or TaskNotFound."""
    task = session.execute(_SELECT, {"task_id": task_id}).one_or_none()
    if task is None:
        raise TaskNotFound(task_id)
    return task


def list_tasks(
    session: Session,
    *,
    status: TaskStatus | None,
    priority: TaskPriority | None,
    offset: int,
    limit: int,
) -> tuple[Sequence[TaskRow], int]:
    """A page of tasks, newest first, and how many match the filters in all."""
    filters = {"status": status, "priority": priority, "offset": offset, "limit": limit}
    by_status, by_priority = status is not None, priority is not None
    total: int = session.execute(_count_statement(by_status, by_priority), filters).scalar_one()
    if offset >= min(total, MAX_OFFSET):
        return [], total
    page = session.execute(_page_statement(by_status, by_priority), filters).all()
    return page, total


def count_by_status(session: Session) -> dict[TaskStatus, int]:
    """How many tasks there are of each status (from the counts the triggers keep)."""
    return {status: int(count) for status, count in session.execute(_COUNT_BY_STATUS)}


def count_tasks(session: Session, *, status: TaskStatus) -> int:
    """How many tasks have `status`."""
    count: int = session.execute(_count_statement(True, False), {"status": status}).scalar_one()
    return count


@cache
def _count_statement(by_status: bool, by_priority: bool) -> Select[Any]:
    # From the counts the database keeps (see TaskCount): counting the rows
    # themselves reads an index entry per task, which at a million tasks takes
    # longer than the rest of the request.
    # PostgreSQL sums integers to a numeric; the total is an integer.
    statement = select(sql_cast(func.coalesce(func.sum(_ALL_COUNTS.c.count), 0), BigInteger))
    if by_status:
        statement = statement.where(_ALL_COUNTS.c.status == bindparam("status"))
    if by_priority:
        statement = statement.where(_ALL_COUNTS.c.priority == bindparam("priority"))
    return statement


@cache
def _page_statement(by_status: bool, by_priority: bool) -> Select[Any]:
    statement = select(*TASKS.c)
    if by_status:
        statement = statement.where(TASKS.c.status == bindparam("status"))
    if by_priority:
        statement = statement.where(TASKS.c.priority == bindparam("priority"))
    return (
        statement.order_by(TASKS.c.id.desc()).offset(bindparam("offset")).limit(bindparam("limit"))
    )


def cancel_task(session: Session, task_id: int) -> TaskRow:
    """Cancel a queued task, or raise why it cannot be cancelled."""
    task = session.execute(_CANCEL, {"task_id": task_id, "now": utcnow()}).one_or_none()
    if task is None:
        raise TaskNotCancellable(task_id, get_task(session, task_id).status)
    return task


def claim_task(session: Session, task_id: int, *, slot: int) -> TaskRow | None:
    """Move a queued task to Run in worker `slot`, count the attempt; None if it is not queued.

    The status check and the change are one statement, so a task cancelled
    (or claimed) a moment earlier is never started.
    """
    values = {"task_id": task_id, "now": utcnow(), "slot": slot}
    return session.execute(_CLAIM, values).one_or_none()


def finish_task(
    session: Session,
    task_id: int,
    attempt: int,
    *,
    status: TaskStatus,
    exec_time: float,
    error: str | None = None,
    finish_time: datetime | None = None,
) -> TaskRow | None:
    """Record how attempt number `attempt` ended: the task; None if that attempt is not running."""
    values = {
        "task_id": task_id,
        "attempt": attempt,
        "exec_time": exec_time,
        "error_message": error,
        "now": finish_time or utcnow(),
    }
    return session.execute(_FINISH[status], values).one_or_none()


def requeue_interrupted(session: Session) -> Sequence[TaskRow]:
    """Queue again every task left running by a process that died; return them."""
    return session.execute(_REQUEUE).all()


def fold_counts(session: Session) -> bool:
    """Fold the appended count changes into the counts (PostgreSQL); False if another fold runs."""
    if session.get_bind().dialect.name != "postgresql" or not session.execute(_FOLD_TURN).scalar():
        return False
    session.execute(_FOLD)
    return True


def vacuum_count_changes(connection: Connection) -> None:
    """Reclaim the rows folds deleted, which every count reads past until then (PostgreSQL).

    `connection` must be in autocommit: VACUUM runs in no transaction.
    """
    connection.execute(_VACUUM_CHANGES)


def queued_tasks(session: Session) -> Sequence[tuple[int, int]]:
    """(rank, id) of every queued task, in the order they should run."""
    return [(rank, task_id) for rank, task_id in session.execute(_QUEUED)]

"""Reads and state changes of tasks: each change is one conditional statement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Update, case, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from taskservice.errors import TaskNotCancellable, TaskNotFound
from taskservice.models import Task, TaskPriority, TaskStatus, sources_of, utcnow

# SQLite's integers are 64-bit; an OFFSET beyond this is past any table.
MAX_OFFSET = 2**63 - 1


def create_task(
    session: Session, *, name: str | None, duration: float, priority: TaskPriority
) -> Task:
    """Insert a new queued task."""
    task = Task(
        name=name,
        duration=duration,
        priority=priority,
        status=TaskStatus.IN_QUEUE,
        create_time=utcnow(),
        attempts=0,
    )
    session.add(task)
    session.flush()
    return task


def get_task(session: Session, task_id: int) -> Task:
    """The task numbered `task_id`, or TaskNotFound."""
    # populate_existing: after a conditional UPDATE the identity map is stale.
    task = session.get(Task, task_id, populate_existing=True)
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
) -> tuple[Sequence[Task], int]:
    """A page of tasks, newest first, and how many match the filters in all."""
    conditions = []
    if status is not None:
        conditions.append(Task.status == status)
    if priority is not None:
        conditions.append(Task.priority == priority)
    total = session.scalar(select(func.count()).select_from(Task).where(*conditions)) or 0
    if offset >= min(total, MAX_OFFSET):
        return [], total
    page = session.scalars(
        select(Task).where(*conditions).order_by(Task.id.desc()).offset(offset).limit(limit)
    ).all()
    return page, total


def count_tasks(session: Session, *, status: TaskStatus) -> int:
    """How many tasks have `status`."""
    return session.scalar(select(func.count()).where(Task.status == status)) or 0


def cancel_task(session: Session, task_id: int) -> Task:
    """Cancel a queued task, or raise why it cannot be cancelled."""
    now = utcnow()
    changed = _transition(session, task_id, TaskStatus.CANCELLED, finish_time=now)
    task = get_task(session, task_id)
    if not changed:
        raise TaskNotCancellable(task_id, task.status)
    return task


def claim_task(session: Session, task_id: int) -> Task | None:
    """Move a queued task to Run and count the attempt; None if it is not queued.

    The status check and the change are one statement, so a task cancelled
    (or claimed) a moment earlier is never started.
    """
    changed = _transition(
        session, task_id, TaskStatus.RUN, start_time=utcnow(), attempts=Task.attempts + 1
    )
    return get_task(session, task_id) if changed else None


def finish_task(
    session: Session,
    task_id: int,
    attempt: int,
    *,
    status: TaskStatus,
    exec_time: float,
    error: str | None = None,
    finish_time: datetime | None = None,
) -> bool:
    """Record how attempt number `attempt` ended; False if that attempt is not running.

    A runner from before a crash cannot overwrite the result of a later attempt.
    """
    return _transition(
        session,
        task_id,
        status,
        Task.attempts == attempt,
        exec_time=exec_time,
        error=error,
        finish_time=finish_time or utcnow(),
    )


def requeue_interrupted(session: Session) -> int:
    """Queue again every task left running by a process that died; return how many."""
    statement = (
        update(Task)
        .where(Task.status.in_(sources_of(TaskStatus.IN_QUEUE)))
        .values(status=TaskStatus.IN_QUEUE, start_time=None)
    )
    return _rowcount(session, statement)


def queued_tasks(session: Session) -> Sequence[tuple[int, int]]:
    """(rank, id) of every queued task, in the order they should run."""
    rank = case({p.value: p.rank for p in TaskPriority}, value=Task.priority)
    rows = session.execute(
        select(rank, Task.id).where(Task.status == TaskStatus.IN_QUEUE).order_by(rank, Task.id)
    )
    return [(row[0], row[1]) for row in rows]


def _transition(
    session: Session,
    task_id: int,
    target: TaskStatus,
    *where: ColumnElement[bool],
    **values: Any,
) -> bool:
    """Move the task to `target` if its status allows it; whether it moved."""
    statement = (
        update(Task)
        .where(Task.id == task_id, Task.status.in_(sources_of(target)), *where)
        .values(status=target, **values)
    )
    return _rowcount(session, statement) == 1


def _rowcount(session: Session, statement: Update) -> int:
    """How many rows `statement` changed."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return cast("CursorResult[Any]", result).rowcount

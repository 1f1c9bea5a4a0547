"""Task events: every change of a task's status, kept in an outbox until it is published.

An event is written in the transaction that makes its change (`Outbox.record`),
so it exists exactly when the change committed: none for a change that rolled
back, and none lost to a crash between the change and the publish. The
publisher (taskservice.broker) sends the outbox in `id` order and deletes what
the broker has confirmed. The changes of one task commit one after another
(each updates the task's row, which waits for the one before), so each takes
a later `id`: one task's events go out in the order they happened.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, event, func, insert, select
from sqlalchemy.orm import Session, scoped_session

from taskservice.models import TaskEventRecord, TaskRow, TaskStatus, utcnow
from taskservice.schemas import encode_json, task_document

EVENTS = cast("Table", TaskEventRecord.__table__)

_INSERT = insert(EVENTS)
_PENDING = select(EVENTS).order_by(EVENTS.c.id).limit(bindparam("limit"))
_REMOVE = delete(EVENTS).where(EVENTS.c.id.in_(bindparam("ids", expanding=True)))
_COUNT = select(func.count()).select_from(EVENTS)
# One publisher at a time per schema (PostgreSQL replicas): two publishing the
# same rows could send a task's later event before another sends its earlier one.
_PUBLISHER_TURN = select(
    func.pg_try_advisory_xact_lock(func.hashtext(func.current_schema() + ".task_events"))
)

# Set in a session's info by a transaction that wrote an event.
_WROTE = "taskservice.events.wrote"


class TaskEvent(StrEnum):
    """What happened to a task; `event` in the published body."""

    CREATED = "created"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"  # it was running when its process died


def routing_key(status: TaskStatus) -> str:
    """The routing key of a change to `status`: task.in_queue, task.run, task.completed, ..."""
    return "task." + status.value.lower().replace(" ", "_")


class Outbox:
    """Writes task events in the caller's transaction; a no-op when nothing publishes them.

    Without a broker there is nobody to read the outbox, and a table that only
    grows would be all it gave.
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        # Set after a commit that wrote an event: the publisher's wake-up.
        self.written = threading.Event()

    def watch(self, sessions: scoped_session[Session]) -> None:
        """Set `written` after each commit of `sessions` that wrote an event."""
        event.listen(sessions, "after_commit", self._after_commit)
        event.listen(sessions, "after_rollback", _forget)

    def record(self, session: Session, what: TaskEvent, task: TaskRow) -> None:
        """Add the event `what` of `task` (as the change left it) to the transaction."""
        self.record_many(session, what, [task])

    def record_many(self, session: Session, what: TaskEvent, tasks: Iterable[TaskRow]) -> None:
        """Add the event `what` of each of `tasks` to the transaction."""
        if not self.enabled:
            return
        now = utcnow()
        rows = [_event_row(what, task, now) for task in tasks]
        if rows:
            session.execute(_INSERT, rows)
            session.info[_WROTE] = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_WROTE, False):
            self.written.set()


def _forget(session: Session) -> None:
    session.info.pop(_WROTE, None)


def _event_row(what: TaskEvent, task: TaskRow, now: Any) -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    body = {**task_document(task), "event": what.value, "event_id": event_id}
    return {
        "event_id": event_id,
        "task_id": task.id,
        "routing_key": routing_key(task.status),
        "body": encode_json(body).decode(),
        "create_time": now,
    }


def pending_events(session: Session, limit: int) -> Sequence[Any]:
    """The oldest `limit` events not yet published, oldest first."""
    return session.execute(_PENDING, {"limit": limit}).all()


def remove_events(session: Session, ids: Sequence[int]) -> None:
    """Delete the events numbered `ids`: the broker has them."""
    if ids:
        session.execute(_REMOVE, {"ids": list(ids)})


def take_publisher_turn(session: Session) -> bool:
    """Whether this transaction may publish: no other replica's publisher is in one (PostgreSQL)."""
    return bool(session.execute(_PUBLISHER_TURN).scalar_one())


def count_events(session: Session) -> int:
    """How many events wait to be published."""
    count: int = session.execute(_COUNT).scalar_one()
    return count

"""What clients can do with tasks; each call is one transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from taskservice import events, idempotency, tasks
from taskservice.db import Database
from taskservice.errors import IdempotencyKeyReused
from taskservice.events import Outbox, TaskEvent
from taskservice.metrics import Metrics
from taskservice.models import TaskPriority, TaskRow, TaskSource, TaskStatus
from taskservice.overview import Overview, read_overview

logger = logging.getLogger(__name__)

Submit = Callable[[int, int], None]
# The count changes' table is vacuumed after this many folds (one a second).
VACUUM_EVERY = 10


def _not_dispatched(rank: int, task_id: int) -> None:
    """Leave the task in the database for the pool that will load it at start."""


class TaskService:
    """Creates, reads and cancels tasks, and hands new ones to the pool."""

    def __init__(
        self,
        db: Database,
        submit: Submit | None = None,
        *,
        max_queued: int | None = None,
        metrics: Metrics | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._db = db
        self._submit = submit or _not_dispatched
        self._max_queued = max_queued
        self._metrics = metrics
        self._outbox = outbox or Outbox(enabled=False)

    def create(
        self,
        *,
        name: str | None,
        duration: float,
        priority: TaskPriority,
        source: TaskSource = TaskSource.HTTP,
    ) -> TaskRow:
        """Record a new task, then queue it; the row is committed first."""
        with self._db.writing() as session:
            task = self._insert(
                session, name=name, duration=duration, priority=priority, source=source
            )
        self._dispatch(task)
        return task

    def create_once(
        self,
        *,
        key: str,
        fingerprint: str,
        name: str | None,
        duration: float,
        priority: TaskPriority,
        source: TaskSource = TaskSource.HTTP,
    ) -> tuple[TaskRow, bool]:
        """Create a task under an idempotency key: (the task, whether it already existed).

        The same key with the same fields (`fingerprint`) gives the task it made
        before; with other fields, IdempotencyKeyReused.
        """
        try:
            with self._db.writing() as session:
                known = idempotency.find_key(session, key)
                if known is None:
                    task = self._insert(
                        session, name=name, duration=duration, priority=priority, source=source
                    )
                    idempotency.record_key(session, key, fingerprint, task.id)
        except IntegrityError:
            # Another create took the key after our read: its task stands, ours rolled back.
            with self._db.reading() as session:
                known = idempotency.find_key(session, key)
            if known is None:
                raise
        if known is not None:
            task_id, used_with = known
            if used_with != fingerprint:
                raise IdempotencyKeyReused(key, task_id)
            task = self.get(task_id)
            if task.status is TaskStatus.IN_QUEUE:
                # The first try may have committed and lost its answer before it
                # queued the task (a connection lost during COMMIT). Queuing it
                # again is harmless: a claim takes a task once, and skips it after.
                self._submit(task.priority.rank, task.id)
            return task, True
        self._dispatch(task)
        return task, False

    def _insert(
        self,
        session: Session,
        *,
        name: str | None,
        duration: float,
        priority: TaskPriority,
        source: TaskSource,
    ) -> TaskRow:
        """Insert a queued task and its event in the caller's transaction, within the bound."""
        task = tasks.create_task(
            session,
            name=name,
            duration=duration,
            priority=priority,
            source=source,
            max_queued=self._max_queued,
        )
        self._outbox.record(session, TaskEvent.CREATED, task)
        return task

    def _dispatch(self, task: TaskRow) -> None:
        """Hand a committed task to the pool, count and log it."""
        self._submit(task.priority.rank, task.id)
        if self._metrics is not None:
            self._metrics.task_created(task.priority)
        logger.info(
            "task %s created over %s (priority %s, duration %g s)",
            task.id,
            task.source.value,
            task.priority.value,
            task.duration,
        )

    def get(self, task_id: int) -> TaskRow:
        """The task numbered `task_id`."""
        with self._db.reading() as session:
            return tasks.get_task(session, task_id)

    def list(
        self,
        *,
        status: TaskStatus | None = None,
        priority: TaskPriority | None = None,
        offset: int = 0,
        limit: int = 10,
    ) -> tuple[Sequence[TaskRow], int]:
        """A page of tasks, newest first, and the number matching the filters."""
        with self._db.reading() as session:
            return tasks.list_tasks(
                session, status=status, priority=priority, offset=offset, limit=limit
            )

    def count_by_status(self) -> dict[TaskStatus, int]:
        """How many tasks there are of each status."""
        with self._db.reading() as session:
            return tasks.count_by_status(session)

    def count_events(self) -> int:
        """How many task events wait in the outbox to be published."""
        with self._db.reading() as session:
            return events.count_events(session)

    def overview(self) -> Overview:
        """A snapshot of the queue for the dashboard, from bounded reads."""
        with self._db.reading() as session:
            return read_overview(session)

    def count(self, *, status: TaskStatus) -> int:
        """How many tasks have `status`."""
        with self._db.reading() as session:
            return tasks.count_tasks(session, status=status)

    def cancel(self, task_id: int) -> TaskRow:
        """Cancel a task that is still queued."""
        with self._db.writing() as session:
            task = tasks.cancel_task(session, task_id)
            self._outbox.record(session, TaskEvent.CANCELLED, task)
        logger.info("task %s cancelled", task_id)
        return task

    def recover(self) -> Sequence[tuple[int, int]]:
        """Requeue tasks a dead process left running; (rank, id) of all queued tasks."""
        with self._db.writing() as session:
            interrupted = tasks.requeue_interrupted(session)
            self._outbox.record_many(session, TaskEvent.REQUEUED, interrupted)
            queued = tasks.queued_tasks(session)
        if interrupted:
            logger.warning("%d interrupted task(s) queued again", len(interrupted))
        logger.info("%d queued task(s) loaded from the database", len(queued))
        return queued


class CountFolder:
    """A replica's chore on PostgreSQL: fold the appended count changes into the counts.

    Called every second; every VACUUM_EVERY folds it also vacuums the changes'
    table, whose deleted rows every count reads past until then.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._folds = 0

    def __call__(self) -> None:
        """Fold once, unless another replica is folding."""
        try:
            with self._db.writing() as session:
                folded = tasks.fold_counts(session)
        finally:
            self._db.remove_session()
        if folded:
            self._folds += 1
            if self._folds % VACUUM_EVERY == 0:
                with self._db.engine.connect() as connection:
                    tasks.vacuum_count_changes(
                        connection.execution_options(isolation_level="AUTOCOMMIT")
                    )

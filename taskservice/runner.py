"""Running one task: claim it, run its body, record how it ended."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from taskservice import tasks
from taskservice.db import Database
from taskservice.errors import TaskFailed
from taskservice.events import Outbox, TaskEvent
from taskservice.metrics import Metrics
from taskservice.models import TaskRow, TaskStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")
Body = Callable[[TaskRow], None]

# A duration of 13 s always ends in an error (a rule of the specification).
UNLUCKY_DURATION = 13

FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 5.0
MAX_ERROR_LENGTH = 2000


def sleep_body(
    time_scale: float, failure_rate: float, rng: Callable[[], float] = random.random
) -> Body:
    """The task body of the specification: sleep for the task's duration.

    `time_scale` shortens every sleep (tests, demos); `failure_rate` is the
    share of tasks that fail at random after sleeping.
    """

    def body(task: TaskRow) -> None:
        time.sleep(task.duration * time_scale)
        if task.duration == UNLUCKY_DURATION:
            raise TaskFailed(f"a task of duration {UNLUCKY_DURATION} always fails")
        if failure_rate and rng() < failure_rate:
            raise TaskFailed(f"random failure (failure rate {failure_rate:g})")

    return body


def clean_error(error: BaseException) -> str:
    """The message to record for a task that raised `error`; always storable as text."""
    message = str(error) or type(error).__name__
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return message.replace("\x00", "\\x00")[:MAX_ERROR_LENGTH]


@dataclass(frozen=True)
class Outcome:
    """How a run of a task's body ended: its duration, and its error if it failed."""

    exec_time: float
    error: str | None

    @property
    def status(self) -> TaskStatus:
        """The status it ends the task in."""
        return TaskStatus.COMPLETED if self.error is None else TaskStatus.FAILED


def was_recorded(session: Session, task: TaskRow) -> bool:
    """Whether this attempt of `task` has its end recorded (by a try whose answer was lost)."""
    current = tasks.get_task(session, task.id)
    return bool(current.attempts == task.attempts and current.status.is_final)


class TaskRunner:
    """The pool's handler: runs the task with a given number, start to finish.

    Database errors are logged and retried with backoff until they pass or
    the runner is stopped: giving up would strand the task until a restart.
    An error in the body fails the task, never the thread.
    """

    def __init__(
        self,
        db: Database,
        body: Body,
        *,
        may_claim: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,  # never the wall clock: it can jump
        metrics: Metrics | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._outbox = outbox or Outbox(enabled=False)
        self._body = body
        self._may_claim = may_claim
        self._clock = clock
        self._retrying_since: dict[str, float] = {}
        self._running: dict[int, int] = {}  # slot: the task whose body runs in it now
        self.stopping = threading.Event()

    def running(self) -> list[int]:
        """The tasks whose body runs in this process now, by number."""
        return sorted(self._running.values())

    def stuck(self, longer_than: float) -> list[str]:
        """The workers that have been retrying a database error for over `longer_than` s."""
        now = self._clock()
        return sorted(
            worker
            for worker, since in list(self._retrying_since.items())
            if now - since > longer_than
        )

    def __call__(self, task_id: int, slot: int) -> None:
        """Run task `task_id` in worker slot `slot` if it is still queued."""
        worker = threading.current_thread().name
        if not self._may_claim():
            # The pool lock is lost: the task stays queued for the next holder.
            logger.error(
                "%s: task %s not started: this process lost the pool lock", worker, task_id
            )
            return
        try:
            task = self._retry(worker, task_id, lambda retry: self._claim(task_id, slot, retry))
            if task is None:
                logger.info("%s: task %s skipped: no longer in the queue", worker, task_id)
                return
            self._run(worker, task)
        finally:
            self._db.remove_session()

    def stop(self) -> None:
        """Stop retrying database errors; the pool's stop does the rest."""
        self.stopping.set()

    def _run(self, worker: str, task: TaskRow) -> None:
        outcome = self._execute(worker, task)
        finished = self._retry(worker, task.id, lambda retry: self._finish(task, outcome, retry))
        self._report(worker, task, outcome, finished)

    def _execute(self, worker: str, task: TaskRow) -> Outcome:
        """Run the body of a claimed task; how it ended."""
        since_created = ((task.start_time or task.create_time) - task.create_time).total_seconds()
        if task.attempts == 1:
            logger.info(
                "%s: task %s started (attempt 1, waited %.3f s)", worker, task.id, since_created
            )
            if self._metrics is not None:
                self._metrics.task_started(since_created)
        else:
            # A rerun's time since creation includes the run that was cut short:
            # it is no wait, and the wait histogram counts first attempts only.
            logger.info(
                "%s: task %s started again (attempt %d, created %.3f s ago)",
                worker,
                task.id,
                task.attempts,
                since_created,
            )
        started = self._clock()
        error = None
        self._running[task.slot] = task.id
        try:
            self._body(task)
        except BaseException as exc:  # even SystemExit from a task must not end the thread
            error = clean_error(exc)
        finally:
            self._running.pop(task.slot, None)
        return Outcome(self._clock() - started, error)

    def _report(self, worker: str, task: TaskRow, outcome: Outcome, finished: bool) -> None:
        """Count and log how a run ended, once its result is recorded (or refused)."""
        if finished and self._metrics is not None:
            self._metrics.task_finished(outcome.status, task.priority, outcome.exec_time)
        if not finished:
            logger.warning("%s: task %s was no longer running; result dropped", worker, task.id)
        elif outcome.error is None:
            logger.info("%s: task %s completed in %.3f s", worker, task.id, outcome.exec_time)
        else:
            logger.info(
                "%s: task %s failed in %.3f s: %s",
                worker,
                task.id,
                outcome.exec_time,
                outcome.error,
            )

    def _claim(self, task_id: int, slot: int, retry: bool) -> TaskRow | None:
        with self._db.writing(urgent=True) as session:
            task = tasks.claim_task(session, task_id, slot=slot)
            if task is not None:
                self._outbox.record(session, TaskEvent.STARTED, task)
            elif retry:
                # The failed try may have committed before its answer was lost.
                # Only this process runs tasks on this database (the pool
                # lock), so a running task here is the one that try claimed.
                current = tasks.get_task(session, task_id)
                task = current if current.status is TaskStatus.RUN else None
            return task

    def _finish(self, task: TaskRow, outcome: Outcome, retry: bool) -> bool:
        with self._db.writing(urgent=True) as session:
            if self._record(session, task, outcome):
                return True
            # As in _claim: the failed try may have recorded the result.
            return retry and was_recorded(session, task)

    def _record(self, session: Session, task: TaskRow, outcome: Outcome) -> bool:
        """Record the end of this attempt of `task`, and its event; False if it no longer runs."""
        finished = tasks.finish_task(
            session,
            task.id,
            task.attempts,
            status=outcome.status,
            exec_time=outcome.exec_time,
            error=outcome.error,
        )
        if finished is None:
            return False
        what = TaskEvent.COMPLETED if outcome.status is TaskStatus.COMPLETED else TaskEvent.FAILED
        self._outbox.record(session, what, finished)
        return True

    def _retry(self, worker: str, task_id: int | None, operation: Callable[[bool], T]) -> T:
        """Run `operation(retry)` until it gets through without a database error."""
        delay = FIRST_RETRY_DELAY
        retry = False
        while True:
            try:
                result = operation(retry)
            except SQLAlchemyError:
                self._retrying_since.setdefault(worker, self._clock())
                logger.exception(
                    "%s: task %s: database error, retrying in %.2f s", worker, task_id, delay
                )
                self._db.remove_session()
                if self.stopping.wait(delay):
                    self._retrying_since.pop(worker, None)
                    raise
                delay = min(delay * 2, MAX_RETRY_DELAY)
                retry = True
            else:
                self._retrying_since.pop(worker, None)
                return result

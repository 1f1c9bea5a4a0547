"""Running tasks through the database's slots: the handler of the replicas' shared pool.

A worker that is woken claims the next task in run order into a free slot
(taskservice.pool.claims), runs it, and hands the slot on: recording the
result, freeing the slot and claiming the next task are one transaction, so
a slot is never idle while a task waits and no claim can slip in between.
Every write of an attempt is fenced by (slot, task, attempt): a replica that
resumes after its lease was taken over records nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from taskservice.db import Database
from taskservice.errors import ConfigError
from taskservice.events import Outbox, TaskEvent
from taskservice.metrics import Metrics
from taskservice.pool import claims, replicas
from taskservice.pool.claims import Claim, Expired
from taskservice.pool.leases import LeaseKeeper, lease_clock
from taskservice.runner import Body, Outcome, TaskRunner, was_recorded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Done:
    """A claim whose body has run, and how it ended."""

    claim: Claim
    outcome: Outcome


class SlotRunner(TaskRunner):
    """Claims, runs and hands over tasks in the shared slots, under this replica's leases."""

    def __init__(
        self,
        db: Database,
        body: Body,
        *,
        replica_id: str,
        slots: int,
        lease: timedelta,
        keeper: LeaseKeeper,
        metrics: Metrics | None = None,
        outbox: Outbox | None = None,
        clock: Callable[[], float] = lease_clock,  # the keeper's: a claim's time starts its lease
    ) -> None:
        super().__init__(db, body, metrics=metrics, outbox=outbox, clock=clock)
        self._replica_id = replica_id
        self._slots = slots
        self._lease = lease
        self._keeper = keeper

    def prepare(self) -> None:
        """Make the slot rows, and queue again what was left in Run outside any slot.

        ConfigError if replicas running now were started with another
        TASKSERVICE_CONCURRENCY: the limit is theirs until they all stop.
        """
        with self._db.writing(urgent=True) as session:
            current = claims.count_slots(session)
            if current not in (0, self._slots):
                # Renewals every fifth of a lease: silent for two leases is gone.
                live = replicas.count_live(session, within=2 * self._lease)
                if live:
                    raise ConfigError(
                        f"TASKSERVICE_CONCURRENCY is {self._slots}, but the {live} replica(s)"
                        f" running tasks on this database use {current}: set the same on every"
                        " replica (to change it, stop them all, then start them with the new"
                        " value)"
                    )
            claims.ensure_slots(session, self._slots)
            unheld = claims.requeue_unheld(session)
            self._outbox.record_many(session, TaskEvent.REQUEUED, unheld)
        self._db.remove_session()
        if unheld:
            logger.warning("%d task(s) left running outside any slot queued again", len(unheld))

    def run_next(self) -> None:
        """Claim the next task in run order and run it, then the next, until none waits."""
        worker = threading.current_thread().name
        try:
            claim = self._retry(worker, None, lambda retry: self._hand_over(worker, None, retry))
            while claim is not None:
                claim = self._run_claimed(worker, claim)
        finally:
            self._db.remove_session()

    def _run_claimed(self, worker: str, claim: Claim) -> Claim | None:
        """Run a claimed task, hand its slot over; the next claim, if one was made."""
        done = Done(claim, self._execute(worker, claim.task))
        return self._retry(
            worker, claim.task.id, lambda retry: self._hand_over(worker, done, retry)
        )

    def _hand_over(self, worker: str, done: Done | None, retry: bool) -> Claim | None:
        """Record `done` and free its slot, then claim the next task: one transaction."""
        began = self._clock()
        recorded = None
        if done is not None:
            # Before the slot is freed, so that a renewal the hand-over outruns
            # is not taken for a takeover.
            self._keeper.drop(done.claim.slot)
        with self._db.writing(urgent=True) as session:
            if done is not None:
                recorded = self._release(session, done, retry)
            # A fenced replica claims nothing more: it is about to end.
            may_claim = not self.stopping.is_set() and recorded is not False
            got = self._claim_next(session) if may_claim else None
        if done is not None:
            self._report(worker, done.claim.task, done.outcome, bool(recorded))
        if isinstance(got, Claim | Expired) and got.taken_over is not None:
            logger.warning(
                "%s: task %s queued again: its replica's lease had expired",
                worker,
                got.taken_over.id,
            )
            if self._metrics is not None:
                self._metrics.slot_taken_over()
        if not isinstance(got, Claim):
            return None
        task = got.task
        if not self._keeper.hold(got.slot, task.id, task.attempts, began):
            logger.error("%s: task %s not started: this replica is ending", worker, task.id)
            return None
        return got

    def _release(self, session: Session, done: Done, retry: bool) -> bool:
        """Free the slot of `done` and record its end; False if the slot is no longer its."""
        task = done.claim.task
        if claims.release(session, slot=done.claim.slot, task_id=task.id, attempt=task.attempts):
            if self._record(session, task, done.outcome):
                return True
            logger.error("task %s held its slot but was not running", task.id)
            return False
        if retry and was_recorded(session, task):
            return True  # the failed try committed before its answer was lost
        if self._metrics is not None:
            self._metrics.write_fenced("finish")
        return False

    def _claim_next(self, session: Session) -> Claim | Expired | None:
        got = claims.claim_next(
            session, replica_id=self._replica_id, lease=self._lease, slots=self._slots
        )
        if isinstance(got, Claim | Expired) and got.taken_over is not None:
            self._outbox.record(session, TaskEvent.REQUEUED, got.taken_over)
        if isinstance(got, Claim):
            self._outbox.record(session, TaskEvent.STARTED, got.task)
        return got

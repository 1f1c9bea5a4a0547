"""Claiming tasks through slot rows: the limit kept by the database, for replicas on PostgreSQL.

There are as many rows in `task_slots` as tasks may run at once. A claim locks
a free slot row (or one whose lease has expired) and the next queued task in
run order, both with `FOR UPDATE SKIP LOCKED`, and ties them together in one
transaction: a task is `Run` exactly when a slot holds it, so no interleaving
of claims, however many replicas make them, can run more tasks than there are
slots. Counting running rows would not do: two claims would each count in
their own snapshot and both pass.

Every write of an attempt (renew its lease, free its slot) names the slot,
the task and the attempt number, the fencing token: a replica that resumes
after a pause past its lease, when another has taken the slot over and started
the task again, changes nothing.

PostgreSQL only (`FOR UPDATE SKIP LOCKED`, the server's clock); SQLite keeps
one pool per database (taskservice.pool.lock) and needs none of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Interval,
    Table,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from taskservice import tasks
from taskservice.models import TaskPriority, TaskRow, TaskSlot, TaskStatus
from taskservice.tasks import TASKS

SLOTS = cast("Table", TaskSlot.__table__)

# The database's clock, as the naive UTC the tables store: every lease is
# set and compared by this one clock, whichever replica writes it.
NOW = func.timezone("UTC", func.now())
_LEASE = bindparam("lease", type_=Interval())
# Run order: each priority's oldest queued task, through the partial index on
# (priority, id) of the queued tasks; literal, so every plan can use it.
_QUEUED = TASKS.c.status == literal_column(f"'{TaskStatus.IN_QUEUE.value}'")
_BY_RANK = sorted(TaskPriority, key=lambda priority: priority.rank)

# Every slot up to the configured count; more rows are left over from a larger one.
ALL_SLOTS = 2**31 - 1

_EXPIRED = SLOTS.c.lease_until < NOW
_FREE_SLOT = (
    select(SLOTS.c.slot, SLOTS.c.task_id, SLOTS.c.attempt)
    .where(
        or_(
            (SLOTS.c.slot <= bindparam("slots")) & (SLOTS.c.task_id.is_(None) | _EXPIRED),
            # Left from a larger setting: taken over once expired, then removed.
            (SLOTS.c.slot > bindparam("slots")) & _EXPIRED,
        )
    )
    # An expired slot before a free one: its task would otherwise wait for
    # every free slot to fill before it ran again.
    .order_by(SLOTS.c.task_id.is_(None), SLOTS.c.slot)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_NEXT_OF_PRIORITY = (
    select(TASKS.c.id)
    .where(_QUEUED, TASKS.c.priority == bindparam("priority"))
    .order_by(TASKS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
# (Bound names differ from the columns': an UPDATE reserves those for its SET clause.)
_HOLDS = (
    (SLOTS.c.slot == bindparam("in_slot"))
    & (SLOTS.c.task_id == bindparam("held_task"))
    & (SLOTS.c.attempt == bindparam("held_attempt"))
)
_TAKE_SLOT = (
    sql_update(SLOTS)
    .where(SLOTS.c.slot == bindparam("in_slot"))
    .values(
        task_id=bindparam("new_task"),
        attempt=bindparam("new_attempt"),
        replica_id=bindparam("new_replica"),
        lease_until=NOW + _LEASE,
    )
)
_CLEAR_SLOT = (
    sql_update(SLOTS)
    .where(SLOTS.c.slot == bindparam("in_slot"))
    .values(task_id=None, attempt=None, replica_id=None, lease_until=None)
)
_FREE = (
    sql_update(SLOTS)
    .where(_HOLDS)
    .values(task_id=None, attempt=None, replica_id=None, lease_until=None)
)
_RENEW = sql_update(SLOTS).where(_HOLDS).values(lease_until=NOW + _LEASE)
# A task whose holder let its lease expire: queued again, if that attempt still runs.
_REQUEUE_EXPIRED = (
    sql_update(TASKS)
    .where(
        TASKS.c.id == bindparam("task_id"),
        TASKS.c.attempts == bindparam("attempt"),
        TASKS.c.status == TaskStatus.RUN,
    )
    .values(status=TaskStatus.IN_QUEUE, start_time=None, slot=None)
    .returning(*TASKS.c)
)
_SLOT_COUNT = select(func.count()).select_from(SLOTS)
_REMOVE_SLOT = sql_delete(SLOTS).where(SLOTS.c.slot == bindparam("in_slot"))
_REMOVE_FREE_BEYOND = sql_delete(SLOTS).where(
    SLOTS.c.slot > bindparam("count"), SLOTS.c.task_id.is_(None)
)
# A task is Run exactly while a slot holds its attempt (a claim and a takeover
# each change both in one transaction), so one in Run that no slot holds was
# left by a process from before the slots: it is queued again.
_REQUEUE_UNHELD = (
    sql_update(TASKS)
    .where(
        TASKS.c.status == TaskStatus.RUN,
        ~exists().where(SLOTS.c.task_id == TASKS.c.id, SLOTS.c.attempt == TASKS.c.attempts),
    )
    .values(status=TaskStatus.IN_QUEUE, start_time=None, slot=None)
    .returning(*TASKS.c)
)


@dataclass(frozen=True)
class Claim:
    """A task claimed into a slot, and the task that slot's expired lease gave up, if any."""

    task: TaskRow
    slot: int
    taken_over: TaskRow | None = None


@dataclass(frozen=True)
class Expired:
    """A slot whose lease had expired, freed with no queued task to claim into it."""

    taken_over: TaskRow | None


def ensure_slots(session: Session, count: int) -> int:
    """Make the slot rows 1 to `count`, drop free ones beyond it; how many slot rows there are.

    A slot beyond `count` that still holds a task keeps it until its lease
    expires; a claim then takes it over and removes it (see claim_next).
    """
    rows = [{"slot": slot} for slot in range(1, count + 1)]
    session.execute(pg_insert(SLOTS).on_conflict_do_nothing(index_elements=["slot"]), rows)
    session.execute(_REMOVE_FREE_BEYOND, {"count": count})
    total: int = session.execute(_SLOT_COUNT).scalar_one()
    return total


def count_slots(session: Session) -> int:
    """How many slot rows there are: the limit the replicas running now were started with."""
    total: int = session.execute(_SLOT_COUNT).scalar_one()
    return total


def requeue_unheld(session: Session) -> Sequence[TaskRow]:
    """Queue again every task in Run that no slot holds (left from before the slots)."""
    return session.execute(_REQUEUE_UNHELD).all()


def claim_next(
    session: Session, *, replica_id: str, lease: timedelta, slots: int = ALL_SLOTS
) -> Claim | Expired | None:
    """Claim the next queued task, in run order, into a free slot; None if none is free.

    A slot whose lease has expired counts as free: the task it held is queued
    again first (it may be the one claimed now). Expired, when a slot was freed
    so but no task waits to take it.
    """
    slot = session.execute(_FREE_SLOT, {"slots": slots}).one_or_none()
    if slot is None:
        return None
    taken_over = None
    if slot.task_id is not None:  # its holder stopped renewing: a failover
        taken_over = session.execute(
            _REQUEUE_EXPIRED, {"task_id": slot.task_id, "attempt": slot.attempt}
        ).one_or_none()
    if slot.slot > slots:  # beyond the setting: nothing runs in it again
        session.execute(_REMOVE_SLOT, {"in_slot": slot.slot})
        return Expired(taken_over)
    task = _claim_queued(session, slot.slot)
    if task is None:
        if slot.task_id is None:
            return None
        session.execute(_CLEAR_SLOT, {"in_slot": slot.slot})
        return Expired(taken_over)
    values = {"in_slot": slot.slot, "new_task": task.id, "new_attempt": task.attempts}
    session.execute(_TAKE_SLOT, {**values, "new_replica": replica_id, "lease": lease})
    return Claim(task, slot.slot, taken_over)


def _claim_queued(session: Session, slot: int) -> TaskRow | None:
    """Move the first queued task no other claim has locked to Run in `slot`."""
    for priority in _BY_RANK:
        task_id = session.execute(_NEXT_OF_PRIORITY, {"priority": priority}).scalar_one_or_none()
        if task_id is not None:
            return tasks.claim_task(session, task_id, slot=slot)
    return None


def renew(session: Session, *, slot: int, task_id: int, attempt: int, lease: timedelta) -> bool:
    """Extend the lease of `attempt` of `task_id` in `slot`; False if the slot is no longer its."""
    values = {"in_slot": slot, "held_task": task_id, "held_attempt": attempt, "lease": lease}
    return _rowcount(session.execute(_RENEW, values)) == 1


def release(session: Session, *, slot: int, task_id: int, attempt: int) -> bool:
    """Free `slot` of `attempt` of `task_id`; False if the slot is no longer its."""
    values = {"in_slot": slot, "held_task": task_id, "held_attempt": attempt}
    return _rowcount(session.execute(_FREE, values)) == 1


def _rowcount(result: Any) -> int:
    return cast("CursorResult[Any]", result).rowcount

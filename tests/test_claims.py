"""Claims through slot rows on the real PostgreSQL: the limit, run order, leases and fencing."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from taskservice import tasks
from taskservice.db import Database
from taskservice.models import TaskPriority, TaskStatus
from taskservice.pool import claims
from taskservice.pool.claims import Claim, Expired
from tests.helpers import join_all, wait_for

LEASE = timedelta(seconds=30)


def queue(db: Database, *priorities: TaskPriority) -> list[int]:
    with db.writing() as session:
        return [
            tasks.create_task(session, name=None, duration=1, priority=priority).id
            for priority in priorities
        ]


def slots(db: Database, count: int) -> None:
    with db.writing() as session:
        assert claims.ensure_slots(session, count) == count


def claim(db: Database, replica: str = "a") -> Claim | Expired | None:
    with db.writing() as session:
        return claims.claim_next(session, replica_id=replica, lease=LEASE)


def expire_leases(db: Database) -> None:
    with db.writing() as session:
        session.execute(text("UPDATE task_slots SET lease_until = lease_until - interval '1 hour'"))


def test_claims_take_tasks_in_run_order_into_free_slots(pg: Database):
    slots(pg, 2)
    low, high, medium = queue(pg, TaskPriority.LOW, TaskPriority.HIGH, TaskPriority.MEDIUM)

    first, second, third = claim(pg), claim(pg), claim(pg)

    assert isinstance(first, Claim)
    assert isinstance(second, Claim)
    assert (first.task.id, second.task.id) == (high, medium)
    assert {first.slot, second.slot} == {1, 2}
    assert first.task.status is TaskStatus.RUN
    assert first.task.slot == first.slot
    assert third is None  # every slot is taken: the low task waits
    with pg.reading() as session:
        assert tasks.get_task(session, low).status is TaskStatus.IN_QUEUE


def test_adding_slots_twice_adds_none(pg: Database):
    slots(pg, 2)
    slots(pg, 2)


@pytest.mark.parametrize("slot_count", [1, 2])
def test_a_claim_held_open_is_skipped_never_doubled(pg: Database, slot_count: int):
    """One claim holds its slot and task locked, uncommitted, while another claims."""
    slots(pg, slot_count)
    first_task, second_task = queue(pg, TaskPriority.HIGH, TaskPriority.HIGH)
    rival: list[Claim | Expired | None] = []

    def claim_as_b() -> None:
        try:
            rival.append(claim(pg, "b"))
        finally:
            pg.remove_session()

    holder = Session(pg.engine)
    thread = threading.Thread(target=claim_as_b)
    try:
        with holder.begin():
            held = claims.claim_next(holder, replica_id="a", lease=LEASE)
            thread.start()
            # The rival skips what the holder locked; with a slot of its own it then
            # waits for the task counts the holder's claim updated (a row per
            # status and priority, kept by triggers), until the holder commits.
            wait_for(lambda: rival or waits_for_a_lock(pg), timeout=15)
    finally:
        holder.close()
        thread.join(15)

    assert isinstance(held, Claim)
    assert held.task.id == first_task
    if slot_count == 1:
        assert rival == [None]  # the one slot is locked by the open claim
    else:
        (got,) = rival
        assert isinstance(got, Claim)
        assert (got.task.id, got.slot) == (second_task, 2)
    with pg.reading() as session:
        running = session.execute(text("SELECT count(*) FROM tasks WHERE status = 'Run'"))
        assert running.scalar_one() == slot_count


def waits_for_a_lock(db: Database) -> bool:
    """Whether a backend of this database waits for a lock."""
    with db.engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid)"
                " WHERE NOT granted AND datname = current_database()"
            )
        ).scalar_one()
    return bool(waiting)


def test_concurrent_claims_never_run_more_than_the_slots(pg: Database):
    slots(pg, 2)
    created = queue(pg, *[TaskPriority.MEDIUM] * 150)
    finished: list[int] = []
    most = [0]
    errors: list[BaseException] = []
    done = threading.Event()

    def replica(name: str) -> None:
        try:
            while not done.is_set():
                with pg.writing() as session:
                    got = claims.claim_next(session, replica_id=name, lease=LEASE)
                    running = session.execute(
                        text("SELECT count(*) FROM tasks WHERE status = 'Run'")
                    ).scalar_one()
                    most[0] = max(most[0], running)
                if not isinstance(got, Claim):
                    if len(finished) == len(created):
                        done.set()
                    continue
                with pg.writing() as session:
                    assert claims.release(
                        session, slot=got.slot, task_id=got.task.id, attempt=got.task.attempts
                    )
                    tasks.finish_task(
                        session,
                        got.task.id,
                        got.task.attempts,
                        status=TaskStatus.COMPLETED,
                        exec_time=0.0,
                    )
                finished.append(got.task.id)
        except BaseException as error:
            errors.append(error)
            done.set()
        finally:
            pg.remove_session()

    threads = [threading.Thread(target=replica, args=(f"r{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    assert not join_all(threads, timeout=60)

    assert not errors
    assert sorted(finished) == sorted(created)  # each task once
    assert most[0] <= 2
    with pg.reading() as session:
        attempts = session.execute(text("SELECT DISTINCT attempts FROM tasks")).scalars().all()
    assert attempts == [1]


def test_an_expired_lease_is_taken_over_and_its_holder_fenced(pg: Database):
    slots(pg, 1)
    (task_id,) = queue(pg, TaskPriority.HIGH)
    first = claim(pg, "a")
    assert isinstance(first, Claim)
    expire_leases(pg)  # replica a stopped renewing (paused, cut off)

    second = claim(pg, "b")

    assert isinstance(second, Claim)
    assert second.taken_over is not None
    assert second.taken_over.id == task_id
    assert (second.task.id, second.task.attempts, second.slot) == (task_id, 2, first.slot)
    with pg.writing() as session:  # a resumes: none of its writes lands
        assert not claims.renew(session, slot=first.slot, task_id=task_id, attempt=1, lease=LEASE)
        assert not claims.release(session, slot=first.slot, task_id=task_id, attempt=1)
        assert (
            tasks.finish_task(session, task_id, 1, status=TaskStatus.COMPLETED, exec_time=1.0)
            is None
        )
    with pg.writing() as session:  # b's attempt is the one that stands
        assert claims.renew(session, slot=second.slot, task_id=task_id, attempt=2, lease=LEASE)
        assert claims.release(session, slot=second.slot, task_id=task_id, attempt=2)


def test_a_renewed_lease_is_not_taken_over(pg: Database):
    slots(pg, 1)
    queue(pg, TaskPriority.HIGH, TaskPriority.HIGH)
    first = claim(pg, "a")
    assert isinstance(first, Claim)

    assert claim(pg, "b") is None  # the lease runs: the slot is a's


def test_an_expired_slot_with_nothing_to_run_is_freed(pg: Database):
    slots(pg, 1)
    (task_id,) = queue(pg, TaskPriority.HIGH)
    with pg.writing() as session:
        session.execute(
            text(
                "UPDATE task_slots SET task_id = :t, attempt = 7, replica_id = 'gone',"
                " lease_until = timezone('UTC', now()) - interval '1 minute'"
            ),
            {"t": task_id + 1000},
        )
        tasks.cancel_task(session, task_id)

    freed = claim(pg, "b")

    assert isinstance(freed, Expired)
    assert freed.taken_over is None  # no such attempt ran: nothing to queue again
    assert claim(pg, "b") is None
    with pg.reading() as session:
        row = session.execute(text("SELECT task_id, replica_id FROM task_slots")).one()
    assert tuple(row) == (None, None)


def test_an_expired_slot_is_taken_over_before_a_free_one_is_used(pg: Database):
    """With nothing else queued, the dead replica's task must not wait for load to come."""
    slots(pg, 2)
    (task_id,) = queue(pg, TaskPriority.LOW)
    with pg.writing() as session:  # held in slot 2 by a replica that died; slot 1 is free
        got = claims.claim_next(session, replica_id="gone", lease=LEASE)
        assert isinstance(got, Claim)
        session.execute(
            text(
                "UPDATE task_slots AS two SET task_id = one.task_id, attempt = one.attempt,"
                " replica_id = one.replica_id, lease_until = one.lease_until"
                " FROM task_slots AS one WHERE two.slot = 2 AND one.slot = 1"
            )
        )
        session.execute(text("UPDATE task_slots SET task_id = NULL WHERE slot = 1"))
    expire_leases(pg)

    again = claim(pg, "b")

    assert isinstance(again, Claim)
    assert again.taken_over is not None
    assert (again.task.id, again.task.attempts, again.slot) == (task_id, 2, 2)


def test_the_slot_count_follows_the_setting(pg: Database):
    slots(pg, 3)
    queue(pg, TaskPriority.HIGH)
    held = claim(pg, "a")  # in slot 1
    assert isinstance(held, Claim)

    with pg.writing() as session:
        assert claims.ensure_slots(session, 1) == 1  # the free slots 2 and 3 go
    queue(pg, TaskPriority.HIGH)

    assert claim(pg, "b") is None  # the one slot is busy


def test_a_slot_beyond_a_lowered_setting_is_taken_over_and_removed(pg: Database):
    """Replicas ran with three slots; the one holding slot 3 died; they now run with two."""
    slots(pg, 3)
    queue(pg, TaskPriority.HIGH, TaskPriority.HIGH, TaskPriority.HIGH)
    held = [claim(pg, "old") for _ in range(3)]
    assert [got.slot for got in held if isinstance(got, Claim)] == [1, 2, 3]
    expire_leases(pg)
    with pg.writing() as session:
        assert claims.ensure_slots(session, 2) == 3  # slot 3 still holds its task

    got = [claims_of(pg, "new", slots=2) for _ in range(4)]

    with pg.reading() as session:
        assert session.execute(text("SELECT slot FROM task_slots ORDER BY slot")).all() == [
            (1,),
            (2,),
        ]
    assert [type(one).__name__ for one in got].count("Expired") == 1  # slot 3, removed
    assert sum(isinstance(one, Claim) for one in got) == 2  # the two slots, taken over
    with pg.reading() as session:  # slot 3's task waits for a slot of the two
        assert session.execute(text("SELECT status FROM tasks WHERE id = 3")).scalar() == (
            "In Queue"
        )


def claims_of(db: Database, replica: str, *, slots: int) -> Claim | Expired | None:
    with db.writing() as session:
        return claims.claim_next(session, replica_id=replica, lease=LEASE, slots=slots)

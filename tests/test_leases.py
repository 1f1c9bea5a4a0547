"""The lease keeper on the real PostgreSQL: renewals, a takeover, and a lease that may lapse."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from taskservice import tasks
from taskservice.db import Database
from taskservice.models import TaskPriority
from taskservice.pool import claims
from taskservice.pool.claims import Claim
from taskservice.pool.leases import LeaseKeeper

LEASE = timedelta(seconds=5)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def two_slots_and_a_task(pg: Database) -> None:
    with pg.writing() as session:
        claims.ensure_slots(session, 2)
        tasks.create_task(session, name=None, duration=1, priority=TaskPriority.HIGH)


def claim(db: Database, replica: str) -> Claim:
    with db.writing() as session:
        got = claims.claim_next(session, replica_id=replica, lease=LEASE)
    assert isinstance(got, Claim)
    return got


def keeper(db: Database, clock: Clock, lost: list[str]) -> LeaseKeeper:
    return LeaseKeeper(db, lease=LEASE, interval=1.0, margin=1.5, on_lost=lost.append, clock=clock)


def lease_until(db: Database, slot: int) -> Any:
    with db.reading() as session:
        return session.execute(
            text("SELECT lease_until FROM task_slots WHERE slot = :s"), {"s": slot}
        ).scalar_one()


def test_a_renewal_extends_the_lease(pg: Database):
    clock, lost = Clock(), []
    keep = keeper(pg, clock, lost)
    got = claim(pg, "a")
    keep.hold(got.slot, got.task.id, got.task.attempts, began=clock())
    before = lease_until(pg, got.slot)

    clock.now += 3
    keep.check()

    assert lost == []
    assert keep.renewals == 1
    assert lease_until(pg, got.slot) > before
    assert keep.held()[got.slot].safe_until == clock.now + LEASE.total_seconds()


def test_a_slot_taken_over_ends_the_replica(pg: Database):
    clock, lost = Clock(), []
    keep = keeper(pg, clock, lost)
    got = claim(pg, "a")
    keep.hold(got.slot, got.task.id, got.task.attempts, began=clock())
    with pg.writing() as session:  # a was paused past its lease; b took the slot over
        session.execute(text("UPDATE task_slots SET lease_until = lease_until - interval '1 h'"))
    assert claim(pg, "b").task.attempts == 2

    keep.check()

    assert lost == [f"slot(s) [{got.slot}] were taken over by another replica"]


def test_a_lease_that_cannot_be_renewed_ends_the_replica_before_it_lapses(
    pg: Database, monkeypatch: pytest.MonkeyPatch
):
    clock, lost = Clock(), []
    keep = keeper(pg, clock, lost)
    got = claim(pg, "a")
    keep.hold(got.slot, got.task.id, got.task.attempts, began=clock())

    def unreachable(*_args: Any, **_kwargs: Any) -> bool:
        raise OperationalError("renew", {}, Exception("server closed the connection"))

    monkeypatch.setattr(claims, "renew", unreachable)
    clock.now += 3  # 2 s of lease left: more than the margin
    keep.check()
    assert lost == []
    clock.now += 0.6  # 1.4 s left: within the margin
    keep.check()

    assert lost == [f"the lease of slot(s) [{got.slot}] could not be renewed in time"]


def test_a_dropped_slot_is_no_longer_renewed(pg: Database):
    clock, lost = Clock(), []
    keep = keeper(pg, clock, lost)
    got = claim(pg, "a")
    keep.hold(got.slot, got.task.id, got.task.attempts, began=clock())

    keep.drop(got.slot)
    clock.now += 60
    keep.check()

    assert lost == []
    assert keep.renewals == 0


def test_renewing_less_often_than_the_lease_is_refused(pg: Database):
    with pytest.raises(ValueError, match="renew more often"):
        LeaseKeeper(pg, lease=LEASE, interval=4.0, margin=1.5, on_lost=print)

"""The task statements, on each database: the counts the triggers keep."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from taskservice import tasks
from taskservice.db import Database
from taskservice.models import TaskPriority, TaskStatus
from tests.helpers import insert_task

# A count is its row plus the changes not folded into it yet (PostgreSQL appends them).
KEPT_COUNTS = text(
    "SELECT status, priority, sum(count) FROM (SELECT status, priority, count FROM task_counts"
    " UNION ALL SELECT status, priority, delta FROM task_count_changes) AS counts"
    " GROUP BY status, priority"
)


def kept_counts(db: Database) -> dict[tuple[str, str], int]:
    with db.engine.connect() as connection:
        rows = connection.execute(KEPT_COUNTS)
        return {(status, priority): int(count) for status, priority, count in rows if count}


def changes(db: Database) -> int:
    with db.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM task_count_changes")).scalar_one())


def actual_counts(db: Database) -> dict[tuple[str, str], int]:
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT status, priority, count(*) FROM tasks GROUP BY status, priority")
        )
        return {(status, priority): count for status, priority, count in rows}


def test_the_counts_follow_every_change(db: Database):
    high, medium, _low, cancelled, interrupted, deleted = (
        insert_task(db, priority) for priority in [*TaskPriority, *TaskPriority]
    )
    with db.writing() as session:
        for task_id in (high, medium, interrupted):
            assert tasks.claim_task(session, task_id, slot=1) is not None
        assert tasks.finish_task(session, high, 1, status=TaskStatus.COMPLETED, exec_time=1)
        assert tasks.finish_task(session, medium, 1, status=TaskStatus.FAILED, exec_time=1)
        tasks.cancel_task(session, cancelled)
        assert len(tasks.requeue_interrupted(session)) == 1
        session.execute(text("DELETE FROM tasks WHERE id = :id"), {"id": deleted})

    assert kept_counts(db) == {
        ("Completed", "high"): 1,
        ("Failed", "medium"): 1,
        ("In Queue", "low"): 1,
        ("Cancelled", "high"): 1,
        ("In Queue", "medium"): 1,
    }
    assert kept_counts(db) == actual_counts(db)


def test_a_rolled_back_change_leaves_the_counts_alone(db: Database):
    def insert_then_fail() -> None:
        with db.writing() as session:
            tasks.create_task(session, name=None, duration=1, priority=TaskPriority.LOW)
            raise RuntimeError("the transaction fails after the insert")

    insert_task(db, TaskPriority.LOW)
    with pytest.raises(RuntimeError):
        insert_then_fail()

    assert kept_counts(db) == {("In Queue", "low"): 1}


@pytest.mark.parametrize(
    ("status", "priority", "total"),
    [
        (None, None, 3),
        (TaskStatus.IN_QUEUE, None, 2),
        (None, TaskPriority.HIGH, 2),
        (TaskStatus.IN_QUEUE, TaskPriority.HIGH, 1),
        (TaskStatus.FAILED, None, 0),
    ],
)
def test_a_list_total_comes_from_the_counts(
    db: Database, status: TaskStatus | None, priority: TaskPriority | None, total: int
):
    first = insert_task(db, TaskPriority.HIGH)
    insert_task(db, TaskPriority.HIGH)
    insert_task(db, TaskPriority.LOW)
    with db.writing() as session:
        tasks.cancel_task(session, first)

    with db.reading() as session:
        page, counted = tasks.list_tasks(
            session, status=status, priority=priority, offset=0, limit=10
        )

    assert counted == total
    assert len(page) == total


@pytest.mark.postgresql
def test_folding_moves_the_changes_into_the_counts(pg: Database):
    for priority in [*TaskPriority, TaskPriority.LOW]:
        insert_task(pg, priority)
    with pg.writing() as session:
        tasks.cancel_task(session, 1)
    before = kept_counts(pg)
    assert changes(pg) == 6  # four creates, and a cancel's two

    with pg.writing() as session:
        tasks.fold_counts(session)

    assert changes(pg) == 0
    assert kept_counts(pg) == before == actual_counts(pg)
    with pg.writing() as session:
        assert tasks.count_by_status(session) == {
            TaskStatus.IN_QUEUE: 3,
            TaskStatus.RUN: 0,
            TaskStatus.COMPLETED: 0,
            TaskStatus.FAILED: 0,
            TaskStatus.CANCELLED: 1,
        }


@pytest.mark.postgresql
def test_a_transaction_left_open_holds_up_no_other_change(pg: Database):
    """Changes of the same status and priority share no row: none waits for another's commit."""
    first, second = insert_task(pg), insert_task(pg)
    with pg.writing() as held:
        # Left open, as by a replica paused before its COMMIT.
        assert tasks.claim_task(held, first, slot=1) is not None
        assert tasks.finish_task(held, first, 1, status=TaskStatus.COMPLETED, exec_time=1)
        other = Database(pg.url)
        try:
            with other.engine.connect() as connection:
                connection.exec_driver_sql("SET lock_timeout = '2s'")
                session = Session(connection)
                third = tasks.create_task(
                    session, name=None, duration=1, priority=TaskPriority.MEDIUM, max_queued=10
                ).id
                assert tasks.claim_task(session, second, slot=2) is not None
                assert tasks.finish_task(
                    session, second, 1, status=TaskStatus.COMPLETED, exec_time=1
                )
                assert tasks.cancel_task(session, third).status is TaskStatus.CANCELLED
                tasks.fold_counts(session)
                session.commit()
        finally:
            other.dispose()
    assert kept_counts(pg) == actual_counts(pg)

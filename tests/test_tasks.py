"""The task statements, on each database: the counts the triggers keep."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from taskservice import tasks
from taskservice.db import Database
from taskservice.models import TaskPriority, TaskStatus
from tests.helpers import insert_task


def kept_counts(db: Database) -> dict[tuple[str, str], int]:
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT status, priority, count FROM task_counts"))
        return {(status, priority): count for status, priority, count in rows if count}


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

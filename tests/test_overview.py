"""The dashboard's snapshot, on each database: what it holds and that its reads use indexes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.dialects import postgresql

from taskservice import overview, tasks
from taskservice.db import Database
from taskservice.models import Task, TaskPriority, TaskStatus, utcnow
from tests.helpers import insert_task

HIGH, MEDIUM, LOW = TaskPriority.HIGH, TaskPriority.MEDIUM, TaskPriority.LOW


def run(db: Database, task_id: int, slot: int = 1) -> None:
    with db.writing() as session:
        assert tasks.claim_task(session, task_id, slot=slot) is not None


def finish(db: Database, task_id: int, **times: Any) -> None:
    """Run and complete `task_id`, then set its times to `times` if given."""
    run(db, task_id)
    with db.writing() as session:
        assert tasks.finish_task(session, task_id, 1, status=TaskStatus.COMPLETED, exec_time=1)
        if times:
            session.execute(update(Task).where(Task.id == task_id).values(**times))


def cancel(db: Database, task_id: int) -> None:
    with db.writing() as session:
        tasks.cancel_task(session, task_id)


def snapshot(db: Database) -> overview.Overview:
    with db.reading() as session:
        return overview.read_overview(session)


def test_the_head_of_the_queue_is_in_run_order(db: Database):
    low, medium, high, medium_2, high_2 = (
        insert_task(db, p) for p in [LOW, MEDIUM, HIGH, MEDIUM, HIGH]
    )
    running, cancelled = insert_task(db, HIGH), insert_task(db, HIGH)
    run(db, running)
    cancel(db, cancelled)

    with db.reading() as session:
        head = [task.id for task in overview.queue_head(session, 10)]
        first_three = [task.id for task in overview.queue_head(session, 3)]

    assert head == [high, high_2, medium, medium_2, low]
    assert first_three == [high, high_2, medium]


def test_the_snapshot_counts_every_status(db: Database):
    insert_task(db)
    cancel(db, insert_task(db))

    counts = snapshot(db).counts

    assert counts == {
        TaskStatus.IN_QUEUE: 1,
        TaskStatus.RUN: 0,
        TaskStatus.COMPLETED: 0,
        TaskStatus.FAILED: 0,
        TaskStatus.CANCELLED: 1,
    }


def test_the_running_tasks_come_with_their_slots(db: Database):
    first, second = insert_task(db), insert_task(db)
    run(db, first, slot=2)
    run(db, second, slot=1)

    running = snapshot(db).running

    assert [(task.id, task.slot, task.status) for task in running] == [
        (second, 1, TaskStatus.RUN),
        (first, 2, TaskStatus.RUN),
    ]


def test_recent_holds_the_latest_tasks_that_ran(db: Database):
    now = utcnow()
    ids = [insert_task(db) for _ in range(overview.RECENT + 2)]
    for age, task_id in enumerate(ids[:-1]):
        finish(db, task_id, finish_time=now - timedelta(seconds=100 - age))
    cancel(db, ids[-1])  # finished later, but never ran: no wait or run time to show

    recent = [task.id for task in snapshot(db).recent]

    assert recent == list(reversed(ids[-overview.RECENT - 1 : -1]))


def test_every_running_task_is_in_the_snapshot(db: Database):
    """More tasks in Run than a pool has slots would be a bug: the dashboard must show them all."""
    ids = [insert_task(db) for _ in range(25)]
    for slot, task_id in enumerate(reversed(ids), start=1):
        run(db, task_id, slot=slot)

    running = snapshot(db).running

    assert [(task.slot, task.id) for task in running] == list(enumerate(reversed(ids), start=1))


def test_the_timeline_holds_what_ran_in_its_window(db: Database):
    now = utcnow()
    old, recent, cancelled, _queued, running = (insert_task(db) for _ in range(5))
    finish(
        db,
        old,
        start_time=now - overview.TIMELINE - timedelta(minutes=2),
        finish_time=now - overview.TIMELINE - timedelta(minutes=1),
    )
    finish(db, recent)
    cancel(db, cancelled)
    run(db, running)

    shot = snapshot(db)

    assert [task.id for task in shot.timeline] == [recent]
    assert shot.timeline[0].slot == 1
    # The window starts before the reads; the snapshot's time is taken after them.
    assert shot.time - timedelta(seconds=1) <= shot.timeline_since + overview.TIMELINE <= shot.time
    assert [task.id for task in shot.running] == [running]


def test_a_full_timeline_covers_less_time(db: Database):
    now = utcnow()
    ids = [insert_task(db) for _ in range(4)]
    for age, task_id in enumerate(ids):
        finish(
            db,
            task_id,
            start_time=now - timedelta(seconds=20),
            finish_time=now - timedelta(seconds=10 - age),
        )

    asked = now - timedelta(minutes=1)
    with db.reading() as session:
        since, bars = overview.timeline(session, asked, limit=3)
        all_since, all_bars = overview.timeline(session, asked, limit=4)

    assert [task.id for task in bars] == [ids[3], ids[2], ids[1]]
    assert since == now - timedelta(seconds=10 - 1)
    # Exactly as many as the limit: nothing was left out, the window stays.
    assert [task.id for task in all_bars] == list(reversed(ids))
    assert all_since == asked


def test_cancelled_tasks_take_no_place_in_the_timeline(db: Database):
    ran = insert_task(db)
    finish(db, ran)
    for _ in range(3):
        cancel(db, insert_task(db))
    asked = utcnow() - timedelta(minutes=1)

    with db.reading() as session:
        since, bars = overview.timeline(session, asked, limit=2)

    assert ([task.id for task in bars], since) == ([ran], asked)


def test_a_claim_records_the_slot_and_a_requeue_clears_it(db: Database):
    task_id = insert_task(db)
    with db.writing() as session:
        claimed = tasks.claim_task(session, task_id, slot=2)
        assert claimed is not None
        assert claimed.slot == 2
        tasks.requeue_interrupted(session)
        requeued = tasks.get_task(session, task_id)

    assert (requeued.status, requeued.slot, requeued.start_time) == (
        TaskStatus.IN_QUEUE,
        None,
        None,
    )


# Each of the snapshot's reads, with example parameters, and the index it must take.
READS = {
    "queue head": (
        overview._QUEUE_HEAD,
        {"priority": "high", "limit": 10},
        # Not ix_tasks_priority_id: that would read past every finished task.
        "ix_tasks_queued_priority_id",
    ),
    "running": (overview._RUNNING, {}, "ix_tasks_status_id"),
    "latest finished": (overview._LATEST_FINISHED, {"limit": 10}, "ix_tasks_ran_finish_time"),
    "timeline": (
        overview._FINISHED_SINCE,
        {"since": "2026-01-01 00:00:00", "limit": 400},
        "ix_tasks_ran_finish_time",
    ),
}


@pytest.mark.parametrize("read", READS)
def test_each_read_follows_its_index_on_sqlite(tmp_path, read: str):
    """A million rows cost what a thousand do only if no read scans or sorts the table."""
    db = Database(f"sqlite:///{tmp_path / 'plans.sqlite3'}")
    db.upgrade_schema()
    statement, params, index = READS[read]
    with db.engine.connect() as connection:
        compiled = statement.compile(dialect=connection.dialect)
        bound = compiled.construct_params(params)
        values = tuple(bound[name] for name in compiled.positiontup or ())
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values)
        plan = " | ".join(row[3] for row in rows)
    db.dispose()

    assert plan.startswith(("SEARCH tasks USING INDEX", "SCAN tasks USING INDEX")), plan
    assert f"INDEX {index} " in f"{plan} ", plan
    assert "TEMP B-TREE" not in plan, plan


# 20,000 tasks, mostly finished: enough that PostgreSQL's planner, with the
# table's statistics, prefers an index over a scan when the index fits.
_POSTGRES_FILL = """
INSERT INTO tasks (name, priority, duration, status, create_time, start_time, exec_time,
                   finish_time, attempts)
SELECT 'bulk ' || n, (ARRAY['high', 'medium', 'low'])[mod(n, 3) + 1], 1,
       CASE mod(n, 50) WHEN 0 THEN 'In Queue' WHEN 1 THEN 'Cancelled' ELSE 'Completed' END,
       base + make_interval(secs => n),
       CASE WHEN mod(n, 50) > 1 THEN base + make_interval(secs => n + 1) END,
       CASE WHEN mod(n, 50) > 1 THEN 1 END,
       CASE WHEN mod(n, 50) > 0 THEN base + make_interval(secs => n + 2) END,
       CASE WHEN mod(n, 50) > 1 THEN 1 ELSE 0 END
FROM generate_series(1, 20000) AS n,
     (SELECT localtimestamp - interval '1 day' AS base) AS start
"""


def _literal(value: object) -> str:
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


@pytest.mark.postgresql
@pytest.mark.parametrize("read", READS)
def test_each_read_follows_its_index_on_postgresql(postgres_url: str, read: str):
    """As a prepared statement's generic plan, which cannot assume a parameter's value."""
    db = Database(postgres_url)
    db.upgrade_schema()
    statement, params, index = READS[read]
    compiled = statement.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    bound = compiled.construct_params(params)
    values = tuple(bound[name] for name in compiled.positiontup or ())
    with db.engine.connect() as connection:
        connection.exec_driver_sql(_POSTGRES_FILL)
        connection.exec_driver_sql("ANALYZE tasks")
        connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        connection.exec_driver_sql(f"PREPARE read AS {compiled}")
        # EXECUTE takes no bound parameters of its own: the values go in as literals.
        arguments = ", ".join(_literal(value) for value in values)
        execute = f"EXPLAIN EXECUTE read({arguments})" if values else "EXPLAIN EXECUTE read"
        plan = " | ".join(row[0] for row in connection.exec_driver_sql(execute))
        connection.rollback()
    db.dispose()

    assert f"Index Scan using {index} on tasks" in plan or (
        f"Index Scan Backward using {index} on tasks" in plan
    ), plan
    assert "Seq Scan" not in plan, plan
    assert "Sort" not in plan, plan

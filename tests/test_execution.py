"""Tasks running through the real pool: the limit of two, order, and failures."""

from __future__ import annotations

import random

from flask import Flask

from taskservice.models import TaskStatus
from tests.conftest import AppFactory, Gate
from tests.helpers import all_tasks, max_overlap, wait_for


def all_final(app: Flask) -> bool:
    return all(task.status.is_final for task in all_tasks(app))


def test_never_more_than_two_run_and_both_slots_are_used(make_app: AppFactory):
    app = make_app(TASKSERVICE_TIME_SCALE=0.003)
    client = app.test_client()
    rng = random.Random(2026)
    for _ in range(60):
        response = client.post("/tasks", json={"duration": rng.randint(0, 10)})
        assert response.status_code == 201

    running_seen: set[int] = set()

    def finished() -> bool:
        tasks = all_tasks(app)
        running_seen.add(sum(task.status is TaskStatus.RUN for task in tasks))
        return all(task.status.is_final for task in tasks)

    wait_for(finished, timeout=30)

    tasks = all_tasks(app)
    assert {task.status for task in tasks} == {TaskStatus.COMPLETED}
    assert all(task.attempts == 1 for task in tasks)
    intervals = []
    for task in tasks:
        assert task.start_time is not None
        assert task.exec_time is not None
        start = task.start_time.timestamp()
        intervals.append((start, start + task.exec_time))
    assert max_overlap(intervals) == 2
    assert max(running_seen) <= 2


def test_higher_priority_first_then_first_come(make_app: AppFactory):
    # Queue everything before the pool starts, then run it one at a time.
    app = make_app(start_pool=False)
    client = app.test_client()
    priorities = ["low", "medium", "high", "low", "high", "medium"]
    ids = [
        client.post("/tasks", json={"priority": p, "duration": 1}).json["id"] for p in priorities
    ]

    runner_app = make_app(TASKSERVICE_CONCURRENCY=1)
    wait_for(lambda: all_final(runner_app))

    started = sorted(all_tasks(runner_app), key=lambda task: task.start_time)
    assert [task.id for task in started] == [ids[2], ids[4], ids[1], ids[5], ids[0], ids[3]]


def test_new_tasks_are_dispatched_by_priority(make_app: AppFactory, gate: Gate):
    app = make_app(TASKSERVICE_CONCURRENCY=1)
    client = app.test_client()
    first = client.post("/tasks", json={"duration": 1}).json["id"]
    gate.wait_for_entries(1)  # the only worker is busy with the first task
    later = {p: client.post("/tasks", json={"priority": p}).json["id"] for p in PRIORITIES}

    gate.open.set()
    wait_for(lambda: all_final(app))

    started = sorted(all_tasks(app), key=lambda task: task.start_time)
    assert [task.id for task in started] == [
        first,
        later["high"],
        later["medium"],
        later["low"],
    ]


PRIORITIES = ["low", "medium", "high"]


def test_cancelled_tasks_never_run(make_app: AppFactory):
    app = make_app(start_pool=False)
    client = app.test_client()
    ids = [client.post("/tasks", json={"duration": 1}).json["id"] for _ in range(6)]
    for task_id in ids[::2]:
        assert client.delete(f"/tasks/{task_id}").status_code == 200

    runner_app = make_app()
    wait_for(lambda: all_final(runner_app))

    by_id = {task.id: task for task in all_tasks(runner_app)}
    for index, task_id in enumerate(ids):
        task = by_id[task_id]
        if index % 2 == 0:
            assert (task.status, task.attempts, task.start_time) == (TaskStatus.CANCELLED, 0, None)
        else:
            assert (task.status, task.attempts) == (TaskStatus.COMPLETED, 1)


def test_duration_13_fails_through_the_api(pool_app: Flask):
    client = pool_app.test_client()
    task_id = client.post("/tasks", json={"duration": 13}).json["id"]

    body = wait_for(
        lambda: (
            (b := client.get(f"/tasks/{task_id}").json)["status"] != "In Queue"
            and b["status"] != "Run"
            and b
        )
    )

    assert body["status"] == "Failed"
    assert body["error"] == "a task of duration 13 always fails"
    assert body["time_to_execute"] >= 0.013


def test_failing_tasks_leave_the_workers_alive(make_app: AppFactory):
    app = make_app(TASKSERVICE_FAILURE_RATE=1.0)
    client = app.test_client()
    for _ in range(10):
        client.post("/tasks", json={"duration": 1})

    wait_for(lambda: all_final(app))

    assert {task.status for task in all_tasks(app)} == {TaskStatus.FAILED}
    assert {task.error for task in all_tasks(app)} == {"random failure (failure rate 1)"}
    assert client.get("/health").json["workers_alive"] == 2

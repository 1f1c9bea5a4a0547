"""Restart: what a dead process left running or queued is run by the next one."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from sqlalchemy import update

from taskservice.extension import get_extension
from taskservice.models import Task, TaskStatus, utcnow
from tests.conftest import AppFactory
from tests.helpers import all_tasks, wait_for


def test_tasks_left_running_and_queued_all_run_after_restart(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
):
    dead = make_app(start_pool=False)
    client = dead.test_client()
    ids = [client.post("/tasks", json={"duration": 1}).json["id"] for _ in range(5)]
    with dead.app_context(), get_extension().db.writing() as session:
        # Two tasks were running when the process was killed.
        session.execute(
            update(Task)
            .where(Task.id.in_(ids[:2]))
            .values(status=TaskStatus.RUN, attempts=1, start_time=utcnow() - timedelta(seconds=5))
        )

    with caplog.at_level(logging.INFO, logger="taskservice"):
        restarted = make_app()
        wait_for(lambda: all(task.status.is_final for task in all_tasks(restarted)))

    tasks = {task.id: task for task in all_tasks(restarted)}
    assert {task.status for task in tasks.values()} == {TaskStatus.COMPLETED}
    assert [tasks[task_id].attempts for task_id in ids] == [2, 2, 1, 1, 1]
    # A rerun's time since creation includes the run cut short: it is not called a wait.
    for task_id in ids[:2]:
        assert re.search(
            rf"task {task_id} started again \(attempt 2, created [0-9.]+ s ago\)", caplog.text
        )
    for task_id in ids[2:]:
        assert re.search(rf"task {task_id} started \(attempt 1, waited [0-9.]+ s\)", caplog.text)


def test_numbers_continue_after_restart(make_app: AppFactory):
    first = make_app(start_pool=False)
    last_id = first.test_client().post("/tasks").json["id"]

    second = make_app(start_pool=False)

    assert second.test_client().post("/tasks").json["id"] == last_id + 1


def test_finished_and_cancelled_tasks_are_left_alone(make_app: AppFactory):
    app = make_app()
    client = app.test_client()
    done = client.post("/tasks", json={"duration": 1}).json["id"]
    wait_for(lambda: client.get(f"/tasks/{done}").json["status"] == "Completed")
    before = client.get(f"/tasks/{done}").json
    app.extensions["taskservice"].close()

    restarted = make_app()

    assert restarted.test_client().get(f"/tasks/{done}").json == before
    assert restarted.test_client().get("/health").json["queued"] == 0

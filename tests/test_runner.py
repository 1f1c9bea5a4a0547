"""The runner: claim, body and finish of one task, driven directly."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from flask import Flask
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from taskservice import tasks
from taskservice.errors import TaskNotCancellable
from taskservice.extension import get_extension
from taskservice.models import Task, TaskPriority, TaskStatus
from taskservice.runner import TaskRunner, sleep_body

T = TypeVar("T")


@pytest.fixture
def runner(app: Flask) -> TaskRunner:
    return TaskRunner(get_extension_of(app).db, sleep_body(time_scale=0.001, failure_rate=0))


def get_extension_of(app: Flask):
    with app.app_context():
        return get_extension()


def new_task(app: Flask, duration: float = 1, priority: TaskPriority = TaskPriority.MEDIUM) -> int:
    service = get_extension_of(app).service
    return service.create(name=None, duration=duration, priority=priority).id


def read(app: Flask, task_id: int) -> Task:
    return get_extension_of(app).service.get(task_id)


def test_runs_a_task_to_completion(app: Flask, runner: TaskRunner):
    task_id = new_task(app, duration=20)

    runner(task_id, slot=1)

    task = read(app, task_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.attempts == 1
    assert task.error is None
    assert task.start_time is not None
    assert task.finish_time is not None
    assert task.create_time <= task.start_time <= task.finish_time
    assert task.exec_time is not None
    assert task.exec_time >= 0.02  # it slept 20 ms (duration 20 at scale 0.001)


def test_the_runner_writes_first(app: Flask, runner: TaskRunner, monkeypatch: pytest.MonkeyPatch):
    """Its claims and results go before waiting creates: an idle slot costs more."""
    db = get_extension_of(app).db
    real_writing = db.writing
    urgency: list[bool] = []

    def writing(*, urgent: bool = False):
        urgency.append(urgent)
        return real_writing(urgent=urgent)

    task_id = new_task(app)
    monkeypatch.setattr(db, "writing", writing)
    runner(task_id, slot=1)

    assert read(app, task_id).status is TaskStatus.COMPLETED
    assert urgency == [True, True]  # the claim and the finish


def test_execution_time_is_measured_on_the_monotonic_clock(app: Flask):
    now = [1000.0]

    def body(_task: Task) -> None:
        now[0] += 7.25  # the task takes 7.25 s on the runner's clock

    runner = TaskRunner(get_extension_of(app).db, body, clock=lambda: now[0])
    task_id = new_task(app)

    runner(task_id, slot=1)

    assert read(app, task_id).exec_time == 7.25


def test_each_step_of_a_task_is_logged(app: Flask, caplog: pytest.LogCaptureFixture):
    def body(task: Task) -> None:
        if task.name == "bad":
            raise ValueError("no good")

    service = get_extension_of(app).service
    runner = TaskRunner(get_extension_of(app).db, body)
    with caplog.at_level(logging.INFO, logger="taskservice"):
        good = service.create(name="good", duration=2, priority=TaskPriority.HIGH).id
        bad = service.create(name="bad", duration=1, priority=TaskPriority.LOW).id
        workers = [
            threading.Thread(target=runner, args=(good, 1), name="worker-1"),
            threading.Thread(target=runner, args=(bad, 2), name="worker-2"),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)

    text = caplog.text
    assert f"task {good} created over http (priority high, duration 2 s)" in text
    assert re.search(rf"worker-1: task {good} started \(attempt 1, waited [0-9.]+ s\)", text)
    assert re.search(rf"worker-1: task {good} completed in [0-9.]+ s", text)
    assert re.search(rf"worker-2: task {bad} failed in [0-9.]+ s: no good", text)


@pytest.mark.parametrize("duration", [13, 13.0])
def test_duration_13_fails(app: Flask, runner: TaskRunner, duration: float):
    task_id = new_task(app, duration=duration)

    runner(task_id, slot=1)

    task = read(app, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error == "a task of duration 13 always fails"
    assert task.exec_time is not None
    assert task.exec_time >= 0.013


@pytest.mark.parametrize(
    ("draw", "status"), [(0.29, TaskStatus.FAILED), (0.3, TaskStatus.COMPLETED)]
)
def test_random_failure(app: Flask, draw: float, status: TaskStatus):
    body = sleep_body(time_scale=0, failure_rate=0.3, rng=lambda: draw)
    runner = TaskRunner(get_extension_of(app).db, body)
    task_id = new_task(app)

    runner(task_id, slot=1)

    task = read(app, task_id)
    assert task.status is status
    assert (task.error == "random failure (failure rate 0.3)") is (status is TaskStatus.FAILED)


def test_a_body_that_raises_fails_the_task(app: Flask):
    def body(task: Task) -> None:
        raise ValueError(f"cannot process task {task.id}")

    runner = TaskRunner(get_extension_of(app).db, body)
    task_id = new_task(app)

    runner(task_id, slot=1)  # does not raise

    task = read(app, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error == f"cannot process task {task_id}"


def test_an_exception_without_message_is_named(app: Flask):
    def body(_task: Task) -> None:
        raise KeyError

    runner = TaskRunner(get_extension_of(app).db, body)
    task_id = new_task(app)
    runner(task_id, slot=1)

    assert read(app, task_id).error == "KeyError"


def test_a_cancelled_task_is_never_started(app: Flask, runner: TaskRunner):
    task_id = new_task(app)
    get_extension_of(app).service.cancel(task_id)

    runner(task_id, slot=1)

    task = read(app, task_id)
    assert task.status is TaskStatus.CANCELLED
    assert task.attempts == 0
    assert task.start_time is None


def test_a_claimed_task_cannot_be_cancelled(app: Flask):
    task_id = new_task(app)
    db = get_extension_of(app).db
    with db.writing() as session:
        assert tasks.claim_task(session, task_id, slot=1) is not None

    with pytest.raises(TaskNotCancellable, match="is 'Run'"):
        get_extension_of(app).service.cancel(task_id)
    assert read(app, task_id).status is TaskStatus.RUN


def test_a_task_is_claimed_once(app: Flask):
    task_id = new_task(app)
    db = get_extension_of(app).db
    with db.writing() as session:
        first = tasks.claim_task(session, task_id, slot=1)
    with db.writing() as session:
        second = tasks.claim_task(session, task_id, slot=1)

    assert first is not None
    assert first.attempts == 1
    assert second is None


def test_cancel_against_claim_race(app: Flask):
    """Each task is either cancelled or claimed, never both, never neither."""
    ids = [new_task(app) for _ in range(150)]
    extension = get_extension_of(app)
    claimed: list[int] = []
    cancelled: list[int] = []
    go = threading.Barrier(2)

    def claim_all() -> None:
        go.wait()
        for task_id in ids:
            with extension.db.writing() as session:
                if tasks.claim_task(session, task_id, slot=1) is not None:
                    claimed.append(task_id)
        extension.db.remove_session()

    def cancel_all() -> None:
        go.wait()
        for task_id in reversed(ids):
            try:
                extension.service.cancel(task_id)
                cancelled.append(task_id)
            except TaskNotCancellable:
                pass
        extension.db.remove_session()

    threads = [threading.Thread(target=claim_all), threading.Thread(target=cancel_all)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(claimed + cancelled) == ids
    for task_id in ids:
        expected = TaskStatus.RUN if task_id in claimed else TaskStatus.CANCELLED
        assert read(app, task_id).status is expected


def hold_open_while(app: Flask, change: Callable[[Session], object], then: Callable[[], T]) -> T:
    """Run `then` in another thread while `change` sits in an uncommitted transaction."""
    db = get_extension_of(app).db
    changed, commit = threading.Event(), threading.Event()

    def first() -> None:
        with db.writing() as session:
            change(session)
            changed.set()
            commit.wait(10)
        db.remove_session()

    holder = threading.Thread(target=first)
    holder.start()
    try:
        assert changed.wait(10)
        with ThreadPoolExecutor(1) as second:
            outcome = second.submit(then)  # it has to wait for the first transaction
            commit.set()
            result = outcome.result(timeout=10)
    finally:
        commit.set()  # however the test ends, the first transaction does
        holder.join(10)
    db.remove_session()
    return result


def test_a_cancel_overlapping_a_claim_loses(app: Flask):
    task_id = new_task(app)
    service = get_extension_of(app).service

    def cancel() -> str:
        try:
            service.cancel(task_id)
        except TaskNotCancellable:
            return "refused"
        return "cancelled"

    def claim(session: Session) -> object:
        return tasks.claim_task(session, task_id, slot=1)

    outcome = hold_open_while(app, claim, cancel)

    assert outcome == "refused"
    assert read(app, task_id).status is TaskStatus.RUN


def test_a_claim_overlapping_a_cancel_loses(app: Flask):
    task_id = new_task(app)
    db = get_extension_of(app).db

    def claim() -> Task | None:
        with db.writing() as session:
            return tasks.claim_task(session, task_id, slot=1)

    outcome = hold_open_while(app, lambda session: tasks.cancel_task(session, task_id), claim)

    assert outcome is None
    assert read(app, task_id).status is TaskStatus.CANCELLED


def test_finish_is_conditional_on_the_attempt(app: Flask):
    """A stale runner cannot overwrite the result of a later attempt."""
    task_id = new_task(app)
    db = get_extension_of(app).db
    with db.writing() as session:
        assert tasks.claim_task(session, task_id, slot=1) is not None
    with db.writing() as session:  # the process died; recovery requeues it
        tasks.requeue_interrupted(session)
    with db.writing() as session:
        assert tasks.claim_task(session, task_id, slot=1) is not None

    def finish(attempt: int, status: TaskStatus, exec_time: float) -> bool:
        with db.writing() as session:
            finished = tasks.finish_task(
                session, task_id, attempt, status=status, exec_time=exec_time
            )
            return finished is not None

    stale = finish(1, TaskStatus.FAILED, 1.0)
    current = finish(2, TaskStatus.COMPLETED, 2.0)
    again = finish(2, TaskStatus.FAILED, 3.0)

    assert (stale, current, again) == (False, True, False)
    task = read(app, task_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.exec_time == 2.0
    assert task.attempts == 2


def test_a_body_that_exits_fails_the_task(app: Flask):
    def body(_task: Task) -> None:
        raise SystemExit(3)

    runner = TaskRunner(get_extension_of(app).db, body)
    task_id = new_task(app)
    runner(task_id, slot=1)

    assert read(app, task_id).status is TaskStatus.FAILED
    assert read(app, task_id).error == "3"


def test_error_messages_are_made_storable(app: Flask):
    def body(_task: Task) -> None:
        raise ValueError("bad \x00 byte and \ud800 half")

    runner = TaskRunner(get_extension_of(app).db, body)
    task_id = new_task(app)
    runner(task_id, slot=1)

    task = read(app, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error == "bad \\x00 byte and \\ud800 half"


def locked(statement: str) -> OperationalError:
    return OperationalError(statement, {}, Exception("database is locked"))


def failing_first(real: Callable[..., T], *errors: Exception) -> Callable[..., T]:
    """`real`, except that its first calls raise `errors`, one each."""
    pending = list(errors)

    def call(*args: Any, **kwargs: Any) -> T:
        if pending:
            raise pending.pop(0)
        return real(*args, **kwargs)

    return call


def test_database_errors_are_retried(
    app: Flask,
    runner: TaskRunner,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    task_id = new_task(app)
    flaky_claim = failing_first(tasks.claim_task, locked("UPDATE"), locked("UPDATE"))
    monkeypatch.setattr(tasks, "claim_task", flaky_claim)
    with caplog.at_level(logging.ERROR, logger="taskservice"):
        runner(task_id, slot=1)

    assert read(app, task_id).status is TaskStatus.COMPLETED
    assert caplog.text.count(f"task {task_id}: database error, retrying") == 2


def test_finishing_is_retried(app: Flask, runner: TaskRunner, monkeypatch: pytest.MonkeyPatch):
    task_id = new_task(app)
    monkeypatch.setattr(tasks, "finish_task", failing_first(tasks.finish_task, locked("UPDATE")))
    runner(task_id, slot=1)

    task = read(app, task_id)
    assert (task.status, task.attempts) == (TaskStatus.COMPLETED, 1)


def commit_elsewhere(session: Session, change: Callable[[Session], object]) -> None:
    """Commit `change` as if `session` had, though it will see an error instead."""
    session.rollback()  # let go of the write lock
    with Session(session.get_bind()) as other, other.begin():
        change(other)


def test_a_claim_whose_commit_was_not_acknowledged_still_runs(
    app: Flask, runner: TaskRunner, monkeypatch: pytest.MonkeyPatch
):
    """The claim committed, then the connection died before the answer."""
    task_id = new_task(app)
    real_claim = tasks.claim_task
    calls = iter([True, False])

    def claim_then_lose_the_answer(session, claimed_id, *, slot):
        if next(calls):
            commit_elsewhere(session, lambda other: real_claim(other, claimed_id, slot=1))
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return real_claim(session, claimed_id, slot=slot)

    monkeypatch.setattr(tasks, "claim_task", claim_then_lose_the_answer)
    runner(task_id, slot=1)

    task = read(app, task_id)
    assert (task.status, task.attempts) == (TaskStatus.COMPLETED, 1)


def test_a_finish_whose_commit_was_not_acknowledged_is_not_reported_lost(
    app: Flask,
    runner: TaskRunner,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    task_id = new_task(app)
    real_finish = tasks.finish_task
    calls = iter([True, False])

    def finish_then_lose_the_answer(session, *args, **kwargs):
        if next(calls):
            commit_elsewhere(session, lambda other: real_finish(other, *args, **kwargs))
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return real_finish(session, *args, **kwargs)

    monkeypatch.setattr(tasks, "finish_task", finish_then_lose_the_answer)
    with caplog.at_level(logging.INFO, logger="taskservice"):
        runner(task_id, slot=1)

    assert read(app, task_id).status is TaskStatus.COMPLETED
    assert f"task {task_id} completed" in caplog.text
    assert "result dropped" not in caplog.text


def test_every_database_error_is_retried(
    app: Flask, runner: TaskRunner, monkeypatch: pytest.MonkeyPatch
):
    task_id = new_task(app)
    constraint = IntegrityError("UPDATE tasks", {}, Exception("constraint failed"))
    monkeypatch.setattr(
        tasks, "claim_task", failing_first(tasks.claim_task, constraint, constraint)
    )

    runner(task_id, slot=1)

    assert read(app, task_id).status is TaskStatus.COMPLETED


def test_a_worker_retrying_for_long_is_reported_stuck(app: Flask, monkeypatch: pytest.MonkeyPatch):
    now = [100.0]
    body = sleep_body(time_scale=0, failure_rate=0)
    runner = TaskRunner(get_extension_of(app).db, body, clock=lambda: now[0])
    task_id = new_task(app)
    calls: list[int] = []
    retried = threading.Event()

    def broken_claim(_session, _task_id, *, slot):
        calls.append(1)
        if len(calls) == 2:  # the first failure has been counted by now
            retried.set()
        raise OperationalError("UPDATE tasks", {}, Exception("disk I/O error"))

    monkeypatch.setattr(tasks, "claim_task", broken_claim)

    def run() -> None:
        with contextlib.suppress(OperationalError):  # re-raised once the runner stops
            runner(task_id, slot=1)

    worker = threading.Thread(target=run, name="worker-7")
    worker.start()
    try:
        assert retried.wait(10)

        assert runner.stuck(longer_than=10) == []
        now[0] += 11
        assert runner.stuck(longer_than=10) == ["worker-7"]
    finally:
        runner.stop()
        worker.join(10)
    assert runner.stuck(longer_than=10) == []


def test_a_stopping_runner_gives_up_on_database_errors(
    app: Flask, runner: TaskRunner, monkeypatch: pytest.MonkeyPatch
):
    task_id = new_task(app)

    def broken_claim(_session, _task_id, *, slot):
        raise OperationalError("UPDATE tasks", {}, Exception("disk I/O error"))

    monkeypatch.setattr(tasks, "claim_task", broken_claim)
    runner.stop()

    with pytest.raises(OperationalError):
        runner(task_id, slot=1)
    assert read(app, task_id).status is TaskStatus.IN_QUEUE

"""The worker pool on its own: order, stop, resilience and the concurrency bound."""

from __future__ import annotations

import logging
import threading

import pytest

from taskservice.pool import Worker, WorkerPool
from taskservice.pool.workers import TaskQueue
from tests.helpers import wait_for


def make_worker(handler) -> tuple[Worker, TaskQueue]:
    tasks = TaskQueue()
    return Worker("worker-test", tasks, handler, slot=1), tasks


def recorder(handled: list[int]):
    """A handler that records the task numbers it is given."""
    return lambda task_id, _slot: handled.append(task_id)


def test_loop_handles_one_task_per_call():
    handled: list[int] = []
    worker, tasks = make_worker(recorder(handled))
    tasks.put((1, 7))
    tasks.put((1, 8))

    assert worker.loop(timeout=0) is True
    assert handled == [7]


def test_loop_order_is_rank_then_number():
    handled: list[int] = []
    worker, tasks = make_worker(recorder(handled))
    for entry in [(2, 5), (0, 9), (1, 3), (0, 1), (2, 4)]:
        tasks.put(entry)

    while worker.loop(timeout=0) and tasks.unfinished_tasks:
        pass

    assert handled == [1, 9, 3, 4, 5]


def test_a_backlog_put_at_once_joins_the_queue_in_order():
    handled: list[int] = []
    worker, tasks = make_worker(recorder(handled))
    tasks.put((1, 6))
    tasks.put_many([(2, 5), (0, 9), (1, 3)])
    tasks.put_many(iter([(0, 1), (2, 4)]))

    assert tasks.unfinished_tasks == 6
    while worker.loop(timeout=0) and tasks.unfinished_tasks:
        pass

    assert handled == [1, 9, 3, 6, 4, 5]


def test_a_backlog_put_at_once_wakes_every_waiting_worker():
    both_running = threading.Barrier(2, timeout=5)  # broken if one worker sleeps on
    handled: list[int] = []

    def handler(task_id: int, _slot: int) -> None:
        both_running.wait()
        handled.append(task_id)

    pool = WorkerPool(handler, concurrency=2)
    pool.start()
    try:
        wait_for(lambda: pool.alive() == 2)
        pool.submit_many([(1, task_id) for task_id in range(1, 5)])

        wait_for(lambda: len(handled) == 4)
    finally:
        assert pool.stop(timeout=5)
    assert sorted(handled) == [1, 2, 3, 4]


def test_loop_on_an_empty_queue_returns_after_timeout():
    worker, _tasks = make_worker(lambda _task_id: None)

    assert worker.loop(timeout=0.01) is True


def test_a_failing_handler_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture):
    handled: list[int] = []

    def handler(task_id: int, _slot: int) -> None:
        if task_id == 1:
            raise RuntimeError("boom")
        handled.append(task_id)

    worker, tasks = make_worker(handler)
    tasks.put((0, 1))
    tasks.put((0, 2))

    with caplog.at_level(logging.ERROR):
        assert worker.loop(timeout=0) is True
        assert worker.loop(timeout=0) is True

    assert handled == [2]
    assert "worker-test: handler failed for task 1" in caplog.text
    assert tasks.unfinished_tasks == 0


def test_pool_runs_everything_and_stops():
    handled: list[int] = []
    pool = WorkerPool(recorder(handled), concurrency=2)
    pool.start()
    for task_id in range(1, 101):
        pool.submit(1, task_id)

    wait_for(lambda: len(handled) == 100)

    assert pool.alive() == 2
    assert pool.stop(timeout=5) is True
    assert pool.alive() == 0
    assert sorted(handled) == list(range(1, 101))


def test_a_worker_hands_its_slot_to_the_handler():
    given: list[tuple[int, int]] = []
    tasks = TaskQueue()
    worker = Worker("worker-2", tasks, lambda task_id, slot: given.append((task_id, slot)), slot=2)
    tasks.put((0, 7))

    assert worker.loop(timeout=0) is True
    assert given == [(7, 2)]


def test_the_pools_workers_are_its_numbered_slots():
    pool = WorkerPool(recorder([]), concurrency=3)

    assert [(worker.name, worker.slot) for worker in pool.workers] == [
        ("worker-1", 1),
        ("worker-2", 2),
        ("worker-3", 3),
    ]


def test_pool_never_runs_more_than_its_concurrency():
    lock = threading.Lock()
    running = peak = 0
    release = threading.Event()

    def handler(_task_id: int, _slot: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    pool = WorkerPool(handler, concurrency=2)
    pool.start()
    for task_id in range(10):
        pool.submit(0, task_id)
    wait_for(lambda: running == 2)
    release.set()
    wait_for(lambda: pool.backlog() == 0 and running == 0)
    pool.stop(timeout=5)

    assert peak == 2


def test_stop_waits_for_the_running_task_and_skips_the_rest():
    started = threading.Event()
    release = threading.Event()
    handled: list[int] = []

    def handler(task_id: int, _slot: int) -> None:
        started.set()
        release.wait(5)
        handled.append(task_id)

    pool = WorkerPool(handler, concurrency=1)
    pool.start()
    pool.submit(0, 1)
    pool.submit(0, 2)
    started.wait(5)

    assert pool.stop(timeout=0.05) is False  # task 1 still runs
    release.set()
    assert pool.stop(timeout=5) is True
    assert handled == [1]


def test_pool_starts_once():
    pool = WorkerPool(lambda _task_id: None, concurrency=1)
    pool.start()
    with pytest.raises(RuntimeError, match="already started"):
        pool.start()
    pool.stop(timeout=5)


def test_pool_needs_a_worker():
    with pytest.raises(ValueError, match="at least 1"):
        WorkerPool(lambda _task_id: None, concurrency=0)

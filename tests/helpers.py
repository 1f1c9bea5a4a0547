"""Small tools the tests share: waiting on conditions and threads, reading tasks back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from flask import Flask

from taskservice import tasks
from taskservice.db import Database
from taskservice.extension import get_extension
from taskservice.models import Task, TaskPriority

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.01) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def join_all(threads: Iterable[threading.Thread], timeout: float) -> list[threading.Thread]:
    """Join every thread within one deadline `timeout` s away; the ones still alive."""
    deadline = time.monotonic() + timeout
    threads = list(threads)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in threads if thread.is_alive()]


def insert_task(db: Database, priority: TaskPriority = TaskPriority.MEDIUM) -> int:
    """Create a queued task of duration 1 straight through the statements; its number."""
    with db.writing() as session:
        task_id: int = tasks.create_task(session, name=None, duration=1, priority=priority).id
        return task_id


def all_tasks(app: Flask) -> list[Task]:
    """Every task in the app's database, by number."""
    with app.app_context():
        tasks, _total = get_extension().service.list(limit=10**6)
        return sorted(tasks, key=lambda task: task.id)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that share any one instant."""
    events = [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    # At equal times, ends come first: a task that ends as another starts is not overlap.
    events.sort(key=lambda event: (event[0], event[1]))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak

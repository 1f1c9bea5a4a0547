"""A fixed set of daemon threads that drain a priority queue of task numbers."""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

# Called with (task_id, slot): the slot is the worker's number, 1 to concurrency.
Handler = Callable[[int, int], None]

# Queue entries are (rank, task_id): lower rank first, then lower id, which is
# first come first served. The stop marker outranks every task, so a stopping
# worker sees it before it would start anything else.
_STOP = (-1, -1)


class TaskQueue(queue.PriorityQueue[tuple[int, int]]):
    """The pool's priority queue of (rank, task_id), which can take a backlog at once."""

    def put_many(self, entries: Iterable[tuple[int, int]]) -> None:
        """Add `entries` in one step: one heapify rather than a push and a wake-up each.

        At start-up this loads a backlog of 100,000 tasks in a fraction of the
        time, and keeps the given tuples instead of building new ones.
        """
        batch = list(entries)  # read them all first: nothing can fail under the mutex
        with self.mutex:  # what Queue.put holds; this queue has no size bound
            self.queue.extend(batch)
            heapq.heapify(self.queue)
            self.unfinished_tasks += len(batch)
            self.not_empty.notify(len(batch))


class Worker:
    """One consumer of the queue, the pool's slot `slot`; it handles one task per `loop()`."""

    def __init__(self, name: str, tasks: TaskQueue, handler: Handler, slot: int):
        self.name = name
        self.slot = slot
        self._tasks = tasks
        self._handler = handler

    def loop(self, timeout: float | None = None) -> bool:
        """Handle the next task number; False once the worker is told to stop.

        A handler that raises is logged and the worker carries on: no task can
        take a worker thread down with it.
        """
        try:
            entry = self._tasks.get(timeout=timeout)
        except queue.Empty:
            return True
        try:
            if entry == _STOP:
                return False
            self._handler(entry[1], self.slot)
        except Exception:
            logger.exception("%s: handler failed for task %s", self.name, entry[1])
        finally:
            self._tasks.task_done()
        return True

    def run(self) -> None:
        """Loop until told to stop."""
        logger.debug("%s: started", self.name)
        while self.loop():
            pass
        logger.debug("%s: stopped", self.name)


class WorkerPool:
    """`concurrency` worker threads over one priority queue.

    At most `concurrency` handlers run at once because each thread runs one
    handler at a time and nothing else calls them.
    """

    def __init__(self, handler: Handler, concurrency: int = 2, name: str = "worker") -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._tasks = TaskQueue()
        self.workers = [
            Worker(f"{name}-{n}", self._tasks, handler, slot=n) for n in range(1, concurrency + 1)
        ]
        self._threads: list[threading.Thread] = []

    def submit(self, rank: int, task_id: int) -> None:
        """Queue a task number; lower rank runs first, then lower number."""
        self._tasks.put((rank, task_id))

    def submit_many(self, entries: Iterable[tuple[int, int]]) -> None:
        """Queue many (rank, task_id) at once, as `submit` does each."""
        self._tasks.put_many(entries)

    def start(self) -> None:
        """Start one daemon thread per worker; a pool starts only once."""
        if self._threads:
            raise RuntimeError("the worker pool is already started")
        self._threads = [
            threading.Thread(target=worker.run, name=worker.name, daemon=True)
            for worker in self.workers
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Let each worker finish its current task and exit; whether all did in time."""
        for _ in self._threads:
            self._tasks.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(thread.is_alive() for thread in self._threads)

    def alive(self) -> int:
        """How many worker threads are running."""
        return sum(thread.is_alive() for thread in self._threads)

    def backlog(self) -> int:
        """How many task numbers wait in the queue (cancelled ones included)."""
        return self._tasks.qsize()

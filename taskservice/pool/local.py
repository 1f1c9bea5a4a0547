"""The task pool of one process: a queue fed at create, and the database's pool lock.

It owns the pool's whole life: open (take the lock), recover (requeue what a
dead holder left running, load the backlog), start the workers, watch the
lock, stop, and report its health. Only one such pool runs on a database (the
lock), which is what keeps the limit: it has exactly `concurrency` workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from taskservice.pool.lock import PoolLock, keep_until_exit
from taskservice.pool.watchdog import LockWatchdog, wait_out_lost_holder
from taskservice.pool.workers import WorkerPool

logger = logging.getLogger(__name__)

# A worker that has retried a database error for this long is reported stuck.
STUCK_AFTER = 10.0


@dataclass(frozen=True)
class Recovery:
    """What a starting pool asks of the service: migrate, count the running, requeue."""

    migrate: Callable[[], None]
    count_running: Callable[[], int]
    # Requeue what a dead process left running; (rank, id) of every queued task.
    recover: Callable[[], Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class PoolHealth:
    """How the pool is: its workers, its lock, what waits in its queue."""

    workers_alive: int = 0
    workers_stuck: list[str] = field(default_factory=list)
    lock_held: bool = False
    queued: int = 0
    running: list[int] = field(default_factory=list)


class Runner(Protocol):
    """What the workers call, as the pool sees it (taskservice.runner.TaskRunner)."""

    def __call__(self, task_id: int, slot: int) -> None:
        """Run task `task_id` in worker slot `slot`."""

    def stop(self) -> None:
        """Stop retrying database errors."""

    def stuck(self, longer_than: float) -> list[str]:
        """The workers retrying a database error for over `longer_than` s."""

    def running(self) -> list[int]:
        """The tasks whose body runs now."""


class TaskPool(Protocol):
    """What the service, the API and the server ask of a pool (LocalPool, SharedPool)."""

    def submit(self, rank: int, task_id: int) -> None:
        """A task was committed: queue it, or wake a worker to claim it."""

    def start(self, recovery: Recovery, stopping: threading.Event) -> bool:
        """Migrate, recover and start the workers; whether it started."""

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call `on_lost` (which ends the process) once tasks may no longer go on here."""

    def keep_until_exit(self) -> None:
        """Hold what a start still holds until the process exits."""

    def stop(self, timeout: float) -> None:
        """Stop the workers; running tasks get `timeout` s to end."""

    def health(self) -> PoolHealth:
        """How the pool is."""


class LocalPool:
    """The workers, the runner they call, the lock that makes them the only ones, its watchdog."""

    def __init__(
        self, *, workers: WorkerPool, runner: Runner, lock: PoolLock, watchdog: LockWatchdog
    ) -> None:
        self.workers = workers
        self.runner = runner
        self.lock = lock
        self.watchdog = watchdog

    def submit(self, rank: int, task_id: int) -> None:
        """Queue a committed task to run, in run order (`rank`, then `task_id`)."""
        self.workers.submit(rank, task_id)

    def start(self, recovery: Recovery, stopping: threading.Event) -> bool:
        """Take the lock, migrate, queue what the database holds and start the workers.

        Whether it started: not if `stopping` was set, or the lock was lost meanwhile.
        """
        # The lock first: a migration must not change the schema under another
        # process's running pool.
        self.lock.acquire()
        try:
            recovery.migrate()
            # Requeue what a dead process left running, once it has had time to notice.
            wait_out_lost_holder(self.lock, tasks_running=recovery.count_running())
            # A lock lost while migrating or waiting (a database restart) may already
            # be another process's: requeuing its running tasks, or starting workers,
            # could run a task twice or a third at once.
            queued = recovery.recover() if self.lock.is_held() else None
        except BaseException:
            self.lock.release()
            raise
        if queued is None or stopping.is_set() or not self.lock.is_held():
            self.lock.release()
            return False
        self.workers.submit_many(queued)
        self.watchdog.arm()
        self.workers.start()
        return True

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call `on_lost` (which ends the process) if the lock is ever lost.

        A sleeping task cannot be interrupted: ending the process stops it, and
        the server starts a fresh one, which waits for the lock and recovers.
        """
        if self.lock.can_be_lost:
            self.watchdog.start(on_lost=on_lost)

    def keep_until_exit(self) -> None:
        """Hold the lock until the process exits: a start may still be holding it."""
        keep_until_exit(self.lock)

    def stop(self, timeout: float) -> None:
        """Stop the workers (running tasks get `timeout` s to end) and release the lock."""
        self.watchdog.stop()
        self.runner.stop()
        if self.workers.stop(timeout):
            self.lock.release()
        else:
            # A task still runs here: another pool on this database must not
            # start it again, so the lock is held until we exit.
            keep_until_exit(self.lock)
            logger.warning("pool stopped with tasks still running; they rerun at next start")

    def health(self) -> PoolHealth:
        """Workers alive and stuck, the lock, the tasks queued in memory."""
        return PoolHealth(
            workers_alive=self.workers.alive(),
            workers_stuck=self.runner.stuck(longer_than=STUCK_AFTER),
            lock_held=self.lock.is_held(),
            queued=self.workers.backlog(),
            running=self.runner.running(),
        )

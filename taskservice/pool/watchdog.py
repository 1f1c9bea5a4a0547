"""Noticing that the pool lock was lost, so that the pool stops before another starts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from time import sleep

from taskservice.pool.lock import PoolLock

logger = logging.getLogger(__name__)

# How often the lock is checked. A process that takes over a lost lock waits
# LOCK_LOSS_GRACE before it requeues running tasks, so the loser has time to
# notice and stop them (see app.start_service).
WATCH_INTERVAL = 1.0
LOCK_LOSS_GRACE = 3 * WATCH_INTERVAL


def wait_out_lost_holder(lock: PoolLock, tasks_running: int) -> None:
    """Before requeuing running tasks, give a holder that lost this lock time to stop them."""
    if lock.can_be_lost and tasks_running:
        sleep(LOCK_LOSS_GRACE)


class LockWatchdog:
    """A daemon thread that checks the pool lock and reports its loss once."""

    def __init__(self, lock: PoolLock, interval: float = WATCH_INTERVAL) -> None:
        self._lock = lock
        self._interval = interval
        self.lost = threading.Event()
        # Set once the lock is taken: a process still waiting for its database
        # has no lock to lose.
        self._armed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_lost: Callable[[], None]) -> None:
        """Check the lock every `interval` s; call `on_lost` once if it is gone."""
        self._thread = threading.Thread(
            target=self._watch, args=(on_lost,), name="lock-watchdog", daemon=True
        )
        self._thread.start()

    def arm(self) -> None:
        """Begin checking: the lock has been taken."""
        self._armed.set()

    def stop(self) -> None:
        """Stop checking."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._interval * 2)

    def check(self) -> bool:
        """Check the lock once; whether it is still held (or not taken yet)."""
        if not self._armed.is_set() or self._lock.is_held():
            return True
        self.lost.set()
        return False

    def _watch(self, on_lost: Callable[[], None]) -> None:
        while not self._stopping.wait(self._interval):
            if not self.check():
                logger.critical("the pool lock is lost: no task may start or go on here")
                on_lost()
                return

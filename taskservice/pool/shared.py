"""The task pool of a replica on PostgreSQL: workers that claim tasks from the shared database.

Any number of replicas share one database, and the limit is the database's:
a task runs only in a slot row it holds (taskservice.pool.claims). The queue
here carries wake-ups, not tasks: a create on this replica, or a
notification of one made elsewhere (taskservice.pool.notify), wakes an idle
worker, which claims the next task in run order, whichever replica made it.
An idle worker also looks every POLL s, for notifications lost while the
listener was away and for slots whose lease expired (a failover).

Its life: migrate, make the slots, register the replica, start the lease
keeper, the listener and the workers; on stop, end them and leave. With no
workers (`concurrency` 0: an API-only replica) it only registers and beats.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from taskservice.db import Database
from taskservice.pool import replicas
from taskservice.pool.leases import LeaseKeeper
from taskservice.pool.local import STUCK_AFTER, PoolHealth, Recovery
from taskservice.pool.lock import PoolLock
from taskservice.pool.notify import Listener, Notifier

logger = logging.getLogger(__name__)

# Seconds an idle worker waits for a wake-up before it looks anyway.
POLL = 0.5
# The listener's own fallback wake-up: the workers' look is the one that counts.
LISTENER_POLL = 30.0


class ClaimingRunner(Protocol):
    """What the workers call, as the pool sees it (taskservice.slots.SlotRunner)."""

    def prepare(self) -> None:
        """Make the slot rows; queue again what was left running outside them."""

    def run_next(self) -> None:
        """Claim and run tasks until none waits."""

    def stop(self) -> None:
        """Claim nothing more; stop retrying database errors."""

    def stuck(self, longer_than: float) -> list[str]:
        """The workers retrying a database error for over `longer_than` s."""

    def running(self) -> list[int]:
        """The tasks whose body runs now."""


class SharedPool:
    """`concurrency` workers claiming from the shared slots, their leases, their wake-ups."""

    def __init__(
        self,
        *,
        db: Database,
        runner: ClaimingRunner,
        keeper: LeaseKeeper,
        replica_id: str,
        concurrency: int,
        single_pool_lock: PoolLock | None = None,
    ) -> None:
        self._db = db
        self._single_pool_lock = single_pool_lock
        self.runner = runner
        self.keeper = keeper
        self.listener = Listener(db.url, wake=self.wake_all, poll=LISTENER_POLL)
        self.notifier = Notifier(db.engine)
        self.replica_id = replica_id
        self.concurrency = concurrency
        # At most one wake-up per worker waits: more would only make idle claims.
        self._wakeups: queue.Queue[None] = queue.Queue(maxsize=max(concurrency, 1))
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._on_lost: Callable[[], None] | None = None

    def submit(self, rank: int, task_id: int) -> None:
        """A task was committed: wake a worker here, and tell the other replicas."""
        self.wake()
        self.notifier.poke()

    def wake(self) -> None:
        """Wake an idle worker, unless enough wake-ups wait already."""
        with contextlib.suppress(queue.Full):
            self._wakeups.put_nowait(None)

    def wake_all(self) -> None:
        """Wake every idle worker: a notification may stand for many tasks."""
        for _ in range(self.concurrency):
            self.wake()

    def start(self, recovery: Recovery, stopping: threading.Event) -> bool:
        """Migrate, make the slots, register, and start the keeper, listener and workers."""
        if self._single_pool_lock is not None:
            # A pool of a version from before replicas holds this lock while it
            # runs and knows nothing of slots: wait for it to stop (or give up
            # with DatabaseInUse), as that version's own successor would.
            self._single_pool_lock.acquire()
            self._single_pool_lock.release()
        recovery.migrate()
        runs_tasks = self.concurrency > 0
        if runs_tasks:
            self.runner.prepare()
        with self._db.writing() as session:
            replicas.register(session, self.replica_id, runs_tasks=runs_tasks)
        self._db.remove_session()
        if stopping.is_set():
            return False
        self.keeper.start()
        self.notifier.start()
        if runs_tasks:
            self.listener.start()
        self._threads = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(1, self.concurrency + 1)
        ]
        for thread in self._threads:
            thread.start()
        return True

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call `on_lost` (which ends the process) once a lease is lost or may lapse."""
        self._on_lost = on_lost
        if self.keeper.lost.is_set():
            on_lost()

    def lose(self, reason: str) -> None:
        """The keeper's report: no task may go on here; end the process if watched."""
        self.runner.stop()
        if self._on_lost is not None:
            self._on_lost()

    def keep_until_exit(self) -> None:
        """Nothing to hold: a start that is still trying has claimed nothing yet."""

    def stop(self, timeout: float) -> None:
        """Stop the workers (running tasks get `timeout` s to end and hand their slots back)."""
        self._stopping.set()
        self.runner.stop()
        for _ in self._threads:
            self.wake()
        ended = True
        for thread in self._threads:
            thread.join(timeout)
            ended = ended and not thread.is_alive()
        self.listener.stop()
        self.notifier.stop()
        if not ended:
            # A task still runs here: its lease is kept until the process exits,
            # then another replica takes its slot over.
            logger.warning("pool stopped with tasks still running; another replica reruns them")
            return
        self.keeper.stop()
        try:
            with self._db.writing() as session:
                replicas.leave(session, self.replica_id)
        except Exception:  # its row is forgotten later; stopping must go on
            logger.exception("could not remove this replica's row")
        finally:
            self._db.remove_session()

    def health(self) -> PoolHealth:
        """Workers alive and stuck, whether its leases stand, the tasks it runs."""
        return PoolHealth(
            workers_alive=sum(thread.is_alive() for thread in self._threads),
            workers_stuck=self.runner.stuck(longer_than=STUCK_AFTER),
            lock_held=not self.keeper.lost.is_set(),
            queued=0,
            running=self.runner.running(),
        )

    def _work(self) -> None:
        while not self._stopping.is_set():
            # On a timeout it looks anyway: a lost notification, an expired lease.
            with contextlib.suppress(queue.Empty):
                self._wakeups.get(timeout=POLL)
            if self._stopping.is_set() or self.keeper.lost.is_set():
                return
            try:
                self.runner.run_next()
            except Exception:
                logger.exception("%s: claiming failed", threading.current_thread().name)

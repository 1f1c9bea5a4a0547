"""The task pool: a priority queue of task numbers drained by a fixed set of threads.

`LocalPool` is the one component the service and the API use: it owns the
pool's life (lock, recovery, workers, watchdog, stop, health).
"""

from taskservice.pool.local import LocalPool, PoolHealth, Recovery
from taskservice.pool.lock import PoolLock, keep_until_exit, pool_lock_for
from taskservice.pool.watchdog import LOCK_LOSS_GRACE, LockWatchdog, wait_out_lost_holder
from taskservice.pool.workers import Worker, WorkerPool

__all__ = [
    "LOCK_LOSS_GRACE",
    "LocalPool",
    "LockWatchdog",
    "PoolHealth",
    "PoolLock",
    "Recovery",
    "Worker",
    "WorkerPool",
    "keep_until_exit",
    "pool_lock_for",
    "wait_out_lost_holder",
]

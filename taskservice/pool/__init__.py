"""The task pool: a priority queue of task numbers drained by a fixed set of threads.

A `TaskPool` is the one component the service and the API use: it owns the
pool's life (open, recover, start, watch, stop, health). `LocalPool` is the
one process of a SQLite database (a queue fed at create, a lock file);
`SharedPool` (taskservice.pool.shared) is a replica on PostgreSQL (claims
from the database's slots, under leases).
"""

from taskservice.pool.local import LocalPool, PoolHealth, Recovery, TaskPool
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
    "TaskPool",
    "Worker",
    "WorkerPool",
    "keep_until_exit",
    "pool_lock_for",
    "wait_out_lost_holder",
]

"""The worker pool: a priority queue of task numbers drained by a fixed set of threads."""

from taskservice.pool.lock import PoolLock, pool_lock_for
from taskservice.pool.workers import Worker, WorkerPool

__all__ = ["PoolLock", "Worker", "WorkerPool", "pool_lock_for"]

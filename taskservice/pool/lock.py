"""One pool per database: an exclusive lock beside the SQLite file."""

from __future__ import annotations

import logging

from filelock import FileLock, Timeout

from taskservice.db import sqlite_path
from taskservice.errors import DatabaseInUse

logger = logging.getLogger(__name__)


class PoolLock:
    """An exclusive lock that the pool holds for its lifetime.

    A second pool on the same database would break the limit on concurrent
    tasks, and its recovery would requeue the first one's running tasks. The
    operating system releases the lock when the holder dies, even by SIGKILL.
    """

    def __init__(self, database_url: str, timeout: float) -> None:
        path = sqlite_path(database_url)
        if path is None:
            raise DatabaseInUse("the task pool needs an SQLite database file, not memory")
        self.path = f"{path}.pool.lock"
        self.timeout = timeout
        self._lock = FileLock(self.path, timeout=timeout, thread_local=False)

    def acquire(self) -> None:
        """Take the lock, waiting up to `timeout` for a predecessor to exit."""
        try:
            self._lock.acquire()
        except Timeout:
            raise DatabaseInUse(
                f"another process runs the task pool on this database (lock {self.path} "
                f"held for more than {self.timeout:g} s); run one process per database"
            ) from None
        logger.debug("pool lock %s acquired", self.path)

    def release(self) -> None:
        """Let another process run the pool."""
        self._lock.release()

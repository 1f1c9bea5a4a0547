"""One pool per database: an exclusive lock held by the pool for its lifetime.

A second pool on the same database would break the limit on concurrent tasks,
and its recovery would requeue the first one's running tasks. Both kinds of
lock here are released by the operating system or the database server when
the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine, Integer, cast, func, select
from sqlalchemy.exc import SQLAlchemyError

from taskservice.db import Database, backend_name, sqlite_path
from taskservice.errors import DatabaseInUse

logger = logging.getLogger(__name__)

# The advisory lock's key: this service ("task" as a 32-bit integer) and the
# schema that holds the tasks table, so each schema has its own pool.
ADVISORY_LOCK_CLASS = int.from_bytes(b"task", "big")
ADVISORY_LOCK_POLL = 0.1

# Locks whose pool could not stop: kept referenced until the process exits,
# since dropping the last reference to a lock releases it.
_kept_until_exit: list[PoolLock] = []


class PoolLock(Protocol):
    """An exclusive, process-lifetime lock on one database's task pool."""

    def acquire(self) -> None:
        """Take the lock, waiting for a predecessor to exit; DatabaseInUse if it does not."""

    def release(self) -> None:
        """Let another process run the pool."""

    def is_held(self) -> bool:
        """Whether this process still holds the lock."""


def keep_until_exit(lock: PoolLock) -> None:
    """Hold `lock` until the process exits: a task of its pool still runs here."""
    _kept_until_exit.append(lock)


def pool_lock_for(db: Database, timeout: float) -> PoolLock:
    """The kind of lock that fits `db`: a lock file for SQLite, an advisory lock for PostgreSQL."""
    path = sqlite_path(db.url)
    if path is not None:
        return SQLiteFileLock(path, timeout)
    if backend_name(db.url) == "postgresql":
        return PostgresAdvisoryLock(db.engine, timeout)
    raise DatabaseInUse(f"no pool lock for a {backend_name(db.url)} database")


def _in_use(where: str, timeout: float) -> DatabaseInUse:
    return DatabaseInUse(
        f"another process runs the task pool on this database ({where} held for more than "
        f"{timeout:g} s); run one process per database"
    )


class SQLiteFileLock:
    """An exclusive `flock` on `<database file>.pool.lock`."""

    def __init__(self, database_path: str, timeout: float) -> None:
        self.path = f"{database_path}.pool.lock"
        self.timeout = timeout
        self._lock = FileLock(self.path, timeout=timeout, thread_local=False)

    def acquire(self) -> None:
        """Take the lock file, waiting up to `timeout` s."""
        try:
            self._lock.acquire()
        except Timeout:
            raise _in_use(f"lock {self.path}", self.timeout) from None
        logger.debug("pool lock %s acquired", self.path)

    def release(self) -> None:
        """Unlock the lock file."""
        self._lock.release()

    def is_held(self) -> bool:
        """Whether this process holds the lock file."""
        return self._lock.is_locked


class PostgresAdvisoryLock:
    """A session-level advisory lock on a connection kept open for the purpose."""

    def __init__(self, engine: Engine, timeout: float) -> None:
        self._engine = engine
        self.timeout = timeout
        self._connection: Connection | None = None
        self._key = (
            cast(ADVISORY_LOCK_CLASS, Integer),
            func.hashtext(func.current_schema()),
        )

    def acquire(self) -> None:
        """Take the advisory lock, retrying until `timeout` s have passed."""
        # Autocommit: the connection holds the lock, never an idle transaction.
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + self.timeout
        try_lock = select(func.pg_try_advisory_lock(*self._key))
        while not connection.execute(try_lock).scalar():
            if time.monotonic() >= deadline:
                connection.close()
                raise _in_use("PostgreSQL advisory lock", self.timeout)
            time.sleep(ADVISORY_LOCK_POLL)
        self._connection = connection
        logger.debug("pool advisory lock acquired")

    def release(self) -> None:
        """Unlock and close the lock's connection."""
        if self._connection is not None:
            self._connection.execute(select(func.pg_advisory_unlock(*self._key)))
            self._connection.close()
            self._connection = None

    def is_held(self) -> bool:
        """Whether the lock's connection, and so the lock, is still alive."""
        if self._connection is None:
            return False
        try:
            self._connection.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

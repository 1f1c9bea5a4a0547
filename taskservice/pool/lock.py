"""One pool per database: an exclusive lock held by the pool for its lifetime.

A second pool on the same database would break the limit on concurrent tasks,
and its recovery would requeue the first one's running tasks. Both kinds of
lock here are released by the operating system or the database server when
the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from filelock import FileLock, Timeout
from sqlalchemy import Connection, Integer, cast, create_engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from taskservice.db import Database, backend_name, sqlite_path
from taskservice.errors import DatabaseInUse

logger = logging.getLogger(__name__)

# The advisory lock's key: this service ("task" as a 32-bit integer) and the
# schema that holds the tasks table, so each schema has its own pool.
ADVISORY_LOCK_CLASS = int.from_bytes(b"task", "big")
ADVISORY_LOCK_POLL = 0.1
IS_HELD_WAIT = 2.0

# Locks whose pool could not stop: kept referenced until the process exits,
# since dropping the last reference to a lock releases it.
_kept_until_exit: list[PoolLock] = []


class PoolLock(Protocol):
    """An exclusive, process-lifetime lock on one database's task pool."""

    # Whether the lock can be lost while the process lives (a dropped
    # connection); such a lock wants a LockWatchdog.
    can_be_lost: bool

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
        return PostgresAdvisoryLock(db.url, timeout)
    raise DatabaseInUse(f"no pool lock for a {backend_name(db.url)} database")


def _in_use(where: str, timeout: float) -> DatabaseInUse:
    return DatabaseInUse(
        f"another process runs the task pool on this database ({where} held for more than "
        f"{timeout:g} s); stop that process first, or set DATABASE_URL to another database"
    )


class SQLiteFileLock:
    """An exclusive `flock` on `<database file>.pool.lock`."""

    can_be_lost = False

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


# The held-lock check: this connection holds an advisory lock (it takes no other).
_HOLDS_ADVISORY_LOCK = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks"
    " WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted)"
)


class PostgresAdvisoryLock:
    """A session-level advisory lock on a connection kept open for the purpose.

    The connection has an engine of its own with no pool, so that closing or
    dropping it really ends the session and with it the lock. The lock is lost
    if that connection drops (a server restart, a network fault): a
    LockWatchdog notices.
    """

    can_be_lost = True

    def __init__(self, database_url: str, timeout: float) -> None:
        self._engine = create_engine(
            database_url,
            poolclass=NullPool,
            connect_args={
                "application_name": "taskservice pool lock",
                "connect_timeout": 5,
                # A silent network fault must end the connection within
                # seconds, or the loss of the lock would go unnoticed.
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "tcp_user_timeout": 10_000,
            },
        )
        self.timeout = timeout
        self._connection: Connection | None = None
        self._using = threading.Lock()  # a Connection is not thread-safe
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
        """Unlock and close the lock's connection; a dead connection has nothing to release."""
        with self._using:
            connection, self._connection = self._connection, None
            if connection is not None:
                try:
                    connection.execute(select(func.pg_advisory_unlock(*self._key)))
                except SQLAlchemyError:
                    logger.warning("pool advisory lock: connection already gone")
                finally:
                    connection.close()
        self._engine.dispose()

    def is_held(self) -> bool:
        """Whether the lock's connection is alive and holds the lock.

        A check that cannot run within IS_HELD_WAIT s (another one hangs on a
        dead connection) counts as "not held": a health check must not hang.
        """
        if not self._using.acquire(timeout=IS_HELD_WAIT):
            return False
        try:
            if self._connection is None:
                return False
            return bool(self._connection.execute(_HOLDS_ADVISORY_LOCK).scalar())
        except SQLAlchemyError:
            return False
        finally:
            self._using.release()

"""One pool per SQLite database: an exclusive lock held by the pool for its lifetime.

A second pool on the same database would break the limit on concurrent tasks,
and its recovery would requeue the first one's running tasks. Both kinds of
lock here are released by the operating system or the database server when
the holder dies, even by SIGKILL.

On PostgreSQL the replicas share the database through its slots
(taskservice.pool.shared); the advisory lock is what a pool of a version from
before them holds, and a starting replica takes it for a moment to be sure
that no such pool still runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from typing import Protocol

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
    """An exclusive `flock` on the database file itself.

    Tied to the file, not to a name: a second pool is refused however the file
    is reached (a symlink, a relative path, a hard link, a bind mount), and no
    file beside it can be deleted to fool it. SQLite locks the same file with
    POSIX record locks, which `flock` neither takes nor waits for on a local
    file system (over NFS, Linux emulates `flock` with record locks: SQLite
    does not belong on NFS anyway).

    The lock is on the file, so it is lost if another file takes the path (a
    backup restored with `mv`, the database deleted and made anew): new
    connections would open that file, which another pool may lock. The
    watchdog checks for it, as for a dropped PostgreSQL lock.
    """

    can_be_lost = True

    def __init__(self, database_path: str, timeout: float) -> None:
        self.path = database_path
        self.timeout = timeout
        self._file: _DatabaseFile | None = None

    def acquire(self) -> None:
        """Lock the database file, waiting up to `timeout` s for another holder to go."""
        deadline = time.monotonic() + self.timeout
        while True:
            database_file = _DatabaseFile.of(self.path)
            if database_file.try_lock():
                if database_file.is_at(self.path):
                    break
                database_file.unlock()  # the path moved on to another file meanwhile
            elif time.monotonic() >= deadline:
                raise _in_use(f"database file {self.path} locked", self.timeout)
            time.sleep(ADVISORY_LOCK_POLL)
        self._file = database_file
        logger.debug("pool lock on %s acquired", self.path)

    def release(self) -> None:
        """Unlock the database file."""
        if self._file is not None:
            self._file.unlock()
            self._file = None

    def is_held(self) -> bool:
        """Whether this lock holds the file that is at the database's path."""
        return self._file is not None and self._file.is_at(self.path)


class _DatabaseFile:
    """One database file (one inode) of this process, with the descriptor its lock is on.

    The descriptor is never closed: closing any descriptor of a file drops every
    POSIX lock this process holds on it, SQLite's own included. `flock` locks
    belong to the descriptor, so two pools of one process would share one lock;
    `locked` refuses the second.
    """

    _registry_lock = threading.Lock()
    _files: dict[tuple[int, int], _DatabaseFile] = {}

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor
        self.locked = False

    @classmethod
    def of(cls, path: str) -> _DatabaseFile:
        """The file at `path` (created empty if missing, as SQLite would), by its inode."""
        with cls._registry_lock:
            try:
                known = cls._files.get(_inode(os.stat(path)))
            except FileNotFoundError:
                known = None
            if known is not None:
                return known
            descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            # A file replaced between the stat and the open keeps both descriptors open.
            return cls._files.setdefault(_inode(os.fstat(descriptor)), cls(descriptor))

    def is_at(self, path: str) -> bool:
        """Whether `path` still names this file."""
        try:
            return _inode(os.stat(path)) == _inode(os.fstat(self.descriptor))
        except FileNotFoundError:
            return False

    def try_lock(self) -> bool:
        """Take the lock if neither this process nor another holds it."""
        with self._registry_lock:
            if self.locked:
                return False
            try:
                fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.locked = True
            return True

    def unlock(self) -> None:
        """Let another pool, of this process or another, take the lock."""
        with self._registry_lock:
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            self.locked = False


def _inode(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


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

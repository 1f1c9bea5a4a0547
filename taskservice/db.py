"""The database: engine settings, scoped sessions and write transactions."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from taskservice.writeturn import WriteTurn

# How long a writer waits for SQLite's write lock before giving up. Writes are
# short (one statement each), so a long wait means the database is stuck.
SQLITE_BUSY_TIMEOUT_MS = 5_000

_BEGIN_MODE = "taskservice_begin"


SUPPORTED_BACKENDS = ("sqlite", "postgresql")

# SQLite's primary result codes of a passing fault: busy, locked, read-only,
# I/O error, full, cannot open.
_TRANSIENT_SQLITE_CODES = {5, 6, 8, 10, 13, 14}
# PostgreSQL's SQLSTATEs of one: connection failures, insufficient resources,
# the server shutting down or starting, a lock not available, a cancelled query.
_TRANSIENT_SQLSTATES = ("08", "53", "57P", "55P03", "57014")


def is_transient(error: DBAPIError) -> bool:
    """Whether the database error is a fault that passes, not a bug in the service."""
    code = getattr(error.orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _TRANSIENT_SQLITE_CODES
    sqlstate = getattr(error.orig, "sqlstate", None)
    # No SQLSTATE: the server never answered (refused, unreachable, cut off).
    return sqlstate is None or sqlstate.startswith(_TRANSIENT_SQLSTATES)


def backend_name(url: URL | str) -> str:
    """The kind of database `url` names: "sqlite", "postgresql", ..."""
    return make_url(url).get_backend_name()


def is_sqlite(url: URL | str) -> bool:
    """Whether `url` names an SQLite database."""
    return backend_name(url) == "sqlite"


def sqlite_path(url: URL | str) -> str | None:
    """The file of an SQLite URL; None for an in-memory or a non-SQLite database."""
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    return None if database in (None, "", ":memory:") else database


# SQLite's `synchronous` settings the service offers. In WAL mode both keep
# every commit through a killed process: the commit is in the operating
# system's cache when COMMIT returns. FULL also syncs the WAL to the disk at
# every commit, so a commit survives a power cut or a kernel crash too; NORMAL
# syncs at checkpoints only, so such a crash can lose the last commits (it
# never corrupts the database).
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


def create_db_engine(
    url: str, *, sqlite_synchronous: str = "FULL", idle_in_transaction: float | None = None
) -> Engine:
    """An engine for `url`; SQLite gets WAL, the given sync, a busy timeout and explicit BEGINs.

    On PostgreSQL, `idle_in_transaction` s is how long the server lets one of
    its sessions sit in a transaction between statements before it ends the
    session: a replica paused (or cut off) mid-transaction then holds no lock
    for longer, and the others can take its slots over.
    """
    if not is_sqlite(url):
        # A server that does not answer must fail a connection in seconds, not
        # in the operating system's minutes: callers answer 503 and retry.
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
        if idle_in_transaction is not None:
            milliseconds = max(1, round(idle_in_transaction * 1000))
            event.listen(engine, "connect", partial(_limit_idle_transactions, milliseconds))
        return engine
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"unknown SQLite synchronous setting {sqlite_synchronous!r}")
    engine = create_engine(url)
    event.listen(engine, "connect", partial(_configure_sqlite_connection, sqlite_synchronous))
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _limit_idle_transactions(milliseconds: int, dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET idle_in_transaction_session_timeout = {milliseconds:d}")
    dbapi_connection.commit()  # a SET in a transaction rolled back would be undone


def _configure_sqlite_connection(
    synchronous: str, dbapi_connection: sqlite3.Connection, _record: Any
) -> None:
    # Let SQLAlchemy, not the driver, decide when a transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    _enable_wal(cursor)
    cursor.execute(f"PRAGMA synchronous = {synchronous}")
    cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Put the database in WAL mode (it stays so); retry while others hold it.

    Switching needs the database to itself, and SQLite answers "database is
    locked" at once rather than waiting on the busy timeout, as when several
    processes open a new database together.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _begin_sqlite_transaction(connection: Connection) -> None:
    # A writer takes the write lock at BEGIN (IMMEDIATE), so two writers queue
    # on the busy timeout instead of deadlocking when a read lock is upgraded.
    # Readers begin DEFERRED and never take the write lock.
    mode = connection.get_execution_options().get(_BEGIN_MODE, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """An engine and the thread-scoped sessions bound to it."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        idle_in_transaction: float | None = None,
    ) -> None:
        self.url = url
        self.engine = create_db_engine(
            url, sqlite_synchronous=sqlite_synchronous, idle_in_transaction=idle_in_transaction
        )
        self.session = scoped_session(sessionmaker(self.engine, expire_on_commit=False))
        # SQLite has one writer at a time. Nearly every write comes from this
        # process (one pool per database), so its threads take turns here;
        # other processes still meet the busy timeout.
        self._write_turn = WriteTurn() if is_sqlite(url) else None

    def upgrade_schema(self) -> None:
        """Apply the schema migrations the database has not had yet."""
        config = AlembicConfig()
        config.set_main_option("script_location", "taskservice:migrations")
        with self.engine.connect() as connection:
            connection.execution_options(**{_BEGIN_MODE: "IMMEDIATE"})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()

    @contextmanager
    def writing(self, *, urgent: bool = False) -> Iterator[Session]:
        """A session in a write transaction, committed on success, rolled back on error.

        An `urgent` writer (the task pool's) goes before others waiting for the turn.
        """
        turn = nullcontext() if self._write_turn is None else self._write_turn.take(urgent)
        with self._transaction(turn) as session:
            session.connection(execution_options={_BEGIN_MODE: "IMMEDIATE"})
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session in a read transaction that ends with the block.

        Ending it releases SQLite's snapshot, which would otherwise keep the
        WAL from being checkpointed. The rows read stay usable after it.
        """
        with self._transaction(nullcontext()) as session:
            yield session

    @contextmanager
    def _transaction(self, turn: AbstractContextManager[object]) -> Iterator[Session]:
        session = self.session()
        if session.in_transaction():
            # Each unit of work is one transaction; nesting would silently
            # turn a write into part of a read, or roll back the outer one
            # (and, for a write, wait forever for its own turn).
            raise RuntimeError("a transaction is already open in this thread's session")
        with turn, session.begin():
            yield session

    def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def remove_session(self) -> None:
        """Close this thread's session and return its connection to the pool."""
        self.session.remove()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.session.remove()
        self.engine.dispose()

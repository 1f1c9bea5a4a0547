"""Waking idle slots on every replica when a task is created: PostgreSQL's LISTEN/NOTIFY.

Once a create has committed, its replica's `Notifier` sends a `NOTIFY` on a
channel named after the schema, which reaches every replica that listens on
it (`Listener`). Not in the create's own transaction: PostgreSQL takes one
lock for the whole server from a notifying transaction's commit to its end,
so every create's commit, its WAL flush included, would wait for the one
before, on every replica. The notifier's own transactions write nothing, so
they hold that lock for a moment only, and the creates that commit while one
is sent are told by the next.

A notification can be lost (a replica killed between a commit and its
notification, a listener whose connection was down): idle workers also look
on their own every half second (taskservice.pool.shared), and the listener
wakes its pool every `poll` seconds and after each reconnection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "taskservice."
FIRST_RETRY = 0.1
LAST_RETRY = 5.0
STOP_CHECK = 0.5

# The channel is named after the schema: replicas share a schema, and other
# services (or tests) on the same database do not wake each other.
_NOTIFY = text("SELECT pg_notify(:prefix || current_schema(), '')")


def notify_created(session: Session | Connection) -> None:
    """Tell the listening replicas, once this transaction commits, that a task is queued."""
    session.execute(_NOTIFY, {"prefix": CHANNEL_PREFIX})


class Notifier(threading.Thread):
    """A daemon thread that sends one notification for the creates committed since its last."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="task-notifier", daemon=True)
        self._engine = engine
        self._poked = threading.Event()
        self.stopping = threading.Event()
        self.sent = 0

    def poke(self) -> None:
        """A task was committed here: tell the replicas soon."""
        self._poked.set()

    def run(self) -> None:
        """Notify after each poke (one for all that came meanwhile) until stopped."""
        while not self.stopping.is_set():
            if not self._poked.wait(STOP_CHECK):
                continue
            self._poked.clear()
            try:
                with self._engine.connect() as connection:
                    notify_created(connection)
                    connection.commit()
                self.sent += 1
            except SQLAlchemyError as error:  # lost: the replicas' polls find the task
                logger.warning("task notifier: %s", str(error).splitlines()[0])
                self.stopping.wait(FIRST_RETRY)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop notifying; whether the thread ended within `timeout` s."""
        self.stopping.set()
        if self.ident is not None:
            self.join(timeout)
        return not self.is_alive()


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as libpq reads it (no `+psycopg` driver name)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


class Listener(threading.Thread):
    """A daemon thread with a connection of its own that calls `wake` for each new task.

    It also calls `wake` every `poll` s, and after each reconnection, for the
    notifications it may have missed.
    """

    def __init__(self, database_url: str, wake: Callable[[], None], *, poll: float = 1.0) -> None:
        super().__init__(name="task-listener", daemon=True)
        self._conninfo = libpq_url(database_url)
        self._wake = wake
        self._poll = poll
        self.stopping = threading.Event()
        self.listening = threading.Event()

    def run(self) -> None:
        """Listen, reconnecting with backoff, until stopped."""
        delay = FIRST_RETRY
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    self._listen(conn)
                    delay = FIRST_RETRY
            except psycopg.Error as error:
                self.listening.clear()
                logger.warning(
                    "task listener: %s; reconnecting in %.1f s", str(error).strip(), delay
                )
                self._wake()  # what was notified meanwhile is lost: look anyway
                if self.stopping.wait(delay):
                    return
                delay = min(delay * 2, LAST_RETRY)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop listening; whether the thread ended within `timeout` s."""
        self.stopping.set()
        if self.ident is not None:
            self.join(timeout)
        return not self.is_alive()

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        (channel,) = conn.execute("SELECT %s || current_schema()", (CHANNEL_PREFIX,)).fetchall()
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(str(channel[0]))))
        self.listening.set()
        self._wake()  # tasks queued before this connection listened
        last_wake = time.monotonic()
        while not self.stopping.is_set():
            # In short waits, so that a stop is seen within half a second.
            notified = any(True for _ in conn.notifies(timeout=STOP_CHECK, stop_after=1))
            if notified or time.monotonic() - last_wake >= self._poll:
                self._wake()
                last_wake = time.monotonic()

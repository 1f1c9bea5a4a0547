"""Waking idle slots on every replica when a task is created: PostgreSQL's LISTEN/NOTIFY.

A create sends `NOTIFY` in its own transaction (`notify_created`), which the
server delivers only once it commits, to every replica that listens on the
same schema. A notification sent while a listener's connection was down is
lost, so the listener also wakes its pool every `poll` seconds: a slot then
waits at most that long for a task it was not told about.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "taskservice."
FIRST_RETRY = 0.1
LAST_RETRY = 5.0
STOP_CHECK = 0.5

# The channel is named after the schema: replicas share a schema, and other
# services (or tests) on the same database do not wake each other.
_NOTIFY = text("SELECT pg_notify(:prefix || current_schema(), '')")


def notify_created(session: Session) -> None:
    """Tell the listening replicas, once this transaction commits, that a task is queued."""
    session.execute(_NOTIFY, {"prefix": CHANNEL_PREFIX})


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
